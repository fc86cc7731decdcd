"""Compare methods over repeated training runs of one benchmark (runs, not validation cases, as the unit).

Each ``results.json`` is one repeat of the same ``nnunet-llmseg benchmark`` command (a new ``--results`` folder
trains every method again). A method's runs are its rows across the files; each is compared with the baseline's
runs by the difference of mean run Dice, the worst-minus-best margin and an exact permutation test over the runs
(``nnunet_llmseg.benchmark.repeats``). Use it before claiming a method wins: the table's per-case p-value does not
cover run-to-run variation.

    python benchmarks/repeats.py RUN1/results.json RUN2/results.json [...] [--score largest_component]
    python benchmarks/repeats.py RUN*/results.json --failed-below 0.5    # also: how often each method's runs failed
    python benchmarks/repeats.py OLD/results.json::labelled_only NEW*/results.json    # only some rows of a file

``--failed-below T`` adds a second table: each run's worst class, the runs in which a class's mean Dice is below T
(a training that did not learn a class), and a two-sided Fisher exact test of those counts against the baseline's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnunet_llmseg.benchmark.repeats import (
    SCORES,
    RepeatsError,
    compare_all,
    compare_failures,
    failure_markdown,
    load_runs,
    load_worst_class,
    markdown,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="results.json of each repeat; FILE::METHOD[,METHOD...] takes only "
                        "those methods' rows from FILE (e.g. leave out runs of an earlier version)")
    parser.add_argument("--baseline", default="labelled_only", help="method every other is compared with")
    parser.add_argument("--score", choices=SCORES, default="raw",
                        help="raw: nnU-Net's validation predictions; largest_component: after --largest-component")
    parser.add_argument("--failed-below", type=float, metavar="T",
                        help="also count failed runs: a class whose mean Dice is below T (e.g. 0.5)")
    parser.add_argument("--json", type=Path, help="also write the comparisons here")
    args = parser.parse_args(argv)
    try:
        notes: list[str] = []
        runs = load_runs(args.files, args.score, notes)
        comparisons = compare_all(runs, args.baseline)
        worst = load_worst_class(args.files, args.score) if args.failed_below is not None else None
        failures = compare_failures(worst, args.failed_below, args.baseline) if worst is not None else []
    except RepeatsError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(markdown(comparisons, runs, args.baseline))
    for line in notes:
        print(f"note: {line}")
    for c in comparisons:
        if c.note:
            print(f"note: {c.method}: {c.note}")
    if worst is not None:
        print()
        print(failure_markdown(failures, worst, args.baseline, args.failed_below))
    if args.json:
        args.json.write_text(json.dumps({"score": args.score, "baseline": args.baseline,
                                         "files": [str(f) for f in args.files],
                                         "comparisons": [c.to_json() for c in comparisons],
                                         "failures": [f.to_json() for f in failures]}, indent=2))


if __name__ == "__main__":
    main()
