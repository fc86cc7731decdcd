"""Which of a fold's training cases keep their labels: reproducible, reviewable subset files.

``nnunet-llmseg subset -d D -f 0 --count 10 --seed 0`` writes ``labelled_subset_fold0.json`` into the
dataset's ``nnUNet_preprocessed`` folder. The trainers read it: the listed cases are the labelled training
set, the fold's other training cases become unlabelled (their labels are never read during training), and the
fold's validation cases are untouched. Without a file every training case of the fold is labelled.

The fold's cases come from nnU-Net's own ``splits_final.json``; when it does not exist yet it is created
exactly as nnU-Net's trainer would (``generate_crossval_split`` over the sorted identifiers, seed 12345, 5
folds), so a later ``nnUNetv2_train`` uses the same split. Choices are nested for a given seed (a random
permutation of the sorted training cases, cut at the requested count): 10 % labelled is a subset of 20 %
labelled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

SPLITS_FILE = "splits_final.json"


class SubsetError(ValueError):
    """A labelled-subset request or file that cannot be honoured (the message says what to change)."""


def subset_file(preprocessed_dataset_folder_base: str | Path, fold: int) -> Path:
    """``<nnUNet_preprocessed>/DatasetXXX/labelled_subset_fold{fold}.json``."""
    return Path(preprocessed_dataset_folder_base) / f"labelled_subset_fold{fold}.json"


def _split_digest(train: list[str], val: list[str]) -> str:
    return hashlib.sha256(json.dumps([sorted(train), sorted(val)]).encode()).hexdigest()[:16]


def fold_keys(
    preprocessed_dataset_folder_base: str | Path,
    fold: int,
    configuration: str = "3d_fullres",
    plans_identifier: str = "nnUNetPlans",
) -> tuple[list[str], list[str], str]:
    """(train, val, source) of ``fold`` as nnU-Net's ``do_split`` computes them.

    Creates ``splits_final.json`` like nnU-Net when missing (identifiers of the configuration's preprocessed
    folder, sorted; 5-fold KFold with seed 12345); a fold beyond the file's folds gets nnU-Net's seeded random
    80:20 split. ``source`` names what was used.
    """
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    base = Path(preprocessed_dataset_folder_base)
    splits_file = base / SPLITS_FILE
    identifiers: list[str] | None = None

    def all_identifiers() -> list[str]:
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans_file = base / f"{plans_identifier}.json"
        if not plans_file.is_file():
            raise SubsetError(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess first")
        data_folder = base / PlansManager(str(plans_file)).get_configuration(configuration).data_identifier
        if not data_folder.is_dir():
            raise SubsetError(
                f"{data_folder} does not exist: run nnUNetv2_plan_and_preprocess -c {configuration}"
            )
        return sorted(infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder)))

    if not splits_file.is_file():
        identifiers = all_identifiers()
        splits = generate_crossval_split(identifiers, seed=12345, n_splits=5)
        tmp = splits_file.with_name(splits_file.name + f".tmp-{os.getpid()}")
        save_json(splits, str(tmp))  # nnU-Net's own writer: the same file nnU-Net would write
        os.replace(tmp, splits_file)
        print(f"created {splits_file} (5-fold split, seed 12345, as nnU-Net does)")
    try:
        splits = json.loads(splits_file.read_text())
    except json.JSONDecodeError as e:
        raise SubsetError(f"{splits_file} is not valid JSON ({e})") from e
    if fold < len(splits):
        return [str(k) for k in splits[fold]["train"]], [str(k) for k in splits[fold]["val"]], SPLITS_FILE
    # nnU-Net's fallback for folds the split file does not define (nnUNetTrainer.do_split)
    keys = np.sort(identifiers if identifiers is not None else all_identifiers())
    rnd = np.random.RandomState(seed=12345 + fold)
    idx_tr = rnd.choice(len(keys), int(len(keys) * 0.8), replace=False)
    idx_val = [i for i in range(len(keys)) if i not in idx_tr]
    return (
        [str(keys[i]) for i in idx_tr],
        [str(keys[i]) for i in idx_val],
        f"random 80:20 split (seed {12345 + fold}; fold {fold} is not in {SPLITS_FILE})",
    )


def _choose(
    train: list[str],
    fold: int,
    count: int | None,
    fraction: float | None,
    cases: list[str] | None,
    val: list[str],
    seed: int,
) -> tuple[list[str], str]:
    if cases is not None:
        unknown = sorted(set(cases) - set(train))
        if unknown:
            in_val = sorted(set(unknown) & set(val))
            raise SubsetError(
                f"not training cases of fold {fold}: {unknown}"
                + (f" ({in_val} are validation cases of this fold)" if in_val else "")
                + f". Training cases: {sorted(train)}"
            )
        return sorted(set(cases)), f"cases={len(set(cases))}"
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise SubsetError(f"--fraction must be in (0, 1], got {fraction}")
        n = math.floor(fraction * len(train) + 1e-9)  # down: never more labels than asked (0.5 of 5 -> 2)
        rule = f"fraction={fraction}"
    else:
        n = int(count)
        if n < 0:
            raise SubsetError(f"--count must be positive, got {n}")
        rule = f"count={n}"
    if n > len(train):
        raise SubsetError(
            f"asked for {n} labelled cases but fold {fold} has only {len(train)} training cases"
        )
    if n == 0:
        return [], rule
    order = np.random.RandomState(seed).permutation(len(train))  # nested choices: count k is a prefix
    ordered = sorted(train)
    return sorted(ordered[i] for i in order[:n]), rule


def create_labelled_subset(
    dataset_name_or_id: str | int,
    fold: int,
    count: int | None = None,
    fraction: float | None = None,
    cases: list[str] | None = None,
    seed: int = 0,
    configuration: str = "3d_fullres",
    plans_identifier: str = "nnUNetPlans",
    overwrite: bool = False,
) -> dict:
    """Choose the labelled cases of ``fold`` (a count, a fraction or an explicit list, seeded), save and
    print.

    Returns the record written to ``labelled_subset_fold{fold}.json``. Asking again with the same rule and
    seed is a no-op (the existing file is returned unchanged); a different rule needs ``overwrite=True``
    because models trained on the old subset would no longer match it.
    """
    from nnunet_llmseg.cli_errors import resolve_dataset

    given = [n for n, v in (("count", count), ("fraction", fraction), ("cases", cases)) if v is not None]
    if len(given) != 1:
        raise SubsetError(
            "give exactly one of count, fraction or cases"
            + (f" (got {' and '.join(given)})" if given else "")
        )
    _name, base = resolve_dataset(dataset_name_or_id, "nnUNet_preprocessed")  # UsageError: one line, exit 2
    train, val, source = fold_keys(base, fold, configuration, plans_identifier)
    labelled, rule = _choose(train, fold, count, fraction, cases, val, seed)
    if not labelled:
        raise SubsetError(
            f"the labelled set is empty ({rule} of {len(train)} training cases): a semi-supervised "
            "run needs at least one labelled case"
        )
    record = {
        "fold": fold,
        "seed": seed,
        "rule": rule,
        "labelled": labelled,
        "unlabelled": sorted(set(train) - set(labelled)),
        "validation": sorted(val),
        "splits_file": source,
        "split_digest": _split_digest(train, val),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    target = subset_file(base, fold)
    if target.is_file() and not overwrite:
        old = load_labelled_subset(base, fold)
        same = (old.get("rule"), old.get("labelled"), old.get("validation")) == (
            rule,
            labelled,
            record["validation"],
        ) and (cases is not None or old.get("seed") == seed)
        if not same:
            raise SubsetError(
                f"{target} exists with another choice ({old.get('rule')}, seed {old.get('seed')}, "
                f"{len(old.get('labelled', []))} labelled); pass overwrite=True / --overwrite to "
                "replace it (models trained on the old subset would no longer match it)"
            )
        print(f"{target} already holds this choice ({rule}, seed {seed}); unchanged")
        return old
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, target)
    print(
        f"fold {fold}: {len(labelled)} labelled ({rule}, seed {seed}), "
        f"{len(record['unlabelled'])} unlabelled, "
        f"{len(val)} validation (split: {source}) -> {target}\n"
        f"labelled: {', '.join(labelled)}"
    )
    return record


def load_labelled_subset(preprocessed_dataset_folder_base: str | Path, fold: int) -> dict | None:
    """The subset record of ``fold``, or None when there is none (then every training case is labelled)."""
    path = subset_file(preprocessed_dataset_folder_base, fold)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SubsetError(
            f"{path} is not valid JSON ({e}); fix it or recreate it with nnunet-llmseg subset"
        ) from e
    if not isinstance(record, dict):
        raise SubsetError(f"{path}: expected a JSON object")
    for key in ("labelled", "unlabelled"):
        if key in record and not (
            isinstance(record[key], list) and all(isinstance(c, str) for c in record[key])
        ):
            raise SubsetError(f"{path}: field {key!r} must be a list of case names")
    if not record.get("labelled"):
        raise SubsetError(f"{path}: field 'labelled' is missing or empty")
    if "fold" in record and record["fold"] != fold:
        raise SubsetError(f"{path}: field 'fold' is {record['fold']}, expected {fold}")
    return record


def split_training_keys(tr_keys: list[str], subset: dict | None) -> tuple[list[str], list[str]]:
    """(labelled, unlabelled) training keys of the fold according to ``subset`` (order of ``tr_keys`` kept).

    Every case the subset names must be a training case of this fold, and the fold's training cases must be
    exactly the subset's labelled + unlabelled cases; otherwise the split changed since the subset was made
    and a :class:`SubsetError` says so (a silent mismatch could put validation cases into training).
    """
    if subset is None:
        return list(tr_keys), []
    labelled = set(subset["labelled"])
    fold = subset.get("fold")
    unknown = sorted(labelled - set(tr_keys))
    if unknown:
        raise SubsetError(
            f"the labelled subset of fold {fold} names cases that are not training cases of this "
            f"fold: {unknown}. The split changed; recreate the subset with "
            "`nnunet-llmseg subset ... --overwrite`."
        )
    if "unlabelled" in subset:
        recorded = labelled | set(subset["unlabelled"])
        if recorded != set(tr_keys):
            missing, extra = sorted(set(tr_keys) - recorded), sorted(recorded - set(tr_keys))
            raise SubsetError(
                f"the labelled subset of fold {fold} does not match this fold's training cases "
                f"(not in the subset: {missing}; no longer training cases: {extra}). The split "
                "changed; recreate the subset with `nnunet-llmseg subset ... --overwrite`."
            )
    return [k for k in tr_keys if k in labelled], [k for k in tr_keys if k not in labelled]


def _run(args: argparse.Namespace) -> int:
    create_labelled_subset(  # SubsetError / UsageError: one `error:` line (nnunet_llmseg.cli.main)
        args.d,
        args.f,
        count=args.count,
        fraction=args.fraction,
        cases=args.cases,
        seed=args.seed,
        configuration=args.c,
        plans_identifier=args.p,
        overwrite=args.overwrite,
    )
    return 0


def register(subparsers) -> None:
    from nnunet_llmseg.cli_errors import non_negative_int

    p = subparsers.add_parser(
        "subset",
        help="choose which training cases of a fold keep their labels",
        description="Writes labelled_subset_fold{F}.json into nnUNet_preprocessed/DatasetXXX. "
        "The fold's other "
        "training cases are used as unlabelled data by the semi-supervised trainers; validation "
        "cases are untouched.",
    )
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-f", type=non_negative_int, required=True, help="fold (as in nnUNetv2_train)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--count", type=int, help="number of labelled cases")
    g.add_argument("--fraction", type=float, help="share of the fold's training cases, rounded down")
    g.add_argument("--cases", nargs="+", help="explicit case names")
    p.add_argument("--seed", type=int, default=0, help="random seed for --count/--fraction (default 0)")
    p.add_argument(
        "-c", default="3d_fullres", help="configuration whose folder lists the cases (default 3d_fullres)"
    )
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing subset file with another rule"
    )
    p.set_defaults(func=_run)
