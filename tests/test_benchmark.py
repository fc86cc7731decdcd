"""``nnunet-llmseg benchmark``: its statistics, nnU-Net log reading, plans copies, trainer lookup, and one tiny real
benchmark (interrupted, continued with ``--c``, then reused) through the real ``nnUNetv2_train``."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_semi_supervised import copy_dataset

from conftest import ACDC, REPO_ROOT, _bin, run_cli
from nnunet_llmseg.benchmark.methods import (
    METHOD_ALIASES,
    MethodError,
    ext_trainer_value,
    find_trainer_class,
    reads_labelled_subset,
    resolve_method,
    write_variant_module,
)
from nnunet_llmseg.benchmark.plans import PlansError, effective_configuration, make_override_plans
from nnunet_llmseg.benchmark.repeats import (
    RepeatsError,
    compare_all,
    compare_failures,
    compare_runs,
    fisher_exact_p,
    load_runs,
    load_worst_class,
    permutation_p,
)
from nnunet_llmseg.benchmark.stats import compare, gap_closed, paired_wilcoxon
from nnunet_llmseg.benchmark.training_logs import parse_logs

# ----------------------------------------------------------------------------------------------- statistics


def _cases(values: list[float]) -> dict[str, float]:
    return {f"case_{i:02d}": v for i, v in enumerate(values)}


def test_wilcoxon_direction_known_values_and_edge_cases():
    base = _cases([0.60, 0.62, 0.58, 0.70, 0.65, 0.61, 0.59, 0.66, 0.64, 0.63])
    better = {c: v + 0.05 + 0.001 * i for i, (c, v) in enumerate(base.items())}
    worse = {c: v - 0.05 - 0.001 * i for i, (c, v) in enumerate(base.items())}
    p_better, note, n, nz = paired_wilcoxon(better, base)
    p_worse, _, _, _ = paired_wilcoxon(worse, base)
    # all 10 differences of one sign: exact two-sided p = 2 / 2^10; the test is symmetric in the direction
    assert p_better == pytest.approx(2 / 2**10) and p_worse == pytest.approx(p_better)
    assert note is None and (n, nz) == (10, 10)
    # 6 positive differences: the smallest p the exact test can give with n = 6 (2 / 64)
    six = _cases([0.5] * 6)
    assert paired_wilcoxon({c: v + 0.01 * (i + 1) for i, (c, v) in enumerate(six.items())}, six)[0] == \
        pytest.approx(2 / 64)
    # a method that is better on some cases and worse on others: no evidence
    mixed = {c: v + (0.02 if i % 2 else -0.021) * (1 + i / 10) for i, (c, v) in enumerate(base.items())}
    p_mixed = paired_wilcoxon(mixed, base)[0]
    assert p_mixed > 0.3 and p_mixed > p_better
    # a weaker effect (two cases against) gives a larger p than the consistent one
    weaker = dict(better)
    weaker["case_00"], weaker["case_01"] = base["case_00"] - 0.01, base["case_01"] - 0.02
    assert p_better < paired_wilcoxon(weaker, base)[0] < 0.05
    # identical scores: p = 1 and said so; too few non-zero differences: no p-value, and why
    p_same, note_same, _, nz_same = paired_wilcoxon(dict(base), base)
    assert p_same == 1.0 and nz_same == 0 and "zero" in note_same
    five = dict(base)
    for c in list(base)[:5]:
        five[c] = base[c] + 0.1
    p5, note5, n5, nz5 = paired_wilcoxon(five, base)
    assert p5 is None and (n5, nz5) == (10, 5) and "< 6" in note5
    # only cases scored by both runs are paired
    assert paired_wilcoxon({"x": 0.5}, base)[:3] == (None, "no validation case scored by both runs", 0)


def test_gap_share_and_comparison_entry():
    assert gap_closed(0.7, 0.6, 0.8)[0] == pytest.approx(0.5)
    assert gap_closed(0.9, 0.6, 0.8)[0] == pytest.approx(1.5)  # better than all labels
    assert gap_closed(0.5, 0.6, 0.8)[0] == pytest.approx(-0.5)  # worse than labelled-only
    for all_labels in (0.6, 0.55):  # no gap (all labels not better): undefined, with the reason
        value, note = gap_closed(0.7, 0.6, all_labels)
        assert value is None and "did not beat" in note
    assert gap_closed(0.7, 0.6, None) == (None, "no all-labels run in this benchmark")
    base = _cases([0.6] * 8)
    method = {c: 0.7 for c in base}
    entry = compare(method, base, 0.7, 0.6, 0.8).to_json()
    assert entry["dice_diff"] == pytest.approx(0.1) and entry["gap_closed"] == pytest.approx(0.5)
    assert entry["p_value"] < 0.01 and entry["n_pairs"] == 8
    assert {"dice_diff", "p_value", "gap_closed"} <= set(entry)


# ----------------------------------------------------------------------------------------------- repeats


def test_run_level_permutation_test_floors_and_direction():
    p, floor = permutation_p([0.80, 0.81], [0.70, 0.71, 0.72])
    assert (p, floor) == pytest.approx((0.1, 0.1))  # the observed split is the most extreme of C(5, 2) = 10
    p, floor = permutation_p([0.5, 0.6, 0.7, 0.8], [0.1, 0.2, 0.3, 0.4])
    assert (p, floor) == pytest.approx((2 / 70, 2 / 70))  # the split and its mirror of C(8, 4) = 70
    assert permutation_p([0.7, 0.8], [0.8, 0.7])[0] == pytest.approx(1.0)
    c = compare_runs("tak", [0.80, 0.81], "labelled_only", [0.70, 0.79, 0.72])
    assert c.diff == pytest.approx(0.805 - (0.70 + 0.79 + 0.72) / 3)
    assert c.margin == pytest.approx(0.80 - 0.79) and c.note and "cannot go below p = 0.1" in c.note
    assert compare_runs("a", [0.5, 0.6, 0.7, 0.8], "b", [0.1, 0.2, 0.3, 0.4]).note is None


def _results_file(path: Path, rows: dict[str, tuple[float, float | None]], **header) -> Path:
    cases = ["c1", "c2"]
    base = {"dataset": "Dataset027_ACDC", "configuration": "2d", "fold": 0, "plans": "P", "schedule": "15x100",
            "labelled_cases": ["l1"], "validation_cases": cases}
    base.update(header)
    out = []
    for method, (dice, lc) in rows.items():
        row = {"method": method, "dice_mean": dice, "per_case_dice": {c: dice + i / 100 for i, c in enumerate(cases)}}
        if lc is not None:
            row["largest_component"] = {"dice_mean": lc}
        out.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**base, "rows": out}))
    return path


def test_repeats_pool_runs_across_files_and_refuse_what_is_not_a_repeat(tmp_path):
    f1 = _results_file(tmp_path / "r1" / "results.json", {"labelled_only": (0.75, 0.80), "tak": (0.77, 0.82)})
    f2 = _results_file(tmp_path / "r2" / "results.json", {"labelled_only": (0.61, None), "tak": (0.78, 0.83)})
    runs = load_runs([f1, f2])
    assert runs["labelled_only"] == [0.75, 0.61]
    (tak,) = compare_all(runs)
    assert tak.diff == pytest.approx(0.775 - 0.68) and tak.margin == pytest.approx(0.77 - 0.75)
    # a row without the requested score is left out, not counted as zero
    assert load_runs([f1, f2], "largest_component")["labelled_only"] == [0.80]
    notes: list[str] = []  # a run shared by two repeats (all_labels lives in $nnUNet_results) counts once
    assert len(load_runs([f1, f1], notes=notes)["tak"]) == 1 and "same training run" in notes[0]
    # FILE::METHODS takes only those rows (a file can hold runs of an earlier engine beside a still valid one)
    assert load_runs([f"{f1}::labelled_only", f2]) == {"labelled_only": [0.75, 0.61], "tak": [0.78]}
    with pytest.raises(RepeatsError, match="has no row for all_labels"):
        load_runs([f"{f1}::all_labels,tak"])
    with pytest.raises(RepeatsError, match="write FILE::METHOD"):
        load_runs([f"{f1}::"])
    other = _results_file(tmp_path / "r3" / "results.json", {"labelled_only": (0.7, None)}, plans="Q")
    with pytest.raises(RepeatsError, match="field 'plans' differs"):
        load_runs([f1, other])
    with pytest.raises(RepeatsError, match="no run of the baseline 'all_labels'"):
        compare_all(runs, "all_labels")
    script = str(REPO_ROOT / "benchmarks" / "repeats.py")
    out = subprocess.run([sys.executable, script, str(f1), str(f2), "--json", str(tmp_path / "c.json")],
                         capture_output=True, text=True, check=True).stdout
    assert "| tak | 2 | 0.770 / 0.780 | 0.775 | +0.095 | +0.020 | 0.33 (floor 0.33) |" in out
    assert json.loads((tmp_path / "c.json").read_text())["comparisons"][0]["method"] == "tak"
    out = subprocess.run([sys.executable, script, f"{f1}::labelled_only", str(f2)], capture_output=True, text=True,
                         check=True).stdout
    assert "| tak | 1 | 0.780 | 0.780 | +0.100 | +0.030 |" in out
    bad = subprocess.run([sys.executable, script, str(f1), str(other)], capture_output=True, text=True)
    assert bad.returncode != 0 and "field 'plans' differs" in bad.stderr


def test_repeats_count_runs_that_failed_a_class(tmp_path):
    # Fisher exact, checked by hand: 11 runs, 2 failures; P(0 in A) = C(6,2)/C(11,2) = 15/55, P(1) = 30/55,
    # P(2) = 10/55; two-sided p of (0 of 5 vs 2 of 6) = (15 + 10) / 55
    assert fisher_exact_p(0, 5, 2, 6) == pytest.approx(25 / 55)
    assert fisher_exact_p(1, 4, 1, 4) == pytest.approx(1.0)
    with pytest.raises(RepeatsError, match="bad counts"):
        fisher_exact_p(3, 2, 0, 2)

    def run(rv: float, myo: float) -> dict:
        return {"RV": {"dice": {"mean": rv}}, "MYO": {"dice": {"mean": myo}}}

    files = []
    for i, (lo, tak) in enumerate([((0.70, 0.80), (0.72, 0.79)), ((0.00, 0.75), (0.74, 0.60)),
                                   ((0.29, 0.77), (0.71, 0.78))]):
        f = _results_file(tmp_path / f"r{i}" / "results.json", {"labelled_only": (sum(lo) / 2, None),
                                                                  "tak": (sum(tak) / 2, None)})
        data = json.loads(f.read_text())
        data["rows"][0]["per_class"], data["rows"][1]["per_class"] = run(*lo), run(*tak)
        f.write_text(json.dumps(data))
        files.append(f)
    worst = load_worst_class(files)
    assert worst["labelled_only"] == [("RV", 0.70), ("RV", 0.00), ("RV", 0.29)]
    assert worst["tak"] == [("RV", 0.72), ("MYO", 0.60), ("RV", 0.71)]
    (tak,) = compare_failures(worst, 0.5)
    assert (tak.failed, tak.runs, tak.baseline_failed, tak.baseline_runs) == (0, 3, 2, 3)
    assert tak.p_value == pytest.approx(fisher_exact_p(0, 3, 2, 3)) and tak.p_value == pytest.approx(0.4)
    assert compare_failures(worst, 0.65)[0].failed == 1  # the threshold decides, per run's worst class
    out = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "repeats.py"), *map(str, files),
                          "--failed-below", "0.5"], capture_output=True, text=True, check=True).stdout
    assert "| labelled_only (baseline) | RV 0.70 / RV 0.00 / RV 0.29 | 2 of 3 | - |" in out
    assert "| tak | RV 0.72 / MYO 0.60 / RV 0.71 | 0 of 3 | 0.4 |" in out
    bare = _results_file(tmp_path / "bare" / "results.json", {"labelled_only": (0.7, None)})
    with pytest.raises(RepeatsError, match="no per-class Dice"):
        load_worst_class([bare])


# ----------------------------------------------------------------------------------------------- logs


def _log(path: Path, start: str, lines: list[str]) -> None:
    header = ["", "#######################################################################",
              "Please cite the following paper when using nnU-Net:", "#######################################", " "]
    path.write_text("\n".join(header + [f"{start}.{i:06d}: {line} " for i, line in enumerate(lines)]) + "\n")


def test_training_logs_give_curves_times_and_subset(tmp_path):
    fold = tmp_path / "fold_0"
    fold.mkdir()
    first = ["Labelled subset (fold 0, rule count=2, seed 0): 2 labelled, 3 training cases used as unlabelled, "
             "2 validation cases. Labelled: ['b_case', 'a_case']",
             "Epoch 0", "Current learning rate: 0.01", "train_loss 1.0", "val_loss 0.9",
             "Pseudo dice [np.float32(0.2), np.float32(0.4)]", "Epoch time: 10.0 s",
             "Epoch 1", "train_loss 0.8", "class weights a [0.100, 1.900] b [0.250, 1.750]",
             "Pseudo dice [np.float32(0.3), np.float32(nan)]", "Epoch time: 12.5 s",
             "Epoch 2", "train_loss 0.7"]  # cut off inside epoch 2
    _log(fold / "training_log_2026_1_5_09_00_00.txt", "2026-01-05 09:00:00", first)
    # --c from the checkpoint of epoch 1: epoch 1 is not repeated, epoch 2 runs again in the second file
    second = ["Epoch 2", "Pseudo dice [0.5, 0.7]", "Epoch time: 11.5 s", "Epoch 3", "Pseudo dice [0.6, 0.8]",
              "Epoch time: 11.0 s", "Training done."]
    _log(fold / "training_log_2026_1_5_10_00_00.txt", "2026-01-05 10:00:00", second)
    (fold / "training_log_notes.txt").write_text("not nnU-Net's\n")
    logs = parse_logs(fold)
    assert logs.n_files == 2 and logs.epochs == [0, 1, 2, 3]
    assert logs.mean_pseudo_dice == pytest.approx([0.3, 0.3, 0.6, 0.7])  # nan-mean, as nnU-Net's mean_fg_dice
    ema = [0.3, 0.9 * 0.3 + 0.1 * 0.3, 0.9 * 0.3 + 0.1 * 0.6]
    ema.append(0.9 * ema[-1] + 0.1 * 0.7)
    assert logs.ema_pseudo_dice == pytest.approx(ema)
    assert logs.mean_epoch_seconds() == pytest.approx((12.5 + 11.5 + 11.0) / 3)  # first epoch left out
    assert logs.labelled == ["a_case", "b_case"]
    assert logs.class_weights == [{}, {"a": [0.1, 1.9], "b": [0.25, 1.75]}, {}, {}]  # TAK's line, where logged
    assert logs.session_seconds == pytest.approx([(len(first) - 1) * 1e-6, (len(second) - 1) * 1e-6])


# ----------------------------------------------------------------------------------------------- plans, trainers


def test_cpu_plans_copy_shares_the_preprocessed_data(tiny_dataset):
    pre = tiny_dataset.preprocessed_folder
    original = json.loads((pre / "nnUNetPlans.json").read_text())
    assert make_override_plans(pre, "3d_fullres") == "nnUNetPlans"
    name = make_override_plans(pre, "3d_fullres", batch_size=3, patch_size=[16, 16, 24])
    assert name == "nnUNetPlans_bs3_ps16x16x24"
    copy = json.loads((pre / f"{name}.json").read_text())
    assert copy["plans_name"] == name
    cfg, orig_cfg = copy["configurations"]["3d_fullres"], original["configurations"]["3d_fullres"]
    assert (cfg["batch_size"], cfg["patch_size"]) == (3, [16, 16, 24])
    assert {k: v for k, v in cfg.items() if k not in ("batch_size", "patch_size")} == \
        {k: v for k, v in orig_cfg.items() if k not in ("batch_size", "patch_size")}  # same data_identifier etc.
    assert effective_configuration(pre, name, "3d_fullres")["data_identifier"] == orig_cfg["data_identifier"]
    with pytest.raises(PlansError, match=r"multiple of the network's total stride \[4, 4, 4\].*e\.g\. 12 16 24"):
        make_override_plans(pre, "3d_fullres", patch_size=[10, 16, 22])  # the tiny plans pool twice
    with pytest.raises(PlansError, match="3-D patches"):
        make_override_plans(pre, "3d_fullres", patch_size=[16, 16])
    with pytest.raises(PlansError, match="no configuration '2d_nope'"):
        make_override_plans(pre, "2d_nope", batch_size=2)
    (pre / f"{name}.json").unlink()


def test_width_divisor_narrows_only_the_features_and_names_the_copy(tmp_path):
    """``--width-divisor``: features_per_stage divided (at least 8), inherited architectures copied, rest kept."""
    arch = {"network_class_name": "PlainConvUNet", "arch_kwargs": {"features_per_stage": [32, 64, 128, 256],
                                                                   "strides": [1, 2, 2, 2]}}
    plans = {"plans_name": "nnUNetPlans", "configurations": {
        "2d": {"batch_size": 40, "patch_size": [64, 64], "data_identifier": "nnUNetPlans_2d", "architecture": arch},
        "2d_child": {"inherits_from": "2d", "batch_size": 12}}}
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans))
    name = make_override_plans(tmp_path, "2d_child", batch_size=4, width_divisor=8)
    assert name == "nnUNetPlans_bs4_w8"
    copy = json.loads((tmp_path / f"{name}.json").read_text())
    eff = effective_configuration(tmp_path, name, "2d_child")
    assert eff["features_per_stage"] == [8, 8, 16, 32]  # 32 // 8 = 4 -> the minimum 8
    assert (eff["batch_size"], eff["patch_size"], eff["data_identifier"]) == (4, [64, 64], "nnUNetPlans_2d")
    assert copy["configurations"]["2d"] == plans["configurations"]["2d"]  # the parent is untouched
    assert copy["configurations"]["2d_child"]["architecture"]["arch_kwargs"]["strides"] == [1, 2, 2, 2]
    assert make_override_plans(tmp_path, "2d", width_divisor=1) == "nnUNetPlans"  # 1: no copy
    with pytest.raises(PlansError, match="--width-divisor must be at least 1, got 0"):
        make_override_plans(tmp_path, "2d", width_divisor=0)
    del plans["configurations"]["2d"]["architecture"]
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans))
    with pytest.raises(PlansError, match=r"'2d' in .*nnUNetPlans\.json has no architecture\.arch_kwargs"):
        make_override_plans(tmp_path, "2d", width_divisor=2)


def _write_seg(path: Path, seg) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(seg.astype("uint8"))
    image.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(image, str(path))


def test_largest_component_scores_remove_islands_and_compare_like_with_like(tmp_path):
    """``--largest-component``: nnU-Net's per-class rule on real NIfTI predictions, scored and compared."""
    import numpy as np

    from nnunet_llmseg.benchmark import report
    from nnunet_llmseg.benchmark.runs import Run, RunError

    labels = {"background": 0, "blob": 1, "ring": 2}
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    cases = [f"case_{i}" for i in range(3)]
    runs, rows = [], []
    for method in ("labelled_only", "llmseg"):
        run = Run(method=method, base_trainer="T", trainer=f"T_{method}", dataset_name="Dataset999_X",
                  configuration="3d_fullres", plans="nnUNetPlans", fold=0, results_root=tmp_path / "results")
        (run.fold_dir / "validation").mkdir(parents=True)
        (run.trainer_dir / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}))
        (run.trainer_dir / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}))
        runs.append(run)
    for i, c in enumerate(cases):
        gt = np.zeros((6, 24, 24), dtype=np.uint8)
        gt[1:5, 4:10, 4:10] = 1
        gt[1:5, 14:20, 14:20] = 2
        _write_seg(gt_dir / f"{c}.nii.gz", gt)
        _write_seg(runs[0].fold_dir / "validation" / f"{c}.nii.gz", gt)  # the baseline: exact
        pred = gt.copy()
        pred[0, 20:22, 0:2 + i] = 1  # a stray island of class 1 far from its blob, different per case
        _write_seg(runs[1].fold_dir / "validation" / f"{c}.nii.gz", pred)
    for run in runs:
        (run.fold_dir / "validation" / "summary.json").write_text("{}")
        raw = report.score_run(run, cases, gt_dir, {"blob": 1, "ring": 2}, ".nii.gz", None, 1, tmp_path / "scores")
        folder = report.largest_component_predictions(run, tmp_path / "lcc" / run.method, 1)
        lcc = report.score_run(run, cases, gt_dir, {"blob": 1, "ring": 2}, ".nii.gz", None, 1, tmp_path / "scores",
                               pred_dir=folder, cache_name=f"{run.method}_largest_component")
        rows.append({"method": run.method, "dice_mean": raw["summary"]["overall"]["dice"]["mean"],
                     "per_case_dice": report.per_case_dice(raw),
                     "largest_component": report.largest_component_entry(lcc)})
    base, method = rows
    assert method["dice_mean"] < base["dice_mean"] == 1.0  # the islands cost Dice before postprocessing
    assert method["largest_component"]["dice_mean"] == base["largest_component"]["dice_mean"] == 1.0
    assert method["largest_component"]["hd95_mean"] == 0.0
    assert (tmp_path / "scores" / "llmseg_largest_component.json").is_file()
    record = json.loads((tmp_path / "lcc" / "llmseg" / report.POSTPROCESSING_RECORD).read_text())
    assert record["labels_or_regions"] == [1, 2]

    report.add_comparisons(rows, "labelled_only", None)
    assert method["vs_labelled_only"]["dice_diff"] < 0
    assert method["largest_component"]["vs_labelled_only"]["dice_diff"] == 0.0  # postprocessed vs postprocessed

    # reused while the validation is unchanged, redone when it changes
    kept = (tmp_path / "lcc" / "llmseg" / "case_0.nii.gz").stat().st_mtime_ns
    assert report.largest_component_predictions(runs[1], tmp_path / "lcc" / "llmseg", 1) == tmp_path / "lcc" / "llmseg"
    assert (tmp_path / "lcc" / "llmseg" / "case_0.nii.gz").stat().st_mtime_ns == kept
    time.sleep(0.01)
    (runs[1].fold_dir / "validation" / "summary.json").write_text("{ }")
    report.largest_component_predictions(runs[1], tmp_path / "lcc" / "llmseg", 1)
    assert (tmp_path / "lcc" / "llmseg" / "case_0.nii.gz").stat().st_mtime_ns != kept

    (runs[0].trainer_dir / "plans.json").unlink()
    with pytest.raises(RunError, match=r"plans\.json not found.*cannot be postprocessed"):
        report.largest_component_predictions(runs[0], tmp_path / "lcc" / "x", 1)


def test_methods_resolve_like_nnunet_including_user_trainers(tmp_path, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    assert resolve_method("all_labels") is nnUNetTrainer and not reads_labelled_subset(nnUNetTrainer)
    lo = resolve_method("labelled_only")
    assert lo.__name__ == METHOD_ALIASES["labelled_only"] and reads_labelled_subset(lo)
    with pytest.raises(MethodError, match=r"no trainer class 'nnUNetTrainerNope'.*labelled_only"):
        resolve_method("nnUNetTrainerNope")
    # a user's tuning variant in their own nnUNet_extTrainer folder, and our generated schedule variant of it
    user = tmp_path / "user_trainers"
    user.mkdir()
    (user / "my_tuning.py").write_text(
        "from nnunet_llmseg.trainers import nnUNetTrainerLLMSeg\n\n"
        "class MyLLMSegLongRamp(nnUNetTrainerLLMSeg):\n    rampup_fraction = 0.5\n")
    variants = tmp_path / "variants"
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_value(variants, f"{user}{os.pathsep}"
                                                              f"{os.environ.get('nnUNet_extTrainer', '')}"))
    base = resolve_method("MyLLMSegLongRamp")
    assert base.rampup_fraction == 0.5 and reads_labelled_subset(base)
    name = write_variant_module(variants, "MyLLMSegLongRamp", 3, 7)
    assert name == "MyLLMSegLongRamp_3epochs_7it"
    variant = find_trainer_class(name)  # nnU-Net's own search order finds the generated module first
    # (nnU-Net re-imports modules of external folders on every search, so compare by name, not identity)
    assert variant is not None and variant.__name__ == name
    assert "MyLLMSegLongRamp" in [c.__name__ for c in variant.__mro__] and variant.rampup_fraction == 0.5
    import inspect

    assert "save_every" in inspect.getsource(variant.__init__)


# ----------------------------------------------------------------------------------------------- ACDC preparation


def test_acdc_ssl4mis_split_becomes_fold_0(tmp_path):
    if not (ACDC / "splits_ssl4mis.json").is_file():
        pytest.skip(f"ACDC not available at {ACDC}")
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import prepare_acdc

    split = prepare_acdc.read_ssl4mis_split(ACDC)
    assert (len(split["train"]), len(split["val"])) == (140, 20)
    for n, key in prepare_acdc.LABELLED_SETS.items():  # both frames of n patients, all training volumes
        assert len(split[key]) == 2 * n and set(split[key]) <= set(split["train"])
    pre = tmp_path / "pre"
    prepare_acdc.write_splits(pre, split)
    folds = json.loads((pre / "splits_final.json").read_text())
    assert len(folds) == 1 and folds[0] == {"train": sorted(split["train"]), "val": sorted(split["val"])}
    prepare_acdc.write_splits(pre, split)  # same split again: accepted, unchanged
    folds[0]["val"] = folds[0]["val"][:-1]
    (pre / "splits_final.json").write_text(json.dumps(folds))
    with pytest.raises(prepare_acdc.PrepareError, match="another fold 0"):
        prepare_acdc.write_splits(pre, split)


def test_coarse_acdc_plans_keep_the_slice_axis_and_preprocess(tiny_dataset):
    """``prepare_acdc.plan_coarse`` through the real nnU-Net planner: 2d at 2 units in-plane, axis 0 still sliced."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import prepare_acdc

    _name, _raw, pre = copy_dataset(tiny_dataset, 917, "Coarse")
    env = tiny_dataset.env.environ()
    default = json.loads((pre / "nnUNetPlans.json").read_text())
    with pytest.raises(prepare_acdc.PrepareError, match=r"--in-plane-spacing 0\.5"):
        prepare_acdc.plan_coarse(917, pre, env, 0.5, 1)
    plans_name = prepare_acdc.plan_coarse(917, pre, env, 2.0, 1)
    assert plans_name == "nnUNetPlans_sp2" and prepare_acdc.coarse_plans_name(1.5) == "nnUNetPlans_sp1p5"
    plans = json.loads((pre / f"{plans_name}.json").read_text())
    assert plans["transpose_forward"] == default["transpose_forward"]  # 1 2 2 would have swapped axes 0 and 1
    config = plans["configurations"]["2d"]
    assert config["spacing"] == [2.0, 2.0]
    planned = default["configurations"]["3d_fullres"]["spacing"]
    assert planned[1:] == [1.0, 1.0]  # the tiny cases have unit spacing, like ACDC
    # the coarse grid: half the in-plane size of the default plans' median shape
    assert config["median_image_size_in_voxels"] == pytest.approx(
        [s / 2 for s in default["configurations"]["3d_fullres"]["median_image_size_in_voxels"][1:]], abs=1)
    arrays = sorted((pre / f"{plans_name}_2d").glob("*.b2nd")) or sorted((pre / f"{plans_name}_2d").glob("*.np*"))
    assert arrays, f"nothing preprocessed in {pre / f'{plans_name}_2d'}"


def test_gpu_image_pack_round_trips_byte_for_byte_in_size_capped_shards(tmp_path):
    """What carries ACDC to a GPU machine: min-max normalised volumes as uint16 planes, others as bytes."""
    import SimpleITK as sitk

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import gpu_image_pack

    rng = np.random.default_rng(3)
    images = tmp_path / "in"
    images.mkdir()
    for i in range(4):  # integers over one number per volume, as the SSL4MIS copy stores them
        x = rng.integers(0, 900, size=(6, 40, 36))
        sitk.WriteImage(sitk.GetImageFromArray((x / x.max()).astype(np.float32)), str(images / f"v{i}_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(rng.normal(size=(6, 40, 36)).astype(np.float32)),
                    str(images / "noise_0000.nii.gz"))  # no such form: stored as its bytes
    shards = gpu_image_pack.pack(images, tmp_path / "pack", first_mb=0.04, mb=0.08)
    assert len(shards) >= 2 and all(p.stat().st_size <= (0.04 if i == 0 else 0.08) * 1e6 for i, p in enumerate(shards))
    assert gpu_image_pack.unpack(tmp_path / "out", shards) == 5
    for f in sorted(images.iterdir()):
        assert gzip.decompress((tmp_path / "out" / f.name).read_bytes()) == gzip.decompress(f.read_bytes()), f.name
    with pytest.raises(SystemExit, match=r"over its 0\.001 MB"):
        gpu_image_pack.pack(images, tmp_path / "tiny", first_mb=0.001, mb=0.06)


def _pairing_file(path: Path, rows: dict[str, tuple[list[float], list[float] | None]]) -> Path:
    """A results.json with the fields pair_runs.py reads: per-case Dice raw and after the largest-component rule."""
    out = []
    for method, (raw, lc) in rows.items():
        row = {"method": method, "dice_mean": float(np.mean(raw)),
               "per_case_dice": {f"case{i}": d for i, d in enumerate(raw)}}
        if lc is not None:
            row["largest_component"] = {"dice_mean": float(np.mean(lc)),
                                        "per_case_dice": {f"case{i}": d for i, d in enumerate(lc)}}
        out.append(row)
    path.write_text(json.dumps({"rows": out}))
    return path


def test_pair_runs_pairs_raw_or_largest_component_scores(tmp_path, capsys):
    """Raw and largest-component scores can rank two rows oppositely; --score picks which one is paired."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import pair_runs

    base = [0.70, 0.72, 0.75, 0.68, 0.80, 0.77, 0.74, 0.71]
    raw_b = [d + 0.01 * (1 + i % 3) for i, d in enumerate(base)]  # B above A raw in every case
    lc_b = [d - 0.02 for d in base]  # B below A after the rule in every case
    first = _pairing_file(tmp_path / "a.json", {"tak": (base, base)})
    second = _pairing_file(tmp_path / "b.json", {"tak": (raw_b, lc_b), "old": (base, None)})

    def table_row(*argv: str) -> list[str]:
        pair_runs.main([str(first), str(second), *argv])
        return [c.strip() for c in capsys.readouterr().out.strip().splitlines()[-1].strip("|").split("|")]

    raw = table_row("--pairs", "tak:tak@2")
    lc = table_row("--score", "largest_component", "--pairs", "tak:tak@2")
    assert float(raw[4]) == pytest.approx(np.mean(base) - np.mean(raw_b), abs=1e-4) and float(raw[4]) < 0
    assert float(lc[4]) == pytest.approx(0.02, abs=1e-4)
    assert float(raw[5]) < 0.05 and float(lc[5]) < 0.05  # eight consistent differences: significant either way
    with pytest.raises(SystemExit, match="'old' has no largest_component"):
        pair_runs.main([str(first), str(second), "--score", "largest_component", "--pairs", "tak:old"])


def test_pair_runs_averages_repeated_runs_per_case(tmp_path, capsys):
    """``a+a@2`` is the per-case mean of two runs: one run's lucky case no longer decides the pair."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import pair_runs

    base = [0.70, 0.72, 0.75, 0.68, 0.80, 0.77, 0.74, 0.71]
    run1 = [d + 0.04 if i % 2 else d - 0.01 for i, d in enumerate(base)]
    run2 = [d + 0.04 if i % 2 == 0 else d - 0.01 for i, d in enumerate(base)]  # the mirror image of run 1
    first = _pairing_file(tmp_path / "a.json", {"llmseg": (run1, run1), "notext": (base, base)})
    second = _pairing_file(tmp_path / "b.json", {"llmseg": (run2, run2)})
    pair_runs.main([str(first), str(second), "--pairs", "llmseg:notext", "llmseg+llmseg@2:notext"])
    lines = capsys.readouterr().out.strip().splitlines()
    single, pooled = ([c.strip() for c in line.strip("|").split("|")] for line in lines[-2:])
    assert float(pooled[2]) == pytest.approx(np.mean(base) + 0.015, abs=1e-3)
    assert float(pooled[5]) < float(single[5])  # +0.015 in every case beats +0.04 / -0.01 alternating
    assert float(pooled[5]) < 0.05 and float(single[5]) > 0.05
    with pytest.raises(SystemExit, match="no row 'llmseg@3'"):
        pair_runs.main([str(first), str(second), "--pairs", "llmseg+llmseg@3:notext"])


def test_stray_components_counts_what_the_largest_component_rule_removes(tmp_path, capsys):
    """Two blobs of class 1 (the smaller one on background), one of class 2: only the small class-1 blob is stray."""
    import SimpleITK as sitk

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import stray_components

    pred = np.zeros((4, 12, 12), dtype=np.uint8)
    pred[1:3, 1:5, 1:5] = 1  # 32 voxels, the largest class-1 component
    pred[1, 9:11, 9:11] = 1  # 4 voxels, not touching it: stray
    pred[1:3, 6:8, 1:3] = 2  # one class-2 component: nothing stray
    ref = np.zeros_like(pred)
    ref[1:3, 1:5, 1:5] = 1
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(pred), str(tmp_path / "pred" / "case.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(ref), str(tmp_path / "ref" / "case.nii.gz"))
    stray_components.main([f"run={tmp_path / 'pred'}", "--labels", str(tmp_path / "ref"), "--classes", "1", "2"])
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()[2:]]
    by_class = {r[1]: r for r in rows}
    assert by_class["1"][2:4] == ["4", "1"] and float(by_class["1"][4]) == pytest.approx(4 / 36, abs=1e-3)
    assert float(by_class["1"][5]) == 1.0  # the stray blob lies on reference background
    assert by_class["2"][2:4] == ["0", "0"] and by_class["all"][2] == "4"
    (tmp_path / "ref" / "case.nii.gz").unlink()
    with pytest.raises(SystemExit, match="no reference"):
        stray_components.main([f"run={tmp_path / 'pred'}", "--labels", str(tmp_path / "ref")])


# ----------------------------------------------------------------------------------------------- real benchmark


@pytest.fixture(scope="module")
def bench(tiny_dataset):
    name, _raw, pre = copy_dataset(tiny_dataset, 915, "LLMSegBench")
    return {"name": name, "pre": pre, "env": tiny_dataset.env, "id": 915}


def _benchmark_cmd(bench, out: Path, results: Path) -> list[str]:
    return ["nnunet-llmseg", "benchmark", "-d", str(bench["id"]), "-c", "3d_fullres", "-f", "0",
            "--methods", "labelled_only", "all_labels", "--labelled", "2", "--seed", "1", "--epochs", "2",
            "--iters", "3", "-device", "cpu", "--out", str(out), "--results", str(results), "--parallel", "2",
            "-np", "1"]


@pytest.mark.slow
def test_benchmark_survives_interruption_continues_and_reuses(bench, tmp_path):
    """Interrupted after the first epoch (SIGTERM, as a time limit sends), continued with --c, then reused."""
    out, results = tmp_path / "out", tmp_path / "results_subset"
    env = bench["env"].environ()
    cmd = _benchmark_cmd(bench, out, results)
    lo_dir = results / bench["name"] / "nnUNetTrainerLabelledOnly_2epochs_3it__nnUNetPlans__3d_fullres"
    all_dir = Path(env["nnUNet_results"]) / bench["name"] / "nnUNetTrainer_2epochs_3it__nnUNetPlans__3d_fullres"
    latest = lo_dir / "fold_0" / "checkpoint_latest.pth"

    proc = subprocess.Popen([_bin(cmd[0]), *cmd[1:]], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 600
    while not (latest.is_file() and zipfile.is_zipfile(latest)):  # the first epoch's checkpoint, complete
        assert proc.poll() is None, f"benchmark ended before the first checkpoint:\n{proc.stdout.read()}"
        assert time.time() < deadline, "no checkpoint_latest.pth within 10 minutes"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    first_out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 128 + signal.SIGTERM, first_out
    assert "run the same command again to continue" in first_out
    info = json.loads((lo_dir / "fold_0_benchmark.json").read_text())
    assert info["status"] == "interrupted" and info["labelled"] == sorted(info["labelled"])
    assert len(info["labelled"]) == 2 and info["sessions"][0]["returncode"] != 0
    assert not (lo_dir / "fold_0" / "checkpoint_final.pth").exists()

    second = run_cli(cmd, env=env, timeout=900).stdout
    assert "labelled_only: nnUNetTrainerLabelledOnly_2epochs_3it [continue]" in second, second
    info = json.loads((lo_dir / "fold_0_benchmark.json").read_text())
    assert [s["mode"] for s in info["sessions"]] == ["train", "continue"] and info["status"] == "finished"
    assert info["sessions"][1]["command"].endswith("--c")
    assert parse_logs(lo_dir / "fold_0").epochs == [0, 1]
    first_epochs = [line for line in sorted((lo_dir / "fold_0").glob("training_log_*.txt"))[-1].read_text()
                    .splitlines() if ": Epoch " in line]
    assert first_epochs[0].rstrip().endswith("Epoch 1"), "the continuation must resume after epoch 0"
    assert (all_dir / "fold_0" / "checkpoint_final.pth").is_file(), "all_labels ignores the subset: shared root"

    results_json = json.loads((out / "results.json").read_text())
    assert {"dataset", "configuration", "fold", "n_labelled", "schedule", "device", "command", "rows"} <= \
        set(results_json)
    assert (results_json["dataset"], results_json["configuration"], results_json["fold"]) == \
        (bench["name"], "3d_fullres", 0)
    assert results_json["n_labelled"] == 2 and results_json["schedule"] == {"epochs": 2, "iters": 3}
    assert results_json["device"] == "cpu" and "benchmark -d 915" in results_json["command"]
    rows = {r["method"]: r for r in results_json["rows"]}
    assert list(rows) == ["labelled_only", "all_labels"]
    required = {"method", "trainer", "dice_mean", "hd95_mean", "per_class", "wall_seconds", "epoch_seconds"}
    classes = {"hippocampus_anterior", "hippocampus_posterior"}
    for r in rows.values():
        assert required <= set(r) and set(r["per_class"]) == classes
        assert 0.0 <= r["dice_mean"] <= 1.0 and r["epoch_seconds"] > 0 and r["curve"]["epoch"] == [0, 1]
        assert set(r["per_case_dice"]) == set(results_json["validation_cases"])
        assert r["hyperparameters"]["num_epochs"] == "2" and r["hyperparameters"]["save_every"] == "1"
    assert "vs_labelled_only" not in rows["labelled_only"]
    vs = rows["all_labels"]["vs_labelled_only"]
    assert {"dice_diff", "p_value", "gap_closed"} <= set(vs)
    assert vs["dice_diff"] == pytest.approx(rows["all_labels"]["dice_mean"] - rows["labelled_only"]["dice_mean"])
    assert vs["p_value"] is None and vs["n_pairs"] == len(results_json["validation_cases"]) < 6
    # the interrupted session's time is part of the run's cost
    lo_info = json.loads((lo_dir / "fold_0_benchmark.json").read_text())
    assert rows["labelled_only"]["wall_seconds"] == pytest.approx(sum(s["seconds"] for s in lo_info["sessions"]))
    assert rows["labelled_only"]["wall_seconds"] > lo_info["sessions"][1]["seconds"] > 0
    md = (out / "results.md").read_text()
    assert results_json["command"] in md and "| method | Dice | Jaccard | HD95 | ASD |" in md
    for png in ("metrics.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # third time: everything is reused, nothing trains, the wall times stay those of the training; the
    # largest-component scores are added beside the raw ones (the raw ones unchanged)
    third = run_cli([*cmd, "--largest-component"], env=env, timeout=300).stdout
    assert "[done]" in third and " train: " not in third and " continue: " not in third
    again = json.loads((out / "results.json").read_text())
    assert [r["wall_seconds"] for r in again["rows"]] == [r["wall_seconds"] for r in results_json["rows"]]
    assert [r["dice_mean"] for r in again["rows"]] == [r["dice_mean"] for r in results_json["rows"]]
    for r in again["rows"]:
        assert set(r["largest_component"]["per_case_dice"]) == set(results_json["validation_cases"])
        assert sorted(f.name[:-len(".nii.gz")] for f in (out / "largest_component" / r["method"]).glob("*.nii.gz")) \
            == sorted(results_json["validation_cases"])
    assert "vs_labelled_only" in again["rows"][1]["largest_component"]
    assert "After keeping each class's largest connected component" in (out / "results.md").read_text()
    assert len(json.loads((lo_dir / "fold_0_benchmark.json").read_text())["sessions"]) == 2


def test_benchmark_refuses_runs_of_another_subset_and_bad_options(bench, tmp_path, capsys):
    """Clear errors before anything trains (exit code 2, the message names what to change); run in-process."""
    from nnunet_llmseg.cli import main

    out, results = tmp_path / "out", tmp_path / "results"
    trainer_dir = results / bench["name"] / "nnUNetTrainerLabelledOnly_2epochs_3it__nnUNetPlans__3d_fullres"
    (trainer_dir / "fold_0").mkdir(parents=True)
    (trainer_dir / "fold_0_benchmark.json").write_text(json.dumps({"labelled": ["tiny_000"], "sessions": []}))
    with zipfile.ZipFile(trainer_dir / "fold_0" / "checkpoint_latest.pth", "w") as z:
        z.writestr("data.pkl", b"")  # a complete archive: the run counts as continuable
    args = _benchmark_cmd(bench, out, results)[1:]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "was trained with 1 labelled cases" in err and "--results DIR" in err
    assert sorted(p.name for p in (trainer_dir / "fold_0").iterdir()) == ["checkpoint_latest.pth"]
    assert not out.joinpath("results.json").exists()
    for extra, message in ((["--methods", "nnUNetTrainerNope"], "no trainer class 'nnUNetTrainerNope'"),
                           (["--patch-size", "10", "20", "20"], "multiple of the network's total stride")):
        assert main([*args, *extra]) == 2
        assert message in capsys.readouterr().err


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_error_location_splits_errors_by_kind_and_distance(tmp_path, capsys):
    """A synthetic case with one error of each kind at known distances (spacing 2 mm in-plane)."""
    import SimpleITK as sitk

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import error_location

    ref = np.zeros((3, 20, 20), dtype=np.uint8)
    ref[1, 5:9, 5:9] = 1  # 16 voxels of class 1 on the middle slice only
    pred = ref.copy()
    pred[1, 5, 5] = 0  # missed
    pred[1, 5, 6] = 2  # confused
    pred[1, 5, 10] = 1  # 2 voxels right of the organ: 4 mm, near
    pred[1, 15, 15] = 1  # about 9.9 voxels away: ~20 mm, far
    pred[0, 0:2, 0] = 1  # 2 voxels on a slice without reference foreground
    counts = error_location.error_voxels(pred, ref, (2.0, 2.0), margin_mm=10.0)
    assert counts == {"correct": 14, "missed": 1, "confused": 1, "false_near": 1, "false_far": 1,
                      "false_off_slice": 2}
    assert error_location.error_voxels(pred, ref, (2.0, 2.0), margin_mm=30.0)["false_far"] == 0

    for d, arr in (("pred", pred), ("ref", ref)):
        (tmp_path / d).mkdir()
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((2.0, 2.0, 10.0))
        sitk.WriteImage(img, str(tmp_path / d / "case.nii.gz"))
    error_location.main([f"run={tmp_path / 'pred'}", "--labels", str(tmp_path / "ref")])
    row = [c.strip() for c in capsys.readouterr().out.splitlines()[2].strip("|").split("|")]
    assert row == ["run", "14", "1", "1", "1", "1", "2", "4"]
    (tmp_path / "ref" / "case.nii.gz").unlink()
    sitk.WriteImage(sitk.GetImageFromArray(ref[:2]), str(tmp_path / "ref" / "case.nii.gz"))
    with pytest.raises(SystemExit, match=r"case\.nii\.gz: prediction shape"):
        error_location.main([f"run={tmp_path / 'pred'}", "--labels", str(tmp_path / "ref")])


def test_crop_cleaning_reach_separates_volume_slice_crop_and_region_rules(tmp_path, capsys):
    """A stray beside the organ's slice and one on a slice of its own: the volume rule removes both, the slice
    rule (and a crop covering the whole slice) only the first, crops smaller than a blob's gap neither; the
    organ-region rule both, but not a stray that touches another class's part of the organ."""
    import SimpleITK as sitk

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import crop_cleaning_reach

    ref = np.zeros((3, 40, 40), dtype=np.uint8)
    ref[1, 4:12, 4:12] = 1  # the organ, 64 voxels
    pred = ref.copy()
    pred[1, 30:32, 30:32] = 1  # stray on the organ's slice
    pred[2, 30:32, 30:32] = 1  # stray on a slice with nothing else of class 1
    rng = np.random.default_rng(0)
    whole = crop_cleaning_reach.reach(pred, ref, (2.0, 2.0), [1], crop_mm=200.0, crops=4, rng=rng)
    assert whole["false"] == 8 and whole["false_volume_rule"] == 8 and whole["false_slice_rule"] == 4
    assert whole["false_crop_rule"] == pytest.approx(4.0)  # every 100-px crop covers the whole slice
    assert whole["true_volume_rule"] == whole["true_slice_rule"] == whole["true_crop_rule"] == 0
    tiny = crop_cleaning_reach.reach(pred, ref, (2.0, 2.0), [1], crop_mm=8.0, crops=64, rng=rng)
    assert tiny["false_crop_rule"] == 0 and tiny["false_slice_rule"] == 4
    # the organ-region rule (10 mm = 5 px in plane): both strays lie outside, the organ inside
    assert whole["false_region_rule"] == 8 and whole["true_region_rule"] == 0
    # a class-1 stray that touches the organ's class-2 part: the per-class volume rule removes it, the region rule
    # (one component of all foreground classes) keeps it
    ref2 = np.zeros((1, 40, 40), dtype=np.uint8)
    ref2[0, 4:12, 4:12], ref2[0, 12:16, 4:12] = 1, 2
    pred2 = ref2.copy()
    pred2[0, 16:18, 4:12] = 1
    touching = crop_cleaning_reach.reach(pred2, ref2, (2.0, 2.0), [1, 2], crop_mm=200.0, crops=4, rng=rng)
    assert touching["false"] == 16 and touching["false_volume_rule"] == 16 and touching["false_region_rule"] == 0

    for d, arr in (("pred", pred), ("ref", ref)):
        (tmp_path / d).mkdir()
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((2.0, 2.0, 10.0))
        sitk.WriteImage(img, str(tmp_path / d / "case.nii.gz"))
    crop_cleaning_reach.main([f"run={tmp_path / 'pred'}", "--labels", str(tmp_path / "ref"), "--classes", "1",
                              "--crop-mm", "200"])
    row = [c.strip() for c in capsys.readouterr().out.splitlines()[2].strip("|").split("|")]
    assert row[:6] == ["run", "8", "8 (100 %)", "4 (50 %)", "4 (50 %)", "8 (100 %)"]


def test_class_frequency_by_patch_matches_the_labels_and_gives_dhc_weights(tiny_dataset, tmp_path, capsys):
    """A patch as large as the volume sees every voxel, so the sampled class frequencies equal the labels' own;
    the weights are DHC's distribution weights (mean 1, the most frequent class lowest)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import class_frequency_by_patch
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    pre = tiny_dataset.preprocessed_folder
    folder = pre / "nnUNetPlans_3d_fullres"
    cases = tiny_dataset.labelled_cases
    data = infer_dataset_class(str(folder))(str(folder), cases)
    segs = [np.asarray(data.load_case(c)[1])[0] for c in cases]
    assert len({s.shape for s in segs}) == 1, [s.shape for s in segs]  # one shape: every case weighs the same
    counts = sum(np.bincount(s.clip(0).ravel().astype(int), minlength=3)[:3] for s in segs)
    expected = counts / counts.sum()
    shape = list(segs[0].shape)
    result = class_frequency_by_patch.measure(pre, "nnUNetPlans", "3d_fullres", cases, 2, shape, 150, seed=0)
    assert result["frequency"] == pytest.approx(expected.tolist(), abs=0.01)
    weights = result["dist_weights"]
    assert np.mean(weights) == pytest.approx(1.0, abs=0.01)
    assert int(np.argmin(weights)) == int(np.argmax(expected))
    # a patch larger than the volume: the loader pads with -1, which training turns into background (nnU-Net's
    # RemoveLabelTansform(-1, 0)), so the padding adds to the background share
    big = [s + 6 for s in shape]
    padded = class_frequency_by_patch.measure(pre, "nnUNetPlans", "3d_fullres", cases, 2, big, 150, seed=0,
                                              oversample_foreground=0.0)
    with_padding = counts / len(cases) + np.array([np.prod(big) - np.prod(shape), 0, 0])
    assert padded["frequency"] == pytest.approx((with_padding / with_padding.sum()).tolist(), abs=0.01)
    assert padded["frequency"][0] > expected[0] + 0.05
    # the command line prints one table row per setting; without --cases or a labelled subset it says what to do
    class_frequency_by_patch.main(["--preprocessed", str(pre), "--configuration", "3d_fullres", "--batches", "5",
                                   "--setting", "2x" + "x".join(map(str, shape)), "--cases", *cases])
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 |")]) == 1
    with pytest.raises(SystemExit, match="name the labelled cases"):
        class_frequency_by_patch.main(["--preprocessed", str(tmp_path), "--setting", "2x4x4x4"])


def test_class_weights_table_gives_per_network_medians_over_the_epochs(tmp_path, capsys):
    """The medians of TAK's logged class weights per network and class, over the chosen epochs only."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import class_weights_table

    run = tmp_path / "run"
    run.mkdir()
    lines = []
    for e, (bg_a, bg_b) in enumerate([(0.9, 0.9), (0.1, 0.2), (0.3, 0.4), (0.2, 0.6), (0.9, 0.9)]):
        lines += [f"Epoch {e}", f"class weights a [{bg_a:.3f}, {2 - bg_a:.3f}] b [{bg_b:.3f}, {2 - bg_b:.3f}]",
                  "Pseudo dice [0.5]", "Epoch time: 1.0 s"]
    _log(run / "training_log_2026_1_5_09_00_00.txt", "2026-01-05 09:00:00", lines)
    class_weights_table.main([str(run), "--first", "1", "--last", "3"])
    out = capsys.readouterr().out
    assert "| run | a | 0.200 / 1.800 | 3 |" in out and "| run | b | 0.400 / 1.600 | 3 |" in out, out
