"""Read and write the text priors: ``text_priors.safetensors`` (embeddings, no pickle) + ``text_priors.json``.

Both live in the dataset's ``nnUNet_preprocessed`` folder, where the trainers find them without any argument.
The JSON holds the texts, prompts, back-end and encoder names, label names and values, shapes and a content hash
of the embeddings; loading verifies the hash and the shapes and, given the dataset's ``dataset.json``, that the
priors were written for exactly these labels.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAFETENSORS_NAME = "text_priors.safetensors"
JSON_NAME = "text_priors.json"
EMBEDDING_KEYS = ("llmseg", "tak_shape", "tak_location")


class PriorsError(RuntimeError):
    """Missing, corrupt or mismatched text priors; the message says which command to rerun."""


@dataclass(frozen=True)
class TextPriors:
    class_names: list[str]
    label_values: list
    embeddings: dict[str, np.ndarray]
    encoder: str
    content_hash: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(next(iter(self.embeddings.values())).shape[1])


def priors_paths(preprocessed_dataset_folder: str | Path) -> tuple[Path, Path]:
    folder = Path(preprocessed_dataset_folder)
    return folder / SAFETENSORS_NAME, folder / JSON_NAME


def embeddings_hash(embeddings: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(embeddings):
        a = np.ascontiguousarray(embeddings[k], dtype=np.float32)
        h.update(k.encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def dataset_labels(dataset_json: dict) -> tuple[list[str], list]:
    """(names, values) of dataset.json's labels in file order, ``ignore`` excluded."""
    names, values = [], []
    for name, value in dataset_json["labels"].items():
        if name == "ignore":
            continue
        names.append(name)
        values.append(list(value) if isinstance(value, (list, tuple)) else int(value))
    return names, values


def _rerun_hint(folder: Path) -> str:
    return f"Run: python -m prior_generation -d {folder.name}"


def save_priors(preprocessed_dataset_folder: str | Path, priors: TextPriors) -> tuple[Path, Path]:
    """Write both files atomically (temporary names, then rename)."""
    from safetensors.numpy import save_file

    folder = Path(preprocessed_dataset_folder)
    folder.mkdir(parents=True, exist_ok=True)
    st_path, json_path = priors_paths(folder)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in priors.embeddings.items()}
    digest = embeddings_hash(arrays)
    meta = dict(priors.meta)
    meta.update(class_names=list(priors.class_names), label_values=list(priors.label_values),
                encoder=priors.encoder, content_hash=digest,
                shapes={k: list(v.shape) for k, v in arrays.items()})
    tmp_st, tmp_json = st_path.with_suffix(".tmp"), json_path.with_suffix(".json.tmp")
    save_file(arrays, str(tmp_st), metadata={"content_hash": digest})
    tmp_json.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_st, st_path)
    os.replace(tmp_json, json_path)
    return st_path, json_path


def load_priors(preprocessed_dataset_folder: str | Path, dataset_json: dict | None = None) -> TextPriors:
    folder = Path(preprocessed_dataset_folder)
    st_path, json_path = priors_paths(folder)
    if not st_path.is_file() or not json_path.is_file():
        raise PriorsError(f"No text priors in {folder} ({SAFETENSORS_NAME} + {JSON_NAME}). {_rerun_hint(folder)}")
    try:
        meta = json.loads(json_path.read_text())
        from safetensors.numpy import load_file

        arrays = load_file(str(st_path))
    except Exception as e:
        raise PriorsError(f"Cannot read the text priors {st_path} / {json_path}: {e}. {_rerun_hint(folder)}") from e
    if embeddings_hash(arrays) != meta.get("content_hash"):
        raise PriorsError(f"{st_path} does not match the content hash in {json_path} (edited or mixed files). "
                          f"{_rerun_hint(folder)}")
    names, values = meta.get("class_names", []), meta.get("label_values", [])
    for k, a in arrays.items():
        if a.ndim != 2 or a.shape[0] != len(names):
            raise PriorsError(f"{st_path}: embedding '{k}' has shape {a.shape}, expected ({len(names)}, dim). "
                              f"{_rerun_hint(folder)}")
    if dataset_json is not None:
        want_names, want_values = dataset_labels(dataset_json)
        have = dict(zip(names, [tuple(v) if isinstance(v, list) else v for v in values]))
        want = dict(zip(want_names, [tuple(v) if isinstance(v, list) else v for v in want_values]))
        if have != want:
            missing = sorted(set(want) - set(have))
            extra = sorted(set(have) - set(want))
            changed = sorted(k for k in set(want) & set(have) if want[k] != have[k])
            raise PriorsError(
                f"The text priors in {folder} were written for other labels than the dataset's dataset.json "
                f"(missing: {missing}, extra: {extra}, changed values: {changed}). {_rerun_hint(folder)}")
    return TextPriors(class_names=list(names), label_values=list(values), embeddings=dict(arrays),
                      encoder=str(meta.get("encoder", "")), content_hash=str(meta.get("content_hash", "")),
                      meta=meta)
