"""Scoring the runs and writing ``results.json``, ``results.md``, ``metrics.png`` and ``curves.png``.

Each run ends with nnU-Net's own validation, which predicts the fold's validation cases into
``fold_F/validation``; they are scored against ``nnUNet_preprocessed/DatasetXXX/gt_segmentations`` with
``nnunet-llmseg evaluate``'s code (Dice, Jaccard, HD95, ASD per case and class; conventions in
docs/evaluation.md). Every validation case of the fold must have a prediction, so two methods are always scored
on the same cases. Scores are cached in ``OUT/scores/`` and recomputed when a run's validation changes.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from nnunet_llmseg.benchmark.runs import Run, RunError, wall_seconds
from nnunet_llmseg.benchmark.stats import MIN_NONZERO_PAIRS, compare
from nnunet_llmseg.benchmark.training_logs import LogSummary, parse_logs
from nnunet_llmseg.evaluation.metrics import METRICS

STATISTICS_CONVENTIONS = {
    "dice_diff": "method's mean Dice minus the baseline's (mean over classes of the per-class means over the "
                 "fold's validation cases)",
    "p_value": "two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon) of the per-case differences of the "
               "mean-over-classes Dice, over the validation cases both runs predicted; zero differences dropped "
               "(Wilcox); all differences zero -> 1.0; fewer than "
               f"{MIN_NONZERO_PAIRS} non-zero differences -> null (the test cannot reach p < 0.05)",
    "gap_closed": "(dice_method - dice_baseline) / (dice_all_labels - dice_baseline); null without an all-labels "
                  "run or when that gap is <= 0",
    "wall_seconds": "sum of the run's nnUNetv2_train sessions (training and nnU-Net's final validation), from the "
                    "run-info file next to the fold folder (or nnU-Net's logs for runs trained outside the "
                    "benchmark)",
    "largest_component": "with --largest-component: the same validation predictions after keeping only each "
                         "class's largest connected component (nnU-Net's per-class postprocessing rule, applied "
                         "to every method; not chosen on the validation cases), scored and compared the same way, "
                         "postprocessed baseline against postprocessed method",
    "epoch_seconds": "mean of nnU-Net's logged epoch times (training + per-epoch validation iterations), "
                     "first epoch left out",
}
_HYPER_SKIP = ("folder", "file", "dataloader", "manager", "json", "kwargs", "hostname", "version", "device",
               "logger", "network", "optimizer", "loss", "lr_scheduler", "grad_scaler", "keys", "priors",
               "prior_rows", "current_epoch", "was_initialized", "local_rank", "is_ddp", "fold")


# ----------------------------------------------------------------------------------------------- scoring
def score_run(run: Run, validation_cases: list[str], gt_dir: Path, labels: dict, file_ending: str,
              ignore_label: int | None, num_processes: int, cache_dir: Path, pred_dir: Path | None = None,
              cache_name: str | None = None) -> dict:
    """``evaluate_folders``' result for the run's validation predictions of exactly ``validation_cases``.

    ``pred_dir`` (default: ``fold_F/validation``) scores another copy of them, e.g. the largest-component one;
    its cache file is ``cache_name`` (default: the method's name).
    """
    from nnunet_llmseg.evaluation.report import evaluate_folders

    pred_dir = pred_dir or run.fold_dir / "validation"
    missing = [c for c in validation_cases if not (pred_dir / f"{c}{file_ending}").is_file()]
    if missing:
        raise RunError(
            f"{pred_dir} has no prediction for {len(missing)} of the fold's {len(validation_cases)} validation "
            f"cases (e.g. {', '.join(missing[:5])}): the split changed since this run was trained, or its validation "
            f"was cut short. Rerun it: nnUNetv2_train ... -tr {run.trainer} -p {run.plans} --val")
    stamp = next((f for f in (pred_dir / "summary.json", pred_dir / POSTPROCESSING_RECORD) if f.is_file()), None)
    key = {"prediction_folder": str(pred_dir.resolve()),
           "summary_mtime_ns": stamp.stat().st_mtime_ns if stamp is not None else None,
           "cases": sorted(validation_cases), "labels": labels, "ignore_label": ignore_label}
    cache = cache_dir / f"{cache_name or run.method}.json"
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("key") == json.loads(json.dumps(key)):
                return cached["result"]
        except (json.JSONDecodeError, KeyError):
            pass
    with tempfile.TemporaryDirectory(prefix="llmseg_bm_ref_") as tmp:
        ref = Path(tmp)
        for c in validation_cases:
            src = gt_dir / f"{c}{file_ending}"
            if not src.is_file():
                raise RunError(f"reference segmentation {src} not found (nnUNet_preprocessed's gt_segmentations "
                               "should hold every training case)")
            os.symlink(src.resolve(), ref / src.name)
        result = evaluate_folders(ref, pred_dir, labels=labels, file_ending=file_ending,
                                  num_processes=num_processes, allow_missing=False, ignore_label=ignore_label)
    result["reference_folder"] = str(gt_dir.resolve())
    for c in result["cases"]:
        c["reference"] = str((gt_dir / Path(c["reference"]).name).resolve())
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp_cache = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
    tmp_cache.write_text(json.dumps({"key": key, "result": result}, allow_nan=False))
    os.replace(tmp_cache, cache)
    return result


#: written last into a largest-component folder: what it was made from (a missing or stale record -> redo)
POSTPROCESSING_RECORD = "postprocessing.json"


def largest_component_predictions(run: Run, target: Path, num_processes: int | None) -> Path:
    """The run's validation predictions with only each class's largest connected component kept, in ``target``.

    nnU-Net's own per-class postprocessing candidate (``remove_all_but_largest_component_from_segmentation``
    for every foreground label or region, applied by ``apply_postprocessing_to_folder`` with the run's
    ``plans.json`` and ``dataset.json``), applied to every method alike. It is a fixed rule, not
    ``nnUNetv2_determine_postprocessing``, which would choose per class on the very validation cases the
    benchmark then reports. Redone when the run's validation changed since (``summary.json``'s time).
    """
    import shutil

    from nnunetv2.postprocessing.remove_connected_components import (
        apply_postprocessing_to_folder,
        remove_all_but_largest_component_from_segmentation,
    )
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    source = run.fold_dir / "validation"
    plans_file, dataset_file = run.trainer_dir / "plans.json", run.trainer_dir / "dataset.json"
    for f in (plans_file, dataset_file):
        if not f.is_file():
            raise RunError(f"{f} not found: nnUNetv2_train writes it next to fold_{run.fold}; the run's folder is "
                           "incomplete, so its predictions cannot be postprocessed")
    summary = source / "summary.json"
    dataset_json = json.loads(dataset_file.read_text())
    manager = PlansManager(str(plans_file)).get_label_manager(dataset_json)
    targets = manager.foreground_regions if manager.has_regions else manager.foreground_labels
    targets = [list(t) if isinstance(t, (list, tuple)) else int(t) for t in targets]
    record = {"source": str(source.resolve()), "summary_mtime_ns": summary.stat().st_mtime_ns
              if summary.is_file() else None, "rule": "largest connected component per class",
              "labels_or_regions": targets}
    record_file = target / POSTPROCESSING_RECORD
    try:
        if json.loads(record_file.read_text()) == record:
            return target
    except (OSError, json.JSONDecodeError):
        pass
    if target.exists():
        shutil.rmtree(target)
    n = len(targets)
    apply_postprocessing_to_folder(str(source), str(target), [remove_all_but_largest_component_from_segmentation] * n,
                                   [{"labels_or_regions": t} for t in targets], plans_file_or_dict=str(plans_file),
                                   dataset_json_file_or_dict=dataset_json,
                                   num_processes=max(1, num_processes or os.cpu_count() or 1))
    record_file.write_text(json.dumps(record))
    return target


def largest_component_entry(result: dict) -> dict:
    """The ``largest_component`` part of a row: overall and per-class Dice and HD95, and the per-case Dice."""
    overall = result["summary"]["overall"]
    return _clean({
        "dice_mean": overall["dice"]["mean"], "dice_std": overall["dice"]["std"],
        "hd95_mean": overall["hd95"]["mean"], "hd95_std": overall["hd95"]["std"],
        "per_class": {name: {m: {"mean": e[m]["mean"], "std": e[m]["std"]} for m in ("dice", "hd95")}
                      for name, e in result["summary"]["per_class"].items()},
        "per_case_dice": per_case_dice(result),
    })


def per_case_dice(result: dict) -> dict[str, float]:
    """Per validation case: the Dice averaged over the classes (always defined, see docs/evaluation.md)."""
    out = {}
    for c in result["cases"]:
        values = [m["dice"] for m in c["metrics"].values() if m["dice"] is not None]
        if values:
            out[c["case"]] = float(sum(values) / len(values))
    return out


def hyperparameters(fold_dir: Path) -> dict:
    """Short scalar settings of the trainer from nnU-Net's ``debug.json`` (plain JSON written at start-up)."""
    path = fold_dir / "debug.json"
    try:
        debug = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    out = {}
    for k, v in debug.items():
        s = str(v)
        if k.startswith("_") or any(x in k for x in _HYPER_SKIP) or "<" in s or "\n" in s or len(s) > 80:
            continue
        out[k] = s
    return out


def _clean(x):
    """JSON-safe copy: NaN/inf -> None (results.json is strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def build_row(run: Run, result: dict, logs: LogSummary) -> dict:
    """One ``rows`` entry of results.json (``vs_labelled_only`` and ratios are added by :func:`add_comparisons`)."""
    overall = result["summary"]["overall"]
    wall, wall_source = wall_seconds(run)
    per_class = {}
    for name, entry in result["summary"]["per_class"].items():
        per_class[name] = {m: {"mean": entry[m]["mean"], "std": entry[m]["std"], "n": entry[m]["n"]} for m in METRICS}
        per_class[name]["n_excluded_distance"] = entry["n_excluded_distance"]
    return _clean({
        "method": run.method,
        "trainer": run.trainer,
        "base_trainer": run.base_trainer,
        "plans": run.plans,
        "fold_dir": str(run.fold_dir),
        "dice_mean": overall["dice"]["mean"],
        "dice_std": overall["dice"]["std"],
        "jaccard_mean": overall["jaccard"]["mean"],
        "hd95_mean": overall["hd95"]["mean"],
        "hd95_std": overall["hd95"]["std"],
        "asd_mean": overall["asd"]["mean"],
        "asd_std": overall["asd"]["std"],
        "jaccard_std": overall["jaccard"]["std"],
        "per_class": per_class,
        "per_case_dice": per_case_dice(result),
        "n_validation_cases": result["n_cases"],
        "wall_seconds": wall,
        "wall_seconds_source": wall_source,
        "epoch_seconds": logs.mean_epoch_seconds(),
        "epochs_logged": len(logs.epochs),
        "curve": {"epoch": logs.epochs, "mean_pseudo_dice": logs.mean_pseudo_dice,
                  "ema_pseudo_dice": logs.ema_pseudo_dice},
        "hyperparameters": hyperparameters(run.fold_dir),
    })


def add_comparisons(rows: list[dict], baseline: str, upper: str | None) -> None:
    """``vs_labelled_only`` on every row but the baseline's, and the epoch-time ratio to the baseline."""
    base = next((r for r in rows if r["method"] == baseline), None)
    top = next((r for r in rows if r["method"] == upper), None) if upper else None
    for r in rows:
        if base is not None and base.get("epoch_seconds") and r.get("epoch_seconds"):
            r["epoch_time_ratio"] = r["epoch_seconds"] / base["epoch_seconds"]
        else:
            r["epoch_time_ratio"] = None
        if base is None or r is base:
            continue
        r["vs_labelled_only"] = _clean(compare(
            r["per_case_dice"], base["per_case_dice"], r["dice_mean"], base["dice_mean"],
            top["dice_mean"] if top is not None else None).to_json())
        lc, base_lc = r.get("largest_component"), base.get("largest_component")
        if lc is not None and base_lc is not None:  # postprocessed against postprocessed, never mixed
            top_lc = (top or {}).get("largest_component")
            lc["vs_labelled_only"] = _clean(compare(
                lc["per_case_dice"], base_lc["per_case_dice"], lc["dice_mean"], base_lc["dice_mean"],
                top_lc["dice_mean"] if top_lc is not None else None).to_json())


# ----------------------------------------------------------------------------------------------- environment
def device_description(device: str) -> str:
    if device.startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
        except Exception:  # a description only
            pass
        return "CUDA device"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def git_commit() -> str | None:
    """The plugin checkout's commit (``+dirty`` with uncommitted changes), or None outside a git checkout."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("nnunetv2", "torch", "nnunet-llmseg"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# ----------------------------------------------------------------------------------------------- markdown
def _fmt(v: float | None, digits: int = 3, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _pm(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def format_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _p(vs: dict) -> str:
    if vs.get("p_value") is None:
        return f"n/a (n<{MIN_NONZERO_PAIRS})" if vs.get("n_pairs") else "n/a"
    p = vs["p_value"]
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def markdown(results: dict) -> str:
    rows = results["rows"]
    sched = results["schedule"]
    patch = "x".join(str(p) for p in results.get("patch_size") or [])
    lines = [
        f"# Benchmark: {results['dataset']}, `{results['configuration']}`, fold {results['fold']}", "",
        f"Command: `{results['command']}`  ",
        f"Device: {results['device']} ({results.get('device_name', '')}); "
        f"nnU-Net {results['versions'].get('nnunetv2')}, "
        f"torch {results['versions'].get('torch')}, nnunet-llmseg commit {results.get('git_commit') or 'unknown'}  ",
        f"Dataset: {results['dataset']}, configuration `{results['configuration']}`, fold {results['fold']}: "
        f"{results['n_labelled']} labelled training cases ({results.get('subset_rule') or 'no subset file'}), "
        f"{results.get('n_validation_cases')} validation cases  ",
        f"Plans: `{results['plans']}` (batch {results.get('batch_size')}, patch {patch}"
        + (f", features per stage {results['features_per_stage']}" if results.get("features_per_stage") else "")
        + f"); schedule {sched['epochs']} "
        f"epochs x {sched['iters']} iterations; created {results['created']}", "",
        f"| method | Dice | Jaccard | HD95 | ASD | ΔDice vs {results['baseline']} | p | gap closed | wall time "
        "| epoch time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = r.get("vs_labelled_only")
        cells = [f"{r['method']} (`{r['trainer']}`)", _pm(r["dice_mean"], r["dice_std"]),
                 _pm(r["jaccard_mean"], r["jaccard_std"]), _pm(r["hd95_mean"], r["hd95_std"]),
                 _pm(r["asd_mean"], r["asd_std"]),
                 _fmt(vs["dice_diff"], signed=True) if vs else "-", _p(vs) if vs else "-",
                 (f"{100 * vs['gap_closed']:.0f} %" if vs["gap_closed"] is not None else "n/a") if vs else "-",
                 format_seconds(r["wall_seconds"]),
                 f"{r['epoch_time_ratio']:.2f}x" if r.get("epoch_time_ratio") else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    classes = list(rows[0]["per_class"]) if rows else []
    for metric, title in (("dice", "Dice"), ("hd95", "HD95")) if rows else ():
        lines += ["", f"{title} per class (mean ± std over validation cases):", "",
                  "| method | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
        for r in rows:
            lines.append(f"| {r['method']} | " + " | ".join(
                _pm(r["per_class"][c][metric]["mean"], r["per_class"][c][metric]["std"]) for c in classes) + " |")
    lc_rows = [r for r in rows if r.get("largest_component")]
    if lc_rows:
        lines += ["", "After keeping each class's largest connected component (every method alike; "
                  "docs/benchmark.md):", "",
                  f"| method | Dice | HD95 | ΔDice vs {results['baseline']} | p | gap closed | Dice per class "
                  f"({', '.join(classes)}) |", "|---|---|---|---|---|---|---|"]
        for r in lc_rows:
            lc = r["largest_component"]
            vs = lc.get("vs_labelled_only")
            lines.append("| " + " | ".join([
                r["method"], _pm(lc["dice_mean"], lc["dice_std"]), _pm(lc["hd95_mean"], lc["hd95_std"]),
                _fmt(vs["dice_diff"], signed=True) if vs else "-", _p(vs) if vs else "-",
                (f"{100 * vs['gap_closed']:.0f} %" if vs["gap_closed"] is not None else "n/a") if vs else "-",
                " / ".join(_fmt(lc["per_class"][c]["dice"]["mean"]) for c in classes)]) + " |")
    notes = [f"{r['method']}: {r['vs_labelled_only']['gap_note']}" for r in rows
             if r.get("vs_labelled_only", {}).get("gap_note") and r["method"] != results.get("upper")]
    lines += ["", "HD95/ASD in the dataset's spacing units (mm, or pixels where the images carry unit spacing); "
              "means over cases where the structure exists in both reference and prediction "
              "(docs/evaluation.md).",
              f"p: {STATISTICS_CONVENTIONS['p_value']}.",
              f"Gap closed: {STATISTICS_CONVENTIONS['gap_closed']}.",
              f"Wall time: {STATISTICS_CONVENTIONS['wall_seconds']}; epoch time ratio: mean epoch time relative to "
              f"{results['baseline']}."]
    if notes:
        lines += ["", "Gap notes: " + "; ".join(sorted(set(notes)))]
    if results.get("missing"):
        lines += ["", "Not in the table (no finished run): " + ", ".join(f"{m} ({s})" for m, s in
                                                                     results["missing"].items())]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- plots
def _colors(n: int) -> list:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def metrics_plot(rows: list[dict], path: Path) -> None:
    """Per-class bars (mean ± std over validation cases) of the four metrics, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(rows[0]["per_class"]) if rows else []
    titles = {"dice": "Dice", "jaccard": "Jaccard", "hd95": "HD95", "asd": "ASD"}
    fig, axes = plt.subplots(1, 4, figsize=(5 * 4, 4.2))
    width = 0.8 / max(1, len(rows))
    colors = _colors(len(rows))
    for ax, metric in zip(axes, METRICS):
        for i, r in enumerate(rows):
            means = [r["per_class"][c][metric]["mean"] for c in classes]
            stds = [r["per_class"][c][metric]["std"] for c in classes]
            xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(classes))]
            ax.bar(xs, [m if m is not None else math.nan for m in means], width,
                   yerr=[s if s is not None else 0.0 for s in stds], color=colors[i], label=r["method"], capsize=2)
        ax.set_xticks(range(len(classes)), classes, rotation=20)
        ax.set_title(titles[metric])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_plot(rows: list[dict], path: Path) -> None:
    """Validation pseudo-Dice per epoch of every method on one axis (faint: per epoch; solid: nnU-Net's EMA)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for color, r in zip(_colors(len(rows)), rows):
        c = r["curve"]
        raw = [v if v is not None else math.nan for v in c["mean_pseudo_dice"]]
        ema = [v if v is not None else math.nan for v in c["ema_pseudo_dice"]]
        ax.plot(c["epoch"], raw, color=color, alpha=0.35, lw=1)
        ax.plot(c["epoch"], ema, color=color, lw=2, label=f"{r['method']}", marker="o" if len(ema) < 15 else None)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation pseudo-Dice (mean over classes)")
    ax.set_title("nnU-Net's pseudo-Dice per epoch (solid: EMA 0.9, faint: per epoch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(results: dict, out: Path) -> None:
    """results.json, results.md, metrics.png and curves.png into ``out`` (atomically per file)."""
    out.mkdir(parents=True, exist_ok=True)
    results = _clean(results)
    for name, text in (("results.json", json.dumps(results, indent=2, allow_nan=False) + "\n"),
                       ("results.md", markdown(results))):
        tmp = out / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    if results["rows"]:
        metrics_plot(results["rows"], out / "metrics.png")
        curves_plot(results["rows"], out / "curves.png")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def logs_of(run: Run) -> LogSummary:
    return parse_logs(run.fold_dir)
