"""Unlabelled data: preprocessing identical to nnU-Net's, MSD conversion, and the unlabelled loader.

Everything runs on private copies (Dataset911-914) of the session's tiny dataset, so the session fixture stays
untouched; only the CLI test runs on Dataset901 itself, as a user would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import TINY_SHAPE, run_cli
from nnunet_llmseg.data.unlabeled_loader import (
    UnlabeledDataLoader,
    build_unlabeled_dataset,
    get_unlabeled_batch_size,
    mask_channels_of,
)
from nnunet_llmseg.data.unlabeled_preprocessing import (
    UnlabeledImageError,
    convert_msd_unlabeled,
    list_unlabeled_cases,
    preprocess_unlabeled,
    unlabeled_needs_preprocessing,
    unlabeled_preprocessed_folder,
)

CFG = "3d_fullres"
DATA_ID = "nnUNetPlans_3d_fullres"


def copy_tiny(tiny, new_id: int, suffix: str) -> tuple[str, Path, Path]:
    """Raw + preprocessed copy of the tiny dataset under a new id (plans renamed; no subsets, no
    unlabelled)."""
    name = f"Dataset{new_id:03d}_{suffix}"
    raw, pre = tiny.env.raw / name, tiny.env.preprocessed / name
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(pre, ignore_errors=True)
    shutil.copytree(tiny.raw_folder, raw)
    shutil.copytree(
        tiny.preprocessed_folder,
        pre,
        ignore=shutil.ignore_patterns(
            "labelled_subset_*", "text_priors*", "*_unlabeled*", ".*.lock", "splits_final.json"
        ),
    )
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = name
    (pre / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
    return name, raw, pre


def add_mask_plans(pre: Path) -> str:
    """A plans variant identical to nnU-Net's but with use_mask_for_norm (as nnU-Net sets it for brain
    MRI)."""
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["plans_name"] = "nnUNetPlansMask"
    plans["configurations"][CFG]["use_mask_for_norm"] = [True]
    plans["configurations"][CFG]["data_identifier"] = "nnUNetPlansMask_3d_fullres"
    (pre / "nnUNetPlansMask.json").write_text(json.dumps(plans, indent=2))
    return "nnUNetPlansMask"


@pytest.fixture(scope="module")
def bits(tiny_dataset):
    """Dataset911 with a labelled training image copied into imagesUnlabeled and one with a zero border."""
    name, raw, pre = copy_tiny(tiny_dataset, 911, "LLMSegUnlData")
    shutil.copy(raw / "imagesTr" / "tiny_000_0000.nii.gz", raw / "imagesUnlabeled" / "copy000_0000.nii.gz")
    img = sitk.ReadImage(str(raw / "imagesTr" / "tiny_001_0000.nii.gz"))
    arr = sitk.GetArrayFromImage(img)
    arr[:, :, :4] = 0  # a zero slab nnU-Net crops away ...
    # ... and a zero corner it keeps and (with use_mask_for_norm) masks. Only where tiny_001's label is background:
    # the reference below preprocesses this image with that label, and nnU-Net keeps labelled voxels inside its mask
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / "tiny_001.nii.gz")))
    corner = np.zeros(arr.shape, dtype=bool)
    corner[:12, :12, 4:14] = True
    arr[corner & (label == 0)] = 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(raw / "imagesUnlabeled" / "border001_0000.nii.gz"))
    folder = preprocess_unlabeled(911, CFG)
    return {"name": name, "raw": raw, "pre": pre, "folder": folder, "tiny": tiny_dataset}


# ---- preprocessing -----------------------------------------------------------------------------------------


def test_unlabelled_preprocessing_is_nnunets_bit_for_bit(bits):
    folder, pre = bits["folder"], bits["pre"]
    assert folder == unlabeled_preprocessed_folder(pre, DATA_ID) == pre / f"{DATA_ID}_unlabeled"
    ours = blosc2.open(str(folder / "copy000.b2nd"), mode="r")
    theirs = blosc2.open(str(pre / DATA_ID / "tiny_000.b2nd"), mode="r")
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape
    assert np.array_equal(ours[:], theirs[:])
    assert ours.chunks == theirs.chunks and ours.blocks == theirs.blocks, "nnU-Net's blosc2 layout"
    assert not (pre / DATA_ID / "copy000.b2nd").exists(), "never written into nnU-Net's own folder"
    props = json.loads((folder / "copy000.json").read_text())
    assert props["shape_before_cropping"] == list(TINY_SHAPE) and props["spacing"] == [1.0, 1.0, 1.0]
    assert props["nnunet_llmseg"]["source_files"] == ["copy000_0000.nii.gz"]
    assert not list(folder.glob("*.pkl")) and not list(folder.glob("*_mask.b2nd")), (
        "no pickle; no mask needed"
    )
    marker = json.loads((folder / "_complete.json").read_text())
    assert marker["cases"] == ["border001", "copy000", "unl_000", "unl_001", "unl_002"]
    assert (
        marker["configuration"] == CFG and marker["nnunet_llmseg_version"] and len(marker["plans_hash"]) == 16
    )
    assert not [p for p in pre.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_staleness_follows_plans_and_raw_images(bits):
    pre, raw, folder = bits["pre"], bits["raw"], bits["folder"]
    plans_file = pre / "nnUNetPlans.json"
    assert not unlabeled_needs_preprocessing(pre, DATA_ID, plans_file)
    mtime = (folder / "_complete.json").stat().st_mtime_ns
    assert preprocess_unlabeled(911, CFG, verbose=False) == folder
    assert (folder / "_complete.json").stat().st_mtime_ns == mtime, "up to date: nothing rewritten"
    # a training-only plans edit (batch or patch size, as in the benchmark's CPU plans) keeps the data;
    # a preprocessing edit does not
    plans = json.loads(plans_file.read_text())
    edited = json.loads(json.dumps(plans))
    edited["configurations"][CFG]["batch_size"] = 7
    edited["configurations"][CFG]["patch_size"] = [16] * len(plans["configurations"][CFG]["patch_size"])
    other = pre / "edited_plans.json"
    other.write_text(json.dumps(edited))
    assert not unlabeled_needs_preprocessing(pre, DATA_ID, other)
    edited["configurations"][CFG]["normalization_schemes"] = ["NoNormalization"]
    other.write_text(json.dumps(edited))
    assert unlabeled_needs_preprocessing(pre, DATA_ID, other)
    other.unlink()
    # a new raw case, or a replaced raw file, makes the folder stale
    extra = raw / "imagesUnlabeled" / "extra_0000.nii.gz"
    shutil.copy(raw / "imagesUnlabeled" / "unl_000_0000.nii.gz", extra)
    try:
        assert unlabeled_needs_preprocessing(pre, DATA_ID, plans_file)
    finally:
        extra.unlink()
    assert not unlabeled_needs_preprocessing(pre, DATA_ID, plans_file)
    cases = list_unlabeled_cases(raw, json.loads((pre / "dataset.json").read_text()))
    assert list(cases) == ["border001", "copy000", "unl_000", "unl_001", "unl_002"]
    assert unlabeled_needs_preprocessing(pre, DATA_ID, plans_file, cases=["unl_000"])
    shutil.rmtree(pre / "gone", ignore_errors=True)
    assert unlabeled_needs_preprocessing(pre / "gone", DATA_ID, plans_file)


def test_mask_for_norm_stores_nnunets_nonzero_mask(bits):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre, raw = bits["pre"], bits["raw"]
    plans_id = add_mask_plans(pre)
    folder = preprocess_unlabeled(911, CFG, plans_identifier=plans_id, verbose=False)
    assert folder.name == "nnUNetPlansMask_3d_fullres_unlabeled"
    # nnU-Net's own preprocessing of the same image, as a labelled case (label file given)
    pm = PlansManager(str(pre / f"{plans_id}.json"))
    cm = pm.get_configuration(CFG)
    dj = json.loads((pre / "dataset.json").read_text())
    data, seg, _ = cm.preprocessor_class(verbose=False).run_case(
        [str(raw / "imagesUnlabeled" / "border001_0000.nii.gz")],
        str(raw / "labelsTr" / "tiny_001.nii.gz"),
        pm,
        cm,
        dj,
    )
    ours = blosc2.open(str(folder / "border001.b2nd"), mode="r")[:]
    mask = blosc2.open(str(folder / "border001_mask.b2nd"), mode="r")[:]
    assert np.array_equal(ours, data.astype(np.float32))
    assert mask.dtype == np.int8 and set(np.unique(mask)) <= {-1, 0}
    assert np.array_equal(mask < 0, seg < 0) and (mask < 0).any(), "the -1 region nnU-Net puts into seg"
    assert (ours[mask < 0] == 0).all(), "masked z-score leaves the outside at exactly 0"


def test_corrupt_image_names_the_file_and_keeps_the_previous_folder(tiny_dataset):
    _, raw, pre = copy_tiny(tiny_dataset, 912, "LLMSegUnlCorrupt")
    good = preprocess_unlabeled(912, CFG, verbose=False)
    before = {p.name: p.stat().st_mtime_ns for p in good.iterdir()}
    bad = raw / "imagesUnlabeled" / "broken_0000.nii.gz"
    bad.write_bytes((raw / "imagesUnlabeled" / "unl_000_0000.nii.gz").read_bytes()[:300])  # truncated gzip
    with pytest.raises(
        UnlabeledImageError, match=r"cannot read .*imagesUnlabeled/broken_0000\.nii\.gz: corrupt"
    ):
        preprocess_unlabeled(912, CFG, verbose=False)
    assert {p.name: p.stat().st_mtime_ns for p in good.iterdir()} == before, "previous complete folder kept"
    assert not [p for p in pre.iterdir() if ".tmp-" in p.name or ".old-" in p.name], "no half-written folder"
    # the CLI exits non-zero with the same message
    proc = run_cli_status(["nnunet-llmseg", "preprocess-unlabeled", "-d", "912"], tiny_dataset.env.environ())
    assert proc.returncode == 1 and "broken_0000.nii.gz" in proc.stderr
    # garbage that is not gzip at all is named too (the reader's own error)
    bad.write_bytes(b"not an image")
    bad.rename(raw / "imagesUnlabeled" / "broken_0000.nii")
    dj = json.loads((pre / "dataset.json").read_text())
    assert "broken" not in list_unlabeled_cases(raw, dj), "other file endings are ignored"
    (raw / "imagesUnlabeled" / "broken_0000.nii").unlink()
    # a missing channel file and a missing suffix are named
    shutil.copy(raw / "imagesUnlabeled" / "unl_000_0000.nii.gz", raw / "imagesUnlabeled" / "two_0001.nii.gz")
    with pytest.raises(UnlabeledImageError, match=r"unlabelled case two: missing .*two_0000\.nii\.gz"):
        list_unlabeled_cases(raw, dj)
    (raw / "imagesUnlabeled" / "two_0001.nii.gz").rename(raw / "imagesUnlabeled" / "nosuffix.nii.gz")
    with pytest.raises(UnlabeledImageError, match=r"nosuffix\.nii\.gz: unlabelled images need"):
        list_unlabeled_cases(raw, dj)
    assert list_unlabeled_cases(raw / "absent", dj) == {}


def run_cli_status(args: list[str], env: dict):
    """Like conftest.run_cli but returns failures instead of raising (to check exit codes and messages)."""
    import subprocess
    import sys

    exe = Path(sys.executable).parent / args[0]
    return subprocess.run([str(exe), *args[1:]], env=env, capture_output=True, text=True, timeout=300)


def test_cli_preprocess_unlabeled_on_the_tiny_dataset(tiny_dataset):
    env = tiny_dataset.env.environ()
    proc = run_cli(["nnunet-llmseg", "preprocess-unlabeled", "-d", "901", "-c", CFG], env=env)
    folder = unlabeled_preprocessed_folder(tiny_dataset.preprocessed_folder, DATA_ID)
    marker = json.loads((folder / "_complete.json").read_text())
    assert marker["cases"] == tiny_dataset.unlabelled_cases
    assert "unlabelled case(s)" in proc.stdout or "already preprocessed" in proc.stdout
    again = run_cli(["nnunet-llmseg", "preprocess-unlabeled", "-d", "901", "-c", CFG], env=env)
    assert "already preprocessed" in again.stdout


def test_convert_msd_unlabeled_real_hippocampus_and_4d(tiny_dataset, hippocampus_msd, tmp_path):
    _, raw, _ = copy_tiny(tiny_dataset, 913, "LLMSegMSD")
    shutil.rmtree(raw / "imagesUnlabeled")
    proc = run_cli(
        ["nnunet-llmseg", "convert-msd-unlabeled", "-i", str(hippocampus_msd), "-d", "913"],
        env=tiny_dataset.env.environ(),
    )
    assert "wrote 4 unlabelled image file(s)" in proc.stdout
    names = sorted(p.name for p in (raw / "imagesUnlabeled").iterdir())
    assert names == [
        "Study1_HCropVolume_0000.nii.gz",
        "Study2_HCropVolume_0000.nii.gz",
        "Study3_HCropVolume_0000.nii.gz",
        "hippocampus_118_0000.nii.gz",
    ]
    src = sitk.ReadImage(str(hippocampus_msd / "imagesUnlabeled" / "hippocampus_118.nii.gz"))
    dst = sitk.ReadImage(str(raw / "imagesUnlabeled" / "hippocampus_118_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(src), sitk.GetArrayFromImage(dst))  # uint8 kept as is
    # the real (uint8 / int16, odd-sized) images go through nnU-Net's preprocessing with the tiny plans
    folder = preprocess_unlabeled(913, CFG, verbose=False)
    arr = blosc2.open(str(folder / "hippocampus_118.b2nd"), mode="r")[:]
    assert arr.dtype == np.float32 and arr.shape[0] == 1 and np.isfinite(arr).all() and 0.5 < arr.std() < 2
    # a 4D MSD image is split into channels exactly like nnU-Net's MSD converter
    msd = tmp_path / "Task99_Two"
    (msd / "imagesUnlabeled").mkdir(parents=True)
    four = np.stack([np.full((4, 5, 6), c + 1, np.int16) for c in range(2)])
    img4 = sitk.JoinSeries([sitk.GetImageFromArray(four[c]) for c in range(2)])
    img4.SetSpacing((1.0, 2.0, 3.0, 1.0))
    sitk.WriteImage(img4, str(msd / "imagesUnlabeled" / "multi.nii.gz"))
    (msd / "imagesUnlabeled" / "._multi.nii.gz").write_bytes(b"macOS resource fork")
    with pytest.raises(UnlabeledImageError, match=r"multi.nii.gz: 4D image with 2 channel\(s\), but .* 1"):
        convert_msd_unlabeled(msd, 913)
    dj = json.loads((raw / "dataset.json").read_text())
    dj["channel_names"] = {"0": "T1", "1": "T2"}
    (raw / "dataset.json").write_text(json.dumps(dj))
    written = convert_msd_unlabeled(msd, 913)
    assert [p.name for p in written] == ["multi_0000.nii.gz", "multi_0001.nii.gz"]
    ch1 = sitk.ReadImage(str(written[1]))
    assert ch1.GetSpacing() == (1.0, 2.0, 3.0) and (sitk.GetArrayFromImage(ch1) == 2).all()


# ---- loader ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loader_setup(bits):
    """Transforms and patch sizes from nnU-Net's own trainer for the tiny plans."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    pre = bits["pre"]
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnunetv2 2.8 pops this init argument from the plans
    trainer = nnUNetTrainer(
        plans, CFG, 0, json.loads((pre / "dataset.json").read_text()), torch.device("cpu")
    )
    rotation, dummy_2d, initial, mirror = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    patch = tuple(trainer.configuration_manager.patch_size)

    def transforms(use_mask_for_norm=None):
        return trainer.get_training_transforms(
            patch,
            rotation,
            None,
            mirror,
            dummy_2d,
            use_mask_for_norm=use_mask_for_norm,
            is_cascaded=False,
            foreground_labels=trainer.label_manager.foreground_labels,
            regions=None,
            ignore_label=None,
        )

    return {"initial": tuple(int(i) for i in initial), "patch": patch, "transforms": transforms, **bits}


def test_loader_never_opens_labels_of_unlabelled_training_cases(loader_setup, tiny_dataset, monkeypatch):
    _, _, pre = copy_tiny(tiny_dataset, 914, "LLMSegNoSeg")
    unl_keys = ["tiny_001", "tiny_003"]
    for k in unl_keys:  # delete their labels outright: any read would fail
        (pre / DATA_ID / f"{k}_seg.b2nd").unlink()
        (pre / DATA_ID / f"{k}.pkl").unlink()
    opened: list[str] = []
    real_open, real_load = blosc2.open, np.load
    monkeypatch.setattr(
        blosc2,
        "open",
        lambda *a, **k: (opened.append(str(k.get("urlpath", a[0] if a else ""))), real_open(*a, **k))[1],
    )
    monkeypatch.setattr(np, "load", lambda *a, **k: (opened.append(str(a[0])), real_load(*a, **k))[1])
    ds = build_unlabeled_dataset(pre / DATA_ID, loader_setup["folder"], unl_keys)
    assert ds.identifiers == sorted(["border001", "copy000", "unl_000", "unl_001", "unl_002", *unl_keys])
    loader = UnlabeledDataLoader(
        ds, 3, loader_setup["initial"], loader_setup["patch"], transforms=loader_setup["transforms"](), seed=0
    )
    seen = set()
    for _ in range(8):
        batch = next(loader)
        seen |= set(batch["keys"])
    assert seen & set(unl_keys), "the training cases were drawn"
    assert opened and not [p for p in opened if "_seg" in p or p.endswith(".pkl")]
    assert ds.load_case("tiny_001")[1]["source"] == "training_case"


def test_loader_shapes_dtypes_and_augmentation(loader_setup):
    pre = loader_setup["pre"]
    ds = build_unlabeled_dataset(pre / DATA_ID, loader_setup["folder"], ["tiny_002"])
    patch = loader_setup["patch"]
    assert loader_setup["initial"] != patch, "nnU-Net crops a larger patch before its spatial transform"
    aug = UnlabeledDataLoader(
        ds, 2, loader_setup["initial"], patch, transforms=loader_setup["transforms"](), seed=3
    )
    plain = UnlabeledDataLoader(ds, 2, loader_setup["initial"], patch, transforms=None, seed=3)
    lo = min(float(ds.load_case(k)[0][:].min()) for k in ds.identifiers)
    hi = max(float(ds.load_case(k)[0][:].max()) for k in ds.identifiers)
    n_differ = 0
    for _ in range(6):
        a, p = next(aug), next(plain)
        assert set(a) == {"data", "keys"} and len(a["keys"]) == 2 and a["keys"] == p["keys"]
        for b in (a, p):
            assert b["data"].shape == (2, 1, *patch) and b["data"].dtype == torch.float32
            assert torch.isfinite(b["data"]).all()
        # brightness x1.25, contrast, gamma with retained stats and noise keep values near the data's range
        span = hi - lo
        assert float(a["data"].min()) > lo - span and float(a["data"].max()) < hi + span
        n_differ += int(not torch.allclose(a["data"], p["data"]))
    assert n_differ >= 4, "augmented batches differ from the same crops without augmentation"


def test_loader_seeding_sharding_and_nnunet_crop_bounds(loader_setup):
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = loader_setup["pre"]
    ds = build_unlabeled_dataset(pre / DATA_ID, loader_setup["folder"], [])
    args = (ds, 2, loader_setup["initial"], loader_setup["patch"])
    draws = [[next(UnlabeledDataLoader(*args, seed=5))["keys"] for _ in range(1)] for _ in range(2)]
    assert draws[0] == draws[1], "same seed: same cases"
    a, b = UnlabeledDataLoader(*args, seed=5), UnlabeledDataLoader(*args, seed=5, seed_offset=1)
    assert [a.get_bbox((32, 32, 32)) for _ in range(5)] != [b.get_bbox((32, 32, 32)) for _ in range(5)]
    r0 = UnlabeledDataLoader(*args, rank=0, world_size=2)
    r1 = UnlabeledDataLoader(*args, rank=1, world_size=2)
    assert not set(r0.indices) & set(r1.indices) and set(r0.indices) | set(r1.indices) == set(ds.identifiers)
    assert UnlabeledDataLoader(*args, rank=7, world_size=8).indices == ds.identifiers, (
        "fewer cases than ranks"
    )
    # crop bounds are nnU-Net's (random, non-foreground crops) for a small and a large image
    pm = PlansManager(str(pre / "nnUNetPlans.json"))
    lm = pm.get_label_manager(json.loads((pre / "dataset.json").read_text()))
    theirs = nnUNetDataLoader(
        nnUNetDatasetBlosc2(str(pre / DATA_ID)),
        2,
        loader_setup["initial"],
        loader_setup["patch"],
        lm,
        oversample_foreground_percent=0,
    )
    ours = UnlabeledDataLoader(*args, seed=1)
    np.random.seed(0)
    for shape in ((32, 32, 32), (20, 60, 33)):
        t = np.array([theirs.get_bbox(np.array(shape), False, None)[0] for _ in range(3000)])
        o = np.array([[lb for lb, _ in ours.get_bbox(shape)] for _ in range(3000)])
        assert (t.min(0) == o.min(0)).all() and (t.max(0) == o.max(0)).all()


def test_loader_gives_the_mask_to_nnunets_masking(loader_setup, tiny_dataset):
    pre = loader_setup["pre"]
    folder = unlabeled_preprocessed_folder(pre, "nnUNetPlansMask_3d_fullres")
    if not folder.is_dir():
        add_mask_plans(pre)
        folder = preprocess_unlabeled(911, CFG, plans_identifier="nnUNetPlansMask", verbose=False)
    transforms = loader_setup["transforms"](use_mask_for_norm=[True])
    assert mask_channels_of(transforms) == [0] and mask_channels_of(loader_setup["transforms"]()) == []
    seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    class Recording:
        """nnU-Net's real pipeline, recording what it was given."""

        def __call__(self, image, segmentation):
            seen.append((image.clone(), segmentation.clone()))
            return transforms(image=image, segmentation=segmentation)

    ds = build_unlabeled_dataset(pre / DATA_ID, folder, ["tiny_004"])
    assert "border001" in ds.masks
    loader = UnlabeledDataLoader(
        ds,
        1,
        loader_setup["initial"],
        loader_setup["patch"],
        transforms=Recording(),
        seed=0,
        mask_channels=[0],
    )
    kinds = set()
    for _ in range(12):
        key = next(loader)["keys"][0]
        image, seg = seen[-1]
        assert seg.dtype == torch.int16 and seg.shape == (1, *image.shape[1:])
        outside = seg[0] < 0
        assert outside.any(), "padding beyond the image is outside (-1), as in nnU-Net"
        assert (image[0][outside] == 0).all() and (image[0][~outside] != 0).any()
        kinds.add("stored" if key in ds.masks else "derived")
    assert kinds == {"stored", "derived"}


def test_batch_split():
    assert get_unlabeled_batch_size(2) == (1, 1)
    assert get_unlabeled_batch_size(3) == (2, 1)
    assert get_unlabeled_batch_size(1) == (1, 1)
    assert get_unlabeled_batch_size(8, 0.25) == (2, 6)
    with pytest.raises(ValueError, match="labelled_fraction"):
        get_unlabeled_batch_size(4, 1.0)


def test_2d_configuration_crops_a_slice(loader_setup):
    ds = build_unlabeled_dataset(loader_setup["pre"] / DATA_ID, loader_setup["folder"], [])
    loader = UnlabeledDataLoader(ds, 2, (40, 40), (32, 32), transforms=None, seed=0)
    batch = next(loader)
    assert batch["data"].shape == (2, 1, 32, 32) and batch["data"].dtype == torch.float32


def test_organ_regions_travel_with_the_augmented_crops(loader_setup, tmp_path):
    """A region read from a file is cut and augmented exactly like its crop: without augmentation it equals the
    region rule on the crop; through nnU-Net's transforms the bright voxels it marks stay the bright ones."""
    ds = build_unlabeled_dataset(loader_setup["pre"] / DATA_ID, loader_setup["folder"], [])
    patch = loader_setup["patch"]
    threshold = {}
    for case in ds.identifiers:
        img = np.asarray(ds.load_case(case)[0][:])
        threshold[case] = max(float(np.quantile(img[0], 0.7)), 0.0)  # above the zero padding
        np.save(tmp_path / f"{case}.npy", (img[:1] > threshold[case]).astype(np.uint8))
    plain = UnlabeledDataLoader(ds, 2, loader_setup["initial"], patch, transforms=None, seed=0,
                                region_folder=tmp_path)
    for _ in range(3):
        batch = next(plain)
        assert batch["region"].shape == (2, 1, *patch) and batch["region"].dtype == torch.bool
        for j, case in enumerate(batch["keys"]):
            assert torch.equal(batch["region"][j], batch["data"][j, :1] > threshold[case])
    aug = UnlabeledDataLoader(ds, 2, loader_setup["initial"], patch, transforms=loader_setup["transforms"](),
                              seed=1, region_folder=tmp_path)
    for _ in range(4):
        batch = next(aug)
        for j in range(2):
            inside, x = batch["region"][j, 0], batch["data"][j, 0]
            if inside.any() and (~inside).any():
                assert float(x[inside].mean()) > float(x[~inside].mean()) + 0.5 * float(x.std())

    missing = ds.identifiers[0]
    (tmp_path / f"{missing}.npy").unlink()  # no region yet: all of the crop is inside
    one = UnlabeledDataLoader(ds, 1, loader_setup["initial"], patch, transforms=None, seed=0, region_folder=tmp_path)
    one.indices = [missing]
    assert bool(next(one)["region"].all())
    np.save(tmp_path / f"{missing}.npy", np.ones((1, 2, 2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match=rf"{missing}\.npy: organ region of shape"):
        next(one)
