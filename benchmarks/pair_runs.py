"""Paired comparison of benchmark rows across ``results.json`` files (runs trained in separate sessions).

``nnunet-llmseg benchmark`` compares every method with the baseline of its own run. Ablations trained later, with
the same command, plans, labelled cases and schedule, land in another ``results.json``; this script pairs their
per-case Dice (mean over classes, by validation case) with any other row, using the benchmark's own test
(``paired_wilcoxon``: two-sided Wilcoxon signed-rank, same conventions as the tables).

    python benchmarks/pair_runs.py RESULTS.json [RESULTS.json ...] --pairs tak:labelled_only llmseg:llmseg_notext
    python benchmarks/pair_runs.py RESULTS.json --score largest_component --pairs tak_nocontrast:tak

``--score largest_component`` pairs the scores after the benchmark's largest-component rule (files made with
``--largest-component``), as ``repeats.py --score`` does for runs.

A method that appears in several files is named ``method@N`` (N = position of its file, from 1) after the first.

Repeated trainings of one method are paired as one side by joining their names with ``+``: each case's Dice is
the mean over those runs, so two runs of A against two runs of B test whether A beats B case by case on average
over trainings, not one lucky pair of runs:

    python benchmarks/pair_runs.py R1.json R2.json R3.json --pairs llmseg+llmseg@2:llmseg_notext+llmseg_notext@3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnunet_llmseg.benchmark.repeats import SCORES, score_entry
from nnunet_llmseg.benchmark.stats import paired_wilcoxon


def load_rows(files: list[Path]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for i, path in enumerate(files, start=1):
        for row in json.loads(path.read_text())["rows"]:
            name = row["method"] if row["method"] not in rows else f"{row['method']}@{i}"
            rows[name] = row
    return rows


def scored(row: dict, name: str, score: str) -> dict:
    """The row's ``dice_mean``/``per_case_dice`` for ``score`` (``score_entry``), or a clear error without them."""
    entry = score_entry(row, score)
    if not entry:
        raise SystemExit(f"error: row {name!r} has no {score} scores (its file was made without "
                         "--largest-component); rerun the benchmark with it, or use --score raw")
    return entry


def side(rows: dict[str, dict], names: str, score: str) -> dict:
    """One side of a pair: a row's scores, or for ``A+B+...`` the per-case mean over those rows (same cases)."""
    entries = []
    parts = names.split("+")
    for name in parts:
        if name not in rows:
            raise SystemExit(f"error: no row {name!r}; rows: {', '.join(sorted(rows))}")
        entries.append(scored(rows[name], name, score))
        if sorted(entries[-1]["per_case_dice"]) != sorted(entries[0]["per_case_dice"]):
            raise SystemExit(f"error: {name} was scored on other validation cases than {parts[0]}")
    cases = sorted(entries[0]["per_case_dice"])
    per_case = {c: sum(e["per_case_dice"][c] for e in entries) / len(entries) for c in cases}
    return {"dice_mean": sum(e["dice_mean"] for e in entries) / len(entries), "per_case_dice": per_case}


def compare(rows: dict[str, dict], a: str, b: str, score: str = "raw") -> str:
    ra, rb = side(rows, a, score), side(rows, b, score)
    if sorted(ra["per_case_dice"]) != sorted(rb["per_case_dice"]):
        raise SystemExit(f"error: {a} and {b} were scored on different validation cases")
    p_value, note, _, _ = paired_wilcoxon(ra["per_case_dice"], rb["per_case_dice"])
    p_text = f"{p_value:.2g}" if p_value is not None else note
    diff = ra["dice_mean"] - rb["dice_mean"]
    return f"| {a} | {b} | {ra['dice_mean']:.3f} | {rb['dice_mean']:.3f} | {diff:+.4f} | {p_text} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--pairs", nargs="+", required=True,
                        help="A:B pairs of row names; A+A@2 averages runs per case")
    parser.add_argument("--score", choices=SCORES, default="raw",
                        help="raw Dice, or Dice after the largest-component rule")
    args = parser.parse_args(argv)
    rows = load_rows(args.files)
    print("| A | B | Dice A | Dice B | A - B | p (paired Wilcoxon) |")
    print("|---|---|---|---|---|---|")
    for pair in args.pairs:
        a, _, b = pair.partition(":")
        print(compare(rows, a, b, args.score))


if __name__ == "__main__":
    main()
