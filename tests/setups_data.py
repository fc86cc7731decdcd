"""Tiny synthetic datasets for the nnU-Net set-ups of tests/test_setups_regions.py and tests/test_setups_sparse.py,
and the small helpers both files use.

- :func:`write_brats_like`: four MRI channels (T1, T1ce, T2, FLAIR) and BraTS's three nested labels
  (1 peritumoral edema, 2 non-enhancing core, 3 enhancing tumour), trained as nnU-Net does for BraTS: the regions
  whole tumour (1, 2, 3), tumour core (2, 3) and enhancing tumour (3) with ``regions_class_order``.
- :func:`write_sparse_dataset`: the two-structure cases of ``nnunet_llmseg.demo_data`` with nnU-Net's ``ignore``
  label on every other slab of slices (sparse annotation: those voxels are unannotated, not background).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_llmseg.demo_data import LABELS, make_case, write_nifti

BRATS_LABELS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}
BRATS_REGIONS_CLASS_ORDER = [1, 2, 3]
BRATS_CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
IGNORE_VALUE = 3
LLMSEG, TAK = "nnUNetTrainerLLMSeg_2epochs_3it", "nnUNetTrainerTAK_2epochs_3it"


def make_brats_like_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(4 channels float32, label uint8): three nested ellipsoids; each label has its own contrast per channel."""
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = np.array(shape) / 2 + rng.integers(-2, 3, size=3)
    r = np.array(shape) * rng.uniform(0.25, 0.32, size=3)
    dist = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r))
    seg = np.zeros(shape, dtype=np.uint8)
    seg[dist <= 1.0] = 1  # edema: outer shell
    seg[dist <= 0.45] = 2  # non-enhancing core
    seg[(dist <= 0.45) & (dist >= 0.15)] = 3  # enhancing rim around the necrotic centre
    #        T1    T1ce  T2    FLAIR   (added intensity per label 1, 2, 3)
    contrast = np.array([[-0.3, 0.0, 1.5, 2.0],
                         [-1.0, 0.2, 1.0, 1.0],
                         [-0.5, 2.5, 0.8, 1.2]], dtype=np.float32)
    img = rng.normal(1.0, 0.25, size=(4, *shape)).astype(np.float32)
    for lab in (1, 2, 3):
        img[:, seg == lab] += contrast[lab - 1][:, None]
    return img, seg


def write_brats_like(raw_root: Path, name: str, n_labelled: int = 6, n_unlabelled: int = 2,
                     shape: tuple[int, int, int] = (24, 24, 24), seed: int = 0) -> Path:
    folder = Path(raw_root) / name
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_labelled + n_unlabelled):
        img, seg = make_brats_like_case(rng, shape)
        labelled = i < n_labelled
        case = f"brats_{i:03d}" if labelled else f"unl_{i:03d}"
        sub = "imagesTr" if labelled else "imagesUnlabeled"
        for ch in range(4):
            write_nifti(img[ch], folder / sub / f"{case}_{ch:04d}.nii.gz")
        if labelled:
            write_nifti(seg, folder / "labelsTr" / f"{case}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": BRATS_CHANNELS, "labels": BRATS_LABELS, "regions_class_order": BRATS_REGIONS_CLASS_ORDER,
        "numTraining": n_labelled, "file_ending": ".nii.gz", "name": name.split("_", 1)[-1]}, indent=2))
    return folder


def write_sparse_dataset(raw_root: Path, name: str, n_labelled: int = 6, n_unlabelled: int = 2,
                         shape: tuple[int, int, int] = (24, 24, 24), seed: int = 0,
                         spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    """Labelled cases whose slabs of 3 voxels along the last axis alternate annotated / unannotated (``ignore``)."""
    folder = Path(raw_root) / name
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_labelled):
        img, seg = make_case(rng, shape)
        seg[:, :, (np.arange(shape[2]) // 3) % 2 == 1] = IGNORE_VALUE
        write_nifti(img, folder / "imagesTr" / f"sparse_{i:03d}_0000.nii.gz", spacing)
        write_nifti(seg, folder / "labelsTr" / f"sparse_{i:03d}.nii.gz", spacing)
    for i in range(n_unlabelled):
        img, _ = make_case(rng, shape)
        write_nifti(img, folder / "imagesUnlabeled" / f"unl_{i:03d}_0000.nii.gz", spacing)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {**LABELS, "ignore": IGNORE_VALUE}, "numTraining": n_labelled,
        "file_ending": ".nii.gz", "name": name.split("_", 1)[-1]}, indent=2))
    return folder


def set_batch_size(plans_file: Path, **sizes: int) -> None:
    plans = json.loads(plans_file.read_text())
    for cfg, bs in sizes.items():
        plans["configurations"][cfg]["batch_size"] = bs
    plans_file.write_text(json.dumps(plans, indent=2))


def copy_images(raw: Path, cases: list[str], n_channels: int, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for c in cases:
        for ch in range(n_channels):
            shutil.copy(raw / "imagesTr" / f"{c}_{ch:04d}.nii.gz", dest)
    return dest


def labels_in(folder: Path, case: str) -> set[int]:
    return set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz")))).tolist())


def model_folder(env, dataset: str, trainer: str, plans: str, configuration: str) -> Path:
    return env.results / dataset / f"{trainer}__{plans}__{configuration}"
