"""Paired comparison of the ``llmseg_notext`` run (this folder) with the rows of the main Hippocampus table.

The ablation was trained in a later session with the same command, plans, labelled cases and schedule; its
per-case Dice (nnU-Net's validation predictions of fold 0, mean over classes) is paired by case with the
committed rows. Run: ``python benchmarks/results/hippocampus_2d_10labelled/llmseg_notext/compare_with_main_table.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from nnunet_llmseg.benchmark.stats import paired_wilcoxon

HERE = Path(__file__).resolve().parent


def main() -> None:
    main_rows = {r["method"]: r for r in json.loads((HERE.parent / "results.json").read_text())["rows"]}
    ablation = next(r for r in json.loads((HERE / "results.json").read_text())["rows"]
                    if r["method"] == "llmseg_notext")
    cases = sorted(ablation["per_case_dice"])
    print(f"llmseg_notext: Dice {ablation['dice_mean']:.3f}, HD95 {ablation['hd95_mean']:.2f}")
    for ref in ("labelled_only", "llmseg", "tak", "all_labels"):
        other = main_rows[ref]["per_case_dice"]
        if sorted(other) != cases:
            raise SystemExit(f"{ref}: not the same validation cases")
        p_value, note, _, _ = paired_wilcoxon(ablation["per_case_dice"], other)  # the benchmark's own test
        diff = ablation["dice_mean"] - main_rows[ref]["dice_mean"]
        p_text = f"{p_value:.2g}" if p_value is not None else note
        print(f"llmseg_notext - {ref}: {diff:+.4f} (p = {p_text}; {ref} {main_rows[ref]['dice_mean']:.3f})")


if __name__ == "__main__":
    main()
