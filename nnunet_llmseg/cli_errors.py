"""Errors the command line reports as one ``error:`` line instead of a traceback, and the checks behind them.

Exit codes follow argparse: **2** when the command cannot run as typed (:class:`UsageError`: an unknown dataset,
an nnU-Net folder variable that is not set, an invalid option value), **1** when the inputs were understood but
something in the data is wrong (a corrupt image, a subset that no longer fits the split, a missing prediction).

The checks read the environment directly, before importing ``nnunetv2.paths``: nnU-Net turns an unset variable
into a multi-line message at the first use of the path, which is what produced 20-line tracebacks before.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

NNUNET_FOLDER_VARIABLES: tuple[str, ...] = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


class UsageError(RuntimeError):
    """The command line or the environment is wrong; the message says what to type instead (exit code 2)."""


def one_line(message: object) -> str:
    """A message on one line (nnU-Net's own messages contain newlines)."""
    return " ".join(str(message).split())


def report(error: BaseException, exit_code: int) -> int:
    """Print ``error: <message>`` as one line on stderr and return ``exit_code``."""
    print(f"error: {one_line(error)}", file=sys.stderr)
    return exit_code


def require_folder_variable(name: str) -> Path:
    """The folder named by one of nnU-Net's variables; :class:`UsageError` when it is unset or empty."""
    value = os.environ.get(name, "")
    if not value.strip():
        raise UsageError(
            f"${name} is not set: export {name}=/path/to/{name} (nnU-Net's documentation/setting_up_paths.md)"
        )
    return Path(value)


def dataset_name(dataset: str | int) -> str:
    """``DatasetXXX_Name`` for an id (looked up like nnU-Net, in its three folders) or a name.

    Raises :class:`UsageError` for an id that matches no ``DatasetXXX_*`` folder (or more than one) and for
    text that is neither an id nor a ``Dataset...`` name.
    """
    text = str(dataset).strip()
    if text.startswith("Dataset"):
        return text
    if not text.isdigit():
        raise UsageError(f"-d {text!r}: give a dataset id (e.g. 4) or a full name (Dataset004_Hippocampus)")
    prefix = f"Dataset{int(text):03d}_"
    found, looked = set(), []
    for var in NNUNET_FOLDER_VARIABLES:
        base = os.environ.get(var, "").strip()
        if not base:
            looked.append(f"${var} (not set)")
            continue
        looked.append(f"${var}={base}")
        if os.path.isdir(base):
            found |= {d for d in os.listdir(base) if d.startswith(prefix) and os.path.isdir(os.path.join(base, d))}
    if not found:
        raise UsageError(f"dataset {text} not found: no {prefix}* folder in {', '.join(looked)}")
    if len(found) > 1:
        raise UsageError(f"dataset id {text} is ambiguous: {sorted(found)}; pass the full name with -d")
    return found.pop()


def dataset_id(name: str) -> str:
    """``Dataset004_Hippocampus`` -> ``4``: nnU-Net's planning commands take ``-d`` as an integer only."""
    digits = name[len("Dataset"):len("Dataset") + 3] if name.startswith("Dataset") else name
    return str(int(digits)) if digits.isdigit() else name


def resolve_dataset(dataset: str | int, folder_variable: str = "nnUNet_preprocessed") -> tuple[str, Path]:
    """(``DatasetXXX_Name``, its folder under ``$folder_variable``) for an id or a name.

    Raises :class:`UsageError` for an unset variable, an unknown or ambiguous dataset (:func:`dataset_name`)
    or a dataset that has no folder under ``$folder_variable`` yet.
    """
    root = require_folder_variable(folder_variable)
    name = dataset_name(dataset)
    folder = root / name
    if not folder.is_dir():
        hint = (f"run nnUNetv2_plan_and_preprocess -d {dataset_id(name)}"
                if folder_variable == "nnUNet_preprocessed" else f"check ${folder_variable}")
        raise UsageError(f"{folder} does not exist: {hint}")
    return name, folder


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _bounded(text, int, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _bounded(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _bounded(text, float, lambda v: 0 < v < float("inf"), "a number > 0")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _bounded(text, float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def _bounded(text: str, kind: type, ok, what: str):
    import argparse

    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value
