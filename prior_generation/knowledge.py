"""The offline knowledge base: short factual texts per structure, shipped as JSON data in ``knowledge/``.

Each ``knowledge/*.json`` holds ``{"structures": [entry, ...]}``; an entry has ``id``, ``name``,
``synonyms``, ``appearance`` (per modality: ``CT``, ``MRI``, or ``default``), ``shape``, ``size``,
``position``, ``neighbours``, ``pitfalls`` and ``relations`` (``{other_id: sentence}``). Adding a
structure means adding an entry - no code change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from prior_generation.errors import PriorGenerationError
from prior_generation.names import normalize_name, token_key

KNOWLEDGE_DIR = Path(__file__).resolve().parent / "knowledge"
_REQUIRED = ("id", "name", "synonyms", "appearance", "shape", "size", "position", "neighbours", "pitfalls")


@dataclass(frozen=True)
class Structure:
    id: str
    name: str
    synonyms: tuple[str, ...]
    appearance: dict
    shape: str
    size: str
    position: str
    neighbours: str
    pitfalls: str
    relations: dict = field(default_factory=dict)
    source_file: str = ""

    def appearance_in(self, modality_family: str) -> str:
        """Appearance sentence for ``CT``/``MRI``; falls back to ``default``; empty when unknown."""
        return self.appearance.get(modality_family) or self.appearance.get("default") or ""


class KnowledgeBase:
    """Lookup by normalised name (exact, then order-free token match)."""

    def __init__(self, structures: list[Structure]) -> None:
        self.structures = {s.id: s for s in structures}
        self._by_name: dict[str, str] = {}
        self._by_tokens: dict[tuple[str, ...], str] = {}
        for s in structures:
            for n in (s.id, s.name, *s.synonyms):
                self._by_name.setdefault(normalize_name(n), s.id)
                self._by_tokens.setdefault(token_key(n), s.id)

    def lookup(self, name: str) -> Structure | None:
        sid = self._by_name.get(normalize_name(name)) or self._by_tokens.get(token_key(name))
        return self.structures.get(sid) if sid else None

    def __len__(self) -> int:
        return len(self.structures)


@lru_cache(maxsize=4)
def load_knowledge_base(folder: str | None = None) -> KnowledgeBase:
    """Read every ``*.json`` in the knowledge folder (label maps excluded); ids must be unique."""
    root = Path(folder) if folder else KNOWLEDGE_DIR
    structures: list[Structure] = []
    for path in sorted(root.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise PriorGenerationError(f"knowledge file {path} is not valid JSON: {e}") from e
        for i, entry in enumerate(data.get("structures", [])):
            missing = [k for k in _REQUIRED if k not in entry]
            if missing:
                raise PriorGenerationError(f"knowledge file {path}, entry {i}: missing {', '.join(missing)}")
            structures.append(
                Structure(
                    id=entry["id"],
                    name=entry["name"],
                    synonyms=tuple(entry["synonyms"]),
                    appearance=dict(entry["appearance"]),
                    shape=entry["shape"],
                    size=entry["size"],
                    position=entry["position"],
                    neighbours=entry["neighbours"],
                    pitfalls=entry["pitfalls"],
                    relations=dict(entry.get("relations", {})),
                    source_file=path.name,
                )
            )
    ids = [s.id for s in structures]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise PriorGenerationError(f"knowledge base in {root}: duplicate ids {', '.join(dupes)}")
    return KnowledgeBase(structures)
