"""CPU-sized plans: a copy of the plans with another batch size, patch size or width, sharing the preprocessed data.

nnU-Net plans for a GPU (ACDC ``2d``: batch 56 of 256x224 patches); a CPU benchmark needs far less per step.
The copy ``{plans}_bs{B}_ps{P1}x{P2}_w{D}`` keeps everything else identical - in particular the configuration's
``data_identifier`` - so nnU-Net trains on the same preprocessed arrays, and the network keeps its planned depth
and strides (a patch must therefore be a multiple of the network's total stride on every axis). ``_w{D}`` divides
``features_per_stage`` by D (at least ``MIN_FEATURES``): a convolution's cost grows with the square of its
width, so a 4x narrower network trains many more iterations in the same CPU time; every method of one benchmark
gets the same plans, so the comparison stays fair.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

MIN_FEATURES = 8


class PlansError(ValueError):
    """Plans or overrides that cannot be used (the message names the file or the option)."""


def override_plans_name(source: str, batch_size: int | None, patch_size: list[int] | None,
                        width_divisor: int | None = None) -> str:
    name = source
    if batch_size:
        name += f"_bs{batch_size}"
    if patch_size:
        name += "_ps" + "x".join(str(int(p)) for p in patch_size)
    if width_divisor and width_divisor != 1:
        name += f"_w{width_divisor}"
    return name


def narrowed_features(features_per_stage: list[int], divisor: int, minimum: int = MIN_FEATURES) -> list[int]:
    """``features_per_stage`` divided by ``divisor``, each at least ``minimum`` (nnU-Net plans' width edit)."""
    if divisor < 1:
        raise PlansError(f"--width-divisor must be at least 1, got {divisor}")
    return [max(minimum, int(f) // divisor) for f in features_per_stage]


def _resolved_configuration(plans: dict, configuration: str, plans_file: Path) -> dict:
    """The configuration with ``inherits_from`` applied (as nnU-Net's PlansManager does)."""
    configs = plans.get("configurations", {})
    if configuration not in configs:
        raise PlansError(f"{plans_file}: no configuration {configuration!r} (available: {', '.join(configs)})")
    chain, name = [], configuration
    while name is not None:
        if name in chain:
            raise PlansError(f"{plans_file}: circular inherits_from at {name!r}")
        chain.append(name)
        name = configs[name].get("inherits_from")
    resolved: dict = {}
    for n in reversed(chain):
        resolved.update({k: v for k, v in configs[n].items() if k != "inherits_from"})
    return resolved


def total_stride(configuration: dict) -> list[int]:
    """Product of the encoder strides per axis (a patch must be a multiple of it)."""
    strides = configuration.get("architecture", {}).get("arch_kwargs", {}).get("strides")
    if not strides:
        return [1] * len(configuration["patch_size"])
    dims = len(configuration["patch_size"])
    out = [1] * dims
    for s in strides:
        s = [s] * dims if isinstance(s, int) else list(s)
        out = [a * int(b) for a, b in zip(out, s)]
    return out


def make_override_plans(preprocessed_dataset_folder: str | Path, configuration: str,
                        batch_size: int | None = None, patch_size: list[int] | None = None,
                        source: str = "nnUNetPlans", width_divisor: int | None = None) -> str:
    """Write ``{source}_bs{B}_ps{..}_w{D}.json`` next to ``{source}.json`` and return its plans name.

    Without overrides the source plans are returned unchanged. The file is rewritten only when its content would
    change, atomically, so concurrent benchmarks never see half a file.
    """
    base = Path(preprocessed_dataset_folder)
    source_file = base / f"{source}.json"
    if not source_file.is_file():
        raise PlansError(f"{source_file} not found: plan and preprocess the dataset first "
                         f"(nnUNetv2_plan_and_preprocess -d DATASET -c {configuration})")
    try:
        plans = json.loads(source_file.read_text())
    except json.JSONDecodeError as e:
        raise PlansError(f"{source_file} is not valid JSON ({e})") from e
    resolved = _resolved_configuration(plans, configuration, source_file)
    if width_divisor is not None and width_divisor < 1:
        raise PlansError(f"--width-divisor must be at least 1, got {width_divisor}")
    if width_divisor == 1:
        width_divisor = None  # the planned width: no edit, no suffix
    if not batch_size and not patch_size and not width_divisor:
        return source
    if batch_size is not None and batch_size < 1:
        raise PlansError(f"--batch-size must be at least 1, got {batch_size}")
    entry = plans["configurations"][configuration]
    if batch_size:
        entry["batch_size"] = int(batch_size)
    if patch_size:
        planned = list(resolved["patch_size"])
        if len(patch_size) != len(planned):
            raise PlansError(f"--patch-size {' '.join(map(str, patch_size))}: configuration {configuration!r} "
                             f"has {len(planned)}-D patches (planned {planned})")
        stride = total_stride(resolved)
        bad = [(p, s) for p, s in zip(patch_size, stride) if p < 1 or p % s]
        if bad:
            hint = [max(s, math.ceil(p / s) * s) for p, s in zip(patch_size, stride)]
            raise PlansError(f"--patch-size {' '.join(map(str, patch_size))}: every size must be a positive multiple "
                             f"of the network's total stride {stride} for configuration {configuration!r} "
                             f"(planned {planned}); e.g. {' '.join(map(str, hint))}")
        entry["patch_size"] = [int(p) for p in patch_size]
    if width_divisor:
        architecture = resolved.get("architecture", {})
        features = architecture.get("arch_kwargs", {}).get("features_per_stage")
        if not features:
            raise PlansError(f"--width-divisor: configuration {configuration!r} in {source_file} has no "
                             f"architecture.arch_kwargs.features_per_stage to divide")
        entry["architecture"] = json.loads(json.dumps(architecture))  # own copy, even where it was inherited
        entry["architecture"]["arch_kwargs"]["features_per_stage"] = narrowed_features(features, width_divisor)
    entry.setdefault("data_identifier", resolved.get("data_identifier", f"{source}_{configuration}"))
    name = override_plans_name(source, batch_size, patch_size, width_divisor)
    plans["plans_name"] = name
    target = base / f"{name}.json"
    text = json.dumps(plans, indent=2)
    if not target.is_file() or target.read_text() != text:
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, target)
    return name


def effective_configuration(preprocessed_dataset_folder: str | Path, plans_name: str, configuration: str) -> dict:
    """Batch size, patch size and data identifier of ``configuration`` in the plans ``plans_name``."""
    plans_file = Path(preprocessed_dataset_folder) / f"{plans_name}.json"
    if not plans_file.is_file():
        raise PlansError(f"{plans_file} not found")
    resolved = _resolved_configuration(json.loads(plans_file.read_text()), configuration, plans_file)
    return {"batch_size": resolved.get("batch_size"), "patch_size": list(resolved.get("patch_size", [])),
            "data_identifier": resolved.get("data_identifier"),
            "features_per_stage": resolved.get("architecture", {}).get("arch_kwargs", {}).get("features_per_stage")}
