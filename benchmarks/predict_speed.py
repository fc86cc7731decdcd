"""Prediction cost of one co-trained network vs vanilla nnU-Net: same images, same plans, side by side.

The models are trained briefly through the real ``nnUNetv2_train`` on the same dataset, plans and configuration
(vanilla ``nnUNetTrainer_{E}epochs_{I}it`` and e.g. ``nnUNetTrainerLLMSeg_{E}epochs_{I}it``, unless their
``checkpoint_final.pth`` exists); the weights do not change the cost. Then, in interleaved rounds (so drift of
the machine's load hits both alike), two timings per model:

- ``sliding window``: nnU-Net's ``nnUNetPredictor.predict_sliding_window_return_logits`` on every preprocessed
  validation image of the fold (the network-bound part of ``nnUNetv2_predict``: tiling, Gaussian weighting,
  mirroring TTA unless ``--disable_tta``), in this process, predictor built once per model;
- ``nnUNetv2_predict``: the whole command as a user runs it (a new process: imports, building and loading the
  model, preprocessing, prediction, export), on the raw validation images.

Ours runs with ``NNUNET_LLMSEG_PREDICT_NETWORKS=a`` (one network; ``--also-both`` adds the default two-network
average for reference). The ratio is computed per round and the median over rounds is reported; the target is
at most 1.05.

    python benchmarks/prepare_hippocampus.py --workspace WS        # once (MSD Task04 from ../shared/data)
    python benchmarks/predict_speed.py --workspace WS -c 3d_fullres --rounds 3 \
        -o benchmarks/results/predict_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import write_schedule_module
from prepare_hippocampus import DATASET_ID, DATASET_NAME, REPO, _bin, workspace_env

ENV_KEY = "NNUNET_LLMSEG_PREDICT_NETWORKS"


def model_folder(env: dict, trainer: str, plans: str, configuration: str) -> Path:
    return Path(env["nnUNet_results"]) / DATASET_NAME / f"{trainer}__{plans}__{configuration}"


def train_if_needed(env: dict, trainer: str, plans: str, configuration: str, fold: int, device: str) -> Path:
    folder = model_folder(env, trainer, plans, configuration)
    if not (folder / f"fold_{fold}" / "checkpoint_final.pth").is_file():
        cmd = [_bin("nnUNetv2_train"), str(DATASET_ID), configuration, str(fold), "-tr", trainer, "-p", plans,
               "-device", device]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return folder


def validation_cases(env: dict, fold: int) -> list[str]:
    splits = json.loads((Path(env["nnUNet_preprocessed"]) / DATASET_NAME / "splits_final.json").read_text())
    return sorted(splits[fold]["val"])


def build_predictor(folder: Path, fold: int, device, tta: bool, networks: str | None):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if networks is not None:
        os.environ[ENV_KEY] = networks
    try:
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta, device=device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(folder), use_folds=(fold,),
                                                       checkpoint_name="checkpoint_final.pth")
    finally:
        os.environ.pop(ENV_KEY, None)
    return predictor


def time_sliding_window(predictor, images: list, device) -> float:
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        for img in images:
            predictor.predict_sliding_window_return_logits(img)
    sync()
    return time.perf_counter() - t0


def time_command(env: dict, inp: Path, trainer: str, plans: str, configuration: str, fold: int, device: str,
                 tta: bool, networks: str | None) -> float:
    out = Path(tempfile.mkdtemp(prefix="llmseg_pred_"))
    cmd = [_bin("nnUNetv2_predict"), "-i", str(inp), "-o", str(out), "-d", str(DATASET_ID), "-c", configuration,
           "-p", plans, "-f", str(fold), "-tr", trainer, "-chk", "checkpoint_final.pth", "-device", device,
           "-npp", "1", "-nps", "1"] + ([] if tta else ["--disable_tta"])
    run_env = dict(env, **({ENV_KEY: networks} if networks else {}))
    t0 = time.perf_counter()
    subprocess.run(cmd, env=run_env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", type=Path, default=REPO / "benchmarks" / "results" / "workspace",
                   help="made by prepare_hippocampus.py")
    p.add_argument("-c", "--configuration", default="3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("-f", "--fold", type=int, default=0)
    p.add_argument("-device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--trainers", nargs="+", default=["nnUNetTrainerLLMSeg"],
                   help="our trainers (their schedule variants are trained)")
    p.add_argument("--epochs", type=int, default=1, help="brief training: epochs")
    p.add_argument("--iters", type=int, default=2, help="brief training: iterations per epoch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=8, help="validation images timed per round (0: all)")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring (as nnUNetv2_predict --disable_tta)")
    p.add_argument("--no-command", action="store_true", help="skip the end-to-end nnUNetv2_predict timing")
    p.add_argument("--also-both", action="store_true", help="also time the default two-network average")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("-o", "--output", type=Path, default=None)
    args = p.parse_args(argv)

    env = workspace_env(args.workspace.resolve())
    if not (Path(env["nnUNet_preprocessed"]) / DATASET_NAME / f"{args.plans}.json").is_file():
        print(f"no {args.plans} for {DATASET_NAME} in {args.workspace}: run benchmarks/prepare_hippocampus.py",
              file=sys.stderr)
        return 2
    ext = args.workspace.resolve() / "trainers_predict_speed"  # not accuracy.py's folder: its names stay
    names = write_schedule_module(ext, ["nnUNetTrainer", *args.trainers], args.epochs, args.iters)
    env["nnUNet_extTrainer"] = os.pathsep.join([str(ext), *filter(None, [env.get("nnUNet_extTrainer")])])
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                           "nnUNet_extTrainer")})
    vanilla = names["nnUNetTrainer"]
    folders = {n: train_if_needed(env, n, args.plans, args.configuration, args.fold, args.device)
               for n in names.values()}

    import numpy as np
    import torch
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = validation_cases(env, args.fold)
    cases = cases[: args.images] if args.images else cases
    pm = PlansManager(str(Path(env["nnUNet_preprocessed"]) / DATASET_NAME / f"{args.plans}.json"))
    folder = Path(env["nnUNet_preprocessed"]) / DATASET_NAME / pm.get_configuration(args.configuration).data_identifier
    dataset = infer_dataset_class(str(folder))(str(folder), cases)
    images = [torch.from_numpy(np.asarray(dataset.load_case(c)[0][:])) for c in cases]
    raw_in = Path(tempfile.mkdtemp(prefix="llmseg_pred_in_"))
    for c in cases:
        for f in (Path(env["nnUNet_raw"]) / DATASET_NAME / "imagesTr").glob(f"{c}_*.nii.gz"):
            (raw_in / f.name).symlink_to(f)

    runs = [("nnUNetTrainer", vanilla, None)]
    for t in args.trainers:
        runs.append((f"{t} (network a)", names[t], "a"))
        if args.also_both:
            runs.append((f"{t} (both, averaged)", names[t], "both"))
    tta = not args.disable_tta
    predictors = {label: build_predictor(folders[tr], args.fold, device, tta, nets) for label, tr, nets in runs}
    for label, _, _ in runs:  # warm-up (allocator, first-call overheads)
        time_sliding_window(predictors[label], images[:1], device)

    sw = {label: [] for label, _, _ in runs}
    cmd = {label: [] for label, _, _ in runs}
    for r in range(args.rounds):
        for label, tr, nets in runs:
            sw[label].append(time_sliding_window(predictors[label], images, device))
            if not args.no_command:
                cmd[label].append(time_command(env, raw_in, tr, args.plans, args.configuration, args.fold,
                                               args.device, tta, nets))
        print(f"round {r + 1}/{args.rounds}: " + "; ".join(
            f"{label}: {sw[label][-1]:.2f} s" + (f" / {cmd[label][-1]:.2f} s" if cmd[label] else "")
            for label, _, _ in runs), flush=True)

    base = runs[0][0]
    rows = []
    for label, tr, nets in runs:
        row = {"model": label, "trainer": tr, "predict_networks": nets,
               "sliding_window_s": sw[label], "sliding_window_ratio_per_round": [t / b for t, b in
                                                                                  zip(sw[label], sw[base])]}
        row["sliding_window_ratio"] = statistics.median(row["sliding_window_ratio_per_round"])
        if cmd[label]:
            row["command_s"] = cmd[label]
            row["command_ratio_per_round"] = [t / b for t, b in zip(cmd[label], cmd[base])]
            row["command_ratio"] = statistics.median(row["command_ratio_per_round"])
        rows.append(row)
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "dataset": DATASET_NAME, "plans": args.plans, "configuration": args.configuration,
        "patch_size": list(pm.get_configuration(args.configuration).patch_size), "tta": tta,
        "images": cases, "rounds": args.rounds, "results": rows,
    }
    print(f"\n{len(cases)} images, {args.configuration}, {args.plans}, TTA {'on' if tta else 'off'}, "
          f"{args.rounds} rounds; ratio to vanilla per round and median")
    print("| model | sliding window s (median) | ratio | per round | nnUNetv2_predict s (median) | ratio | per round |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        sw_rounds = ", ".join(f"{x:.3f}" for x in row["sliding_window_ratio_per_round"])
        line = (f"| {row['model']} | {statistics.median(row['sliding_window_s']):.2f} | "
                f"{row['sliding_window_ratio']:.3f} | {sw_rounds} |")
        if "command_s" in row:
            c_rounds = ", ".join(f"{x:.3f}" for x in row["command_ratio_per_round"])
            line += f" {statistics.median(row['command_s']):.2f} | {row['command_ratio']:.3f} | {c_rounds} |"
        else:
            line += " - | - | - |"
        print(line)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
