"""Prepare ACDC (SSL4MIS semi-supervised split) for the benchmarks: raw dataset, split, 2d plans, priors, subset.

Every step is a real command a user would run, in the same workspace as ``prepare_hippocampus.py`` (dataset
id 27, as in nnU-Net's own ACDC instructions):

1. ``nnUNet_raw/Dataset027_ACDC``: ``imagesTr``/``labelsTr`` link to the read-only copy in ``../shared/data/ACDC``
   (nothing is copied), ``dataset.json`` and the data's README (licence and attribution) are copied;
2. ``nnUNetv2_plan_and_preprocess -d 27 -c 2d`` (ACDC is a 2D benchmark: about 10 slices per volume);
3. ``splits_final.json`` with one fold, fold 0 = SSL4MIS ``train`` (70 patients, 140 volumes) vs ``val``
   (10 patients, 20 volumes) from ``splits_ssl4mis.json``; nnU-Net uses it as is;
4. text priors from the offline knowledge base (``cardiac.json`` knows RV, MLV and LVC) and the offline MiniLM
   encoder: ``python -m prior_generation -d 27``;
5. the labelled subset of fold 0: the volumes (both frames) of the 3 or 7 SSL4MIS labelled patients, via
   ``nnunet-llmseg subset -d 27 -f 0 --cases ...``; the other 134 / 126 training volumes become unlabelled.

    python benchmarks/prepare_acdc.py --labelled-patients 7      # then: source <workspace>/env.sh

``--in-plane-spacing S`` (S > 1) also plans and preprocesses ``2d`` at S-pixel spacing as plans ``nnUNetPlans_sp{S}``
(``plan_coarse``): a network trained on the coarser grid costs about S**2 less per iteration, so a CPU schedule runs
several times more iterations; nnU-Net resamples the predictions back to the original grid, where they are scored.
Train on it with ``nnunet-llmseg benchmark -p nnUNetPlans_sp{S}``.

Steps already done are skipped. The subset file holds one choice per fold: switching between 3 and 7 patients
rewrites it (say so with ``--labelled-patients``); the benchmark refuses to reuse runs trained on the other one,
so give each choice its own results folder (``nnunet-llmseg benchmark ... --results DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_hippocampus import REPO, run, workspace_env

DEFAULT_ACDC = REPO.parent / "shared" / "data" / "ACDC"
DATASET_ID = 27
DATASET_NAME = "Dataset027_ACDC"
CONFIGURATION = "2d"
LABELLED_SETS = {3: "labelled_3_patients", 7: "labelled_7_patients"}


class PrepareError(RuntimeError):
    """The ACDC folder or the workspace is not as expected (the message names the file)."""


def read_ssl4mis_split(acdc: Path) -> dict[str, list[str]]:
    """``splits_ssl4mis.json``, checked against ``imagesTr`` (every listed volume must exist)."""
    path = acdc / "splits_ssl4mis.json"
    try:
        split = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PrepareError(f"cannot read {path}: {e}") from e
    for key in ("train", "val", *LABELLED_SETS.values()):
        if not isinstance(split.get(key), list) or not split[key]:
            raise PrepareError(f"{path}: field {key!r} missing or empty")
    images = {p.name[: -len("_0000.nii.gz")] for p in (acdc / "imagesTr").glob("*_0000.nii.gz")}
    for key in ("train", "val", *LABELLED_SETS.values()):
        missing = sorted(set(split[key]) - images)
        if missing:
            raise PrepareError(f"{path}: {key} lists volumes without an image in {acdc / 'imagesTr'}: {missing[:5]}")
    if set(split["train"]) & set(split["val"]):
        raise PrepareError(f"{path}: train and val overlap")
    for key in LABELLED_SETS.values():
        if not set(split[key]) <= set(split["train"]):
            raise PrepareError(f"{path}: {key} is not a subset of train")
    return split


def write_splits(pre: Path, split: dict[str, list[str]]) -> None:
    """``splits_final.json`` with fold 0 = SSL4MIS train vs val; an existing different split is an error."""
    target = pre / "splits_final.json"
    wanted = [{"train": sorted(split["train"]), "val": sorted(split["val"])}]
    if target.is_file():
        try:
            current = json.loads(target.read_text())
        except json.JSONDecodeError:
            current = None
        if isinstance(current, list) and current and sorted(current[0].get("train", [])) == wanted[0]["train"] \
                and sorted(current[0].get("val", [])) == wanted[0]["val"]:
            return
        raise PrepareError(f"{target} exists with another fold 0 than the SSL4MIS split; models trained on it "
                           "would not be comparable. Move it away to use the SSL4MIS split.")
    pre.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(wanted, indent=2))
    os.replace(tmp, target)
    print(f"wrote {target}: fold 0 = SSL4MIS train ({len(wanted[0]['train'])}) vs val ({len(wanted[0]['val'])})")


def coarse_plans_name(in_plane_spacing: float) -> str:
    """Plans identifier of the copy planned at ``in_plane_spacing`` pixels (``nnUNetPlans_sp2`` for 2)."""
    if in_plane_spacing < 1.0:
        raise PrepareError(f"--in-plane-spacing {in_plane_spacing}: must be at least 1 (pixels)")
    return f"nnUNetPlans_sp{in_plane_spacing:g}".replace(".", "p")


def plan_coarse(dataset_id: int, pre: Path, env: dict, in_plane_spacing: float, np_: int) -> str:
    """Plan and preprocess ``2d`` at ``in_plane_spacing`` pixels as plans ``nnUNetPlans_sp{S}``; returns its name.

    The slice axis (axis 0, ~10 slices) gets the largest target spacing, S + 1: nnU-Net's planner puts the axis of
    largest target spacing first, and with ``1 S S`` it would make an in-plane axis the slice axis (its ``2d``
    would cut the volumes along the wrong axis). ``2d`` keeps the original spacing of the slice axis anyway.
    """
    name = coarse_plans_name(in_plane_spacing)
    if not (pre / f"{name}.json").is_file():
        run(["nnUNetv2_plan_experiment", "-d", str(dataset_id), "-overwrite_target_spacing", str(in_plane_spacing + 1),
             str(in_plane_spacing), str(in_plane_spacing), "-overwrite_plans_name", name], env)
    if not (pre / f"{name}_{CONFIGURATION}").is_dir():
        run(["nnUNetv2_preprocess", "-d", str(dataset_id), "-plans_name", name, "-c", CONFIGURATION,
             "-np", str(np_)], env)
    return name


def prepare(workspace: Path, acdc: Path, labelled_patients: int, encoder: str, np_: int,
            in_plane_spacing: float = 1.0) -> dict:
    if in_plane_spacing != 1.0:
        coarse_plans_name(in_plane_spacing)  # refuses a bad spacing before minutes of planning
    workspace = workspace.resolve()
    env = workspace_env(workspace)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    split = read_ssl4mis_split(acdc)
    raw = Path(env["nnUNet_raw"]) / DATASET_NAME
    pre = Path(env["nnUNet_preprocessed"]) / DATASET_NAME
    if not (raw / "dataset.json").is_file():
        raw.mkdir(parents=True, exist_ok=True)
        for sub in ("imagesTr", "labelsTr"):
            if not (raw / sub).exists():
                (raw / sub).symlink_to((acdc / sub).resolve(), target_is_directory=True)
        if (acdc / "README.md").is_file():
            shutil.copy(acdc / "README.md", raw / "README_ACDC.md")  # licence and attribution travel with the copy
        shutil.copy(acdc / "dataset.json", raw / "dataset.json")
    plans = pre / "nnUNetPlans.json"
    if not plans.is_file() or not (pre / f"nnUNetPlans_{CONFIGURATION}").is_dir():
        run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", str(np_),
             "--verify_dataset_integrity"], env)
    if in_plane_spacing != 1.0:
        plan_coarse(DATASET_ID, pre, env, in_plane_spacing, np_)
    write_splits(pre, split)
    if not (pre / "text_priors.safetensors").is_file():
        run([sys.executable, "-m", "prior_generation", "-d", str(DATASET_ID), "--llm", "offline", "--encoder", encoder],
            env)
    cases = sorted(split[LABELLED_SETS[labelled_patients]])
    subset_cmd = ["nnunet-llmseg", "subset", "-d", str(DATASET_ID), "-f", "0", "-c", CONFIGURATION, "--cases", *cases]
    subset_file = pre / "labelled_subset_fold0.json"
    if subset_file.is_file():
        current = json.loads(subset_file.read_text()).get("labelled")
        if sorted(current or []) != cases:
            print(f"note: {subset_file} held {len(current or [])} labelled volumes; switching to the "
                  f"{labelled_patients} SSL4MIS patients ({len(cases)} volumes)")
            subset_cmd.append("--overwrite")
    run(subset_cmd, env)
    (workspace / "env.sh").write_text("".join(f"export {k}={env[k]}\n"
                                              for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")))
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", type=Path, default=REPO / "benchmarks" / "results" / "workspace")
    p.add_argument("--acdc", type=Path, default=DEFAULT_ACDC, help="the ACDC folder (with splits_ssl4mis.json)")
    p.add_argument("--labelled-patients", type=int, choices=sorted(LABELLED_SETS), default=7,
                   help="SSL4MIS labelled set: 3 (5 %%) or 7 (10 %%) patients, both frames each")
    p.add_argument("--encoder", default="minilm-l6-v2", help="text encoder for the priors (offline default)")
    p.add_argument("-np", type=int, default=2)
    p.add_argument("--in-plane-spacing", type=float, default=1.0,
                   help="also plan and preprocess at this in-plane spacing in pixels (> 1: coarser, cheaper)")
    args = p.parse_args(argv)
    if not (args.acdc / "dataset.json").is_file():
        print(f"ACDC not found at {args.acdc}", file=sys.stderr)
        return 2
    try:
        prepare(args.workspace, args.acdc, args.labelled_patients, args.encoder, args.np, args.in_plane_spacing)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ready: source {args.workspace.resolve() / 'env.sh'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
