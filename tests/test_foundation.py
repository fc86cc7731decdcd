"""The plugin installs into nnU-Net: the start-up hook and trainer discovery.

The real ``nnUNetv2_train`` + ``nnUNetv2_predict`` round trips are in test_semi_supervised.py (LLM-SegNet),
test_demo.py (TAK) and test_benchmark.py (the labelled-only and all-labels trainers, through the benchmark).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
