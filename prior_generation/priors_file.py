"""The text-priors files both trainers read: ``text_priors.safetensors`` + ``text_priors.json``.

``text_priors.safetensors`` holds one float32 ``(num_classes, dim)`` matrix per text kind (``llmseg``,
``tak_shape``, ``tak_location``), rows in dataset.json label order (``ignore`` excluded, background first),
each row L2-normalised. ``text_priors.json`` holds class names, label values, the encoder, the content
hash and ``meta`` (texts, prompts, LLM back-end, ...). No pickle anywhere; both files are written
atomically, and the content hash (also stored in the safetensors header) ties the pair together.

This module only needs numpy and safetensors, so trainers can import it cheaply.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "nnunet-llmseg-text-priors/1"
EMBEDDING_KEYS: tuple[str, ...] = ("llmseg", "tak_shape", "tak_location")
SAFETENSORS_NAME = "text_priors.safetensors"
JSON_NAME = "text_priors.json"
_NORM_TOL = 1e-3


class PriorsError(RuntimeError):
    """Text priors missing, stale (labels changed) or corrupt; the message says what to rerun."""


@dataclass(frozen=True, eq=False)
class TextPriors:
    class_names: list[str]  # dataset.json "labels" keys in file order, "ignore" excluded; background first
    label_values: list  # int, or list[int] for regions, per class, same order
    embeddings: dict[str, np.ndarray]  # float32 (num_classes, dim), rows L2-normalised; keys EMBEDDING_KEYS
    encoder: str
    content_hash: str
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(next(iter(self.embeddings.values())).shape[1])

    @property
    def random_weights(self) -> bool:
        """True when the recorded encoder had no trained weights (``open_clip:<model>:none``, for tests): such
        embeddings are fixed random directions, not knowledge, and whoever uses them should be told."""
        info = self.meta.get("encoder_info", {})
        return bool(info.get("random_weights", info.get("pretrained") == "none (random)"))


def priors_paths(preprocessed_dataset_folder: str | Path) -> tuple[Path, Path]:
    """(safetensors, json) paths inside a dataset's preprocessed folder."""
    folder = Path(preprocessed_dataset_folder)
    return folder / SAFETENSORS_NAME, folder / JSON_NAME


def _rerun(folder: Path) -> str:
    return f"Run: python -m prior_generation -d {folder.name}"


def compute_content_hash(
    class_names: list[str], label_values: list, encoder: str, embeddings: dict[str, np.ndarray]
) -> str:
    """SHA-256 over labels, encoder and the exact embedding bytes (keys sorted)."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "format": FORMAT,
                "class_names": list(class_names),
                "label_values": list(label_values),
                "encoder": encoder,
            },
            sort_keys=True,
        ).encode("utf-8")
    )
    for key in sorted(embeddings):
        arr = np.ascontiguousarray(embeddings[key], dtype=np.float32)
        h.update(key.encode("utf-8"))
        h.update(repr(arr.shape).encode("ascii"))
        h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()


def make_priors(
    class_names: list[str],
    label_values: list,
    embeddings: dict[str, np.ndarray],
    encoder: str,
    meta: dict | None = None,
) -> TextPriors:
    """Build a TextPriors with its content hash computed."""
    emb = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in embeddings.items()}
    values = [list(v) if isinstance(v, (list, tuple)) else int(v) for v in label_values]
    return TextPriors(
        list(class_names),
        values,
        emb,
        encoder,
        compute_content_hash(class_names, values, encoder, emb),
        dict(meta or {}),
    )


def _check_arrays(priors: TextPriors, where: Path) -> None:
    keys = set(priors.embeddings)
    if keys != set(EMBEDDING_KEYS):
        raise PriorsError(
            f"{where}: embedding keys {sorted(keys)} != expected {list(EMBEDDING_KEYS)}. "
            f"{_rerun(where.parent)}"
        )
    n = len(priors.class_names)
    if len(priors.label_values) != n:
        raise PriorsError(f"{where}: {n} class names but {len(priors.label_values)} label values")
    dims = set()
    for k in EMBEDDING_KEYS:
        a = priors.embeddings[k]
        if a.dtype != np.float32 or a.ndim != 2 or a.shape[0] != n:
            raise PriorsError(
                f"{where}: '{k}' has shape {a.shape} dtype {a.dtype}, expected float32 ({n}, dim). "
                f"{_rerun(where.parent)}"
            )
        if not np.isfinite(a).all():
            raise PriorsError(f"{where}: '{k}' contains NaN/inf. {_rerun(where.parent)}")
        norms = np.linalg.norm(a.astype(np.float64), axis=1)
        if n and np.abs(norms - 1).max() > _NORM_TOL:
            raise PriorsError(f"{where}: rows of '{k}' are not L2-normalised. {_rerun(where.parent)}")
        dims.add(a.shape[1])
    if len(dims) > 1:
        raise PriorsError(f"{where}: embedding dims differ between keys: {sorted(dims)}")


def _labels_of(dataset_json: dict) -> tuple[list[str], list]:
    from prior_generation.dataset_info import labels_from_dataset_json

    return labels_from_dataset_json(dataset_json)


def _label_fix(folder: Path, dataset_json_path: Path | None) -> str:
    """The command that makes priors and the compared dataset.json agree (and re-planning when the raw
    dataset.json was edited after planning, since nnUNetv2_train keeps reading the preprocessed copy)."""
    from prior_generation.dataset_info import raw_labels_differ

    rerun = f"python -m prior_generation -d {folder.name}"
    number = folder.name[len("Dataset"):len("Dataset") + 3]
    plan = f"nnUNetv2_plan_and_preprocess -d {int(number) if number.isdigit() else folder.name}"
    edited = raw_labels_differ(folder.name, dataset_json_path) if dataset_json_path is not None else None
    if edited is None:
        return f"Run: {rerun} (it reads the same dataset.json)"
    return (f"{edited} has other labels than that copy (edited after planning?): to train with the edited "
            f"labels run {plan} (it copies dataset.json), then {rerun}; "
            f"to keep the planned labels just run {rerun}")


def check_labels(priors: TextPriors, dataset_json: dict, folder: Path,
                 dataset_json_path: str | Path | None = None) -> None:
    """PriorsError naming missing/extra/changed/reordered labels when dataset.json and the priors disagree.

    ``dataset_json_path``: the file ``dataset_json`` was read from; the message names it and, when it is the
    preprocessed copy and the raw ``dataset.json`` differs, says to plan again.
    """
    where = Path(dataset_json_path) if dataset_json_path is not None else None
    try:
        names, values = _labels_of(dataset_json)
    except Exception as e:
        raise PriorsError(f"cannot read labels of {where or 'the given dataset.json'}: {e}") from None
    want = dict(zip(names, values))
    have = dict(zip(priors.class_names, priors.label_values))
    missing = [n for n in names if n not in have]
    extra = [n for n in priors.class_names if n not in want]
    changed = [f"{n} ({have[n]} -> {want[n]})" for n in names if n in have and have[n] != want[n]]
    problems = []
    if missing:
        problems.append(f"missing from the priors: {', '.join(missing)}")
    if extra:
        problems.append(f"not in dataset.json: {', '.join(extra)}")
    if changed:
        problems.append(f"changed values: {', '.join(changed)}")
    if not problems and names != priors.class_names:
        problems.append(f"label order differs ({names} vs {priors.class_names})")
    if problems:
        compared = f"{where}, the copy nnUNetv2_train reads" if where is not None else "dataset.json"
        raise PriorsError(
            f"text priors in {folder} do not match the labels of {compared} ({'; '.join(problems)}). "
            f"{_label_fix(folder, where)}"
        )


def load_priors(preprocessed_dataset_folder: str | Path, dataset_json: dict | None = None,
                dataset_json_path: str | Path | None = None) -> TextPriors:
    """Read and verify the priors; with ``dataset_json``, also check they were made for its labels
    (``dataset_json_path``: the file it was read from, named in the error)."""
    from safetensors import safe_open

    folder = Path(preprocessed_dataset_folder)
    st_path, js_path = priors_paths(folder)
    absent = [p.name for p in (st_path, js_path) if not p.is_file()]
    if absent:
        raise PriorsError(f"No text priors in {folder} (missing {', '.join(absent)}). {_rerun(folder)}")
    try:
        doc = json.loads(js_path.read_text(encoding="utf-8"))
        class_names, label_values = list(doc["class_names"]), list(doc["label_values"])
        encoder, content_hash = str(doc["encoder"]), str(doc["content_hash"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PriorsError(f"{js_path} is corrupt ({type(e).__name__}: {e}). {_rerun(folder)}") from None
    if doc.get("format") != FORMAT:
        raise PriorsError(
            f"{js_path}: unknown format {doc.get('format')!r} (expected {FORMAT}). {_rerun(folder)}"
        )
    try:
        with safe_open(str(st_path), framework="numpy") as f:
            header = f.metadata() or {}
            embeddings = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:
        raise PriorsError(f"{st_path} is corrupt ({type(e).__name__}: {e}). {_rerun(folder)}") from None
    priors = TextPriors(
        class_names, label_values, embeddings, encoder, content_hash, dict(doc.get("meta", {}))
    )
    _check_arrays(priors, st_path)
    if header.get("content_hash") != content_hash:
        raise PriorsError(
            f"{st_path} and {js_path.name} come from different runs (content hash differs). {_rerun(folder)}"
        )
    actual = compute_content_hash(class_names, label_values, encoder, embeddings)
    if actual != content_hash:
        raise PriorsError(
            f"{st_path}: content does not match its hash (file edited or corrupt). {_rerun(folder)}"
        )
    if dataset_json is not None:
        check_labels(priors, dataset_json, folder, dataset_json_path)
    return priors


def _atomic_tmp(folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return Path(tmp)


def save_priors(preprocessed_dataset_folder: str | Path, priors: TextPriors) -> tuple[Path, Path]:
    """Write both files atomically (tmp + rename); refuses priors whose hash or arrays are inconsistent."""
    from safetensors.numpy import save_file

    folder = Path(preprocessed_dataset_folder)
    folder.mkdir(parents=True, exist_ok=True)
    st_path, js_path = priors_paths(folder)
    _check_arrays(priors, st_path)
    actual = compute_content_hash(priors.class_names, priors.label_values, priors.encoder, priors.embeddings)
    if actual != priors.content_hash:
        raise PriorsError(
            "refusing to save: content_hash does not match the embeddings (build with make_priors)"
        )
    doc = {
        "format": FORMAT,
        "class_names": priors.class_names,
        "label_values": priors.label_values,
        "encoder": priors.encoder,
        "dim": priors.dim,
        "embedding_keys": list(EMBEDDING_KEYS),
        "content_hash": priors.content_hash,
        "meta": priors.meta,
    }
    tmp_st, tmp_js = _atomic_tmp(folder, st_path.name), _atomic_tmp(folder, js_path.name)
    try:
        save_file(
            {k: np.ascontiguousarray(priors.embeddings[k]) for k in EMBEDDING_KEYS},
            str(tmp_st),
            metadata={"format": FORMAT, "content_hash": priors.content_hash, "encoder": priors.encoder},
        )
        tmp_js.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp_st, st_path)
        os.replace(tmp_js, js_path)
    finally:
        tmp_st.unlink(missing_ok=True)
        tmp_js.unlink(missing_ok=True)
    return st_path, js_path
