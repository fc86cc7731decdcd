"""Bridge between ``prior_generation``'s priors file and the networks' text buffers.

Training: the trainer loads the priors (refusing priors written for other labels), records their size in the
plans under :data:`PLANS_KEY` (nnU-Net copies the plans into the model folder), and copies the embeddings into
the networks' persistent buffers. Inference: ``nnUNetv2_predict`` builds the network from the model folder's
plans alone (sizes from :data:`PLANS_KEY`) and the buffers are restored from the checkpoint - no priors file,
no LLM and no text encoder are needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from prior_generation.priors_file import PriorsError, TextPriors, load_priors, priors_paths

PLANS_KEY = "nnunet_llmseg_text"
#: set to 1 to continue a checkpoint with the text it was trained with after the priors file changed
KEEP_CHECKPOINT_TEXT_ENV = "NNUNET_LLMSEG_KEEP_CHECKPOINT_TEXT"


def head_rows(priors: TextPriors, label_manager: LabelManager, dataset: str = "<DATASET>") -> list[int]:
    """Row of the priors for every output channel of the network, in output order.

    Label-based datasets: channel ``i`` predicts label value ``label_manager.all_labels[i]`` (background
    included). Region-based datasets: channel ``i`` predicts ``foreground_regions[i]`` (no background channel).
    """
    def as_key(v) -> tuple[int, ...]:
        return tuple(sorted(int(x) for x in v)) if isinstance(v, (list, tuple)) else (int(v),)

    lookup = {as_key(v): i for i, v in enumerate(priors.label_values)}
    wanted = label_manager.foreground_regions if label_manager.has_regions else label_manager.all_labels
    rows = []
    for w in wanted:
        key = as_key(w)
        if key not in lookup:
            raise PriorsError(
                f"The text priors have no class for label/region {w} (priors classes: "
                f"{dict(zip(priors.class_names, priors.label_values))}). "
                f"Rerun: python -m prior_generation -d {dataset}")
        rows.append(lookup[key])
    return rows


def load_text_spec(trainer) -> tuple[TextPriors, list[int]]:
    """Load and check the dataset's priors and record their size in the trainer's plans.

    The labels are compared with ``trainer.dataset_json``, which ``nnUNetv2_train`` reads from the preprocessed
    folder; the error names that file and the command that fixes the mismatch.
    """
    base = Path(trainer.preprocessed_dataset_folder_base)
    priors = load_priors(base, trainer.dataset_json, base / "dataset.json")
    rows = head_rows(priors, trainer.label_manager, base.name)
    trainer.plans_manager.plans[PLANS_KEY] = {
        "text_dim": int(priors.dim),
        "num_classes": len(priors.class_names),
        "num_heads": len(rows),
        "encoder": priors.encoder,
        "content_hash": priors.content_hash,
    }
    trainer.print_to_log_file(f"Text priors: encoder {priors.encoder}, dim {priors.dim}, "
                              f"hash {priors.content_hash}, classes {priors.class_names}")
    if priors.random_weights:
        trainer.print_to_log_file(f"WARNING: the text priors were encoded with random weights ({priors.encoder}): "
                                  "the text carries no anatomical knowledge. Rerun python -m prior_generation "
                                  f"-d {base.name} with a trained encoder unless this is a test.")
    return priors, rows


def check_checkpoint_priors(trainer, checkpoint_file: str) -> None:
    """A run continues (``--c``, ``--val``) only with the text priors it was trained with.

    The networks' text buffers are restored from the checkpoint, so after ``python -m prior_generation`` has
    rewritten the priors a continued run would go on with the old text while the model folder's plans record the
    new file: refused, naming both and the ways out. With ``NNUNET_LLMSEG_KEEP_CHECKPOINT_TEXT=1`` the run
    continues with the checkpoint's text (same sizes only) and the plans record that text again.
    """
    # read here as well as in nnU-Net's load_checkpoint, which cannot be handed the dict (2.8.1 leaves its
    # ``checkpoint`` unset for a dict argument); mmap keeps this read to the pickled metadata
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False, mmap=True)
    recorded = checkpoint.get("init_args", {}).get("plans", {}).get(PLANS_KEY)
    current = trainer.plans_manager.plans[PLANS_KEY]
    if not recorded or recorded.get("content_hash") == current["content_hash"]:
        return
    base = Path(trainer.preprocessed_dataset_folder_base)
    priors_file = priors_paths(base)[0]
    sizes = ("text_dim", "num_classes", "num_heads")
    same_sizes = all(recorded.get(k) == current[k] for k in sizes)
    if same_sizes and os.environ.get(KEEP_CHECKPOINT_TEXT_ENV, "") == "1":
        trainer.plans_manager.plans[PLANS_KEY] = dict(recorded)
        trainer.print_to_log_file(
            f"WARNING: {checkpoint_file} continues with the text it was trained with ({recorded['content_hash']}, "
            f"encoder {recorded.get('encoder')}), not with {priors_file} "
            f"({current['content_hash']}): {KEEP_CHECKPOINT_TEXT_ENV}=1", also_print_to_console=True)
        return
    keep = (f"or set {KEEP_CHECKPOINT_TEXT_ENV}=1 to continue with the checkpoint's own text"
            if same_sizes else "(the sizes differ, so the checkpoint cannot continue with the new priors)")
    raise PriorsError(
        f"{checkpoint_file} was trained with other text priors ({recorded.get('content_hash')}, encoder "
        f"{recorded.get('encoder')}) than {priors_file} now holds ({current['content_hash']}, "
        f"encoder {current['encoder']}); continuing would mix them. To train with the new priors, start a new run "
        f"(move {Path(checkpoint_file).parent} away, or train without --c); to continue, restore the old priors "
        f"(python -m prior_generation -d {base.name} with the encoder and texts the run used) {keep}.")


def text_spec_from_plans(plans_manager: PlansManager) -> dict:
    """The sizes the network needs, as recorded by the trainer; a clear error for foreign plans."""
    spec = plans_manager.plans.get(PLANS_KEY)
    if spec is None:
        raise PriorsError(
            f"The plans ({plans_manager.plans_name}) have no '{PLANS_KEY}' entry: this model folder was not "
            "written by an nnunet-llmseg text trainer, or the plans were replaced. Predict with the plans.json "
            "that training copied into the model folder.")
    return spec


def stacked_rows(priors: TextPriors, keys: tuple[str, ...], rows: list[int]) -> torch.Tensor:
    """``(len(rows), len(keys) * dim)`` float32: the embeddings of ``keys`` for each row, concatenated."""
    parts = [np.asarray(priors.embeddings[k], dtype=np.float32)[rows] for k in keys]
    return torch.from_numpy(np.concatenate(parts, axis=1))
