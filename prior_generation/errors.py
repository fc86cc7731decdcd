"""One exception family for everything the CLI reports as a one-line error (exit code != 0)."""

from __future__ import annotations


class PriorGenerationError(RuntimeError):
    """A user-facing failure: the message is one actionable line, printed by the CLI without a traceback."""


class UsageError(PriorGenerationError):
    """The command cannot run as typed: unknown dataset, unset nnU-Net folder variable (exit code 2)."""


class DatasetError(PriorGenerationError):
    """dataset.json missing or unusable."""


class DatasetNotFoundError(UsageError, DatasetError):
    """``-d`` names no dataset nnU-Net can find, or the folder variables it needs are not set."""


class UnknownClassesError(PriorGenerationError):
    """The offline knowledge base has no entry for some classes."""

    def __init__(self, unknown: list[str], message: str) -> None:
        super().__init__(message)
        self.unknown = list(unknown)


class EncoderError(PriorGenerationError):
    """Unknown text encoder, or its weights cannot be loaded."""


class LLMError(PriorGenerationError):
    """Base class of failures of an LLM back-end."""


class MissingAPIKeyError(LLMError):
    """The environment variable that should hold the API key is unset or empty."""


class LLMConnectionError(LLMError):
    """Network failure or timeout after all retries."""


class LLMAuthError(LLMError):
    """The server rejected the API key (401/403)."""


class LLMResponseError(LLMError):
    """The server answered with an error status that retrying does not fix."""


class LLMRefusalError(LLMError):
    """The model refused to answer or returned an empty answer."""
