"""Command line: ``python -m prior_generation -d DATASET [...]`` (also ``nnunet-llmseg generate-priors``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prior_generation.encoders import DEFAULT_ENCODER
from prior_generation.llm import DEFAULT_API_KEY_ENV, DEFAULT_MODEL

DESCRIPTION = (
    "Turn a dataset's class names into the text priors read by the LLM-SegNet and TAK trainers: texts per class "
    "(offline knowledge base or an OpenAI-compatible LLM), encoded by a text encoder, written to "
    "$nnUNet_preprocessed/<Dataset>/text_priors.{safetensors,json} plus the editable text_priors_texts.json."
)


def _number(kind: type, minimum: float, inclusive: bool):
    """argparse type: ``kind`` >= ``minimum`` (or > when not ``inclusive``), finite."""
    what = f"{'an integer' if kind is int else 'a number'} {'>=' if inclusive else '>'} {minimum:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value >= minimum if inclusive else value > minimum) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-d", "--dataset", required=True, help="dataset id (e.g. 4) or full name (Dataset004_Hippocampus)"
    )
    p.add_argument(
        "--llm",
        choices=("offline", "openai"),
        default="offline",
        help="text source: shipped knowledge base (default) or an OpenAI-compatible chat endpoint",
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"chat model for --llm openai (default {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--base-url",
        default=None,
        help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (vLLM) or "
        "http://localhost:11434/v1 (Ollama); default: OpenAI",
    )
    p.add_argument(
        "--api-key-env",
        default=DEFAULT_API_KEY_ENV,
        help=f"name of the environment variable holding the API key (default {DEFAULT_API_KEY_ENV}); "
        "keys are never accepted on the command line",
    )
    p.add_argument("--timeout", type=_number(float, 0, False), default=60.0,
                   help="seconds per LLM request, > 0 (default 60)")
    p.add_argument("--retries", type=_number(int, 0, True), default=3,
                   help="retries after network errors/5xx/429, >= 0 (default 3)")
    p.add_argument(
        "--backoff", type=_number(float, 0, True), default=1.0,
        help="first retry delay in s, doubled each retry (default 1)"
    )
    p.add_argument(
        "--self-check",
        action="store_true",
        help="TAK second pass: the model checks and corrects its first answer",
    )
    p.add_argument(
        "--encoder",
        default=DEFAULT_ENCODER,
        help="clip-vit-b-32 (default) | biomedclip | minilm-l6-v2 | "
        "open_clip:<model>:<tag | checkpoint path | none (random weights, tests only)>",
    )
    p.add_argument(
        "--label-map",
        default=None,
        help="JSON mapping terse label names to anatomical names (or a shipped map name, "
        "e.g. msd_hippocampus)",
    )
    p.add_argument(
        "--texts",
        default=None,
        help="JSON with your own texts: {class: {llmseg|tak_shape|tak_location: text}}",
    )
    p.add_argument("--reset-texts", action="store_true", help="discard hand edits in text_priors_texts.json")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="LLM answer cache (default $nnUNet_preprocessed/<Dataset>/text_priors_cache)",
    )
    p.add_argument("--device", default="cpu", help="device for the text encoder (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the pipeline; every expected failure is one ``error:`` line on stderr: exit code 2 when the command
    cannot run as typed (unknown dataset, unset nnU-Net variable), 1 for everything else."""
    from prior_generation.errors import PriorGenerationError, UsageError
    from prior_generation.priors_file import PriorsError

    try:
        return _run(args)
    except UsageError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except (PriorGenerationError, PriorsError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (answers obtained so far are cached)", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from prior_generation.dataset_info import preprocessed_folder, resolve_dataset_name
    from prior_generation.encoders import check_encoder_name
    from prior_generation.generate import generate_priors
    from prior_generation.llm import OfflineKnowledgeBackend, OpenAIChatBackend
    from prior_generation.names import load_label_map

    check_encoder_name(args.encoder)  # before any LLM request
    name = resolve_dataset_name(args.dataset)
    out = preprocessed_folder(name)
    label_map = load_label_map(args.label_map) if args.label_map else None
    if args.llm == "openai":
        backend = OpenAIChatBackend(
            args.model,
            base_url=args.base_url,
            api_key_env=args.api_key_env,
            timeout=args.timeout,
            retries=args.retries,
            backoff_s=args.backoff,
            self_check=args.self_check,
            cache_dir=Path(args.cache_dir) if args.cache_dir else out / "text_priors_cache",
        )
    else:
        backend = OfflineKnowledgeBackend()
    res = generate_priors(
        name,
        backend=backend,
        encoder_name=args.encoder,
        label_map=label_map,
        user_texts_file=args.texts,
        device=args.device,
        reset_edits=args.reset_texts,
        progress=not args.no_progress,
    )
    p = res.priors
    print(
        f"wrote {res.safetensors_path}  ({len(p.class_names)} classes x {p.dim} dims, keys "
        f"{', '.join(p.embeddings)}; encoder {p.encoder})"
    )
    print(f"wrote {res.json_path}  (content hash {p.content_hash[:19]}...; labels from "
          f"{p.meta.get('dataset_json')})")
    print(
        f"wrote {res.texts_path}  (texts from {', '.join(f'{k}: {v}' for k, v in sorted(res.sources.items()))};"
        f" edit it and rerun to change them)"
    )
    if p.random_weights:
        print(f"warning: encoder {p.encoder} has random weights; these priors carry no anatomical knowledge "
              "(for tests only)", file=sys.stderr)
    if args.llm == "openai":
        print(
            f"LLM: {backend.n_requests} request(s), {backend.n_cache_hits} cache hit(s); cache in "
            f"{backend.cache.directory}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m prior_generation", description=DESCRIPTION, allow_abbrev=False
    )
    add_arguments(p)
    return p


def register(subparsers) -> None:
    """Hook for ``nnunet-llmseg``: adds the ``generate-priors`` subcommand."""
    p = subparsers.add_parser(
        "generate-priors",
        help="write the text priors for a dataset",
        description=DESCRIPTION,
        allow_abbrev=False,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
