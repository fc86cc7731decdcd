"""Paired statistics of a method against the labelled-only baseline on the same validation cases.

Per validation case the score is the Dice averaged over the dataset's classes (``nnunet-llmseg evaluate``'s
per-case Dice; it is always defined: an empty reference and an empty prediction count as 1). Then:

* ``dice_diff``: the method's mean Dice minus the baseline's (the table's Dice columns, so the sign reads
  directly: positive = the method is better).
* ``p_value``: two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) of the paired per-case
  differences over the cases both runs predicted. Zero differences (identical case scores, within
  :data:`ZERO_TOLERANCE`) are dropped first, Wilcoxon's own convention (scipy ``zero_method="wilcox"``);
  scipy picks the exact distribution for small samples without ties and the normal approximation otherwise.
  Defined edge cases:

  - every difference is zero: ``p_value = 1.0`` (the runs cannot be told apart on these cases);
  - fewer than :data:`MIN_NONZERO_PAIRS` (6) non-zero differences: ``p_value = None``. With n <= 5 the
    smallest two-sided p the exact test can produce is 2/2^n >= 0.0625, so it could never show a difference at
    the 5 % level; the table says "n/a (n<6)" rather than print a p-value that looks like evidence of nothing.

* ``gap_closed = (dice_m - dice_lo) / (dice_all - dice_lo)``: the share of the labelled-only -> all-labels gap
  that the method closes (0 = no better than labelled-only, 1 = as good as all labels; it can be negative or
  above 1). ``None`` when the all-labels run is not part of the benchmark, or when the gap is <= 0 (all labels
  did not beat labelled-only at this schedule: there is no gap to close and the ratio would be meaningless).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

MIN_NONZERO_PAIRS = 6
ZERO_TOLERANCE = 1e-12


@dataclass
class Comparison:
    """One method against the baseline (the ``vs_labelled_only`` entry of ``results.json``)."""

    dice_diff: float | None
    p_value: float | None
    gap_closed: float | None
    n_pairs: int
    n_nonzero: int
    p_value_note: str | None = None
    gap_note: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def paired_wilcoxon(method: Mapping[str, float], baseline: Mapping[str, float]) -> tuple[float | None, str | None,
                                                                                          int, int]:
    """(p-value, note, paired cases, non-zero differences) of the two-sided signed-rank test; see the module doc."""
    from scipy.stats import wilcoxon

    cases = sorted(set(method) & set(baseline))
    diffs = [float(method[c]) - float(baseline[c]) for c in cases]
    nonzero = [d for d in diffs if abs(d) > ZERO_TOLERANCE]
    if not cases:
        return None, "no validation case scored by both runs", 0, 0
    if not nonzero:
        return 1.0, f"all {len(cases)} paired differences are zero", len(cases), 0
    if len(nonzero) < MIN_NONZERO_PAIRS:
        return (None, f"only {len(nonzero)} non-zero paired difference(s) (< {MIN_NONZERO_PAIRS}): the two-sided "
                f"signed-rank test cannot reach p < 0.05", len(cases), len(nonzero))
    result = wilcoxon(nonzero, alternative="two-sided")
    return float(result.pvalue), None, len(cases), len(nonzero)


def gap_closed(dice_method: float | None, dice_baseline: float | None,
               dice_all_labels: float | None) -> tuple[float | None, str | None]:
    """Share of the labelled-only -> all-labels Dice gap closed by the method (None + a note when undefined)."""
    if dice_all_labels is None:
        return None, "no all-labels run in this benchmark"
    if dice_method is None or dice_baseline is None:
        return None, "a Dice mean is missing"
    gap = dice_all_labels - dice_baseline
    if gap <= 0:
        return None, (f"no gap: all labels ({dice_all_labels:.4f}) did not beat labelled-only "
                      f"({dice_baseline:.4f})")
    return (dice_method - dice_baseline) / gap, None


def compare(method_cases: Mapping[str, float], baseline_cases: Mapping[str, float], dice_method: float | None,
            dice_baseline: float | None, dice_all_labels: float | None) -> Comparison:
    """The full ``vs_labelled_only`` entry of one method."""
    p, p_note, n_pairs, n_nonzero = paired_wilcoxon(method_cases, baseline_cases)
    gap, gap_note = gap_closed(dice_method, dice_baseline, dice_all_labels)
    diff = None if dice_method is None or dice_baseline is None else dice_method - dice_baseline
    return Comparison(dice_diff=diff, p_value=p, gap_closed=gap, n_pairs=n_pairs, n_nonzero=n_nonzero,
                      p_value_note=p_note, gap_note=gap_note)
