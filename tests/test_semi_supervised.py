"""The data side and the trainers, on copies of the tiny dataset, through nnU-Net's real commands."""

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
from nnunet_llmseg.data.labelled_subset import SubsetError, create_labelled_subset, load_labelled_subset
from nnunet_llmseg.data.unlabeled_loader import build_unlabeled_dataset, get_unlabeled_batch_size
from nnunet_llmseg.data.unlabeled_preprocessing import (
    UnlabeledImageError,
    preprocess_unlabeled,
    unlabeled_preprocessed_folder,
)
from nnunet_llmseg.trainers.text_priors import KEEP_CHECKPOINT_TEXT_ENV, PLANS_KEY
from nnunet_llmseg.trainers.variants import nnUNetTrainerCoTraining_organRegion
from prior_generation.dataset_info import labels_from_dataset_json
from prior_generation.priors_file import PriorsError, TextPriors, load_priors, make_priors, save_priors


def copy_dataset(tiny, new_id: int, suffix: str, with_unlabelled: bool = True) -> tuple[str, Path, Path]:
    """A private copy (raw + preprocessed) of the session's tiny dataset under a new id."""
    name = f"Dataset{new_id:03d}_{suffix}"
    raw = tiny.env.raw / name
    pre = tiny.env.preprocessed / name
    if pre.exists():
        return name, raw, pre
    shutil.copytree(tiny.raw_folder, raw)
    if not with_unlabelled:
        shutil.rmtree(raw / "imagesUnlabeled")
    shutil.copytree(tiny.preprocessed_folder, pre,
                    ignore=shutil.ignore_patterns("labelled_subset_*", "text_priors*", "*_unlabeled*"))
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = name
    (pre / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
    return name, raw, pre


def write_test_priors(pre: Path, dataset_json: dict, dim: int = 24, drop: str | None = None,
                      seed: int = 7) -> TextPriors:
    """Priors with fixed pseudo-random embeddings (the generator itself is tested in test_prior_generation)."""
    names, values = labels_from_dataset_json(dataset_json)
    if drop is not None:
        keep = [i for i, n in enumerate(names) if n != drop]
        names, values = [names[i] for i in keep], [values[i] for i in keep]
    rng = np.random.default_rng(seed)
    emb = {}
    for k in ("llmseg", "tak_shape", "tak_location"):
        a = rng.normal(size=(len(names), dim))
        emb[k] = (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)
    save_priors(pre, make_priors(names, values, emb, encoder="test-fixed-random"))
    return load_priors(pre)


def build_trainer(name: str, dataset_name: str, pre: Path, trainer_cls=None, dataset_json: dict | None = None,
                  plans_name: str = "nnUNetPlans", configuration: str = "3d_fullres"):
    """The trainer as nnUNetv2_train constructs it (in this process, on the CPU, fold 0)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = trainer_cls or recursive_find_trainer_class_by_name(name)
    plans = json.loads((pre / f"{plans_name}.json").read_text())
    plans["continue_training"] = False
    dj = dataset_json or json.loads((pre / "dataset.json").read_text())
    return cls(plans=plans, configuration=configuration, fold=0, dataset_json=dj, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def semi(tiny_dataset):
    """Dataset903: the tiny data with priors and a labelled subset of 2 (fold 0 has 4 training cases)."""
    name, raw, pre = copy_dataset(tiny_dataset, 903, "LLMSegSemi")
    dataset_json = json.loads((pre / "dataset.json").read_text())
    priors = write_test_priors(pre, dataset_json)
    subset = create_labelled_subset(903, 0, count=2, seed=1)
    return {"name": name, "raw": raw, "pre": pre, "priors": priors, "subset": subset, "tiny": tiny_dataset}


# ---- labelled subsets ----------------------------------------------------------------------------------------

def test_subset_is_reproducible_and_excludes_validation(semi):
    s = semi["subset"]
    splits = json.loads((semi["pre"] / "splits_final.json").read_text())
    assert set(s["labelled"]) | set(s["unlabelled"]) == set(splits[0]["train"])
    assert not set(s["labelled"]) & set(splits[0]["val"]) and s["validation"] == sorted(splits[0]["val"])
    again = create_labelled_subset(903, 0, count=2, seed=1)  # same rule + seed: same choice, file unchanged
    assert again["labelled"] == s["labelled"]
    assert load_labelled_subset(semi["pre"], 0)["labelled"] == s["labelled"]
    with pytest.raises(SubsetError, match="exists with another choice"):
        create_labelled_subset(903, 0, cases=[c for c in splits[0]["train"] if c not in s["labelled"]][:1])


def test_subset_errors_name_the_problem(semi):
    with pytest.raises(SubsetError, match="empty"):
        create_labelled_subset(903, 1, count=0)
    with pytest.raises(SubsetError, match=r"not training cases.*nope"):
        create_labelled_subset(903, 1, cases=["nope"])
    val = json.loads((semi["pre"] / "splits_final.json").read_text())[1]["val"]
    with pytest.raises(SubsetError, match="validation cases"):
        create_labelled_subset(903, 1, cases=[val[0]])


def test_subset_cli(semi):
    proc = run_cli(["nnunet-llmseg", "subset", "-d", "903", "-f", "2", "--fraction", "0.5", "--seed", "3"],
                   env=semi["tiny"].env.environ())
    assert "labelled" in proc.stdout
    assert len(load_labelled_subset(semi["pre"], 2)["labelled"]) == 2


# ---- unlabelled preprocessing and loading ----------------------------------------------------------------------

def test_unlabelled_preprocessing_matches_nnunet_bit_for_bit(tiny_dataset):
    _name, raw, pre = copy_dataset(tiny_dataset, 904, "LLMSegBits")
    src = raw / "imagesTr" / "tiny_000_0000.nii.gz"
    shutil.copy(src, raw / "imagesUnlabeled" / "copyoftiny000_0000.nii.gz")
    out = preprocess_unlabeled(904, "3d_fullres")
    ours = blosc2.open(str(out / "copyoftiny000.b2nd"), mode="r")[:]
    theirs = blosc2.open(str(pre / "nnUNetPlans_3d_fullres" / "tiny_000.b2nd"), mode="r")[:]
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)
    props = json.loads((out / "copyoftiny000.json").read_text())
    assert props["shape_before_cropping"] == list(TINY_SHAPE)
    assert not list(out.glob("*.pkl")), "unlabelled properties are JSON, never pickle"
    # up to date: a second call does nothing; the CLI reports it
    mtime = (out / "_complete.json").stat().st_mtime
    proc = run_cli(["nnunet-llmseg", "preprocess-unlabeled", "-d", "904", "-c", "3d_fullres"],
                   env=tiny_dataset.env.environ())
    assert "already preprocessed" in proc.stdout and (out / "_complete.json").stat().st_mtime == mtime


def test_corrupt_unlabelled_image_names_the_file_and_leaves_nothing_half_written(tiny_dataset):
    _name, raw, pre = copy_dataset(tiny_dataset, 905, "LLMSegCorrupt")
    good = preprocess_unlabeled(905, "3d_fullres")
    before = sorted(p.name for p in good.iterdir())
    bad = raw / "imagesUnlabeled" / "broken_0000.nii.gz"
    bad.write_bytes((raw / "imagesUnlabeled" / "unl_000_0000.nii.gz").read_bytes()[:200])
    with pytest.raises(UnlabeledImageError, match=r"broken_0000.nii.gz"):
        preprocess_unlabeled(905, "3d_fullres")
    assert sorted(p.name for p in good.iterdir()) == before, "the previous complete folder is kept"
    assert not [p for p in pre.iterdir() if ".tmp-" in p.name], "no temporary folder left behind"


def test_batch_split_defaults():
    from nnunet_llmseg.trainers.semi_supervised import nnUNetTrainerSemiSupervised

    assert nnUNetTrainerSemiSupervised.unlabelled_batch_ratio == 1.0  # planned labelled batch + as many unlabelled
    # the split used with unlabelled_batch_ratio = None
    assert get_unlabeled_batch_size(2) == (1, 1)
    assert get_unlabeled_batch_size(9) == (5, 4)
    assert get_unlabeled_batch_size(1) == (1, 1)
    assert get_unlabeled_batch_size(4, 0.75) == (3, 1)


def test_loader_batches_and_labels_of_unlabelled_cases_are_never_read(semi):
    trainer = build_trainer("nnUNetTrainerLLMSeg", semi["name"], semi["pre"])
    trainer.initialize()
    # make the labels of the unlabelled-designated cases unreadable: training must not notice
    folder = semi["pre"] / "nnUNetPlans_3d_fullres"
    saved = {}
    for case in semi["subset"]["unlabelled"]:
        seg = folder / f"{case}_seg.b2nd"
        saved[seg] = seg.read_bytes()
        seg.write_bytes(b"corrupt")
    try:
        train_loader, _val_loader = trainer.get_dataloaders()
        assert sorted(trainer.unlabeled_train_keys) == semi["subset"]["unlabelled"]
        for _ in range(3):
            batch = next(train_loader)
            # default: nnU-Net's planned batch (2) of labelled crops plus as many unlabelled crops
            assert batch["data"].shape == (2, 1, *TINY_SHAPE) and batch["data"].dtype == torch.float32
            assert batch["data_u"].shape == (2, 1, *TINY_SHAPE) and batch["data_u"].dtype == torch.float32
            assert set(batch["keys"]) <= set(semi["subset"]["labelled"])
            assert torch.isfinite(batch["data_u"]).all() and batch["data_u"].abs().max() < 50
    finally:
        for path, content in saved.items():
            path.write_bytes(content)
    ds = build_unlabeled_dataset(folder, unlabeled_preprocessed_folder(semi["pre"], "nnUNetPlans_3d_fullres"),
                                 semi["subset"]["unlabelled"])
    assert set(ds.identifiers) == set(semi["subset"]["unlabelled"]) | {"unl_000", "unl_001", "unl_002"}


def test_unlabelled_augmentation_changes_crops(semi):
    trainer = build_trainer("nnUNetTrainerLLMSeg", semi["name"], semi["pre"])
    trainer.initialize()
    trainer.get_tr_and_val_datasets()
    loader = trainer.get_unlabeled_dataloader()
    raw_loader = loader.data_loader if hasattr(loader, "data_loader") else loader
    raw_loader.transforms = None
    plain = [next(loader)["data"] for _ in range(6)]
    assert all(p.shape == (2, 1, *TINY_SHAPE) for p in plain)  # as many unlabelled crops as the planned batch
    trainer2 = build_trainer("nnUNetTrainerLLMSeg", semi["name"], semi["pre"])
    trainer2.initialize()
    trainer2.get_tr_and_val_datasets()
    aug = trainer2.get_unlabeled_dataloader()
    augmented = [next(aug)["data"] for _ in range(6)]
    stds = [float(a.std()) for a in augmented]
    assert all(np.isfinite(stds)) and max(abs(float(a.mean())) for a in augmented) < 5


def test_semi_supervised_trainer_refuses_to_start_without_unlabelled_data(tiny_dataset):
    name, _raw, pre = copy_dataset(tiny_dataset, 906, "LLMSegNoUnl", with_unlabelled=False)
    from nnunet_llmseg.trainers import nnUNetTrainerLLMSeg_noText

    trainer = build_trainer("", name, pre, trainer_cls=nnUNetTrainerLLMSeg_noText)
    trainer.initialize()
    with pytest.raises(RuntimeError, match="found no unlabelled data"):
        trainer.get_dataloaders()


def test_labelled_only_baseline_trains_on_the_subset_only(semi):
    trainer = build_trainer("nnUNetTrainerLabelledOnly", semi["name"], semi["pre"])
    trainer.initialize()
    tr, val = trainer.get_tr_and_val_datasets()
    assert sorted(tr.identifiers) == semi["subset"]["labelled"]
    assert sorted(val.identifiers) == semi["subset"]["validation"]


def test_tak_without_unlabelled_gives_no_unlabelled_voxel_a_label(semi):
    """The control for "do the unlabelled images pay?": TAK's loss with no pseudo-label anywhere."""
    trainer = build_trainer("nnUNetTrainerTAK_noUnlabelled", semi["name"], semi["pre"])
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    try:
        trainer.on_train_epoch_start()
        trainer.current_epoch = trainer.num_epochs - 1  # ramp-up done, contrast active
        out = trainer.train_step(next(trainer.dataloader_train))
    finally:
        trainer.dataloader_train._finish()
    assert float(out["unsup_loss"]) == 0.0 and float(out["confident_fraction"]) == 0.0
    assert float(out["unsup_weight"]) > 0.9 and np.isfinite(float(out["contrast_loss"]))
    assert float(out["sup_loss"]) != 0.0


def _one_step_with_network_inputs(semi, trainer_name: str) -> tuple[dict, dict, list[list[torch.Tensor]], list]:
    """One ``train_step`` after the ramp-up, with the inputs of every forward of the twin networks recorded, and
    the ``CutMixBatch`` the losses got."""
    trainer = build_trainer(trainer_name, semi["name"], semi["pre"])
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    seen, frames = [], []
    hook = trainer.network.register_forward_hook(lambda _m, args, _out: seen.append([a.detach() for a in args]))
    compute_losses = trainer.compute_losses
    trainer.compute_losses = lambda *args: frames.append(args[-1]) or compute_losses(*args)
    try:
        trainer.on_train_epoch_start()
        trainer.current_epoch = trainer.num_epochs - 1  # ramp-up done
        batch = next(trainer.dataloader_train)
        out = trainer.train_step(batch)
    finally:
        hook.remove()
        trainer.dataloader_train._finish()
    assert float(out["unsup_weight"]) > 0.9 and float(out["unsup_loss"]) > 0.0  # the peers still teach
    return batch, out, seen, frames


def test_co_training_without_cutmix_shows_both_networks_the_plain_crops(semi):
    """``_noMix`` (``mixed_view = "none"``): no box is pasted, so both networks' unlabelled input is the
    unlabelled batch itself, in one forward (no separate teacher pass)."""
    batch, _out, seen, _frames = _one_step_with_network_inputs(semi, "nnUNetTrainerCoTraining_noMix")
    assert len(seen) == 1, "no-mix needs no separate forward of the unmixed crops"
    n_l = batch["data"].shape[0]
    x_a, x_b = seen[0]
    torch.testing.assert_close(x_a[n_l:], batch["data_u"])
    torch.testing.assert_close(x_b[n_l:], batch["data_u"])
    torch.testing.assert_close(x_a[:n_l], batch["data"])


def test_co_training_with_the_intensity_view_teaches_students_on_it_from_the_plain_crops(semi):
    """``_intensityView``: the teachers' forward sees the plain unlabelled crops, the students' forward the same
    crops with perturbed intensities (the same view for both networks, nothing pasted), labelled crops unchanged."""
    batch, _out, seen, _frames = _one_step_with_network_inputs(semi, "nnUNetTrainerCoTraining_intensityView")
    assert len(seen) == 2, "one forward for the teachers, one for the students"
    (t_a, t_b), (s_a, s_b) = seen
    n_l = batch["data"].shape[0]
    torch.testing.assert_close(t_a, batch["data_u"])
    torch.testing.assert_close(t_b, batch["data_u"])
    torch.testing.assert_close(s_a[:n_l], batch["data"])
    torch.testing.assert_close(s_a[n_l:], s_b[n_l:])
    assert not torch.allclose(s_a[n_l:], batch["data_u"])


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerCoTraining_cleanTeacher", "nnUNetTrainerLLMSeg_cleanTeacher",
                                          "nnUNetTrainerTAK_cleanTeacher"])
def test_co_training_with_cleaned_teachers_teaches_no_stray_component(semi, trainer_name):
    """``_cleanTeacher``: what each teacher's plain prediction teaches has one component per class per crop (or
    several of the largest size), on the real trainer; and the engine refuses the views without a teacher pass."""
    from acvl_utils.morphology.morphology_helper import label_with_component_sizes
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    _batch, _out, _seen, frames = _one_step_with_network_inputs(semi, trainer_name)
    taught = [f.plain for f in frames]
    (plain_a, plain_b), = taught
    for plain in (plain_a, plain_b):
        hard = plain.argmax(1).cpu().numpy()
        for n in range(hard.shape[0]):
            for c in range(1, plain.shape[1]):
                _, sizes = label_with_component_sizes(hard[n] == c)
                assert len(set(sizes.values())) <= 1, f"crop {n}, class {c}: components of sizes {sizes}"

    class NoTeacherPass(recursive_find_trainer_class_by_name(trainer_name)):  # as build_trainer finds it
        mixed_view = "none"

    with pytest.raises(ValueError, match="clean_teacher_strays needs mixed_view"):
        build_trainer("", semi["name"], semi["pre"], trainer_cls=NoTeacherPass)


def test_organ_region_teachers_predict_whole_volumes_and_teach_background_outside(semi):
    """``_organRegion`` on the real trainer: the refresh predicts every unlabelled volume with nnU-Net's sliding
    window and stores a region per case; a teacher then teaches background wherever its crop lies outside it."""
    trainer = build_trainer("nnUNetTrainerCoTraining_organRegion", semi["name"], semi["pre"])
    trainer.initialize()
    trainer.get_tr_and_val_datasets()
    trainer.unlabelled_dataset = trainer.prepare_unlabeled_dataset()  # what get_dataloaders sets
    trainer.num_epochs = 100
    assert not trainer._regions_due() and trainer.current_epoch == 0  # before 10 % of the epochs
    trainer.current_epoch = 10
    assert trainer._regions_due()
    folder = Path(trainer.region_folder())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    trainer._refresh_organ_regions()
    assert not trainer._regions_due() and trainer._regions_epoch == 10
    trainer.current_epoch = 20
    assert trainer._regions_due()
    dataset = trainer.unlabelled_dataset
    assert set(dataset.identifiers) >= set(semi["subset"]["unlabelled"])
    for case in dataset.identifiers:
        region = np.load(folder / f"{case}.npy")
        assert region.dtype == np.uint8 and region.shape == (1, *dataset.load_case(case)[0].shape[1:])
        assert region.any()
        np.save(folder / f"{case}.npy", np.zeros_like(region))  # every crop now lies outside
    assert "organ regions of" in Path(trainer.log_file).read_text()

    batch, out, _seen, frames = _one_step_with_network_inputs(semi, "nnUNetTrainerCoTraining_organRegion")
    assert batch["region_u"].shape == (batch["data_u"].shape[0], 1, *batch["data_u"].shape[2:])
    assert not batch["region_u"].any()
    for plain in frames[0].plain:
        assert bool((plain.argmax(1) == 0).all()), "outside the region every teacher voxel teaches background"
    assert 0.0 <= float(out["region_cleaned"]) <= 1.0
    shutil.rmtree(folder)

    class NoTeacherPass(nnUNetTrainerCoTraining_organRegion):
        mixed_view = "none"

    with pytest.raises(ValueError, match="teacher_region_margin_mm needs mixed_view"):
        build_trainer("", semi["name"], semi["pre"], trainer_cls=NoTeacherPass)


def test_teaching_mask_leaves_out_exactly_the_pasted_foreground():
    """``ignore_pasted_foreground``: a teacher's voxel is left out where it is foreground *and* inside a pasted box;
    its background inside the box and everything outside still teach; with the option off nothing is left out."""
    from types import SimpleNamespace

    from nnunet_llmseg.data import mixing
    from nnunet_llmseg.trainers.semi_supervised import nnUNetTrainerCoTraining

    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 3, 8, 8, generator=gen)
    box = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    box[:, :, 2:6, 3:7] = True
    cutmix = mixing.CutMixBatch(box, torch.tensor([1, 0]))
    on = SimpleNamespace(ignore_pasted_foreground=True, label_manager=SimpleNamespace(has_regions=False))
    keep = nnUNetTrainerCoTraining.teaching_mask(on, teacher, cutmix)
    pasted_fg = box[:, 0] & (teacher.argmax(1) > 0)
    assert pasted_fg.any() and (box[:, 0] & (teacher.argmax(1) == 0)).any()  # both kinds occur in the box
    assert keep.shape == box.shape and torch.equal(~keep[:, 0], pasted_fg)
    off = SimpleNamespace(ignore_pasted_foreground=False, label_manager=on.label_manager)
    assert nnUNetTrainerCoTraining.teaching_mask(off, teacher, cutmix) is None


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerLLMSeg_pastedForegroundIgnored",
                                          "nnUNetTrainerTAK_pastedForegroundIgnored"])
def test_pasted_foreground_is_not_taught_in_a_real_step(semi, trainer_name):
    """On the real trainer: the peers' teaching reaches every unlabelled voxel but the teacher's foreground inside
    the pasted boxes (LLM-SegNet: the USL's voxel mask; TAK: its pseudo-labels are -1 there), and the step reports
    the share left out."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_llmseg.trainers.semi_supervised import unwrap

    trainer = build_trainer(trainer_name, semi["name"], semi["pre"])
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    calls, frames, teachers = [], [], []
    mixed_frame = trainer.mixed_frame
    trainer.mixed_frame = lambda *args: (lambda r: teachers.extend(r[2:]) or r)(mixed_frame(*args))
    if "TAK" in trainer_name:
        for key in ("a", "b"):
            balance = unwrap(trainer.network).training_state[key]
            original = balance.pseudo_label_loss
            balance.pseudo_label_loss = (lambda orig: lambda logits, labels, **kw: calls.append(labels)
                                         or orig(logits, labels, **kw))(original)
    else:
        usl = trainer.unsupervised_loss
        trainer.unsupervised_loss = lambda student, teacher, mask=None: calls.append((teacher, mask)) \
            or usl(student, teacher, mask)
    compute_losses = trainer.compute_losses
    trainer.compute_losses = lambda *args: frames.append(args[-1]) or compute_losses(*args)
    try:
        trainer.on_train_epoch_start()
        trainer.current_epoch = trainer.num_epochs - 1
        out = trainer.train_step(next(trainer.dataloader_train))
    finally:
        trainer.dataloader_train._finish()
    cutmix, = frames
    assert len(teachers) == len(calls) == 2
    left_out = []
    for teacher, call in zip(teachers, calls):  # A teaches B first, then B teaches A
        pasted_fg = cutmix.mask[:, 0] & (teacher.argmax(1) > 0)
        assert pasted_fg.any(), "the test needs foreground in a box"
        if "TAK" in trainer_name:
            assert bool((call[pasted_fg] == -1).all())
            assert bool((call[~cutmix.mask[:, 0]] >= 0).any())  # outside the boxes confident voxels still teach
        else:
            taught_teacher, mask = call
            torch.testing.assert_close(taught_teacher, teacher)
            assert torch.equal(~mask[:, 0], pasted_fg)
        left_out.append(pasted_fg.float().mean())
    assert float(out["pasted_foreground_ignored"]) == pytest.approx(float(torch.stack(left_out).mean()), abs=1e-6)

    class NoBoxes(recursive_find_trainer_class_by_name(trainer_name)):
        mixed_view = "intensity"

    with pytest.raises(ValueError, match="ignore_pasted_foreground needs mixed_view 'both'"):
        build_trainer("", semi["name"], semi["pre"], trainer_cls=NoBoxes)


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerLLMSeg_labelledMix", "nnUNetTrainerTAK_labelledMix"])
def test_labelled_mix_puts_labelled_crops_into_the_students_view_and_the_truth_teaches_them(semi, trainer_name):
    """``_labelledMix`` on the real trainer: the teachers' forward sees the plain unlabelled crops, the students'
    unlabelled input is each crop mixed with a labelled crop of the same batch, and what teaches the pasted labelled
    content is the ground truth."""
    batch, out, seen, frames = _one_step_with_network_inputs(semi, trainer_name)
    assert np.isfinite(float(out["sup_loss"]))
    (t_a, _t_b), (s_a, s_b) = seen
    cutmix, = frames
    x_l, x_u = batch["data"], batch["data_u"]
    n_l = x_l.shape[0]
    torch.testing.assert_close(t_a, x_u)
    torch.testing.assert_close(s_a[n_l:], s_b[n_l:])
    target = batch["target"][0] if isinstance(batch["target"], list) else batch["target"]
    teacher_a = cutmix.mixed(cutmix.plain[0], cutmix.labelled_teacher(torch.zeros_like(cutmix.truth[0])))
    for i in range(x_u.shape[0]):
        j = int(cutmix.partner[i]) - x_u.shape[0]
        assert 0 <= j < n_l, "every partner is a labelled crop"
        inside = cutmix.mask[i, 0]
        torch.testing.assert_close(s_a[n_l + i][:, inside], x_l[j][:, inside])
        torch.testing.assert_close(s_a[n_l + i][:, ~inside], x_u[i][:, ~inside])
        assert torch.equal(teacher_a[i].argmax(0)[inside], target[j, 0][inside].long())


# ---- priors ---------------------------------------------------------------------------------------------------

def test_trainers_refuse_missing_or_mismatched_priors(tiny_dataset, semi):
    name, _raw, pre = copy_dataset(tiny_dataset, 907, "LLMSegPriors")
    with pytest.raises(PriorsError, match=r"No text priors.*prior_generation -d Dataset907"):
        build_trainer("nnUNetTrainerLLMSeg", name, pre)
    dj = json.loads((pre / "dataset.json").read_text())
    write_test_priors(pre, dj, drop="hippocampus_posterior")
    with pytest.raises(PriorsError, match=r"missing from the priors: hippocampus_posterior.*prior_generation"):
        build_trainer("nnUNetTrainerTAK", name, pre)
    renamed = dict(dj, labels={"background": 0, "hippocampus_anterior": 1, "tail": 2})
    with pytest.raises(PriorsError, match=r"do not match the labels of .*dataset\.json, the copy nnUNetv2_train"):
        build_trainer("nnUNetTrainerLLMSeg", semi["name"], semi["pre"], dataset_json=renamed)


def assert_valid_predictions(pred_dir: Path, image_dir: Path, cases: list[str], valid_labels: set[int]) -> None:
    for case in cases:
        pred_file = pred_dir / f"{case}.nii.gz"
        assert pred_file.is_file(), f"missing prediction {pred_file}"
        pred = sitk.ReadImage(str(pred_file))
        img = sitk.ReadImage(str(image_dir / f"{case}_0000.nii.gz"))
        assert pred.GetSize() == img.GetSize()
        assert np.allclose(pred.GetSpacing(), img.GetSpacing())
        assert np.allclose(pred.GetOrigin(), img.GetOrigin())
        values = set(np.unique(sitk.GetArrayFromImage(pred)).tolist())
        assert values <= valid_labels, f"{pred_file}: labels {values} not in {valid_labels}"


# ---- training, prediction, resume ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["nnUNetTrainerLLMSeg_2epochs_3it"])  # TAK's real run: tests/test_demo.py
def test_trainer_trains_two_tiny_epochs_and_predicts(semi, trainer, tmp_path):
    env = semi["tiny"].env.environ()
    run_cli(["nnUNetv2_train", "903", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env=env)
    model = semi["tiny"].env.results / semi["name"] / f"{trainer}__nnUNetPlans__3d_fullres"
    fold = model / "fold_0"
    assert (fold / "validation" / "summary.json").is_file() and (fold / "progress.png").is_file()
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    weights = ckpt["network_weights"]
    key = "llmseg" if "LLMSeg" in trainer else "tak_shape"
    expected = torch.from_numpy(semi["priors"].embeddings[key])
    for net in ("net_a", "net_b"):
        buf = weights[f"{net}.text_embeddings"]
        torch.testing.assert_close(buf[:, : expected.shape[1]], expected)  # persistent text buffers
    log = ckpt["logging"]
    assert len(log["unsup_losses"]) == 2 and len(log["confident_fraction"]) == 2
    assert "unsup_loss" in next(fold.glob("training_log_*.txt")).read_text()

    inp = tmp_path / "in"
    inp.mkdir()
    cases = ["tiny_000", "tiny_001"]
    for c in cases:
        shutil.copy(semi["raw"] / "imagesTr" / f"{c}_0000.nii.gz", inp)
    for mode in ("both", "a"):
        out = tmp_path / f"out_{mode}"
        run_cli(["nnUNetv2_predict", "-i", str(inp), "-o", str(out), "-d", "903", "-c", "3d_fullres", "-f", "0",
                 "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "0", "-nps", "0"],
                env=dict(env, NNUNET_LLMSEG_PREDICT_NETWORKS=mode))
        assert_valid_predictions(out, inp, cases, {0, 1, 2})


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerLLMSeg_5epochs_10it", "nnUNetTrainerTAK_5epochs_10it"])
def test_resume_restores_both_networks_optimiser_and_schedule(semi, trainer_name, tmp_path, monkeypatch):
    t1 = build_trainer(trainer_name, semi["name"], semi["pre"])
    t1.initialize()
    t1.dataloader_train, t1.dataloader_val = t1.get_dataloaders()
    t1.on_epoch_start()
    t1.on_train_epoch_start()
    outs = [t1.train_step(next(t1.dataloader_train)) for _ in range(2)]
    t1.on_train_epoch_end(outs)
    with torch.no_grad():
        t1.on_validation_epoch_start()
        t1.on_validation_epoch_end([t1.validation_step(next(t1.dataloader_val))])
    t1.save_every = 1  # nnU-Net's own periodic checkpoint, written inside on_epoch_end as in a real run
    t1.on_epoch_end()
    ckpt = Path(t1.output_folder) / "checkpoint_latest.pth"
    assert ckpt.is_file()
    t1.dataloader_train._finish()

    t2 = build_trainer(trainer_name, semi["name"], semi["pre"])
    t2.load_checkpoint(str(ckpt))
    assert t2.current_epoch == t1.current_epoch == 1
    sd1, sd2 = t1.network.state_dict(), t2.network.state_dict()
    assert sd1.keys() == sd2.keys() and any(k.startswith("net_b.") for k in sd1)
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    o1, o2 = t1.optimizer.state_dict(), t2.optimizer.state_dict()
    assert o1["param_groups"][0]["lr"] == o2["param_groups"][0]["lr"]
    for pid, st in o1["state"].items():
        assert torch.equal(st["momentum_buffer"], o2["state"][pid]["momentum_buffer"])
    assert len(o1["state"]) == sum(1 for p in t1.network.parameters() if p.grad is not None)
    t2.on_train_epoch_start()
    t1._iteration_in_epoch = 0
    t1.current_epoch = t2.current_epoch
    assert t2.unsup_weight() == t1.unsup_weight()
    assert t2.logger.get_value("unsup_losses", None) == t1.logger.get_value("unsup_losses", None)

    # the priors rewritten since (other text, same sizes): refused; continued with the checkpoint's text on request
    dataset_json = json.loads((semi["pre"] / "dataset.json").read_text())
    try:
        new = write_test_priors(semi["pre"], dataset_json, seed=8)
        t3 = build_trainer(trainer_name, semi["name"], semi["pre"])
        with pytest.raises(PriorsError, match=r"checkpoint_latest\.pth was trained with other text priors .*"
                                              r"continuing would mix them.*NNUNET_LLMSEG_KEEP_CHECKPOINT_TEXT=1"):
            t3.load_checkpoint(str(ckpt))
        monkeypatch.setenv(KEEP_CHECKPOINT_TEXT_ENV, "1")
        t4 = build_trainer(trainer_name, semi["name"], semi["pre"])
        assert t4.plans_manager.plans[PLANS_KEY]["content_hash"] == new.content_hash != semi["priors"].content_hash
        t4.load_checkpoint(str(ckpt))
        assert t4.plans_manager.plans[PLANS_KEY]["content_hash"] == semi["priors"].content_hash
        for k in ("net_a.text_embeddings", "net_b.text_embeddings"):
            assert torch.equal(t4.network.state_dict()[k], sd1[k]), k
        assert "continues with the text it was trained with" in Path(t4.log_file).read_text()
    finally:
        write_test_priors(semi["pre"], dataset_json)  # the module's priors again

