"""``nnunet-llmseg evaluate``: Dice, Jaccard, HD95 and ASD against values worked out by hand.

Every folder-level test writes small synthetic masks as NIfTI (so spacing goes through SimpleITK's x, y, z ->
array z, y, x reversal) and checks the numbers a reader can derive on paper:

* an n^3 cube shifted by k voxels along one axis overlaps in n^2 (n - k) voxels, so Dice = (n - k) / n and
  Jaccard = (n - k) / (n + k); its farthest surface points are k voxels apart and more than 5 % of the surface
  (the whole leading face) is at that distance, so HD95 = k * spacing along the shift axis;
* for k = 1 (isotropic), the prediction's top face (n^2 voxels) lies 1 voxel from the reference surface, the
  interior (n - 2)^2 voxels of its bottom face too, every other surface voxel 0: ASD = (n^2 + (n - 2)^2) /
  (n^3 - (n - 2)^3);
* one-voxel-thick plates k voxels apart: every surface distance is exactly k * spacing (HD95 = ASD).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import _bin, run_cli
from nnunet_llmseg.demo_data import write_nifti
from nnunet_llmseg.evaluation.metrics import case_metrics
from nnunet_llmseg.evaluation.report import (
    EvaluationError,
    evaluate_folders,
    format_table,
    select_labels,
    write_reports,
)

N = 8  # cube edge in voxels
SHAPE = (20, 20, 20)
ANISO_XYZ = (0.8, 1.0, 2.5)  # SimpleITK order; the array (z, y, x) spacing is (2.5, 1.0, 0.8)
ANISO_ZYX = (2.5, 1.0, 0.8)


def cube(offset: tuple[int, int, int] = (0, 0, 0), value: int = 1) -> np.ndarray:
    a = np.zeros(SHAPE, dtype=np.uint8)
    z, y, x = (5 + o for o in offset)
    a[z:z + N, y:y + N, x:x + N] = value
    return a


def shifted(axis: int, k: int) -> np.ndarray:
    offset = [0, 0, 0]
    offset[axis] = k
    return cube(tuple(offset))


def write_pair(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]], spacing_xyz=(1.0, 1.0, 1.0),
               pred_spacing_xyz=None) -> tuple[Path, Path]:
    ref_dir, pred_dir = root / "ref", root / "pred"
    ref_dir.mkdir(parents=True, exist_ok=True)
    pred_dir.mkdir(parents=True, exist_ok=True)
    for name, (ref, pred) in cases.items():
        write_nifti(ref, ref_dir / f"{name}.nii.gz", spacing_xyz)
        write_nifti(pred, pred_dir / f"{name}.nii.gz", pred_spacing_xyz or spacing_xyz)
    return ref_dir, pred_dir


def strict_json(path: Path) -> dict:
    """Parse JSON refusing NaN/Infinity, which are not JSON and would hide undefined values."""
    def refuse(token: str):
        raise AssertionError(f"{path} contains {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


# ----------------------------------------------------------------------------------------- hand values
@pytest.mark.parametrize("k", [1, 2, 3])
def test_shifted_cube_isotropic_matches_hand_values(tmp_path, k):
    ref_dir, pred_dir = write_pair(tmp_path, {"c": (cube(), shifted(0, k))})
    m = evaluate_folders(ref_dir, pred_dir, labels={"cube": 1})["cases"][0]["metrics"]["cube"]
    assert m["dice"] == pytest.approx((N - k) / N, abs=1e-12)
    assert m["jaccard"] == pytest.approx((N - k) / (N + k), abs=1e-12)
    assert m["hd95"] == pytest.approx(float(k), abs=1e-9)
    if k == 1:
        assert m["asd"] == pytest.approx((N**2 + (N - 2) ** 2) / (N**3 - (N - 2) ** 3), abs=1e-12)
    assert m["ref_voxels"] == m["pred_voxels"] == N**3


@pytest.mark.parametrize(("axis", "k"), [(0, 1), (0, 2), (2, 2), (1, 3)])
def test_anisotropic_spacing_follows_the_shift_axis(tmp_path, axis, k):
    """Array axis 0 is z: its spacing is the third value of the NIfTI spacing (2.5 mm)."""
    ref_dir, pred_dir = write_pair(tmp_path, {"c": (cube(), shifted(axis, k))}, spacing_xyz=ANISO_XYZ)
    result = evaluate_folders(ref_dir, pred_dir, labels={"cube": 1})
    m = result["cases"][0]["metrics"]["cube"]
    assert result["cases"][0]["spacing_zyx"] == pytest.approx(ANISO_ZYX)
    assert m["hd95"] == pytest.approx(k * ANISO_ZYX[axis], rel=1e-6)
    assert m["dice"] == pytest.approx((N - k) / N, abs=1e-12)  # overlap does not depend on spacing


def test_shift_along_z_and_x_differ_by_their_spacings(tmp_path):
    ref_dir, pred_dir = write_pair(tmp_path, {"z": (cube(), shifted(0, 2)), "x": (cube(), shifted(2, 2))},
                                   spacing_xyz=ANISO_XYZ)
    result = evaluate_folders(ref_dir, pred_dir, {"cube": 1})
    by_case = {c["case"]: c["metrics"]["cube"] for c in result["cases"]}
    assert by_case["z"]["hd95"] == pytest.approx(5.0, rel=1e-6)  # 2 voxels x 2.5 mm
    assert by_case["x"]["hd95"] == pytest.approx(1.6, rel=1e-6)  # 2 voxels x 0.8 mm
    assert by_case["z"]["asd"] > by_case["x"]["asd"]


def test_plates_give_exact_distances_and_asd_is_directed():
    """Plates k apart: every distance is k*s. Two predicted voxels vs one reference voxel: asd = d/2."""
    ref, pred = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
    ref[4, 3:7, 3:7] = True
    pred[7, 3:7, 3:7] = True
    m = case_metrics(ref, pred, ANISO_ZYX)
    assert (m["dice"], m["jaccard"]) == (0.0, 0.0)
    assert m["hd95"] == pytest.approx(3 * 2.5) and m["asd"] == pytest.approx(3 * 2.5)

    ref, pred = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
    ref[5, 5, 5] = True
    pred[5, 5, 5] = pred[5, 5, 9] = True  # 4 voxels x 0.8 mm away along x
    m = case_metrics(ref, pred, ANISO_ZYX)
    assert m["asd"] == pytest.approx(3.2 / 2)  # medpy asd(pred, ref); the symmetric assd would be 3.2 / 3
    assert m["dice"] == pytest.approx(2 / 3) and m["jaccard"] == pytest.approx(1 / 2)


def test_bounding_box_crop_gives_medpy_full_volume_values():
    from medpy.metric.binary import asd, hd95

    rng = np.random.default_rng(3)
    zz, yy, xx = np.meshgrid(*[np.arange(24)] * 3, indexing="ij")
    for _ in range(3):
        c1, c2 = rng.uniform(7, 17, 3), rng.uniform(7, 17, 3)
        ref = ((zz - c1[0]) / 5) ** 2 + ((yy - c1[1]) / 4) ** 2 + ((xx - c1[2]) / 6) ** 2 <= 1
        pred = ((zz - c2[0]) / 4) ** 2 + ((yy - c2[1]) / 5) ** 2 + ((xx - c2[2]) / 5) ** 2 <= 1
        pred[0, 0, :3] = True  # a speck on the image border
        m = case_metrics(ref, pred, ANISO_ZYX)
        assert m["hd95"] == pytest.approx(hd95(pred, ref, voxelspacing=ANISO_ZYX), rel=1e-12)
        assert m["asd"] == pytest.approx(asd(pred, ref, voxelspacing=ANISO_ZYX), rel=1e-12)


# ----------------------------------------------------------------------------------------- empty structures
def test_empty_structure_conventions():
    empty = np.zeros(SHAPE, np.uint8)
    both = case_metrics(empty, empty, (1, 1, 1))
    assert (both["dice"], both["jaccard"], both["hd95"], both["asd"]) == (1.0, 1.0, 0.0, 0.0)
    for ref, pred in ((cube(), empty), (empty, cube())):
        m = case_metrics(ref, pred, (1, 1, 1))
        assert (m["dice"], m["jaccard"]) == (0.0, 0.0)
        assert math.isnan(m["hd95"]) and math.isnan(m["asd"])


def test_empty_cases_are_excluded_from_distance_means_without_nan(tmp_path):
    empty = np.zeros(SHAPE, np.uint8)
    cases = {
        "a_shift1": (cube(), shifted(0, 1)),  # hd95 1
        "b_shift3": (cube(), shifted(0, 3)),  # hd95 3
        "c_pred_empty": (cube(), empty),  # missed structure
        "d_ref_empty": (empty, cube()),  # hallucinated structure
        "e_both_empty": (empty, empty),  # correct: hd95 0
    }
    ref_dir, pred_dir = write_pair(tmp_path, cases)
    result = evaluate_folders(ref_dir, pred_dir, labels={"cube": 1})
    s = result["summary"]["per_class"]["cube"]
    assert s["n_excluded_distance"] == 2 and s["n_pred_empty"] == 2 and s["n_ref_empty"] == 2
    assert s["n_both_empty"] == 1 and s["n_cases"] == 5
    assert s["hd95"]["n"] == 3 and s["hd95"]["mean"] == pytest.approx((1 + 3 + 0) / 3)
    assert s["hd95"]["std"] == pytest.approx(np.std([1, 3, 0]))
    dice = [7 / 8, 5 / 8, 0, 0, 1]  # empty-vs-non-empty is a Dice of 0 and counts in the mean
    assert s["dice"]["n"] == 5 and s["dice"]["mean"] == pytest.approx(np.mean(dice))
    by_case = {c["case"]: c["metrics"]["cube"] for c in result["cases"]}
    assert by_case["c_pred_empty"]["hd95"] is None and by_case["d_ref_empty"]["asd"] is None
    assert by_case["e_both_empty"] == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0,
                                      "ref_voxels": 0, "pred_voxels": 0}
    json_path, csv_path = write_reports(result, tmp_path / "out" / "report")
    data = strict_json(json_path)
    for m in ("dice", "jaccard", "hd95", "asd"):
        assert data["summary"]["overall"][m]["mean"] is not None
    assert "excluded" in data["conventions"]["one_empty"]
    rows = list(csv.DictReader(csv_path.open()))
    assert next(r for r in rows if r["case"] == "c_pred_empty")["hd95"] == ""
    assert "nan" not in csv_path.read_text().lower()
    assert "cube: 2 case(s)" in format_table(result)


# ----------------------------------------------------------------------------------------- labels
def test_labels_inferred_from_references_and_regions(tmp_path):
    both = cube()
    both[15:18, 5:9, 5:9] = 2
    no_two = cube()  # label 2 absent from reference and prediction of case b: a correct, perfect case
    ref_dir, pred_dir = write_pair(tmp_path, {"a": (both, both), "b": (no_two, np.roll(no_two, 1, axis=0))})
    result = evaluate_folders(ref_dir, pred_dir)
    assert result["labels"] == {"label_1": 1, "label_2": 2}
    b = next(c for c in result["cases"] if c["case"] == "b")["metrics"]
    assert b["label_2"]["dice"] == 1.0 and b["label_2"]["hd95"] == 0.0
    assert b["label_1"]["dice"] == pytest.approx(7 / 8)
    overall = result["summary"]["overall"]["dice"]
    assert overall["mean"] == pytest.approx(np.mean([np.mean([1, 7 / 8]), 1.0]))
    assert overall["std"] == pytest.approx(np.std([1.0, np.mean([7 / 8, 1.0])]))

    whole = evaluate_folders(ref_dir, pred_dir, labels={"whole": (1, 2)})  # region = union of 1 and 2
    a = next(c for c in whole["cases"] if c["case"] == "a")["metrics"]["whole"]
    assert a["ref_voxels"] == N**3 + 3 * 4 * 4 and a["dice"] == 1.0
    assert whole["labels"] == {"whole": [1, 2]}


def test_select_labels_and_ignore_label(tmp_path):
    assert select_labels({"liver": 1, "tumour": 2}, ["2"]) == {"tumour": 2}
    assert select_labels(None, ["1", "3"]) == {"label_1": 1, "label_3": 3}
    with pytest.raises(EvaluationError, match="'7' is neither a label name nor a label value"):
        select_labels({"liver": 1}, ["7"])
    ref = cube()
    ref[:, :, 15:] = 3  # unannotated voxels (nnU-Net ignore label)
    pred = cube()
    pred[:, :, 15:] = 1  # predictions there count for nothing
    ref_dir, pred_dir = write_pair(tmp_path, {"c": (ref, pred)})
    m = evaluate_folders(ref_dir, pred_dir, {"cube": 1}, ignore_label=3)["cases"][0]["metrics"]["cube"]
    assert m["dice"] == 1.0 and m["hd95"] == 0.0


# ----------------------------------------------------------------------------------------- errors
def test_missing_prediction_is_named_or_skipped(tmp_path):
    ref_dir, pred_dir = write_pair(tmp_path, {"case_a": (cube(), cube()), "case_b": (cube(), cube())})
    (pred_dir / "case_b.nii.gz").unlink()
    with pytest.raises(EvaluationError, match=r"1 reference case\(s\): case_b"):
        evaluate_folders(ref_dir, pred_dir, {"cube": 1})
    result = evaluate_folders(ref_dir, pred_dir, {"cube": 1}, allow_missing=True)
    assert result["missing_predictions"] == ["case_b"] and result["n_cases"] == 1
    assert "skipped 1 reference case(s) without prediction: case_b" in format_table(result)


def test_geometry_mismatch_names_the_file(tmp_path):
    ref_dir, pred_dir = write_pair(tmp_path / "spacing", {"c1": (cube(), cube())}, spacing_xyz=(1, 1, 1),
                                   pred_spacing_xyz=(1, 1, 1.01))
    with pytest.raises(EvaluationError, match=r"geometry mismatch: prediction .*c1\.nii\.gz has spacing"):
        evaluate_folders(ref_dir, pred_dir, {"cube": 1})
    ref_dir, pred_dir = write_pair(tmp_path / "shape", {"c2": (cube(), cube()[:, :, :18])})
    with pytest.raises(EvaluationError, match=r"prediction .*pred/c2\.nii\.gz has shape \(20, 20, 18\)"):
        evaluate_folders(ref_dir, pred_dir, {"cube": 1})
    ref_dir, pred_dir = write_pair(tmp_path / "tiny", {"c3": (cube(), cube())}, spacing_xyz=(1, 1, 1),
                                   pred_spacing_xyz=(1, 1, 1.0005))  # within the 1e-3 tolerance
    assert evaluate_folders(ref_dir, pred_dir, {"cube": 1})["n_cases"] == 1


# ----------------------------------------------------------------------------------------- CLI
def _two_label_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for i, k in enumerate((0, 1, 2)):
        ref = cube()
        ref[15:18, 5:9, 5:9] = 2
        pred = np.roll(ref, k, axis=0)
        if i == 2:
            pred[pred == 2] = 0  # the prediction misses label 2 in the last case
        out[f"case_{i}"] = (ref, pred)
    return out


def test_cli_end_to_end_with_dataset_labels(tmp_path, nnunet_env):
    name = "Dataset961_EvalTest"
    raw = nnunet_env.raw / name
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "body": 1, "head": 2},
        "numTraining": 3, "file_ending": ".nii.gz"}))
    ref_dir, pred_dir = write_pair(tmp_path, _two_label_cases(), spacing_xyz=ANISO_XYZ)
    (pred_dir / "dataset.json").write_text("{}")  # nnU-Net writes such files next to predictions: not cases
    proc = run_cli(["nnunet-llmseg", "evaluate", "-ref", str(ref_dir), "-pred", str(pred_dir), "-d", "961",
                    "-np", "2"], env=nnunet_env.environ())
    table = proc.stdout
    assert "Dice [%]" in table and "HD95 [mm]" in table
    body_row = next(line for line in table.splitlines() if line.startswith("body"))
    assert "2.50 ± 2.04" in body_row  # hd95 0, 2.5, 5.0 mm (shifts along z, 2.5 mm)
    assert "head: 1 case(s)" in table
    assert any(line.startswith("mean ") for line in table.splitlines())

    written = [Path(line[len("wrote "):]) for line in table.splitlines() if line.startswith("wrote ")]
    assert [w.suffix for w in written] == [".json", ".csv"]
    assert all(w.parent == nnunet_env.results / "llmseg_evaluation" for w in written), "never into -pred"
    data = strict_json(written[0])
    assert data["labels"] == {"body": 1, "head": 2} and data["n_cases"] == 3
    assert data["summary"]["per_class"]["body"]["hd95"]["mean"] == pytest.approx(2.5, rel=1e-6)
    assert data["summary"]["per_class"]["head"]["n_excluded_distance"] == 1
    assert data["spacing"]["distinct_spacings_zyx"] == [pytest.approx(list(ANISO_ZYX))]
    assert "asd(pred, ref" in data["conventions"]["asd"]
    rows = list(csv.DictReader(written[1].open()))
    assert sum(r["row_type"] == "case" for r in rows) == 6
    overall = next(r for r in rows if r["row_type"] == "mean" and r["class"] == "overall")
    assert float(overall["dice"]) == pytest.approx(data["summary"]["overall"]["dice"]["mean"], rel=1e-5)

    out = tmp_path / "reports" / "only_head"
    run_cli(["nnunet-llmseg", "evaluate", "-ref", str(ref_dir), "-pred", str(pred_dir), "-d", name,
             "--labels", "head", "-o", str(out), "-np", "1"], env=nnunet_env.environ())
    assert strict_json(out.with_suffix(".json"))["labels"] == {"head": 2}
    assert out.with_suffix(".csv").is_file()


def test_cli_errors_name_the_case_and_exit_nonzero(tmp_path):
    ref_dir, pred_dir = write_pair(tmp_path, {"lonely_case": (cube(), cube())})
    (pred_dir / "lonely_case.nii.gz").unlink()
    proc = subprocess.run([_bin("nnunet-llmseg"), "evaluate", "-ref", str(ref_dir), "-pred", str(pred_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "lonely_case" in proc.stderr and "--allow-missing" in proc.stderr
    assert not (pred_dir / "llmseg_evaluation.json").exists()
