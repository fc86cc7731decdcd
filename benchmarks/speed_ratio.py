"""Training-iteration time of our trainers as a ratio to vanilla ``nnUNetTrainer``, measured side by side.

Every trainer is built exactly as ``nnUNetv2_train`` builds it (same plans, same configuration, same planned
total batch: vanilla uses the planned batch for its one network; the co-training trainers split it into
labelled + unlabelled and each of their two networks sees the whole batch). Batches are drawn from each trainer's
own loader once and cached, so the timing covers ``train_step`` (forward, losses, backward, optimiser step)
and not data augmentation, which runs in background processes in real training. Trainers are timed in
interleaved rounds so that drift of the machine affects all of them alike; the median over rounds is reported.

Example (CPU, MSD Hippocampus prepared by ``benchmarks/prepare_hippocampus.py``):

    python benchmarks/speed_ratio.py -d 4 -device cpu --iters 5 --rounds 3 \
        --trainers nnUNetTrainerLLMSeg nnUNetTrainerTAK -o benchmarks/results/speed_cpu.json

The same command with ``-device cuda`` measures on a GPU (with nnU-Net's mixed precision and, unless
``nnUNet_compile=false``, torch.compile - as in real training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_trainer(name: str, dataset: str, configuration: str, fold: int, device, plans_name: str = "nnUNetPlans"):
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(name)
    dataset_name = maybe_convert_to_dataset_name(dataset)
    folder = join(nnUNet_preprocessed, dataset_name)
    plans = load_json(join(folder, f"{plans_name}.json"))
    dataset_json = load_json(join(folder, "dataset.json"))
    plans["continue_training"] = False
    trainer = cls(plans=plans, configuration=configuration, fold=fold, dataset_json=dataset_json, device=device)
    trainer.disable_checkpointing = True
    trainer.initialize()
    return trainer


def cached_batches(trainer, n: int) -> list[dict]:
    train_loader, val_loader = trainer.get_dataloaders()
    batches = [next(train_loader) for _ in range(n)]
    for loader in (train_loader, val_loader):
        finish = getattr(loader, "_finish", None)
        if callable(finish):
            finish()
    return batches


def time_steps(trainer, batches: list[dict], iters: int) -> float:
    import torch

    trainer.network.train()
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(iters):
        trainer.train_step(batches[i % len(batches)])
    sync()
    return (time.perf_counter() - t0) / iters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", required=True)
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("-f", "--fold", type=int, default=0)
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--trainers", nargs="*", default=["nnUNetTrainerLLMSeg", "nnUNetTrainerTAK"],
                        help="trainers timed against the baseline (none: time the baseline alone)")
    parser.add_argument("-p", "--plans", default="nnUNetPlans",
                        help="plans identifier, e.g. a CPU copy written by nnunet-llmseg benchmark "
                        "(nnUNetPlans_bs8_ps128x128)")
    parser.add_argument("--baseline", default="nnUNetTrainer")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per trainer per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args(argv)

    os.environ.setdefault("nnUNet_n_proc_DA", "0")  # batches are cached; no background augmentation workers
    os.environ["nnUNet_results"] = tempfile.mkdtemp(prefix="llmseg_speed_")  # trainers write logs there
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [args.baseline, *args.trainers]
    trainers, batches = {}, {}
    for name in names:
        print(f"building {name} ...", flush=True)
        trainers[name] = build_trainer(name, args.dataset, args.configuration, args.fold, device, args.plans)
        batches[name] = cached_batches(trainers[name], max(2, min(args.iters, 4)))
        time_steps(trainers[name], batches[name], args.warmup)

    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            per_round[name].append(time_steps(trainers[name], batches[name], args.iters))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {per_round[n][-1]:.3f} s/it" for n in names),
              flush=True)

    b0 = batches[args.baseline][0]
    rows = []
    for name in names:
        med = statistics.median(per_round[name])
        # ratio per round (trainers of one round ran back to back under the same load), then the median
        ratios = [t / b for t, b in zip(per_round[name], per_round[args.baseline])]
        batch = batches[name][0]
        n_l = int(batch["data"].shape[0])
        n_u = int(batch["data_u"].shape[0]) if "data_u" in batch else 0
        rows.append({"trainer": name, "seconds_per_iteration": med, "ratio_to_baseline": statistics.median(ratios),
                     "ratio_per_round": ratios, "labelled_batch": n_l, "unlabelled_batch": n_u,
                     "rounds": per_round[name]})
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "dataset": args.dataset, "configuration": args.configuration, "plans": args.plans,
        "patch_size": list(b0["data"].shape[2:]), "planned_batch": int(b0["data"].shape[0]),
        "iters_per_round": args.iters, "rounds": args.rounds, "results": rows,
    }
    print()
    print(f"| trainer | s/iteration (median) | ratio to {args.baseline} (median of rounds) | per round | batch |")
    print("|---|---|---|---|---|")
    for row in rows:
        per = ", ".join(f"{r:.2f}" for r in row["ratio_per_round"])
        print(f"| {row['trainer']} | {row['seconds_per_iteration']:.3f} | {row['ratio_to_baseline']:.2f}x | {per} | "
              f"{row['labelled_batch']} + {row['unlabelled_batch']} |")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
