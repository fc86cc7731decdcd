"""Class-name normalisation and user label maps.

Dataset label names are terse and inconsistent (``RK``, ``kidney_left``, ``Left-Kidney``, ``label_3``);
the knowledge base and the prompts need anatomical names. Normalisation makes spelling variants meet;
a label map (``--label-map``) handles names that no normalisation can decode.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prior_generation.errors import PriorGenerationError

LABEL_MAP_DIR = Path(__file__).resolve().parent / "knowledge" / "label_maps"

# token-level rewrites applied after lower-casing and splitting on non-alphanumerics
_TOKEN_REWRITES = {
    "l": "left",
    "lt": "left",
    "r": "right",
    "rt": "right",
    "tumour": "tumor",
    "tumours": "tumor",
    "tumors": "tumor",
    "oedema": "edema",
    "peritumoural": "peritumoral",
    "oesophagus": "esophagus",
    "haemorrhage": "hemorrhage",
    "nonenhancing": "non enhancing",
}
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def normalize_name(name: str) -> str:
    """Lower-case, split camelCase and separators (``_-./``), unify British/American spelling and L/R tokens."""
    s = _CAMEL.sub(" ", str(name).strip())
    s = s.lower().replace("&", " and ")
    tokens = [t for t in re.split(r"[^a-z0-9]+", s) if t]
    out: list[str] = []
    for t in tokens:
        out.extend(_TOKEN_REWRITES.get(t, t).split())
    return " ".join(out)


def token_key(name: str) -> tuple[str, ...]:
    """Order-free key: ``kidney left`` and ``left kidney`` meet; filler words are dropped."""
    fill = {"the", "of", "and", "or"}
    return tuple(sorted(t for t in normalize_name(name).split() if t not in fill))


def shipped_label_maps() -> dict[str, Path]:
    """Label maps bundled with the package, by stem (``msd_hippocampus`` ...)."""
    return {p.stem: p for p in sorted(LABEL_MAP_DIR.glob("*.json"))}


def load_label_map(path_or_name: str | Path) -> dict[str, str]:
    """Read a label map: ``{"RK": "right kidney"}`` or ``{"label_map": {...}}``; a bare name picks a shipped map."""
    p = Path(path_or_name)
    if not p.is_file():
        shipped = shipped_label_maps()
        if str(path_or_name) in shipped:
            p = shipped[str(path_or_name)]
        else:
            raise PriorGenerationError(
                f"label map {path_or_name!s} not found (give a JSON file, or one of the shipped maps: "
                f"{', '.join(shipped) or 'none'})"
            )
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PriorGenerationError(f"label map {p} is not readable JSON: {e}") from e
    mapping = data.get("label_map", data) if isinstance(data, dict) else None
    if not isinstance(mapping, dict):
        raise PriorGenerationError(
            f"label map {p}: expected a JSON object mapping label names to anatomical names"
        )
    mapping = {k: v for k, v in mapping.items() if k != "about"}
    bad = [k for k, v in mapping.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise PriorGenerationError(
            f"label map {p}: values must be non-empty strings (bad keys: {', '.join(bad)})"
        )
    return {str(k): v.strip() for k, v in mapping.items()}


def apply_label_map(class_name: str, label_map: dict[str, str] | None) -> str:
    """Anatomical name for a dataset class: exact key, then case/spelling-insensitive key, else the name."""
    if not label_map:
        return class_name
    if class_name in label_map:
        return label_map[class_name]
    norm = normalize_name(class_name)
    for k, v in label_map.items():
        if normalize_name(k) == norm:
            return v
    return class_name


def readable_name(name: str) -> str:
    """``hippocampus_anterior`` -> ``hippocampus anterior`` (for prompts); keeps case and other characters."""
    return " ".join(str(name).replace("_", " ").split())


def join_names(names: list[str] | tuple[str, ...]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]
