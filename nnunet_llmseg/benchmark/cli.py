"""``nnunet-llmseg benchmark -d DATASET -c CONFIG -f FOLD``: every method on one fold, scored and compared.

The dataset must be planned and preprocessed for the configuration. The labelled cases come from the fold's
``labelled_subset_fold{F}.json`` (``--labelled N --seed S`` writes it, like ``nnunet-llmseg subset``); without a
subset file every training case is labelled. Each method is trained with the same schedule and plans through the
real ``nnUNetv2_train``, finished runs are reused, interrupted ones continued (see
:mod:`nnunet_llmseg.benchmark.runs`), and the fold's validation predictions are scored and compared with the
labelled-only baseline (:mod:`nnunet_llmseg.benchmark.stats`). Outputs in ``--out``: results.json, results.md,
metrics.png, curves.png, logs/ (one log per method), scores/ (cached evaluations) and, with
``--largest-component``, largest_component/ (the postprocessed copies that table scores).

Re-running the same command after a time limit or a crash continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from nnunet_llmseg.benchmark.methods import (
    DEFAULT_METHODS,
    METHOD_ALIASES,
    VARIANT_FOLDER_NAME,
    MethodError,
    ext_trainer_value,
    reads_labelled_subset,
    resolve_method,
    write_variant_module,
)
from nnunet_llmseg.benchmark.plans import PlansError, effective_configuration, make_override_plans
from nnunet_llmseg.benchmark.runs import (
    DONE,
    Interrupted,
    Run,
    RunError,
    RunSpec,
    check_subset,
    execute,
    run_state,
)


class BenchmarkError(RuntimeError):
    """Anything the user must fix before the benchmark can run (the message says what)."""


def _dataset_name(dataset: str) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise BenchmarkError(f"dataset {dataset!r} not found: {e}") from e


def _subset(args: argparse.Namespace, dataset_name: str, pre_base: Path) -> tuple[list[str] | None, dict | None,
                                                                                    list[str], list[str]]:
    """(labelled cases or None, subset record, training cases, validation cases) of the fold."""
    from nnunet_llmseg.data.labelled_subset import (
        SubsetError,
        create_labelled_subset,
        fold_keys,
        load_labelled_subset,
        split_training_keys,
    )

    try:
        if args.labelled is not None:
            create_labelled_subset(dataset_name, args.fold, count=args.labelled, seed=args.seed,
                                   configuration=args.configuration, plans_identifier=args.plans,
                                   overwrite=args.overwrite_subset)
        train, val, _ = fold_keys(pre_base, args.fold, args.configuration, args.plans)
        record = load_labelled_subset(pre_base, args.fold)
        split_training_keys(train, record)  # the subset must still match the split
    except SubsetError as e:
        hint = " (benchmark option: --overwrite-subset)" if "another choice" in str(e) else ""
        raise BenchmarkError(f"{e}{hint}") from e
    labelled = sorted(record["labelled"]) if record is not None else None
    return labelled, record, train, val


def _check_priors(classes: dict[str, type], pre_base: Path) -> None:
    """Text trainers refuse to start without matching priors: say so now, not after the other runs trained."""
    needs = [m for m, cls in classes.items() if getattr(cls, "use_text", False)]
    if not needs:
        return
    from prior_generation.priors_file import PriorsError, load_priors

    dataset_json = json.loads((pre_base / "dataset.json").read_text())
    try:
        load_priors(pre_base, dataset_json)
    except PriorsError as e:
        raise BenchmarkError(f"methods {', '.join(needs)} need text priors: {e}") from e


def _child_env(variant_folder: Path, device: str, parallel: int) -> dict:
    """Environment of the training processes (each run sets its own nnUNet_results)."""
    env = dict(os.environ)
    env["nnUNet_extTrainer"] = ext_trainer_value(variant_folder, env.get("nnUNet_extTrainer"))
    share = max(1, (os.cpu_count() or 1) // max(1, parallel))
    env.setdefault("nnUNet_n_proc_DA", str(min(12, share)))
    if device == "cpu" and parallel > 1:
        env.setdefault("OMP_NUM_THREADS", str(share))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_benchmark(args: argparse.Namespace, command: str) -> int:
    """The whole benchmark; returns the exit code (0: every run finished and was scored)."""
    from nnunet_llmseg.benchmark import report

    pre_root = os.environ.get("nnUNet_preprocessed")
    default_root = os.environ.get("nnUNet_results")
    results_root = args.results or default_root
    if not pre_root or not results_root:
        raise BenchmarkError("set nnUNet_preprocessed and nnUNet_results (or give --results DIR)")
    results_root = Path(results_root).resolve()
    # trainers that ignore the labelled subset (nnU-Net's own: all_labels) are shared by every subset
    shared_root = Path(default_root).resolve() if default_root else results_root
    dataset_name = _dataset_name(args.dataset)
    pre_base = Path(pre_root) / dataset_name
    cfg = args.configuration
    try:
        plans = make_override_plans(pre_base, cfg, args.batch_size, args.patch_size, source=args.plans,
                                    width_divisor=args.width_divisor)
        eff = effective_configuration(pre_base, plans, cfg)
    except PlansError as e:
        raise BenchmarkError(str(e)) from e
    if not (pre_base / eff["data_identifier"]).is_dir():
        raise BenchmarkError(f"{pre_base / eff['data_identifier']} does not exist: preprocess the configuration "
                             f"first (nnUNetv2_plan_and_preprocess -d {args.dataset} -c {cfg})")
    labelled, record, train, val = _subset(args, dataset_name, pre_base)

    methods = list(dict.fromkeys(args.methods))
    try:
        classes = {m: resolve_method(m) for m in methods}
    except MethodError as e:
        raise BenchmarkError(str(e)) from e
    _check_priors(classes, pre_base)
    for role, name in (("--baseline", args.baseline), ("--upper", args.upper)):
        if name and name not in methods:
            print(f"note: {role} {name} is not among the methods; "
                  + ("no comparison is made" if role == "--baseline" else "gap_closed stays null"))

    variant_folder = shared_root / VARIANT_FOLDER_NAME  # one place per results tree, for nnUNetv2_predict too
    runs = []
    for m, cls in classes.items():
        trainer = write_variant_module(variant_folder, cls.__name__, args.epochs, args.iters)
        dependent = reads_labelled_subset(cls)
        runs.append(Run(method=m, base_trainer=cls.__name__, trainer=trainer, dataset_name=dataset_name,
                        configuration=cfg, plans=plans, fold=args.fold,
                        results_root=results_root if dependent else shared_root, subset_dependent=dependent))
    subset_path = pre_base / f"labelled_subset_fold{args.fold}.json" if record is not None else None
    print(f"benchmark {dataset_name} {cfg} fold {args.fold}: {len(labelled) if labelled else len(train)} labelled, "
          f"{len(val)} validation cases; plans {plans} (batch {eff['batch_size']}, patch {eff['patch_size']}, "
          f"features {eff['features_per_stage']}); "
          f"{args.epochs} epochs x {args.iters} iterations on {args.device}")
    try:
        for run in runs:
            state = run_state(run)
            check_subset(run, state, labelled, subset_path)
            print(f"  {run.method:>16}: {run.trainer} [{state}]")
    except RunError as e:
        raise BenchmarkError(str(e)) from e

    statuses: dict[str, str] = {}
    if not args.report_only:
        env = _child_env(variant_folder, args.device, args.parallel)
        spec = RunSpec(dataset=dataset_name, device=args.device, labelled=labelled,
                       subset_rule=record.get("rule") if record else None, epochs=args.epochs,
                       iterations=args.iters)
        try:
            statuses = execute(runs, spec, env, args.out / "logs", parallel=args.parallel)
        except Interrupted as e:
            return 128 + e.signum

    from nnunet_llmseg.evaluation.report import EvaluationError, dataset_labels

    try:
        labels, file_ending, ignore_label, _ = dataset_labels(dataset_name)
    except EvaluationError as e:
        raise BenchmarkError(str(e)) from e
    rows, missing = [], {}
    for run in runs:
        if run_state(run) != DONE:
            missing[run.method] = statuses.get(run.method, run_state(run))
            continue
        try:
            result = report.score_run(run, val, pre_base / "gt_segmentations", labels, file_ending, ignore_label,
                                      args.num_processes, args.out / "scores")
        except RunError as e:
            print(f"[{run.method}] not scored: {e}", file=sys.stderr)
            missing[run.method] = "validation incomplete"
            continue
        row = report.build_row(run, result, report.logs_of(run))
        if args.largest_component:
            try:
                folder = report.largest_component_predictions(run, args.out / "largest_component" / run.method,
                                                              args.num_processes)
                row["largest_component"] = report.largest_component_entry(report.score_run(
                    run, val, pre_base / "gt_segmentations", labels, file_ending, ignore_label,
                    args.num_processes, args.out / "scores", pred_dir=folder,
                    cache_name=f"{run.method}_largest_component"))
            except RunError as e:
                print(f"[{run.method}] largest-component scores left out: {e}", file=sys.stderr)
        rows.append(row)
    report.add_comparisons(rows, args.baseline, args.upper)
    results = {
        "dataset": dataset_name,
        "configuration": cfg,
        "fold": args.fold,
        "n_labelled": len(labelled) if labelled is not None else len(train),
        "schedule": {"epochs": args.epochs, "iters": args.iters},
        "device": args.device,
        "command": command,
        "rows": rows,
        "device_name": report.device_description(args.device),
        "plans": plans,
        "batch_size": eff["batch_size"],
        "patch_size": eff["patch_size"],
        "features_per_stage": eff["features_per_stage"],
        "labelled_cases": labelled,
        "subset_rule": (f"{record.get('rule')}, seed {record.get('seed')}" if record else None),
        "n_validation_cases": len(val),
        "validation_cases": sorted(val),
        "baseline": args.baseline,
        "upper": args.upper,
        "results_root": str(results_root),
        "statistics": report.STATISTICS_CONVENTIONS,
        "missing": missing,
        "created": report.now_iso(),
        "git_commit": report.git_commit(),
        "versions": report.versions(),
    }
    report.write_outputs(results, args.out)
    print(report.markdown(json.loads(json.dumps(report._clean(results)))))
    print(f"wrote {args.out / 'results.json'}, results.md" + (", metrics.png, curves.png" if rows else ""))
    return 1 if missing else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    aliases = ", ".join(f"{k} ({v})" for k, v in METHOD_ALIASES.items())
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name (planned and preprocessed)")
    p.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-f", "--fold", type=int, required=True, help="fold (its validation cases are scored)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                   help=f"aliases or trainer class names nnU-Net can find (also in nnUNet_extTrainer). Aliases: "
                   f"{aliases}. Default: {' '.join(DEFAULT_METHODS)}")
    p.add_argument("--baseline", default="labelled_only", help="method the others are compared with")
    p.add_argument("--upper", default="all_labels", help="method trained on all labels (for gap_closed)")
    p.add_argument("--labelled", type=int, default=None, metavar="N",
                   help="write labelled_subset_fold{F}.json with N labelled cases (as nnunet-llmseg subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of --labelled")
    p.add_argument("--overwrite-subset", action="store_true",
                   help="replace an existing subset file that holds another choice than --labelled/--seed")
    p.add_argument("--epochs", type=int, default=1000, help="epochs (default: nnU-Net's 1000)")
    p.add_argument("--iters", type=int, default=250, help="training iterations per epoch (default: nnU-Net's 250)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--batch-size", type=int, default=None, help="override the planned batch size (a plans copy)")
    p.add_argument("--patch-size", type=int, nargs="+", default=None,
                   help="override the planned patch size (a plans copy sharing the preprocessed data)")
    p.add_argument("--width-divisor", type=int, default=None, metavar="D",
                   help="divide the planned features_per_stage by D (at least 8 each; a plans copy named _w{D}): "
                   "a CPU schedule trains a narrower network further in the same time")
    p.add_argument("-device", "--device", default=None, choices=("cpu", "cuda"),
                   help="default: cuda when available, else cpu")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default ./benchmark_<Dataset>_<config>_fold<F>)")
    p.add_argument("--results", default=None,
                   help="nnUNet_results for the runs that use the labelled subset (default $nnUNet_results): give "
                   "each subset its own folder. Trainers that ignore the subset (all_labels) stay in "
                   "$nnUNet_results, shared by every subset")
    p.add_argument("--parallel", type=int, default=1, help="training processes at once (GPU: several may share)")
    p.add_argument("-np", "--num-processes", type=int, default=None, help="processes for scoring")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the finished runs")
    p.add_argument("--largest-component", action="store_true",
                   help="also score every method after keeping each class's largest connected component "
                        "(nnU-Net's per-class postprocessing, one fixed rule for all methods; copies in "
                        "OUT/largest_component/)")


def _run(args: argparse.Namespace) -> int:
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.epochs < 1 or args.iters < 1 or args.parallel < 1:
        print("error: --epochs, --iters and --parallel must be at least 1", file=sys.stderr)
        return 2
    if args.num_processes is None:
        args.num_processes = min(4, os.cpu_count() or 1)
    if args.out is None:
        args.out = Path(f"benchmark_{args.dataset}_{args.configuration}_fold{args.fold}")
    command = getattr(args, "command_line", None) or "nnunet-llmseg " + shlex.join(sys.argv[1:])
    try:
        return run_benchmark(args, command)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def register(subparsers) -> None:
    """Add ``benchmark`` to the ``nnunet-llmseg`` command line."""
    p = subparsers.add_parser(
        "benchmark",
        help="train labelled-only, LLM-SegNet, TAK and all-labels (or any trainers) on one fold and compare them",
        description=__doc__.split("\n\n")[0] + " Finished runs are reused; interrupted runs continue. Outputs: "
        "results.json, results.md, metrics.png, curves.png.",
    )
    add_arguments(p)
    p.set_defaults(func=_run)
