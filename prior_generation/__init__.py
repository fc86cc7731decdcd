"""prior_generation: LLM-written anatomical knowledge per dataset class, encoded by a text encoder.

``python -m prior_generation -d DATASET`` writes ``text_priors.safetensors`` + ``text_priors.json`` into
``$nnUNet_preprocessed/<Dataset>/``; trainers read them with :func:`load_priors`. Only the light reader API
is imported here (numpy + safetensors); the LLM and encoder machinery loads on demand.
"""

from prior_generation.priors_file import (
    EMBEDDING_KEYS,
    PriorsError,
    TextPriors,
    load_priors,
    priors_paths,
    save_priors,
)

__all__ = ["EMBEDDING_KEYS", "PriorsError", "TextPriors", "load_priors", "priors_paths", "save_priors"]
