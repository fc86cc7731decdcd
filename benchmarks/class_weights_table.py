"""TAK's class-balance weights over an epoch range, read from nnU-Net's training logs, as a markdown table.

TAK logs ``class weights a [..] b [..]`` per epoch (network A: DHC's distribution weights, B: its difficulty
weights; mean 1, background first). The table gives each network's per-class median over epochs ``--first`` to
``--last`` (as nnU-Net counts them, from 0): the numbers of the whole-slice ACDC NOTE, Results 9 and 10.

    python benchmarks/class_weights_table.py RUN_DIR [RUN_DIR ...] --first 5 --last 20

Each RUN_DIR holds one run's ``training_log_*.txt`` (a fold folder, or a copy of its logs).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from nnunet_llmseg.benchmark.training_logs import parse_logs


def table(run_dirs: list[Path], first: int, last: int) -> str:
    rows = [f"| run | network | median class weights, epochs {first}-{last} | epochs |", "|---|---|---|---|"]
    for run in run_dirs:
        logs = parse_logs(run)
        chosen = [w for e, w in zip(logs.epochs, logs.class_weights) if first <= e <= last and w]
        for net in sorted({n for w in chosen for n in w}):
            per_epoch = [w[net] for w in chosen if net in w]
            medians = [statistics.median(values) for values in zip(*per_epoch)]
            rows.append(f"| {run.name} | {net} | " + " / ".join(f"{m:.3f}" for m in medians)
                        + f" | {len(per_epoch)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--first", type=int, default=5)
    parser.add_argument("--last", type=int, default=20)
    args = parser.parse_args(argv)
    print(table(args.runs, args.first, args.last))


if __name__ == "__main__":
    main()
