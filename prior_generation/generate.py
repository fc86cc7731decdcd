"""The pipeline: dataset.json -> texts (user file / hand edits / LLM or knowledge base) -> encoder -> priors."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from prior_generation.dataset_info import (
    DatasetClasses,
    load_dataset_classes,
    preprocessed_folder,
    raw_labels_differ,
)
from prior_generation.encoders import DEFAULT_ENCODER, create_encoder
from prior_generation.llm import GeneratedText, LLMBackend
from prior_generation.names import apply_label_map, readable_name
from prior_generation.priors_file import EMBEDDING_KEYS, TextPriors, make_priors, save_priors
from prior_generation.prompts import KINDS, PROMPT_VERSION, SYSTEM_PROMPT, TextRequest
from prior_generation.texts import (
    TEXTS_NAME,
    load_edits,
    load_user_texts,
    original_hashes,
    sha256_text,
    write_texts_file,
)

SENTENCE_AVERAGING_NOTE = (
    "Texts longer than the encoder context (77 tokens for CLIP) are split into sentences (over-long sentences "
    "into word chunks); the pieces are encoded, averaged and L2-normalised instead of being truncated. "
    "'pieces' gives the number of pieces per class (1 = encoded whole)."
)


@dataclass
class GenerationResult:
    safetensors_path: Path
    json_path: Path
    texts_path: Path
    priors: TextPriors
    sources: dict[str, int] = field(default_factory=dict)  # how many texts came from where


def _is_background(name: str, value) -> bool:
    return value == 0


def build_requests(classes: DatasetClasses, label_map: dict[str, str] | None = None) -> list[TextRequest]:
    """One request per class and kind, in class order; 'other classes' are the other foreground classes."""
    anatomical = [readable_name(apply_label_map(c, label_map)) for c in classes.class_names]
    requests = []
    for i, (cls, value) in enumerate(zip(classes.class_names, classes.label_values)):
        bg = _is_background(cls, value)
        others = tuple(
            a
            for j, a in enumerate(anatomical)
            if j != i and not _is_background(classes.class_names[j], classes.label_values[j])
        )
        for kind in KINDS:
            requests.append(
                TextRequest(
                    class_name=cls,
                    anatomical_name=anatomical[i],
                    kind=kind,
                    modality=classes.modality,
                    modality_family=classes.modality_family,
                    other_classes=others,
                    dataset_name=classes.dataset_name,
                    is_background=bg,
                )
            )
    return requests


def generate_priors(
    dataset: str | int,
    *,
    backend: LLMBackend,
    encoder_name: str = DEFAULT_ENCODER,
    label_map: dict[str, str] | None = None,
    user_texts_file: str | Path | None = None,
    device: str = "cpu",
    reset_edits: bool = False,
    progress: bool = True,
    output_folder: str | Path | None = None,
) -> GenerationResult:
    classes = load_dataset_classes(dataset)
    out = Path(output_folder) if output_folder else preprocessed_folder(classes.dataset_name)
    if classes.dataset_json_path is not None:
        edited = raw_labels_differ(classes.dataset_name, classes.dataset_json_path)
        if edited is not None:
            print(
                f"warning: the labels in {edited} differ from {classes.dataset_json_path}, which nnUNetv2_train "
                f"reads; these priors follow {classes.dataset_json_path}. To use the edited labels, run "
                f"nnUNetv2_plan_and_preprocess for {classes.dataset_name} again (it copies dataset.json), "
                "then this command",
                file=sys.stderr,
            )
    texts_path = out / TEXTS_NAME
    requests = build_requests(classes, label_map)

    user = load_user_texts(user_texts_file) if user_texts_file else {}
    for cls in user:
        if cls not in classes.class_names:
            print(
                f"warning: --texts {user_texts_file}: class '{cls}' is not a label of {classes.dataset_name}; "
                f"ignored",
                file=sys.stderr,
            )
    edits = {} if reset_edits else load_edits(texts_path)
    old_hashes = {} if reset_edits else original_hashes(texts_path)

    chosen: dict[tuple[str, str], GeneratedText] = {}
    pending: list[TextRequest] = []
    for r in requests:
        if r.kind in user.get(r.class_name, {}):
            chosen[(r.class_name, r.kind)] = GeneratedText(
                user[r.class_name][r.kind], f"user:{user_texts_file}", "(given with --texts)"
            )
        elif r.kind in edits.get(r.class_name, {}):
            chosen[(r.class_name, r.kind)] = GeneratedText(
                edits[r.class_name][r.kind], "edited", f"(hand-edited in {TEXTS_NAME})"
            )
        else:
            pending.append(r)

    backend.check_coverage(pending)
    if pending:
        from tqdm import tqdm

        bar = tqdm(
            pending, desc=f"texts ({backend.name})", unit="text", disable=not progress, file=sys.stderr
        )
        for r in bar:
            chosen[(r.class_name, r.kind)] = backend.generate(r)

    # the reviewable texts file, written before encoding so that it survives an encoder failure
    entries: dict[str, dict] = {}
    for r in requests:
        g = chosen[(r.class_name, r.kind)]
        e = entries.setdefault(
            r.class_name,
            {
                "anatomical_name": r.anatomical_name,
                "label_value": classes.label_values[classes.class_names.index(r.class_name)],
            },
        )
        if g.source == "edited":
            gen_hash = old_hashes.get((r.class_name, r.kind), "")
        else:
            gen_hash = sha256_text(g.text)
        e[r.kind] = {"text": g.text, "source": g.source, "generated_sha256": gen_hash}
    write_texts_file(texts_path, classes.dataset_name, entries)

    encoder = create_encoder(encoder_name, device)
    embeddings, pieces = {}, {}
    for kind in EMBEDDING_KEYS:
        texts = [chosen[(c, kind)].text for c in classes.class_names]
        embeddings[kind], pieces[kind] = encoder.encode(texts)

    sources: dict[str, int] = {}
    for g in chosen.values():
        key = g.source.split(":")[0]
        sources[key] = sources.get(key, 0) + 1
    meta = {
        "dataset": classes.dataset_name,
        "dataset_json": str(classes.dataset_json_path) if classes.dataset_json_path else None,
        "modality": classes.modality,
        "channel_names": classes.channel_names,
        "region_based": classes.is_region_based,
        "anatomical_names": {c: entries[c]["anatomical_name"] for c in classes.class_names},
        "label_map": label_map or {},
        "llm": backend.describe(),
        "system_prompt": SYSTEM_PROMPT,
        "prompt_version": PROMPT_VERSION,
        "texts": {c: {k: chosen[(c, k)].text for k in KINDS} for c in classes.class_names},
        "text_sources": {c: {k: chosen[(c, k)].source for k in KINDS} for c in classes.class_names},
        "prompts": {c: {k: chosen[(c, k)].prompt for k in KINDS} for c in classes.class_names},
        "texts_file": str(texts_path),
        "text_precedence": "--texts FILE > hand edits in text_priors_texts.json > LLM/knowledge-base answer",
        "encoder_info": encoder.describe(),
        "sentence_averaging": {
            "note": SENTENCE_AVERAGING_NOTE,
            "max_tokens": encoder.max_tokens,
            "pieces": pieces,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "generator": "prior_generation (nnunet-llmseg)",
    }
    priors = make_priors(classes.class_names, classes.label_values, embeddings, encoder_name, meta)
    st, js = save_priors(out, priors)
    return GenerationResult(st, js, texts_path, priors, sources)
