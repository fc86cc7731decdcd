"""Labelled subsets: nnU-Net's split, reproducible and nested choices, validation untouched, clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from nnunet_llmseg.data.labelled_subset import (
    SubsetError,
    create_labelled_subset,
    fold_keys,
    load_labelled_subset,
    split_training_keys,
    subset_file,
)

DS = 921


@pytest.fixture(scope="module")
def pre(tiny_dataset) -> Path:
    """Dataset921: a copy of the tiny dataset's preprocessed folder without splits_final.json or subsets."""
    name = f"Dataset{DS}_LLMSegSubset"
    target = tiny_dataset.env.preprocessed / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(
        tiny_dataset.preprocessed_folder,
        target,
        ignore=shutil.ignore_patterns(
            "labelled_subset_*", "splits_final.json", "*_unlabeled*", "text_priors*", ".*.lock"
        ),
    )
    plans = json.loads((target / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = name
    (target / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
    return target


def test_split_is_created_exactly_as_nnunet_does(pre):
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    assert not (pre / "splits_final.json").exists()
    assert load_labelled_subset(pre, 0) is None, "no file: every training case is labelled"
    record = create_labelled_subset(DS, 0, count=2, seed=0)
    splits = json.loads((pre / "splits_final.json").read_text())
    ids = sorted(f"tiny_{i:03d}" for i in range(6))
    assert splits == json.loads(json.dumps(generate_crossval_split(ids, seed=12345, n_splits=5)))
    assert record["splits_file"] == "splits_final.json" and record["fold"] == 0 and record["seed"] == 0
    assert set(record) >= {"rule", "labelled", "unlabelled", "validation", "created_at"}
    # an existing splits_final.json is used as it is (the user's own split wins)
    custom = [{"train": ids[:3], "val": ids[3:]}, *splits[1:]]
    (pre / "splits_final.json").write_text(json.dumps(custom))
    try:
        rec = create_labelled_subset(DS, 0, count=1, seed=0, overwrite=True)
        assert set(rec["labelled"]) | set(rec["unlabelled"]) == set(ids[:3]) and rec["validation"] == ids[3:]
    finally:
        (pre / "splits_final.json").write_text(json.dumps(splits))
    # a fold the file does not define: nnU-Net's seeded random 80:20 split
    train, val, source = fold_keys(pre, 7)
    rnd = np.random.RandomState(seed=12345 + 7)
    idx_tr = rnd.choice(6, int(6 * 0.8), replace=False)
    assert train == [ids[i] for i in idx_tr] and sorted(val) == sorted(set(ids) - set(train))
    assert "80:20" in source


def test_choices_are_reproducible_nested_and_exclude_validation(pre):
    splits = (
        json.loads((pre / "splits_final.json").read_text()) if (pre / "splits_final.json").exists() else None
    )
    rec = create_labelled_subset(DS, 1, count=2, seed=4)
    splits = splits or json.loads((pre / "splits_final.json").read_text())
    train, val = splits[1]["train"], splits[1]["val"]
    assert len(rec["labelled"]) == 2 and set(rec["labelled"]) <= set(train)
    assert sorted(rec["unlabelled"]) == sorted(set(train) - set(rec["labelled"]))
    assert rec["validation"] == sorted(val) and not set(val) & (set(rec["labelled"]) | set(rec["unlabelled"]))
    # same rule + seed: the same choice, file left as it is
    before = subset_file(pre, 1).read_text()
    assert create_labelled_subset(DS, 1, count=2, seed=4)["labelled"] == rec["labelled"]
    assert subset_file(pre, 1).read_text() == before
    # nested for a seed: count 1 within count 2 within count 3; a fraction rounds down (0.5 of 5 -> 2)
    one = create_labelled_subset(DS, 1, count=1, seed=4, overwrite=True)["labelled"]
    three = create_labelled_subset(DS, 1, count=3, seed=4, overwrite=True)["labelled"]
    assert set(one) <= set(rec["labelled"]) <= set(three)
    half = create_labelled_subset(DS, 1, fraction=0.5, seed=4, overwrite=True)
    assert half["labelled"] == rec["labelled"] and half["rule"] == "fraction=0.5"
    # different seeds do choose differently
    choices = {
        tuple(create_labelled_subset(DS, 1, count=2, seed=s, overwrite=True)["labelled"]) for s in range(8)
    }
    assert len(choices) > 1
    explicit = create_labelled_subset(DS, 1, cases=[train[0], train[0]], overwrite=True)
    assert explicit["labelled"] == [train[0]] and explicit["rule"] == "cases=1"
    assert load_labelled_subset(pre, 1)["labelled"] == [train[0]]


def test_errors_name_the_problem(pre):
    create_labelled_subset(DS, 2, count=1, seed=0, overwrite=True)
    splits = json.loads((pre / "splits_final.json").read_text())
    train, val = splits[2]["train"], splits[2]["val"]
    with pytest.raises(SubsetError, match="labelled set is empty"):
        create_labelled_subset(DS, 2, count=0, overwrite=True)
    with pytest.raises(SubsetError, match="labelled set is empty"):
        create_labelled_subset(DS, 2, fraction=0.15, overwrite=True)
    with pytest.raises(SubsetError, match=r"not training cases of fold 2: \['nope', 'zzz'\]"):
        create_labelled_subset(DS, 2, cases=["zzz", "nope", train[0]], overwrite=True)
    with pytest.raises(SubsetError, match="are validation cases"):
        create_labelled_subset(DS, 2, cases=[val[0]], overwrite=True)
    with pytest.raises(SubsetError, match="got count and fraction"):
        create_labelled_subset(DS, 2, count=1, fraction=0.5)
    with pytest.raises(SubsetError, match=f"fold 2 has only {len(train)} training cases"):
        create_labelled_subset(DS, 2, count=len(train) + 1, overwrite=True)
    with pytest.raises(SubsetError, match="exists with another choice"):
        create_labelled_subset(DS, 2, count=2, seed=0)
    assert len(load_labelled_subset(pre, 2)["labelled"]) == 1, "failed requests leave the file alone"
    assert not list(pre.glob("*.tmp-*"))


def test_split_training_keys_checks_the_fold(pre):
    rec = create_labelled_subset(DS, 3, count=2, seed=1, overwrite=True)
    tr = json.loads((pre / "splits_final.json").read_text())[3]["train"]
    labelled, unlabelled = split_training_keys(tr, rec)
    assert sorted(labelled) == rec["labelled"] and sorted(unlabelled) == rec["unlabelled"]
    assert labelled == [k for k in tr if k in rec["labelled"]], "nnU-Net's key order is kept"
    assert split_training_keys(tr, None) == (tr, [])
    with pytest.raises(SubsetError, match=r"not training cases of this fold.*split changed"):
        split_training_keys([k for k in tr if k != rec["labelled"][0]], rec)
    with pytest.raises(SubsetError, match=r"not in the subset: \['new_case'\]"):
        split_training_keys([*tr, "new_case"], rec)
    bad = subset_file(pre, 4)
    bad.write_text("{not json")
    try:
        with pytest.raises(SubsetError, match=r"labelled_subset_fold4\.json is not valid JSON"):
            load_labelled_subset(pre, 4)
        bad.write_text(json.dumps({"fold": 4, "labelled": []}))
        with pytest.raises(SubsetError, match="'labelled' is missing or empty"):
            load_labelled_subset(pre, 4)
    finally:
        bad.unlink()


def test_subset_cli(pre, tiny_dataset):
    env = tiny_dataset.env.environ()
    proc = run_cli(
        ["nnunet-llmseg", "subset", "-d", str(DS), "-f", "4", "--fraction", "0.5", "--seed", "3"], env=env
    )
    rec = load_labelled_subset(pre, 4)
    assert len(rec["labelled"]) == 2 and "labelled: " + ", ".join(rec["labelled"]) in proc.stdout
    exe = str(Path(sys.executable).parent / "nnunet-llmseg")
    fail = subprocess.run(
        [exe, "subset", "-d", str(DS), "-f", "4", "--count", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fail.returncode == 1 and "exists with another choice" in fail.stderr
    ok = run_cli(
        ["nnunet-llmseg", "subset", "-d", str(DS), "-f", "4", "--cases", rec["labelled"][0], "--overwrite"],
        env=env,
    )
    assert load_labelled_subset(pre, 4)["labelled"] == [rec["labelled"][0]] and "cases=1" in ok.stdout
