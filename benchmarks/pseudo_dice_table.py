"""Per-class pseudo-Dice over training, read from nnU-Net's training logs, as a markdown table.

nnU-Net logs ``Pseudo dice [..]`` per epoch (per class, on that epoch's validation iterations). A run whose final
validation did not finish still has these curves; a class that first learns and then declines shows here.

    python benchmarks/pseudo_dice_table.py RUN_DIR [RUN_DIR ...] --epochs 5 10 15 20 --classes Anterior Posterior

Each RUN_DIR holds one run's ``training_log_*.txt`` (a fold folder, or a copy of its logs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_llmseg.benchmark.training_logs import parse_logs


def table(run_dirs: list[Path], epochs: list[int], classes: list[str]) -> str:
    head = "| run | " + " | ".join(f"{c} ep {e}" for c in classes for e in epochs) + " |"
    rows = [head, "|---|" + "---|" * (len(classes) * len(epochs))]
    for run in run_dirs:
        logs = parse_logs(run)
        by_epoch = dict(zip(logs.epochs, logs.pseudo_dice))
        cells = []
        for k in range(len(classes)):
            for e in epochs:  # epochs as counted by a person (1-based); nnU-Net logs from 0
                values = by_epoch.get(e - 1)
                cells.append(f"{values[k]:.3f}" if values and k < len(values) else "-")
        rows.append(f"| {run.name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--epochs", nargs="+", type=int, default=[5, 10, 15, 20])
    parser.add_argument("--classes", nargs="+", default=["class 1", "class 2"])
    args = parser.parse_args(argv)
    print(table(args.runs, args.epochs, args.classes))


if __name__ == "__main__":
    main()
