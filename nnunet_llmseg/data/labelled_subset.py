"""Which of a fold's training cases keep their labels: reproducible, reviewable subset files.

``nnunet-llmseg subset -d D -f 0 --count 10 --seed 0`` writes ``labelled_subset_fold0.json`` into the dataset's
``nnUNet_preprocessed`` folder. The trainers read it: the listed cases are the labelled training set, the fold's
other training cases become unlabelled (their labels are never read during training), and the fold's validation
cases are untouched. Without a file every training case of the fold is labelled.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


class SubsetError(ValueError):
    """A labelled-subset request or file that cannot be honoured."""


def subset_file(preprocessed_dataset_folder_base: str | Path, fold: int) -> Path:
    return Path(preprocessed_dataset_folder_base) / f"labelled_subset_fold{fold}.json"


def _fold_keys(preprocessed_base: Path, configuration: str, plans_identifier: str, fold: int
               ) -> tuple[list[str], list[str], Path]:
    """The fold's (train, val) keys from ``splits_final.json``, created exactly as nnU-Net does when missing."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    splits_file = preprocessed_base / "splits_final.json"
    if not splits_file.is_file():
        plans = PlansManager(str(preprocessed_base / f"{plans_identifier}.json"))
        data_folder = preprocessed_base / plans.get_configuration(configuration).data_identifier
        if not data_folder.is_dir():
            raise SubsetError(f"{data_folder} does not exist: run nnUNetv2_plan_and_preprocess -c {configuration}")
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        ids = sorted(infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder)))
        splits = generate_crossval_split(ids, seed=12345, n_splits=5)
        splits_file.write_text(json.dumps(splits, indent=4))
    splits = json.loads(splits_file.read_text())
    if fold >= len(splits):
        raise SubsetError(f"fold {fold} is not in {splits_file} ({len(splits)} folds)")
    return list(splits[fold]["train"]), list(splits[fold]["val"]), splits_file


def create_labelled_subset(dataset_name_or_id: str | int, fold: int, count: int | None = None,
                           fraction: float | None = None, cases: list[str] | None = None, seed: int = 0,
                           configuration: str = "3d_fullres", plans_identifier: str = "nnUNetPlans",
                           overwrite: bool = False) -> dict:
    """Choose the labelled cases of ``fold`` (a count, a fraction or an explicit list, seeded) and save them."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    given = sum(x is not None for x in (count, fraction, cases))
    if given != 1:
        raise SubsetError("give exactly one of --count, --fraction or --cases")
    base = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(dataset_name_or_id)
    train, val, splits_file = _fold_keys(base, configuration, plans_identifier, fold)
    if cases is not None:
        unknown = sorted(set(cases) - set(train))
        if unknown:
            in_val = sorted(set(unknown) & set(val))
            raise SubsetError(f"not training cases of fold {fold}: {unknown}"
                              + (f" ({in_val} are validation cases)" if in_val else ""))
        labelled, rule = sorted(set(cases)), f"cases={len(set(cases))}"
    else:
        if fraction is not None:
            if not 0 < fraction <= 1:
                raise SubsetError(f"--fraction must be in (0, 1], got {fraction}")
            n, rule = round(fraction * len(train)), f"fraction={fraction}"
        else:
            n, rule = int(count), f"count={count}"
        if n > len(train):
            raise SubsetError(f"asked for {n} labelled cases but fold {fold} has {len(train)} training cases")
        rng = np.random.RandomState(seed)
        labelled = sorted(rng.choice(sorted(train), size=n, replace=False).tolist()) if n > 0 else []
    if not labelled:
        raise SubsetError("the labelled set is empty: a semi-supervised run needs at least one labelled case")
    record = {"fold": fold, "seed": seed, "rule": rule, "labelled": labelled,
              "unlabelled": sorted(set(train) - set(labelled)), "validation": sorted(val),
              "splits_file": str(splits_file.name), "created_at": datetime.now(timezone.utc).isoformat()}
    target = subset_file(base, fold)
    if target.is_file() and not overwrite:
        old = json.loads(target.read_text())
        if old.get("labelled") != labelled:
            raise SubsetError(f"{target} exists with another choice ({old.get('rule')}, seed {old.get('seed')}); "
                              "pass --overwrite to replace it (runs trained on the old subset no longer match)")
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, target)
    print(f"fold {fold}: {len(labelled)} labelled ({rule}, seed {seed}), {len(record['unlabelled'])} unlabelled, "
          f"{len(val)} validation -> {target}\nlabelled: {', '.join(labelled)}")
    return record


def load_labelled_subset(preprocessed_dataset_folder_base: str | Path, fold: int) -> dict | None:
    """The subset record of ``fold``, or None when there is none (then every training case is labelled)."""
    path = subset_file(preprocessed_dataset_folder_base, fold)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SubsetError(f"{path} is not valid JSON ({e}); fix it or recreate it with nnunet-llmseg subset") from e
    if not record.get("labelled"):
        raise SubsetError(f"{path}: field 'labelled' is missing or empty")
    return record


def split_training_keys(tr_keys: list[str], subset: dict | None) -> tuple[list[str], list[str]]:
    """(labelled, unlabelled) training keys of the fold according to ``subset``."""
    if subset is None:
        return list(tr_keys), []
    labelled = list(subset["labelled"])
    unknown = sorted(set(labelled) - set(tr_keys))
    if unknown:
        raise SubsetError(f"labelled subset of fold {subset.get('fold')} names cases that are not training cases "
                          f"of this fold: {unknown}. The split changed; recreate it with nnunet-llmseg subset.")
    keep = set(labelled)
    return [k for k in tr_keys if k in keep], [k for k in tr_keys if k not in keep]


def _run(args: argparse.Namespace) -> int:
    create_labelled_subset(args.d, args.f, count=args.count, fraction=args.fraction, cases=args.cases,
                           seed=args.seed, configuration=args.c, plans_identifier=args.p, overwrite=args.overwrite)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("subset", help="choose which training cases of a fold keep their labels")
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-f", type=int, required=True, help="fold")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--count", type=int)
    g.add_argument("--fraction", type=float)
    g.add_argument("--cases", nargs="+")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-c", default="3d_fullres")
    p.add_argument("-p", default="nnUNetPlans")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run)
