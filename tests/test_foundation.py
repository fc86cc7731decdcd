"""The plugin installs into nnU-Net: the start-up hook, trainer discovery, and a real train + predict round trip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import run_cli
from nnunet_llmseg._nnunet_env_hook import shim_folder

FIND_TRAINER = (
    "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f;"
    "import sys; c = f(sys.argv[1]); print('FOUND', c.__name__, c.__module__)"
)


def _fresh_python(code: str, *args: str, **env_overrides: str) -> subprocess.CompletedProcess:
    """A new interpreter with the user's environment minus anything we might have exported in this process."""
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "NNUNET_LLMSEG_NO_AUTOENV")}
    env.update(env_overrides)
    # run outside the checkout so the installed package (what the .pth hook imports) is the one we see
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=Path(sys.executable).parent)


def _is_our_shim_folder(path: str) -> bool:
    p = Path(path)
    return p.name == "nnunet_ext" and p.parent.name == "nnunet_llmseg" and (p / "nnunet_llmseg_trainers.py").is_file()


def test_startup_hook_sets_ext_trainer_without_importing_torch():
    code = "import os, sys; print(os.environ.get('nnUNet_extTrainer')); print('torch' in sys.modules)"
    out = _fresh_python(code).stdout.splitlines()
    assert _is_our_shim_folder(out[0]), out
    assert out[1] == "False", "the .pth hook must not import torch"


def test_startup_hook_appends_to_user_value():
    mine = os.pathsep.join(["/opt/my_trainers", "/srv/other"])
    out = _fresh_python("import os; print(os.environ['nnUNet_extTrainer'])", nnUNet_extTrainer=mine).stdout.strip()
    parts = out.split(os.pathsep)
    assert parts[:2] == ["/opt/my_trainers", "/srv/other"] and len(parts) == 3 and _is_our_shim_folder(parts[2])


def test_opt_out_leaves_variable_alone_and_cli_prints_manual_value():
    out = _fresh_python("import os; print(os.environ.get('nnUNet_extTrainer'))", NNUNET_LLMSEG_NO_AUTOENV="1")
    assert out.stdout.strip() == "None"
    proc = run_cli(["nnunet-llmseg", "ext-trainer-path"])
    assert _is_our_shim_folder(proc.stdout.strip())


def test_shim_folder_holds_exactly_one_uniquely_named_module():
    entries = sorted(p.name for p in Path(shim_folder()).iterdir() if p.suffix == ".py")
    assert entries == ["nnunet_llmseg_trainers.py"]


@pytest.mark.parametrize("name", ["nnUNetTrainerLLMSeg", "nnUNetTrainerLabelledOnly_2epochs_3it"])
def test_nnunet_finds_our_trainers_in_a_fresh_shell(name):
    proc = _fresh_python(FIND_TRAINER, name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"FOUND {name} nnunet_llmseg.trainers" in proc.stdout


def test_cli_entry_points_print_help():
    assert "ext-trainer-path" in run_cli(["nnunet-llmseg", "--help"]).stdout
    proc = subprocess.run([sys.executable, "-m", "prior_generation", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "usage" in proc.stdout.lower()


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


@pytest.mark.slow
def test_real_train_and_predict_with_our_tiny_trainer(tiny_dataset, tmp_path):
    env = tiny_dataset.env.environ()
    trainer = "nnUNetTrainerLabelledOnly_2epochs_3it"
    run_cli(["nnUNetv2_train", str(tiny_dataset.dataset_id), "3d_fullres", "0", "-tr", trainer, "-device", "cpu"],
            env=env)
    model_dir = tiny_dataset.env.results / tiny_dataset.name / f"{trainer}__nnUNetPlans__3d_fullres"
    assert (model_dir / "fold_0" / "checkpoint_final.pth").is_file()
    assert (model_dir / "fold_0" / "validation" / "summary.json").is_file()

    inp = tmp_path / "in"
    inp.mkdir()
    cases = tiny_dataset.labelled_cases[:2]
    for c in cases:
        (inp / f"{c}_0000.nii.gz").write_bytes((tiny_dataset.raw_folder / "imagesTr" / f"{c}_0000.nii.gz").read_bytes())
    out = tmp_path / "out"
    run_cli(["nnUNetv2_predict", "-i", str(inp), "-o", str(out), "-d", str(tiny_dataset.dataset_id), "-c",
             "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"],
            env=env)
    assert_valid_predictions(out, inp, cases, {0, 1, 2})
