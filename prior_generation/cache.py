"""On-disk cache of LLM answers: one human-readable JSON file per answer.

Key = SHA-256 of the canonical JSON of (model, base URL, messages, parameters). A rerun with the same
inputs makes no request and returns the identical text. API keys are never part of the key or the file.
Writes are atomic (tmp + rename), so an interrupted run never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path


def cache_key(model: str, base_url: str, messages: list[dict], params: dict) -> str:
    payload = {"model": model, "base_url": base_url, "messages": messages, "params": params}
    canon = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AnswerCache:
    """``<dir>/<key>.json`` holding the request (model, base URL, messages, parameters) and the answer."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path_for(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> str | None:
        p = self.path_for(key)
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # unreadable entry: treated as a miss and overwritten by the next answer
        answer = data.get("answer")
        return answer if isinstance(answer, str) and answer.strip() else None

    def put(
        self, key: str, *, model: str, base_url: str, messages: list[dict], params: dict, answer: str
    ) -> Path:
        record = {
            "key": key,
            "model": model,
            "base_url": base_url,
            "params": params,
            "messages": messages,
            "answer": answer,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        p = self.path_for(key)
        atomic_write_text(p, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        return p
