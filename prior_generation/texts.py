"""The reviewable, hand-editable texts file (``text_priors_texts.json``) and user text files (``--texts``).

Precedence for each (class, kind) text, highest first:

1. ``--texts FILE`` - the user's own text for that class/kind;
2. a hand edit in ``text_priors_texts.json`` - detected because the text no longer matches the SHA-256 of the
   text that was generated (``generated_sha256``); edits survive reruns until ``--reset-texts``;
3. the LLM back-end's answer (from the on-disk cache when present) or the offline knowledge base.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prior_generation.cache import atomic_write_text
from prior_generation.errors import PriorGenerationError
from prior_generation.prompts import KINDS

TEXTS_NAME = "text_priors_texts.json"
ABOUT = (
    "Texts encoded into text_priors.safetensors, one per class and kind. Edit any 'text' and rerun "
    "'python -m prior_generation -d <dataset>': an edited text (it no longer matches generated_sha256) is "
    "kept and encoded on every rerun. Precedence: --texts FILE > your edits here > LLM / knowledge-base answer "
    "(cached). Use --reset-texts to discard edits."
)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PriorGenerationError(f"{what} {path} not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise PriorGenerationError(f"{what} {path} is not valid JSON ({e}); fix or delete it") from None
    if not isinstance(data, dict):
        raise PriorGenerationError(f"{what} {path}: expected a JSON object")
    return data


def _entry_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]
    return None


def load_user_texts(path: str | Path) -> dict[str, dict[str, str]]:
    """``{"<class>": {"llmseg": "...", ...}}`` or a texts file (``{"classes": {...}}``); kinds may be partial."""
    p = Path(path)
    data = _read_json(p, "texts file")
    classes = data.get("classes", data)
    out: dict[str, dict[str, str]] = {}
    for cls, kinds in classes.items():
        if cls == "about" or not isinstance(kinds, dict):
            continue
        texts = {}
        for kind in KINDS:
            if kind in kinds:
                t = _entry_text(kinds[kind])
                if t is None or not t.strip():
                    raise PriorGenerationError(
                        f"texts file {p}: class '{cls}', '{kind}' must be a non-empty string"
                    )
                texts[kind] = t.strip()
        unknown = [k for k in kinds if k not in KINDS and k not in ("anatomical_name", "label_value")]
        if unknown:
            raise PriorGenerationError(
                f"texts file {p}: class '{cls}' has unknown key(s) {', '.join(unknown)}; use {', '.join(KINDS)}"
            )
        out[str(cls)] = texts
    return out


def load_edits(path: Path) -> dict[str, dict[str, str]]:
    """Hand-edited texts in an existing texts file: entries whose text differs from generated_sha256."""
    if not path.is_file():
        return {}
    data = _read_json(path, "texts file")
    edits: dict[str, dict[str, str]] = {}
    for cls, entry in (data.get("classes") or {}).items():
        if not isinstance(entry, dict):
            continue
        for kind in KINDS:
            item = entry.get(kind)
            if not isinstance(item, dict):
                continue
            text = item.get("text")
            if isinstance(text, str) and text.strip() and sha256_text(text) != item.get("generated_sha256"):
                edits.setdefault(cls, {})[kind] = text.strip()
    return edits


def original_hashes(path: Path) -> dict[tuple[str, str], str]:
    """generated_sha256 per (class, kind) of an existing texts file, so edits stay detectable after rewrite."""
    if not path.is_file():
        return {}
    data = _read_json(path, "texts file")
    out = {}
    for cls, entry in (data.get("classes") or {}).items():
        for kind in KINDS:
            item = entry.get(kind) if isinstance(entry, dict) else None
            if isinstance(item, dict) and isinstance(item.get("generated_sha256"), str):
                out[(cls, kind)] = item["generated_sha256"]
    return out


def write_texts_file(path: Path, dataset_name: str, entries: dict[str, dict]) -> Path:
    """entries: ``{class: {"anatomical_name", "label_value", kind: {"text", "source", "generated_sha256"}}}``."""
    doc = {"about": ABOUT, "dataset": dataset_name, "classes": entries}
    atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return path
