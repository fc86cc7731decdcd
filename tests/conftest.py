"""Shared fixtures: an isolated nnU-Net environment and a tiny synthetic dataset, planned and preprocessed once.

The tiny dataset (``Dataset901_LLMSegTiny``) has a few 20 x 20 x 28 single-channel cases with two foreground labels
(a bright ellipsoid = label 1, a darker box next to it = label 2) plus unlabelled images in
``imagesUnlabeled/``. ``nnUNetv2_plan_and_preprocess`` runs for real, once per test session. The volume is the
smallest the two structures fit in (``TINY_SHAPE``): every real ``nnUNetv2_train`` step of the suite is a 3D
convolution over the whole patch, so its voxel count sets much of the suite's time. For the same reason the test
datasets' networks are 4x narrower than nnU-Net plans them (``narrow_planned_networks``, as in the demo): the tests
check what our code does with nnU-Net's planned architecture, not how well a wide network segments tiny volumes.
Predictions run nnU-Net's sequential path (``nnUNetv2_predict -npp 0 -nps 0``): each worker process nnU-Net
spawns imports torch and nnU-Net anew (some 10 s of CPU on a slow core), more than predicting two tiny images
costs; one prediction in test_setups_regions.py keeps the worker path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nnunet_llmseg.demo import DEMO_SHAPE, narrow_planned_networks
from nnunet_llmseg.demo_data import write_synthetic_dataset

# Two OpenMP threads that spin-wait for each other are up to 10x slower on a loaded 2-core machine (the CI runner,
# or a test run beside a benchmark); sleeping waiters cost nothing when the cores are free. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "Task04_Hippocampus"
ACDC = SHARED_DATA / "ACDC"

TINY_ID = 901
TINY_NAME = "Dataset901_LLMSegTiny"


def _bin(name: str) -> str:
    """Console script from the interpreter's own environment (works inside a venv without activation)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run_cli(args: list[str], env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a console script, failing the test with its output if it exits non-zero."""
    cmd = [_bin(args[0]), *args[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def predictor_from_model_folder(model: Path, mode: str, checkpoint_name: str = "checkpoint_final.pth"):
    """nnU-Net's predictor built from a model folder in this process (CPU, no mirroring), with
    ``NNUNET_LLMSEG_PREDICT_NETWORKS=mode`` while it builds the network (the variable is read only then)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    before = os.environ.get("NNUNET_LLMSEG_PREDICT_NETWORKS")
    os.environ["NNUNET_LLMSEG_PREDICT_NETWORKS"] = mode
    try:
        predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,), checkpoint_name=checkpoint_name)
    finally:
        if before is None:
            os.environ.pop("NNUNET_LLMSEG_PREDICT_NETWORKS", None)
        else:
            os.environ["NNUNET_LLMSEG_PREDICT_NETWORKS"] = before
    return predictor


#: shape of the tiny dataset's volumes: the demo's, the smallest the two structures fit in (see ``DEMO_SHAPE``)
TINY_SHAPE = DEMO_SHAPE


@dataclass
class NNUNetEnv:
    raw: Path
    preprocessed: Path
    results: Path

    def environ(self, **extra: str) -> dict:
        env = dict(os.environ)
        env.update(
            nnUNet_raw=str(self.raw),
            nnUNet_preprocessed=str(self.preprocessed),
            nnUNet_results=str(self.results),
            nnUNet_n_proc_DA="1",
            nnUNet_def_n_proc="1",
            nnUNet_compile="false",
            OMP_NUM_THREADS="2",
            OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env


@dataclass
class TinyDataset:
    env: NNUNetEnv
    dataset_id: int
    name: str
    raw_folder: Path
    preprocessed_folder: Path
    labelled_cases: list[str]
    unlabelled_cases: list[str]


@pytest.fixture(scope="session")
def nnunet_env(tmp_path_factory) -> NNUNetEnv:
    """nnU-Net's three folders in a session temp dir, exported for this process and its subprocesses."""
    base = tmp_path_factory.mktemp("nnunet")
    env = NNUNetEnv(base / "raw", base / "preprocessed", base / "results")
    for p in (env.raw, env.preprocessed, env.results):
        p.mkdir(parents=True, exist_ok=True)
    for k, v in env.environ().items():
        if k.startswith("nnUNet") or k in ("OMP_NUM_THREADS",):
            os.environ[k] = v
    return env


def build_tiny_raw_dataset(raw_root: Path, n_labelled: int = 6, n_unlabelled: int = 3, seed: int = 0) -> Path:
    """Dataset901's raw folder: the demo's synthetic cases at ``TINY_SHAPE``, named ``tiny_000``, ..."""
    return write_synthetic_dataset(raw_root, TINY_NAME, n_labelled, n_unlabelled, seed=seed, shape=TINY_SHAPE,
                                   case_prefix="tiny")


@pytest.fixture(scope="session")
def tiny_dataset(nnunet_env: NNUNetEnv) -> TinyDataset:
    """Dataset901: 6 labelled + 3 unlabelled ``TINY_SHAPE`` cases, planned and preprocessed (3d_fullres) for real."""
    raw_folder = build_tiny_raw_dataset(nnunet_env.raw)
    run_cli(
        ["nnUNetv2_plan_and_preprocess", "-d", str(TINY_ID), "-c", "3d_fullres", "-np", "1"],
        env=nnunet_env.environ(),
    )
    narrow_planned_networks(nnunet_env.preprocessed / TINY_NAME / "nnUNetPlans.json")
    return TinyDataset(
        env=nnunet_env,
        dataset_id=TINY_ID,
        name=TINY_NAME,
        raw_folder=raw_folder,
        preprocessed_folder=nnunet_env.preprocessed / TINY_NAME,
        labelled_cases=[f"tiny_{i:03d}" for i in range(6)],
        unlabelled_cases=[f"unl_{i:03d}" for i in range(3)],
    )


@pytest.fixture(scope="session")
def hippocampus_msd() -> Path:
    """The real MSD Task04 folder; skips cleanly when ../shared is absent."""
    if not (HIPPOCAMPUS / "dataset.json").is_file():
        pytest.skip(f"real data not available at {HIPPOCAMPUS}")
    return HIPPOCAMPUS


#: the test files that run real nnU-Net trainings, longest first (sequential seconds on a slow 2-core machine,
#: 2026-12-05: 337, 218, 112, 184, 124, 84). The README's ``pytest -n 2 --dist loadfile --no-loadscope-reorder``
#: gives each worker whole files in this order, so that the two longest start at once and the short files fill the
#: gaps at the end (xdist's own order, most tests first, left the two longest for last). ``benchmark`` comes before
#: ``setups_sparse`` because xdist hands each worker a second file at the start: 337 + 112 beside 218 + 184.
LONGEST_FILES_FIRST = ("test_setups_regions.py", "test_demo.py", "test_benchmark.py", "test_setups_sparse.py",
                       "test_semi_supervised.py", "test_bad_inputs.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the long files first (stable: each file's tests keep their order), with or without xdist."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
