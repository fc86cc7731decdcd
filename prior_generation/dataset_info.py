"""Find a dataset's ``dataset.json`` and read its classes (``ignore`` excluded) and imaging modality.

The labels are read from the same file the trainers check the priors against: the preprocessed copy
``$nnUNet_preprocessed/<Dataset>/dataset.json`` that ``nnUNetv2_train`` loads. Only a dataset that is not
planned yet is read from ``$nnUNet_raw``. When the raw file's labels differ from the preprocessed copy (edited
after planning), :func:`raw_labels_differ` says so: the trainer keeps seeing the copy until the dataset is
planned again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from prior_generation.errors import DatasetError, DatasetNotFoundError

IGNORE_LABEL = "ignore"


@dataclass(frozen=True)
class DatasetClasses:
    dataset_name: str
    dataset_json_path: Path | None
    class_names: list[str]
    label_values: list  # int or list[int] (regions)
    channel_names: list[str]
    modality: str  # human readable, e.g. "MRI (T1, T2)"
    modality_family: str  # "CT", "MRI" or "" (unknown)
    is_region_based: bool


def _as_label_value(name: str, value, where: str):
    if isinstance(value, bool):
        raise DatasetError(f"{where}: label '{name}' has a boolean value")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return [int(v) for v in value]
    raise DatasetError(f"{where}: label '{name}' must be an int or a non-empty list of ints, got {value!r}")


def labels_from_dataset_json(dataset_json: dict, where: str = "dataset.json") -> tuple[list[str], list]:
    """(names, values) in file order, ``ignore`` excluded. Also reads MSD style ``{"0": "background"}``."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f"{where}: no 'labels' object")
    if all(isinstance(k, str) and k.isdigit() for k in labels) and all(
        isinstance(v, str) for v in labels.values()
    ):
        # MSD / nnU-Net v1 style: value -> name
        labels = {v: int(k) for k, v in labels.items()}
    names, values = [], []
    for name, value in labels.items():
        if name == IGNORE_LABEL:
            continue
        names.append(str(name))
        values.append(_as_label_value(name, value, where))
    return names, values


def modality_from_channels(channel_names: list[str]) -> tuple[str, str]:
    """('MRI (T1, FLAIR)', 'MRI') from nnU-Net channel names; CT wins when any channel is CT."""
    up = [c.upper() for c in channel_names]
    mr_markers = ("MR", "T1", "T2", "FLAIR", "ADC", "DWI", "PD", "CINE", "SSFP", "LGE", "HBV", "DIFFUSION")
    if any(c == "CT" or c.startswith("CT") or "COMPUTED" in c for c in up):
        family = "CT"
    elif any(any(m in c for m in mr_markers) for c in up):
        family = "MRI"
    else:
        family = ""
    if family == "CT":
        text = "CT"
    elif family == "MRI":
        detail = [c for c in channel_names if c.upper() not in ("MRI", "MR")]
        text = "MRI" + (f" ({', '.join(detail)})" if detail else "")
    else:
        text = ", ".join(channel_names) if channel_names else "medical images"
    return text, family


def classes_from_dataset_json(
    dataset_json: dict, dataset_name: str, path: Path | None = None
) -> DatasetClasses:
    where = str(path) if path else "dataset.json"
    names, values = labels_from_dataset_json(dataset_json, where)
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    channel_list = (
        [str(v) for _, v in sorted(channels.items(), key=lambda kv: int(kv[0]))] if channels else []
    )
    modality, family = modality_from_channels(channel_list)
    return DatasetClasses(
        dataset_name=dataset_name,
        dataset_json_path=path,
        class_names=names,
        label_values=values,
        channel_names=channel_list,
        modality=modality,
        modality_family=family,
        is_region_based=any(isinstance(v, list) for v in values),
    )


def resolve_dataset_name(dataset: str | int) -> str:
    """Id (``4``/``004``) or full name -> ``Dataset004_Hippocampus`` via nnU-Net's own lookup."""
    s = str(dataset).strip()
    if s.startswith("Dataset"):
        return s
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(int(s) if s.isdigit() else s)
    except (RuntimeError, ValueError) as e:
        looked = ", ".join(f"${v}={os.environ[v]}" if os.environ.get(v) else f"${v} (not set)"
                           for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"))
        if s.isdigit():
            raise DatasetNotFoundError(
                f"dataset {s} not found: no Dataset{int(s):03d}_* folder in {looked}") from e
        raise DatasetNotFoundError(
            f"-d {s!r}: give a dataset id (e.g. 4) or a full name (Dataset004_Hippocampus)") from e


def find_dataset_json(dataset_name: str) -> Path:
    """``$nnUNet_preprocessed/<name>/dataset.json`` (the copy ``nnUNetv2_train`` reads and compares the priors
    with) when the dataset is planned, else ``$nnUNet_raw/<name>/dataset.json``."""
    tried = []
    for var in ("nnUNet_preprocessed", "nnUNet_raw"):
        root = os.environ.get(var)
        if not root:
            tried.append(f"${var} (not set)")
            continue
        p = Path(root) / dataset_name / "dataset.json"
        if p.is_file():
            return p
        tried.append(str(p))
    raise DatasetNotFoundError(f"no dataset.json for {dataset_name}; looked in: {'; '.join(tried)}")


def raw_labels_differ(dataset_name: str, used: Path) -> Path | None:
    """The raw ``dataset.json`` when ``used`` is the preprocessed copy and the raw file's labels differ."""
    raw_root, pre_root = os.environ.get("nnUNet_raw"), os.environ.get("nnUNet_preprocessed")
    if not raw_root or not pre_root or used != Path(pre_root) / dataset_name / "dataset.json":
        return None
    raw = Path(raw_root) / dataset_name / "dataset.json"
    try:
        differ = json.loads(raw.read_text(encoding="utf-8")).get("labels") != \
            json.loads(used.read_text(encoding="utf-8")).get("labels")
    except (OSError, ValueError):
        return None
    return raw if differ else None


def preprocessed_folder(dataset_name: str) -> Path:
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise DatasetNotFoundError(
            "$nnUNet_preprocessed is not set: the priors are written to $nnUNet_preprocessed/<Dataset>; "
            "export nnUNet_preprocessed=/path/to/nnUNet_preprocessed"
        )
    return Path(root) / dataset_name


def load_dataset_classes(dataset: str | int) -> DatasetClasses:
    name = resolve_dataset_name(dataset)
    path = find_dataset_json(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from e
    return classes_from_dataset_json(data, name, path)
