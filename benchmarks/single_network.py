"""Score each network of a trained co-training pair on its own: is a twin trainer's gain the ensemble?

Every co-training trainer (plain co-training, LLM-SegNet, TAK and their ablations) predicts with the average of its
two networks by default. Labelled-only nnU-Net is one network. So part of any gain over it may be the ensemble
rather than what the method teaches. This script predicts the fold's validation cases of one finished benchmark run
with ``nnUNetv2_predict`` twice - network A alone, network B alone (``NNUNET_LLMSEG_PREDICT_NETWORKS=a|b``) - scores
them as the benchmark does (``evaluate_folders`` against ``gt_segmentations``), scores the run's own validation
predictions (the pair) the same way, and writes a ``results.json`` whose rows ``METHOD[a]``, ``METHOD[b]`` and
``METHOD[validation]`` pair with any benchmark row through ``benchmarks/pair_runs.py``. ``--check-ensemble`` also
predicts with both networks through ``nnUNetv2_predict`` (row ``METHOD[ab]``), which must reproduce
``METHOD[validation]``.

    python benchmarks/single_network.py --results WS/results_nounl0 -d 4 -c 2d -f 0 \
        -tr nnUNetTrainerTAK_noUnlabelled_10epochs_80it -p nnUNetPlans_bs16 --method tak_nounlabelled --out DIR

``nnUNet_raw`` and ``nnUNet_preprocessed`` come from the environment; ``--results`` is the run's ``nnUNet_results``;
the benchmark's schedule variants are looked up where the benchmark writes them, under the environment's
``nnUNet_results``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from nnunet_llmseg.benchmark.methods import VARIANT_FOLDER_NAME, ext_trainer_value
from nnunet_llmseg.benchmark.report import per_case_dice
from nnunet_llmseg.cli_errors import dataset_name
from nnunet_llmseg.evaluation.report import dataset_labels, evaluate_folders


def predict(networks: str, images: Path, out: Path, args: argparse.Namespace) -> None:
    env = dict(os.environ, nnUNet_results=str(args.results), NNUNET_LLMSEG_PREDICT_NETWORKS=networks)
    # the benchmark's schedule variants (``Trainer_10epochs_80it``) live next to the default nnUNet_results
    variants = Path(os.environ["nnUNet_results"]) / VARIANT_FOLDER_NAME
    env["nnUNet_extTrainer"] = ext_trainer_value(variants, env.get("nnUNet_extTrainer"))
    cmd = ["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", args.dataset, "-c", args.configuration,
           "-tr", args.trainer, "-p", args.plans, "-f", str(args.fold), "-chk", args.checkpoint,
           "-device", args.device, "-npp", "1", "-nps", "1"]
    print(f"[{networks}] {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, env=env, check=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, required=True, help="the run's nnUNet_results folder")
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-c", "--configuration", required=True)
    p.add_argument("-f", "--fold", type=int, required=True)
    p.add_argument("-tr", "--trainer", required=True)
    p.add_argument("-p", "--plans", default="nnUNetPlans")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--method", required=True, help="row name prefix, e.g. the benchmark alias")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--check-ensemble", action="store_true",
                   help="also predict with both networks (must reproduce the run's own validation row)")
    args = p.parse_args(argv)

    name = dataset_name(args.dataset)  # an id or a name, resolved like nnU-Net
    raw, pre = Path(os.environ["nnUNet_raw"]) / name, Path(os.environ["nnUNet_preprocessed"]) / name
    # foreground labels, as the benchmark scores them, and the dataset.json they come from
    labels, ending, ignore_label, dataset_json_path = dataset_labels(name)
    dataset_json = json.loads(dataset_json_path.read_text())
    fold_dir = args.results / name / f"{args.trainer}__{args.plans}__{args.configuration}" / f"fold_{args.fold}"
    val_dir = fold_dir / "validation"
    cases = sorted(f.name[: -len(ending)] for f in val_dir.glob(f"*{ending}"))
    if not cases:
        raise SystemExit(f"error: {val_dir} holds no validation predictions; is the run finished?")
    n_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {"0": ""})))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmseg_single_") as tmp:
        images, ref = Path(tmp) / "images", Path(tmp) / "ref"
        images.mkdir()
        ref.mkdir()
        for c in cases:
            for ch in range(n_channels):
                src = raw / "imagesTr" / f"{c}_{ch:04d}{ending}"
                os.symlink(src.resolve(), images / src.name)
            os.symlink((pre / "gt_segmentations" / f"{c}{ending}").resolve(), ref / f"{c}{ending}")
        folders = {"own validation": val_dir}
        for networks in ("a", "b") + (("both",) if args.check_ensemble else ()):
            target = args.out / f"pred_{networks}"
            if not all((target / f"{c}{ending}").is_file() for c in cases):
                predict(networks, images, target, args)
            folders[networks] = target
        for name, folder in folders.items():
            result = evaluate_folders(ref, folder, labels=labels, file_ending=ending, num_processes=1,
                                      allow_missing=False, ignore_label=ignore_label)
            dice = per_case_dice(result)
            suffix = {"a": "[a]", "b": "[b]", "both": "[ab]", "own validation": "[validation]"}[name]
            rows.append({"method": f"{args.method}{suffix}", "trainer": args.trainer,
                         "dice_mean": sum(dice.values()) / len(dice), "per_case_dice": dice,
                         "prediction_folder": str(folder)})
            print(f"{args.method}{suffix}: mean Dice {rows[-1]['dice_mean']:.4f} over {len(dice)} cases", flush=True)
    out = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
           "fold": args.fold, "validation_cases": cases, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
