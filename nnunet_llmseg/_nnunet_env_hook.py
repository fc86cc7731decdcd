"""Make nnU-Net's own commands find our trainers, without the user exporting anything.

nnU-Net v2 (>= 2.8.0) looks for ``-tr`` names it does not ship in the folders listed in the environment
variable ``nnUNet_extTrainer`` (``os.pathsep``-separated). The installed ``nnunet_llmseg_ext.pth`` imports
this module at interpreter start-up; it appends our shim folder to that variable, keeping whatever the user
set. It imports nothing heavy (no torch) and never raises: a broken hook must not break Python start-up.

Opt out with ``NNUNET_LLMSEG_NO_AUTOENV=1`` and set the variable by hand instead
(``export nnUNet_extTrainer="$(nnunet-llmseg ext-trainer-path)"``).
"""

from __future__ import annotations

import os

ENV_VAR = "nnUNet_extTrainer"
OPT_OUT_VAR = "NNUNET_LLMSEG_NO_AUTOENV"


def shim_folder() -> str:
    """The folder holding our single shim module ``nnunet_llmseg_trainers.py``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")


def extend_ext_trainer_variable(environ: os._Environ | dict | None = None) -> str:
    """Append the shim folder to ``nnUNet_extTrainer`` (once) and return the new value."""
    env = os.environ if environ is None else environ
    folder = shim_folder()
    current = env.get(ENV_VAR, "")
    parts = [p for p in current.split(os.pathsep) if p]
    if folder not in parts:
        parts.append(folder)
    env[ENV_VAR] = os.pathsep.join(parts)
    return env[ENV_VAR]


try:
    if os.environ.get(OPT_OUT_VAR, "") not in ("1", "true", "True"):
        extend_ext_trainer_variable()
except Exception:  # never break interpreter start-up
    pass
