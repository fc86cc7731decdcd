"""``nnunet-llmseg evaluate``: score a folder of predictions against references with the four paper metrics.

nnU-Net's own ``nnUNetv2_evaluate_folder`` reports Dice and IoU only; semi-supervised segmentation papers
(UA-MT, TraCoCo, DHC, LLM-SegNet, TAK) also report HD95 and ASD. This module reads both folders with
SimpleITK, matches cases by file name, checks their geometry, computes
:func:`~nnunet_llmseg.evaluation.metrics.case_metrics` per case and structure (in parallel over cases) and
summarises them as JSON, CSV and a printed table. Every choice that changes a number (which ASD, empty
structures, how means are taken) is written into the JSON's ``conventions`` field so a reported table can be
reproduced.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from nnunet_llmseg.evaluation.metrics import CONVENTIONS, METRICS, case_metrics

KNOWN_FILE_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".tif", ".tiff", ".png",
                                       ".bmp")
SPACING_TOLERANCE = 1e-3
DEFAULT_OUT_DIR = "llmseg_evaluation"


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated (missing cases, mismatched geometry, unknown labels or dataset)."""


# ----------------------------------------------------------------------------------------------- inputs
def _normalise_labels(labels: Mapping[str, int | Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """{name: label value or region (values whose union is the structure)} -> {name: sorted tuple of ints}."""
    out: dict[str, tuple[int, ...]] = {}
    for name, value in labels.items():
        values = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
        try:
            values = tuple(sorted({int(v) for v in values}))
        except (TypeError, ValueError) as e:
            raise EvaluationError(f"label {name!r}: {value!r} is not an integer or a list of integers") from e
        if not values or 0 in values:
            raise EvaluationError(f"label {name!r}: {value!r} must name one or more foreground (non-zero) "
                                  "values")
        out[str(name)] = values
    if not out:
        raise EvaluationError("no foreground labels to evaluate")
    return out


def _jsonable_labels(structures: Mapping[str, tuple[int, ...]]) -> dict[str, int | list[int]]:
    return {k: (v[0] if len(v) == 1 else list(v)) for k, v in structures.items()}


def dataset_labels(dataset: str | int) -> tuple[dict[str, int | list[int]], str, int | None, Path]:
    """Foreground labels/regions, file ending, ignore label and path of a dataset's ``dataset.json``.

    ``dataset`` is an id or a ``DatasetXXX_Name``, resolved like nnU-Net does
    (:func:`nnunet_llmseg.cli_errors.dataset_name`), and read from ``$nnUNet_raw`` first, then
    ``$nnUNet_preprocessed`` (it works where only one is present). An unknown dataset or a missing
    ``dataset.json`` raise :class:`~nnunet_llmseg.cli_errors.UsageError`.
    """
    from nnunet_llmseg.cli_errors import UsageError, dataset_name

    name = dataset_name(dataset)  # UsageError (exit 2) for an unknown id
    tried = []
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        base = os.environ.get(var)
        if not base:
            continue
        candidate = Path(base) / name / "dataset.json"
        tried.append(str(candidate))
        if candidate.is_file():
            break
    else:
        where = ", ".join(tried) if tried else "nothing ($nnUNet_raw and $nnUNet_preprocessed are unset)"
        raise UsageError(f"no dataset.json for {name}; looked at {where}")
    try:
        dj = json.loads(candidate.read_text())
        raw_labels = dj["labels"]
    except (json.JSONDecodeError, KeyError) as e:
        raise EvaluationError(f"{candidate}: cannot read its 'labels' field ({e})") from e
    ignore = raw_labels.get("ignore")
    labels = {k: v for k, v in raw_labels.items() if k not in ("background", "ignore")}
    ignore_label = int(ignore) if ignore is not None else None
    return labels, str(dj.get("file_ending", ".nii.gz")), ignore_label, candidate


def select_labels(labels: Mapping[str, int | Sequence[int]] | None, wanted: Sequence[str]
                  ) -> dict[str, int | list[int]]:
    """Restrict ``labels`` to ``wanted`` (label names, or integer values of single-value labels).

    Without ``labels`` (no dataset given) integers become structures named ``label_<value>``.
    """
    if labels is None:
        try:
            return {f"label_{int(w)}": int(w) for w in wanted}
        except ValueError as e:
            raise EvaluationError(f"--labels {list(wanted)}: without -d labels must be integer values") from e
    structures = _normalise_labels(labels)
    chosen: dict[str, int | list[int]] = {}
    for w in wanted:
        if w in structures:
            name = w
        else:
            try:
                value = int(w)
            except ValueError:
                name = None
            else:
                name = next((k for k, v in structures.items() if v == (value,)), None)
        if name is None:
            raise EvaluationError(f"--labels: {w!r} is neither a label name nor a label value of the dataset "
                                  f"({_jsonable_labels(structures)})")
        chosen[name] = _jsonable_labels({name: structures[name]})[name]
    return chosen


def infer_file_ending(ref_dir: Path) -> str:
    """The most common known image file ending in ``ref_dir`` (``.nii.gz`` when the folder has none)."""
    counts: dict[str, int] = {}
    if not ref_dir.is_dir():
        return ".nii.gz"  # evaluate_folders reports the missing folder
    for f in ref_dir.iterdir():
        ending = next((e for e in KNOWN_FILE_ENDINGS if f.name.endswith(e)), None)
        if ending is not None and f.is_file():
            counts[ending] = counts.get(ending, 0) + 1
    return max(counts, key=lambda e: (counts[e], len(e))) if counts else ".nii.gz"


def _cases(folder: Path, file_ending: str) -> dict[str, Path]:
    return {f.name[: -len(file_ending)]: f for f in sorted(folder.iterdir())
            if f.is_file() and f.name.endswith(file_ending) and not f.name.startswith(".")}


def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Array (z, y, x order) and spacing in the same order (SimpleITK reports x, y, z)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise EvaluationError(f"cannot read {path}: {str(e).strip().splitlines()[-1]}") from e
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in reversed(image.GetSpacing()))


# ----------------------------------------------------------------------------------------------- one case
def _evaluate_case(case: str, ref_path: str, pred_path: str, structures: dict[str, tuple[int, ...]] | None,
                   ignore_label: int | None, known_values: frozenset[int] | None = None) -> dict:
    """Metrics of every structure of one case (``structures=None``: every non-zero value in ref or pred).

    With ``known_values`` (every value ``dataset.json`` defines) the values found outside it are returned
    under ``unexpected_values`` (``{"reference": [...], "prediction": [...]}``): they belong to no structure,
    so they are not evaluated, and the caller warns about them.
    """
    ref, spacing = _read(Path(ref_path))
    pred, pred_spacing = _read(Path(pred_path))
    if ref.shape != pred.shape:
        raise EvaluationError(f"geometry mismatch: prediction {pred_path} has shape {pred.shape} (z, y, x), "
                              f"its reference {ref_path} has {ref.shape}")
    if len(spacing) != len(pred_spacing) or not np.allclose(spacing, pred_spacing, rtol=0,
                                                             atol=SPACING_TOLERANCE):
        raise EvaluationError(f"geometry mismatch: prediction {pred_path} has spacing {pred_spacing} "
                              f"(z, y, x), its reference {ref_path} has {spacing} "
                              f"(tolerance {SPACING_TOLERANCE})")
    if structures is None:
        values = np.union1d(np.unique(ref), np.unique(pred))
        structures = {f"label_{int(v)}": (int(v),) for v in values if v != 0}
    valid = None if ignore_label is None else ref != ignore_label
    metrics = {}
    for name, values in structures.items():
        r, p = np.isin(ref, values), np.isin(pred, values)
        if valid is not None:  # nnU-Net's ignore label: voxels without annotation count for nothing
            r, p = r & valid, p & valid
        m = case_metrics(r, p, spacing)
        metrics[name] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}
    out = {"case": case, "reference": ref_path, "prediction": pred_path, "shape": list(ref.shape),
           "spacing_zyx": list(spacing), "metrics": metrics}
    if known_values is not None:
        out["unexpected_values"] = {
            what: sorted(int(v) for v in np.unique(arr) if int(v) not in known_values)
            for what, arr in (("reference", ref), ("prediction", pred))}
    return out


def _evaluate_case_star(args: tuple) -> dict:
    return _evaluate_case(*args)


# ----------------------------------------------------------------------------------------------- summary
def _stats(values: list[float | None]) -> dict:
    defined = [float(v) for v in values if v is not None]
    if not defined:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(defined)), "std": float(np.std(defined)), "n": len(defined)}


def summarise(cases: list[dict], class_names: Sequence[str]) -> dict:
    """Per-class mean/std over cases and the overall mean over classes (see ``CONVENTIONS['means']``)."""
    per_class = {}
    for name in class_names:
        rows = [c["metrics"][name] for c in cases]
        entry = {m: _stats([r[m] for r in rows]) for m in METRICS}
        entry["n_cases"] = len(rows)
        entry["n_excluded_distance"] = sum(r["hd95"] is None for r in rows)
        entry["n_ref_empty"] = sum(r["ref_voxels"] == 0 for r in rows)
        entry["n_pred_empty"] = sum(r["pred_voxels"] == 0 for r in rows)
        entry["n_both_empty"] = sum(r["ref_voxels"] == 0 and r["pred_voxels"] == 0 for r in rows)
        per_class[name] = entry
    overall = {}
    for m in METRICS:
        class_means = [per_class[n][m]["mean"] for n in class_names if per_class[n][m]["mean"] is not None]
        case_means = []
        for c in cases:
            vals = [c["metrics"][n][m] for n in class_names if c["metrics"][n][m] is not None]
            if vals:
                case_means.append(float(np.mean(vals)))
        overall[m] = {"mean": float(np.mean(class_means)) if class_means else None,
                      "std": float(np.std(case_means)) if case_means else None,
                      "n_classes": len(class_means), "n_cases": len(case_means)}
    return {"per_class": per_class, "overall": overall}


# ----------------------------------------------------------------------------------------------- public API
def evaluate_folders(ref_dir: str | Path, pred_dir: str | Path,
                     labels: Mapping[str, int | Sequence[int]] | None = None, file_ending: str = ".nii.gz",
                     num_processes: int = 1, allow_missing: bool = False,
                     ignore_label: int | None = None, known_values: Iterable[int] | None = None) -> dict:
    """Score every reference case of ``ref_dir`` against the same-named file in ``pred_dir``.

    ``labels`` maps a structure name to a label value or a region (tuple of values whose union is evaluated);
    ``None`` evaluates every non-zero value found in the references, named ``label_<value>``. A reference case
    without a prediction is an :class:`EvaluationError` naming it unless ``allow_missing`` (then it is skipped
    and listed under ``missing_predictions``). ``known_values``: every label value of the dataset
    (background, ignore label and region members included, see :func:`known_label_values`); values found
    outside it in a reference or a prediction belong to no structure and are listed, with their cases, under
    ``unexpected_label_values`` (the CLI warns). Returns a JSON-able dict: ``cases`` (per case and class),
    ``summary`` (``per_class`` and ``overall``, each metric as ``{"mean", "std", "n"}``), ``conventions``,
    ``labels``, ``spacing``, ``unexpected_label_values``.
    """
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    for what, folder in (("reference", ref_dir), ("prediction", pred_dir)):
        if not folder.is_dir():
            raise EvaluationError(f"{what} folder {folder} does not exist")
    refs, preds = _cases(ref_dir, file_ending), _cases(pred_dir, file_ending)
    if not refs:
        raise EvaluationError(f"no reference files ending in {file_ending!r} in {ref_dir}")
    missing = sorted(set(refs) - set(preds))
    if missing and not allow_missing:
        shown = ", ".join(missing[:20]) + (f" ... ({len(missing)} in all)" if len(missing) > 20 else "")
        raise EvaluationError(f"no prediction in {pred_dir} for {len(missing)} reference case(s): {shown} "
                              f"(expected e.g. {pred_dir / (missing[0] + file_ending)}; use --allow-missing "
                              "to skip them)")
    matched = [c for c in refs if c in preds]
    if not matched:
        raise EvaluationError(f"no prediction in {pred_dir} matches a reference case of {ref_dir}")
    structures = _normalise_labels(labels) if labels is not None else None

    known = frozenset(int(v) for v in known_values) if known_values is not None else None
    jobs = [(c, str(refs[c]), str(preds[c]), structures, ignore_label, known) for c in matched]
    n_proc = max(1, min(int(num_processes), len(jobs)))
    if n_proc == 1:
        cases = [_evaluate_case_star(j) for j in jobs]
    else:
        import multiprocessing

        # spawn: the caller may hold OpenMP/torch threads, which fork does not survive safely
        with multiprocessing.get_context("spawn").Pool(n_proc) as pool:
            cases = pool.map(_evaluate_case_star, jobs, chunksize=1)

    if structures is None:  # every non-zero value of the references; absent from a case = both empty there
        found = sorted({int(k.split("_", 1)[1]) for c in cases for k, m in c["metrics"].items()
                        if m["ref_voxels"] > 0})
        if not found:
            raise EvaluationError(f"the references in {ref_dir} contain no foreground voxel; give the labels "
                                  "explicitly (-d or --labels)")
        structures = {f"label_{v}": (v,) for v in found}
        perfect = {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, "ref_voxels": 0, "pred_voxels": 0}
        for c in cases:
            c["metrics"] = {n: c["metrics"].get(n, dict(perfect)) for n in structures}

    spacings = sorted({tuple(c["spacing_zyx"]) for c in cases})
    unexpected: dict[int, dict[str, list[str]]] = {}
    for c in cases:
        for what, values in c.pop("unexpected_values", {}).items():
            for v in values:
                unexpected.setdefault(v, {"reference": [], "prediction": []})[what].append(c["case"])
    return {
        "tool": "nnunet-llmseg evaluate",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reference_folder": str(ref_dir.resolve()),
        "prediction_folder": str(pred_dir.resolve()),
        "file_ending": file_ending,
        "labels": _jsonable_labels(structures),
        "ignore_label": ignore_label,
        "metrics": list(METRICS),
        "units": {"dice": "fraction", "jaccard": "fraction", "hd95": "mm", "asd": "mm"},
        "conventions": dict(CONVENTIONS),
        "spacing": {"order": "z, y, x (array order)", "unit": "mm",
                    "distinct_spacings_zyx": [list(s) for s in spacings]},
        "n_cases": len(cases),
        "missing_predictions": missing,
        "unmatched_predictions": sorted(set(preds) - set(refs)),
        "unexpected_label_values": [{"value": v, "reference_cases": unexpected[v]["reference"],
                                     "prediction_cases": unexpected[v]["prediction"]} for v in sorted(unexpected)],
        "cases": cases,
        "summary": summarise(cases, list(structures)),
    }


def known_label_values(labels: Mapping[str, int | Sequence[int]], ignore_label: int | None = None) -> set[int]:
    """Every value a dataset's label maps may hold: background 0, each label or region member, the ignore
    label."""
    known = {0} if ignore_label is None else {0, int(ignore_label)}
    for value in labels.values():
        known.update(int(v) for v in ((value,) if isinstance(value, (int, np.integer)) else value))
    return known


def unexpected_values_warning(result: dict, dataset_json: str | Path | None = None, shown: int = 10) -> str | None:
    """One line naming the label values that are in no structure of ``dataset.json`` and their cases."""
    entries = result.get("unexpected_label_values") or []
    if not entries:
        return None

    def cases(names: list[str]) -> str:
        return ", ".join(names[:shown]) + (f" ... ({len(names)} cases)" if len(names) > shown else "")

    parts = []
    for e in entries:
        where = [f"{what}: {cases(e[key])}" for what, key in (("reference", "reference_cases"),
                                                                ("prediction", "prediction_cases")) if e[key]]
        parts.append(f"{e['value']} ({'; '.join(where)})")
    source = f" {dataset_json}" if dataset_json else " dataset.json"
    return (f"warning: label value(s) not defined in{source} were found and not evaluated: "
            + ", ".join(parts))


def default_out_prefix(pred_dir: str | Path, ref_dir: str | Path | None = None) -> Path:
    """Where reports go without ``-o``: ``$nnUNet_results/llmseg_evaluation/<parent>_<pred>-<hash>``
    (``./llmseg_evaluation/...`` when ``nnUNet_results`` is unset), never into a dataset.

    Earlier versions wrote into the prediction folder, which can be a dataset's folder. The hash of the
    prediction folder's absolute path keeps the reports of different folders apart; evaluating the same folder
    again replaces its report. :class:`~nnunet_llmseg.cli_errors.UsageError` when that place would still lie
    inside ``$nnUNet_raw``, ``$nnUNet_preprocessed`` or the ``-ref``/``-pred`` folder (then pass ``-o``).
    """
    from nnunet_llmseg.cli_errors import UsageError

    pred = Path(pred_dir).resolve()
    root = os.environ.get("nnUNet_results", "").strip()
    base = ((Path(root) if root else Path.cwd()) / DEFAULT_OUT_DIR).resolve()
    tag = hashlib.sha256(str(pred).encode()).hexdigest()[:8]
    prefix = base / f"{pred.parent.name}_{pred.name}-{tag}"
    protected = {"the -pred folder": pred}
    if ref_dir is not None:
        protected["the -ref folder"] = Path(ref_dir).resolve()
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        if os.environ.get(var, "").strip():
            protected[f"${var}"] = Path(os.environ[var]).resolve()
    for what, folder in protected.items():
        if prefix.is_relative_to(folder):
            raise UsageError(f"the default report location {prefix} lies inside {what} ({folder}); choose "
                             "another one with -o OUT_PREFIX")
    return prefix


def write_reports(result: dict, out_prefix: str | Path) -> tuple[Path, Path]:
    """Write ``OUT_PREFIX.json`` (everything) and ``OUT_PREFIX.csv`` (case x class rows, then mean/std)."""
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path = out_prefix.with_name(out_prefix.name + ".json")
    csv_path = out_prefix.with_name(out_prefix.name + ".csv")
    json_path.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")

    def cell(v: float | int | None) -> str:
        return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))

    classes = list(result["labels"])
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row_type", "case", "class", *METRICS, "ref_voxels", "pred_voxels"])
        for c in result["cases"]:
            for name in classes:
                m = c["metrics"][name]
                w.writerow(["case", c["case"], name, *(cell(m[k]) for k in METRICS),
                            m["ref_voxels"], m["pred_voxels"]])
        summary = result["summary"]
        for stat in ("mean", "std"):
            for name in classes:
                stats = summary["per_class"][name]
                w.writerow([stat, "", name, *(cell(stats[k][stat]) for k in METRICS), "", ""])
            w.writerow([stat, "", "overall", *(cell(summary["overall"][k][stat]) for k in METRICS), "", ""])
    return json_path, csv_path


def format_table(result: dict) -> str:
    """Fixed-width table: a row per class plus ``mean``; Dice/Jaccard in %, HD95/ASD in mm, as mean ± std."""
    headers = ("Dice [%]", "Jaccard [%]", "HD95 [mm]", "ASD [mm]")
    scale = {"dice": 100.0, "jaccard": 100.0, "hd95": 1.0, "asd": 1.0}

    def fmt(s: dict, m: str) -> str:
        if s["mean"] is None:
            return "n/a"
        return f"{s['mean'] * scale[m]:.2f} ± {s['std'] * scale[m]:.2f}"

    summary = result["summary"]
    rows = [(name, [fmt(summary["per_class"][name][m], m) for m in METRICS]) for name in result["labels"]]
    rows.append(("mean", [fmt(summary["overall"][m], m) for m in METRICS]))
    w0 = max(len("class"), *(len(r[0]) for r in rows))
    widths = [max(len(h), *(len(r[1][i]) for r in rows)) for i, h in enumerate(headers)]

    def line(first: str, cells: Sequence[str]) -> str:
        return "  ".join([first.ljust(w0), *(c.rjust(w) for c, w in zip(cells, widths))])

    out = [line("class", headers), "-" * (w0 + sum(widths) + 2 * len(widths))]
    out += [line(name, cells) for name, cells in rows[:-1]]
    out += ["-" * (w0 + sum(widths) + 2 * len(widths)), line(*rows[-1])]
    out.append(f"{result['n_cases']} cases; mean ± population std over cases; 'mean' row = mean over "
               "classes.")
    excluded = {n: s["n_excluded_distance"] for n, s in summary["per_class"].items()
                if s["n_excluded_distance"]}
    if excluded:
        out.append("HD95/ASD undefined (one of reference/prediction empty) and excluded from the means: "
                   + ", ".join(f"{n}: {k} case(s)" for n, k in excluded.items()))
    if result.get("missing_predictions"):
        out.append(f"skipped {len(result['missing_predictions'])} reference case(s) without prediction: "
                   + ", ".join(result["missing_predictions"][:10])
                   + (" ..." if len(result["missing_predictions"]) > 10 else ""))
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- CLI
def _run(args: argparse.Namespace) -> int:
    """Errors: one ``error:`` line (``nnunet_llmseg.cli.main``): 2 for a bad command line, 1 for bad data."""
    labels, file_ending, ignore_label, known, dj_path = None, args.file_ending, None, None, None
    if args.dataset is not None:
        labels, ds_ending, ignore_label, dj_path = dataset_labels(args.dataset)
        file_ending = file_ending or ds_ending
        known = known_label_values(labels, ignore_label)
    if args.labels:
        labels = select_labels(labels, args.labels)
    out_prefix = Path(args.out) if args.out else default_out_prefix(args.pred, args.ref)
    file_ending = file_ending or infer_file_ending(Path(args.ref))
    n_proc = args.num_processes if args.num_processes is not None else min(4, os.cpu_count() or 1)
    result = evaluate_folders(args.ref, args.pred, labels=labels, file_ending=file_ending,
                              num_processes=n_proc, allow_missing=args.allow_missing,
                              ignore_label=ignore_label, known_values=known)
    json_path, csv_path = write_reports(result, out_prefix)
    print(format_table(result))
    print(f"\nwrote {json_path}\nwrote {csv_path}")
    warning = unexpected_values_warning(result, dj_path)
    if warning:
        print(warning, file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``evaluate`` to the ``nnunet-llmseg`` command line."""
    from nnunet_llmseg.cli_errors import positive_int

    p = subparsers.add_parser(
        "evaluate",
        help="Dice, Jaccard, HD95 and ASD (mm) of a prediction folder, as semi-supervised papers report them",
        description="Scores each reference case against the same-named prediction per class: Dice, Jaccard, "
        "HD95 and ASD in millimetres (medpy hd95 / asd(pred, ref), image spacing honoured). Writes "
        "OUT_PREFIX.json and OUT_PREFIX.csv and prints a table. Conventions: docs/evaluation.md.",
    )
    p.add_argument("-ref", "--ref", required=True, help="folder of reference segmentations")
    p.add_argument("-pred", "--pred", required=True, help="folder of predictions (same file names)")
    p.add_argument("-d", "--dataset", default=None,
                   help="dataset id or name: labels, names, regions and file ending from its dataset.json "
                   "($nnUNet_raw, then $nnUNet_preprocessed); default: every non-zero value of the "
                   "references")
    p.add_argument("-o", "--out", default=None, metavar="OUT_PREFIX",
                   help=f"output prefix for .json/.csv (default: $nnUNet_results/{DEFAULT_OUT_DIR}/"
                   "<parent>_<pred>-<hash>, or ./" + DEFAULT_OUT_DIR + "/... without nnUNet_results; printed)")
    p.add_argument("-np", "--num-processes", type=positive_int, default=None,
                   help="worker processes over cases (default min(4, CPUs); 1 = in this process)")
    p.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                   help="evaluate only these labels (values, or names from dataset.json)")
    p.add_argument("--file-ending", default=None,
                   help="file ending of the images (default: from dataset.json, else the most common one "
                   "in -ref)")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip reference cases without prediction (listed in the report) instead of failing")
    p.set_defaults(func=_run)
