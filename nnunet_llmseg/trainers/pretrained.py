"""``nnUNetv2_train ... -pretrained_weights CHECKPOINT`` for the co-training trainers.

A user with an existing nnU-Net model first tries to start the semi-supervised training from it. nnU-Net's
``load_pretrained_weights`` matches keys one to one (``encoder.stages.0...``) and asserts that every key of the
network is in the checkpoint; our :class:`TwinNetwork` names the same tensors ``net_a.unet.encoder.stages.0...``
and ``net_b.unet...`` and adds modules of its own, so nnU-Net's loader stops with "Key ... is missing".

:func:`load_pretrained_into_twin` initialises **both** co-trained U-Nets from the checkpoint, with nnU-Net's
rules: every tensor of the planned U-Net must be in the checkpoint with the same shape (otherwise a clear error
lists the offending keys), and the segmentation layers (``.seg_layers.``) are never transferred (the checkpoint
may have been trained for other labels). Modules that only our networks have (LLM-SegNet's text fusion, TAK's
dynamic head and projections, the text buffers, TAK's class-balance statistics) keep their initialisation. A
checkpoint of one of our own twin trainers is accepted as well (``net_a`` -> ``net_a``, ``net_b`` -> ``net_b``).
What was and was not loaded is written to the training log.

``nnUNetv2_train`` calls the loader through the name ``load_pretrained_weights`` in
``nnunetv2.run.run_training`` (single process and DDP alike). :func:`install_pretrained_hook`, called by the
co-training trainer's constructor (which ``nnUNetv2_train`` runs before it loads weights), puts a dispatcher
there: for this trainer's network it calls the trainer's ``load_pretrained_weights``; any other network goes to
nnU-Net's original function unchanged.

The checkpoint is read with ``torch.load(weights_only=True)``: tensors, plain Python containers and numpy
scalars/arrays (nnU-Net's training log) only - no arbitrary objects are unpickled.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import torch
from torch import nn

SKIP_IN_PRETRAINED = (".seg_layers.",)  # as nnU-Net's load_pretrained_weights
TWIN_NETS = ("net_a", "net_b")


def _numpy_safe_globals() -> list:
    """The numpy types nnU-Net's checkpoints hold (logged metrics): data only, safe for ``weights_only``."""
    core = getattr(np, "_core", None) or np.core
    found = [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype]
    found += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "int16", "int8",
                                          "uint8", "bool")]
    return found


def read_checkpoint_weights(fname: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(network_weights, info)`` of an nnU-Net checkpoint, read without unpickling arbitrary objects."""
    path = Path(fname)
    if not path.is_file():
        raise FileNotFoundError(f"-pretrained_weights: {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(
            f"-pretrained_weights: cannot read {path} as an nnU-Net checkpoint with weights_only=True "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Give a checkpoint_*.pth written "
            "by nnUNetv2_train.") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise RuntimeError(f"-pretrained_weights: {path} has no 'network_weights' (not an nnU-Net checkpoint)")
    weights = {k[7:] if k.startswith("module.") else k: v for k, v in ckpt["network_weights"].items()}
    info = {"trainer_name": ckpt.get("trainer_name"), "epoch": ckpt.get("current_epoch")}
    return weights, info


def load_pretrained_into_twin(twin: nn.Module, fname: str | Path) -> dict:
    """Initialise ``twin.net_a.unet`` and ``twin.net_b.unet`` from a plain nnU-Net (or our twin) checkpoint.

    Returns a report: ``loaded`` (tensors per network), ``skipped_seg_layers``, ``own_modules`` (tensors of our
    modules left as initialised), ``unused`` (checkpoint tensors without a place), ``source`` ('plain'/'twin').
    Raises ``RuntimeError`` naming the keys when the checkpoint does not fit the planned U-Net.
    """
    weights, info = read_checkpoint_weights(fname)
    is_twin = any(k.startswith("net_a.unet.") for k in weights)
    loaded, used = 0, set()
    for name in TWIN_NETS:
        unet = getattr(twin, name).unet
        prefix = f"{name}.unet." if is_twin else ""
        own = unet.state_dict()
        missing, mismatched, update = [], [], {}
        for key, value in own.items():
            if any(s in key for s in SKIP_IN_PRETRAINED):
                continue
            src = weights.get(prefix + key)
            if src is None:
                missing.append(prefix + key)
            elif tuple(src.shape) != tuple(value.shape):
                mismatched.append(f"{prefix + key}: checkpoint {tuple(src.shape)}, network {tuple(value.shape)}")
            else:
                update[key] = src.to(dtype=value.dtype)
                used.add(prefix + key)
        if missing or mismatched:
            problems = [f"missing: {k}" for k in missing[:8]] + [f"shape: {m}" for m in mismatched[:8]]
            raise RuntimeError(
                f"-pretrained_weights {fname} does not fit the planned network ({len(missing)} tensors missing, "
                f"{len(mismatched)} with another shape; first: {'; '.join(problems)}). Use a checkpoint trained "
                "with the same plans and configuration (nnUNetv2_train ... -p PLANS with the same -p as now).")
        own.update(update)
        unet.load_state_dict(own)
        loaded = len(update)
    twin_keys = twin.state_dict().keys()
    seg = sorted(k for k in twin_keys if any(s in k for s in SKIP_IN_PRETRAINED) and ".unet." in k)
    own_modules = sorted({k.split(".")[1] for k in twin_keys if k.startswith(TWIN_NETS) and ".unet." not in k}
                         | ({"training_state"} if any(k.startswith("training_state.") for k in twin_keys) else set()))
    return {"loaded": loaded, "skipped_seg_layers": len(seg), "own_modules": own_modules,
            "unused": sorted(k for k in set(weights) - used if not any(s in k for s in SKIP_IN_PRETRAINED)),
            "source": "twin" if is_twin else "plain", **info}


def describe(report: dict, fname: str | Path) -> str:
    """One log line: what was and was not loaded."""
    unused = report["unused"]
    unused_txt = (f"; {len(unused)} checkpoint tensors unused ({', '.join(unused[:4])}"
                  f"{', ...' if len(unused) > 4 else ''})") if unused else ""
    return (f"Pretrained weights from {fname} ({report['source']} checkpoint of {report.get('trainer_name')}, "
            f"epoch {report.get('epoch')}): loaded {report['loaded']} tensors into each of net_a.unet and "
            f"net_b.unet (encoder and decoder, the same values in both networks). Not loaded: the segmentation "
            f"layers ({report['skipped_seg_layers']} tensors; nnU-Net never transfers them) and our own modules "
            f"({', '.join(report['own_modules']) or 'none'}), which keep their initialisation{unused_txt}.")


def install_pretrained_hook(trainer) -> None:
    """Route ``nnUNetv2_train -pretrained_weights`` for ``trainer.network`` to ``trainer.load_pretrained_weights``.

    Replaces ``nnunetv2.run.run_training.load_pretrained_weights`` by a dispatcher that keeps nnU-Net's original
    for every other network; installing it again (another trainer) re-targets it, never stacks dispatchers."""
    import nnunetv2.run.run_training as run_training

    from nnunet_llmseg.trainers.semi_supervised import unwrap

    current = run_training.load_pretrained_weights
    original = getattr(current, "nnunet_original", current)
    ref = weakref.ref(trainer)

    def load_pretrained_weights(network, fname, verbose=False):
        owner = ref()
        if owner is not None and owner.network is not None and unwrap(network) is unwrap(owner.network):
            return owner.load_pretrained_weights(fname)
        return original(network, fname, verbose=verbose)

    load_pretrained_weights.nnunet_original = original
    run_training.load_pretrained_weights = load_pretrained_weights
