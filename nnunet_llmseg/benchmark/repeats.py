"""Compare methods across repeated training runs, so that a claim survives training a second time.

Why this exists: the benchmark table's p-value is a paired Wilcoxon test over validation *cases* of one training
run per method. It says how consistently that run beats that baseline run case by case, not whether training
again would repeat the difference. nnU-Net sets no seed, so two trainings of the same command differ; on ACDC
2d at the CPU schedule, labelled-only nnU-Net scored 0.749, 0.783, 0.613, 0.753, 0.730 and 0.476 in six trainings
(more spread than any method's margin), and the per-case test between the first two came out "significant"
(p = 5e-5).

Given several ``results.json`` files of the same benchmark (same dataset, configuration, fold, plans, schedule,
labelled cases and validation cases), each method's runs are its rows across the files, and:

* ``run_dice``: each run's mean Dice (the table's Dice column, or the largest-component table's with
  ``score="largest_component"``).
* ``diff``: mean of the method's run Dice minus mean of the baseline's.
* ``margin``: the method's worst run minus the baseline's best run; positive means every run of the method beat
  every run of the baseline.
* ``p_value``: exact two-sided permutation test of ``diff`` over every way to split the pooled runs into groups
  of the two sizes (runs, not cases, are the unit). With few runs it cannot be small: its floor is
  ``min_p`` (1 / C(n+m, n), doubled when n == m), e.g. 0.1 for 2 vs 3 runs and 0.029 for 4 vs 4. A comparison
  whose floor is above 0.05 says so in ``note`` instead of pretending to evidence. The statistic is the
  difference of means (what a user gets from one training on average), so one failed run counts with its full
  weight: it widens the spread of its group, and relabellings that move it to the other group count as extreme.
  Every run of a method above every baseline run is therefore not enough for a small p when a baseline run
  failed badly (ACDC: 3 LLM-SegNet runs 0.770-0.784 vs 5 labelled-only runs 0.476-0.753 gave p = 0.125).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import combinations
from math import comb
from pathlib import Path

#: Header fields that must agree for runs to be repeats of one benchmark (``results.json`` top level).
SAME_BENCHMARK_FIELDS = ("dataset", "configuration", "fold", "plans", "schedule", "labelled_cases",
                         "validation_cases")
SCORES = ("raw", "largest_component")


class RepeatsError(ValueError):
    """Files that are not repeats of one benchmark, or a method/score they do not hold."""


@dataclass
class RunLevelComparison:
    """One method against the baseline over repeated training runs (see the module doc)."""

    method: str
    baseline: str
    run_dice: list[float]
    baseline_run_dice: list[float]
    diff: float
    margin: float
    p_value: float
    min_p: float
    note: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def permutation_p(a: list[float], b: list[float]) -> tuple[float, float]:
    """(p, floor of p): exact two-sided permutation test of mean(a) - mean(b) over all relabellings of the runs."""
    if not a or not b:
        raise RepeatsError("each group needs at least one run")
    pooled = a + b
    n, total = len(a), sum(a) + sum(b)
    observed = abs(_mean(a) - _mean(b))
    splits = comb(len(pooled), n)
    extreme = 0
    for idx in combinations(range(len(pooled)), n):
        sum_a = sum(pooled[i] for i in idx)
        stat = abs(sum_a / n - (total - sum_a) / len(b))
        if stat >= observed - 1e-12:
            extreme += 1
    floor = (2 if len(a) == len(b) else 1) / splits
    return extreme / splits, floor


def compare_runs(method: str, runs: list[float], baseline: str, baseline_runs: list[float],
                 alpha: float = 0.05) -> RunLevelComparison:
    """The run-level comparison of one method with the baseline."""
    p, floor = permutation_p(runs, baseline_runs)
    note = None
    if floor > alpha:
        note = (f"{len(runs)} vs {len(baseline_runs)} run(s): the permutation test cannot go below p = {floor:.2g}; "
                f"train more repeats (3 vs 4 reach 0.029)")
    return RunLevelComparison(method=method, baseline=baseline, run_dice=runs, baseline_run_dice=baseline_runs,
                              diff=_mean(runs) - _mean(baseline_runs), margin=min(runs) - max(baseline_runs),
                              p_value=p, min_p=floor, note=note)


def score_entry(row: dict, score: str) -> dict | None:
    """The part of a results row that holds ``score``'s ``dice_mean``/``per_case_dice``: the row itself (raw) or
    its ``largest_component`` entry (None when the file was made without ``--largest-component``)."""
    return row if score == "raw" else row.get("largest_component")


def split_source(source: str | Path) -> tuple[Path, frozenset[str] | None]:
    """``FILE`` or ``FILE::METHOD[,METHOD...]``: a results.json and the methods to take from it (None: all).

    Why: one file can hold rows that no longer belong in a comparison next to rows that still do. Hippocampus'
    first table holds LLM-SegNet and TAK trained on an earlier co-training engine beside a labelled-only run that
    no engine change touches; ``results.json::labelled_only`` counts that run without the stale ones."""
    text = str(source)
    if "::" not in text:
        return Path(text), None
    path, _, names = text.rpartition("::")
    methods = frozenset(n.strip() for n in names.split(",") if n.strip())
    if not path or not methods:
        raise RepeatsError(f"{text!r}: write FILE::METHOD[,METHOD...] (a results.json and the methods to take)")
    return Path(path), methods


def _repeat_rows(files: list[str | Path], score: str, notes: list[str] | None) -> Iterator[tuple[str, dict]]:
    """(method, score entry) of every distinct training run in the files (each ``FILE`` or ``FILE::METHODS``,
    :func:`split_source`); refuses files of different benchmarks."""
    if score not in SCORES:
        raise RepeatsError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    if not files:
        raise RepeatsError("give at least one results.json")
    reference: dict | None = None
    seen: dict[tuple, Path] = {}
    for source in files:
        path, only = split_source(source)
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RepeatsError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict) or "rows" not in data:
            raise RepeatsError(f"{path} is not a benchmark results.json (no 'rows')")
        header = {k: data.get(k) for k in SAME_BENCHMARK_FIELDS}
        if reference is None:
            reference = {"path": path, **header}
        else:
            for key in SAME_BENCHMARK_FIELDS:
                if header[key] != reference[key]:
                    raise RepeatsError(f"{path} and {reference['path']} are not repeats of one benchmark: field "
                                       f"{key!r} differs ({str(header[key])[:80]} vs {str(reference[key])[:80]})")
        if only is not None and (missing := only - {row.get("method") for row in data["rows"]}):
            raise RepeatsError(f"{path} has no row for {', '.join(sorted(missing))} (asked for by {source})")
        for row in data["rows"]:
            if only is not None and row.get("method") not in only:
                continue
            entry = score_entry(row, score)
            if entry is None or entry.get("dice_mean") is None:
                continue
            fingerprint = (row["method"], tuple(sorted((row.get("per_case_dice") or {}).items())))
            if fingerprint in seen:
                if notes is not None:
                    notes.append(f"{path}: the {row['method']} row is the same training run as in "
                                 f"{seen[fingerprint]} (identical per-case Dice); counted once")
                continue
            seen[fingerprint] = path
            yield row["method"], entry


def load_runs(files: list[str | Path], score: str = "raw",
              notes: list[str] | None = None) -> dict[str, list[float]]:
    """Method -> run Dice over the files, in file order; refuses files of different benchmarks.

    Rows without the requested score (e.g. no ``largest_component`` entry: the file was made without
    ``--largest-component``) are left out of that method's runs, not counted as zero. A row that is the same
    training run as one in an earlier file (same method, identical per-case Dice: the benchmark reuses runs that
    ignore the labelled subset, e.g. ``all_labels`` in ``$nnUNet_results``, across ``--results`` folders) counts
    once; a line saying so is appended to ``notes``.
    """
    runs: dict[str, list[float]] = {}
    for method, entry in _repeat_rows(files, score, notes):
        runs.setdefault(method, []).append(float(entry["dice_mean"]))
    return runs


def load_worst_class(files: list[str | Path], score: str = "raw") -> dict[str, list[tuple[str, float]]]:
    """Method -> (class, mean Dice) of each run's worst class, the same runs and order as :func:`load_runs`.

    Why: a mean over classes hides a run that never learned one class (ACDC labelled-only: RV Dice 0.000 in a
    run whose mean was 0.476); the worst class is what tells a failed training from a weaker one."""
    worst: dict[str, list[tuple[str, float]]] = {}
    for method, entry in _repeat_rows(files, score, None):
        per_class = entry.get("per_class") or {}
        dice = {name: c["dice"]["mean"] for name, c in per_class.items()
                if isinstance(c, dict) and (c.get("dice") or {}).get("mean") is not None}
        if not dice:
            raise RepeatsError(f"the {method} row has no per-class Dice for score {score!r}")
        name = min(dice, key=dice.get)
        worst.setdefault(method, []).append((name, float(dice[name])))
    return worst


def fisher_exact_p(failed_a: int, runs_a: int, failed_b: int, runs_b: int) -> float:
    """Two-sided Fisher exact test of two failure counts (runs as the unit): the probability, with the total
    number of failures fixed, of a split among the two groups at most as likely as the observed one."""
    if not (0 <= failed_a <= runs_a and 0 <= failed_b <= runs_b) or runs_a == 0 or runs_b == 0:
        raise RepeatsError(f"bad counts {failed_a}/{runs_a}, {failed_b}/{runs_b}")
    failed, total = failed_a + failed_b, runs_a + runs_b

    def prob(k: int) -> float:
        return comb(runs_a, k) * comb(runs_b, failed - k) / comb(total, failed)

    observed = prob(failed_a)
    probs = [prob(k) for k in range(max(0, failed - runs_b), min(failed, runs_a) + 1)]
    return min(1.0, sum(q for q in probs if q <= observed * (1 + 1e-9)))


@dataclass
class FailureComparison:
    """How often a method's runs failed (worst class below ``threshold``) against the baseline's runs."""

    method: str
    baseline: str
    threshold: float
    failed: int
    runs: int
    baseline_failed: int
    baseline_runs: int
    p_value: float
    worst_class: list[tuple[str, float]]

    def to_json(self) -> dict:
        return asdict(self)


def _failed_runs(worst_class: list[tuple[str, float]], threshold: float) -> int:
    """How many runs have a worst class below ``threshold``: the one definition of a failed run."""
    return sum(dice < threshold for _, dice in worst_class)


def compare_failures(worst: dict[str, list[tuple[str, float]]], threshold: float,
                     baseline: str = "labelled_only") -> list[FailureComparison]:
    """Every method's failed runs (a class whose mean Dice is below ``threshold``) against the baseline's."""
    if baseline not in worst:
        raise RepeatsError(f"no run of the baseline {baseline!r}; methods: {', '.join(sorted(worst))}")
    base_failed = _failed_runs(worst[baseline], threshold)
    out = []
    for method, runs in worst.items():
        if method == baseline:
            continue
        failed = _failed_runs(runs, threshold)
        out.append(FailureComparison(method, baseline, threshold, failed, len(runs), base_failed,
                                     len(worst[baseline]),
                                     fisher_exact_p(failed, len(runs), base_failed, len(worst[baseline])), runs))
    return out


def compare_all(runs: dict[str, list[float]], baseline: str = "labelled_only",
                alpha: float = 0.05) -> list[RunLevelComparison]:
    """Every method with at least one run against the baseline's runs."""
    if baseline not in runs:
        raise RepeatsError(f"no run of the baseline {baseline!r}; methods: {', '.join(sorted(runs))}")
    return [compare_runs(m, r, baseline, runs[baseline], alpha) for m, r in runs.items() if m != baseline]


def markdown(comparisons: list[RunLevelComparison], runs: dict[str, list[float]],
             baseline: str) -> str:
    """A table: runs and their Dice per method, then each method against the baseline."""
    lines = ["| method | runs | Dice per run | mean | vs baseline mean | worst minus best baseline run | "
             "p (runs, permutation) |", "|---|---|---|---|---|---|---|"]
    base = runs[baseline]
    lines.append(f"| {baseline} (baseline) | {len(base)} | {' / '.join(f'{v:.3f}' for v in base)} | "
                 f"{_mean(base):.3f} | - | - | - |")
    for c in comparisons:
        p_text = f"{c.p_value:.2g}" + (f" (floor {c.min_p:.2g})" if c.note else "")
        lines.append(f"| {c.method} | {len(c.run_dice)} | {' / '.join(f'{v:.3f}' for v in c.run_dice)} | "
                     f"{_mean(c.run_dice):.3f} | {c.diff:+.3f} | {c.margin:+.3f} | {p_text} |")
    return "\n".join(lines)


def failure_markdown(failures: list[FailureComparison], worst: dict[str, list[tuple[str, float]]],
                     baseline: str, threshold: float) -> str:
    """A table: per method, each run's worst class, and the failed runs against the baseline's."""
    def cells(runs: list[tuple[str, float]]) -> str:
        return " / ".join(f"{name} {dice:.2f}" for name, dice in runs)

    base = worst[baseline]
    base_failed = _failed_runs(base, threshold)
    lines = [f"| method | worst class per run | runs failed (a class below Dice {threshold:g}) | "
             "p (Fisher exact, runs) |", "|---|---|---|---|",
             f"| {baseline} (baseline) | {cells(base)} | {base_failed} of {len(base)} | - |"]
    for f in failures:
        lines.append(f"| {f.method} | {cells(f.worst_class)} | {f.failed} of {f.runs} | {f.p_value:.2g} |")
    return "\n".join(lines)
