"""Every prompt sent to an LLM, in one place so that they can be reviewed and cited.

Three texts per class:

* ``llmseg`` - LLM-SegNet's task-specific descriptor: one paragraph on appearance in the modality, shape,
  size, position, neighbours and typical segmentation pitfalls.
* ``tak_shape`` / ``tak_location`` - TAK's two GPT-4o questions: "the shape and structure of [class]" and
  "the relative position of [class] with respect to the other organs", the other organs being the
  dataset's other classes.

Prompts are part of the cache key, so editing them here invalidates cached answers (as it should).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS: tuple[str, ...] = ("llmseg", "tak_shape", "tak_location")
PROMPT_VERSION = "1"

SYSTEM_PROMPT = (
    "You are an expert radiologist and anatomist helping to build a medical image segmentation model. "
    "Answer with concise, factual anatomical and radiological knowledge in plain prose: no lists, no markdown, "
    "no preamble, no disclaimers. Describe typical adult anatomy."
)


@dataclass(frozen=True)
class TextRequest:
    """One text to produce: which class, which kind, and the dataset context the prompt needs."""

    class_name: str  # as in dataset.json
    anatomical_name: str  # after the label map
    kind: str  # one of KINDS
    modality: str  # e.g. "CT", "MRI (T2)"
    modality_family: str  # "CT", "MRI" or ""
    other_classes: tuple[str, ...] = field(default_factory=tuple)  # anatomical names of the other classes
    dataset_name: str = ""
    is_background: bool = False


def _others(req: TextRequest) -> str:
    return ", ".join(req.other_classes) if req.other_classes else "none"


def _subject(req: TextRequest) -> str:
    if req.is_background:
        return f"the background (everything in the image that is none of: {_others(req)})"
    return f"the {req.anatomical_name}"


def user_prompt(req: TextRequest) -> str:
    """The user message for one request."""
    subject = _subject(req)
    structures = f"The labelled structures of this dataset are: {', '.join((req.anatomical_name, *req.other_classes))}."
    if req.kind == "llmseg":
        return (
            f"We segment {req.modality} scans. {structures} "
            f"Write one paragraph (at most 6 sentences) describing {subject} as a segmentation target in "
            f"{req.modality}: its appearance and intensity, its shape, its typical size, its position, its "
            f"neighbouring structures, and the typical pitfalls when segmenting it."
        )
    if req.kind == "tak_shape":
        return (
            f"Please describe the shape and structure of {subject} as seen in {req.modality} scans, "
            f"in at most 4 sentences."
        )
    if req.kind == "tak_location":
        return (
            f"Please describe the relative position of {subject} with respect to the other organs: "
            f"{_others(req)}. Answer in at most 4 sentences, using anatomical directions "
            f"(superior, inferior, anterior, posterior, left, right, medial, lateral)."
        )
    raise ValueError(f"unknown text kind {req.kind!r}; expected one of {KINDS}")


def messages_for(req: TextRequest) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_prompt(req)}]


def self_check_messages(req: TextRequest, first_answer: str) -> list[dict]:
    """TAK's second pass: the model reviews its own first answer and returns a corrected version."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(req)},
        {"role": "assistant", "content": first_answer},
        {
            "role": "user",
            "content": (
                "Check your answer above for anatomical or radiological errors and for statements that are not "
                "typical. Reply with the corrected answer only, in the same format and length; if it is already "
                "correct, repeat it unchanged."
            ),
        },
    ]
