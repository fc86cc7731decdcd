"""Teacher predictions with each class's stray components turned to background before they teach.

Why: at 7 labelled ACDC patients the co-trained networks miss 29-47 % fewer heart voxels than labelled-only nnU-Net
but predict 31-56 % more foreground far from the heart (``benchmarks/error_location.py``, docs/methods.md): a
peer's stray blob is a hard target for its student, which learns it and teaches it back. Every target structure
of these tasks is one connected region (the text priors describe each as one: "a ring", "a chamber"), which is why
nnU-Net's largest-component postprocessing helps on whole volumes. This applies the same rule to the *teacher's*
prediction on each unlabelled crop, before the crop is mixed: voxels of a class outside that class's largest
connected component in the crop become confident background, so strays are taught away instead of passed on.

The rule acts per crop, the only frame the teacher saw; a crop holding only a stray (the organ outside the crop)
keeps it. Components are labelled as nnU-Net's ``remove_all_but_largest_component`` labels them (acvl_utils,
full connectivity), and every component of the largest size is kept, as that rule does.
"""

from __future__ import annotations

import numpy as np
import torch
from acvl_utils.morphology.morphology_helper import label_with_component_sizes

#: logit margin of the background written into stray voxels (softmax ~ 1 - 2e-9 per other class)
CONFIDENT_LOGIT = 20.0


def stray_mask(mask: np.ndarray) -> np.ndarray:
    """True where ``mask`` (bool, one crop) lies outside its largest connected component(s)."""
    if not mask.any():
        return np.zeros_like(mask)
    comp, sizes = label_with_component_sizes(mask)
    largest = max(sizes.values())
    removed = [i for i, size in sizes.items() if size < largest]
    return np.isin(comp, removed) if removed else np.zeros_like(mask)


@torch.no_grad()
def background_outside_largest_components(logits: torch.Tensor, has_regions: bool = False) -> torch.Tensor:
    """Teacher logits ``(B, C, *spatial)`` with every class's stray components made confident background.

    Softmax outputs: the hard label's classes 1..C-1 are cleaned one by one; a stray voxel's logits become
    ``CONFIDENT_LOGIT`` for background and 0 for the rest. Sigmoid regions (``has_regions``): each channel's
    ``logit > 0`` mask is cleaned on its own and its stray voxels get ``-CONFIDENT_LOGIT`` in that channel.
    Returns a new tensor; the input is not changed.
    """
    if has_regions:
        fg = (logits > 0).cpu().numpy()
        stray = np.zeros_like(fg)
        for n in range(fg.shape[0]):
            for c in range(fg.shape[1]):
                stray[n, c] = stray_mask(fg[n, c])
        stray_t = torch.from_numpy(stray).to(logits.device)
        return torch.where(stray_t, torch.full_like(logits, -CONFIDENT_LOGIT), logits)
    hard = logits.argmax(1).cpu().numpy()
    stray = np.zeros(hard.shape, dtype=bool)
    for n in range(hard.shape[0]):
        for c in range(1, logits.shape[1]):
            stray[n] |= stray_mask(hard[n] == c)
    background = torch.zeros_like(logits)
    background[:, 0] = CONFIDENT_LOGIT
    return torch.where(torch.from_numpy(stray).to(logits.device)[:, None], background, logits)


# ---- the organ region of a whole volume -----------------------------------------------------------------------
# The per-crop rule above reaches only strays that share a crop with a larger component of their class: on 7-patient
# ACDC runs about a fifth of what nnU-Net's largest-component rule removes on whole volumes
# (benchmarks/crop_cleaning_reach.py). The organ region below is computed on the whole volume, from the networks'
# own prediction of it, and travels with each unlabelled crop through augmentation (data/unlabeled_loader.py), so a
# teacher's foreground far from the organ is turned to background even where the crop shows no organ at all.


def organ_region(foreground: np.ndarray, spacing: tuple[float, ...], margin_mm: float,
                 in_plane_only: bool) -> np.ndarray:
    """Where the organ may be: the largest connected component of ``foreground`` (bool, one whole volume,
    slice axis first), grown by ``margin_mm``; all True when nothing is predicted (nowhere to anchor a region).

    ``spacing`` is the voxel size per axis of ``foreground``. ``in_plane_only`` (2D configurations, whose slices
    are trained on one at a time): the margin is grown within each slice, so slices the component does not reach
    stay outside, as nnU-Net's largest-component rule leaves them empty.
    """
    from scipy.ndimage import distance_transform_edt

    if margin_mm < 0:
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
    if not foreground.any():
        return np.ones(foreground.shape, dtype=bool)
    comp, sizes = label_with_component_sizes(foreground)
    largest = max(sizes.values())
    core = np.isin(comp, [i for i, size in sizes.items() if size == largest])
    if in_plane_only:
        region = np.zeros_like(core)
        for z in range(core.shape[0]):
            if core[z].any():
                region[z] = distance_transform_edt(~core[z], sampling=spacing[-2:]) <= margin_mm
        return region
    return distance_transform_edt(~core, sampling=spacing) <= margin_mm


def foreground(logits: torch.Tensor, has_regions: bool = False) -> torch.Tensor:
    """Bool ``(B, 1, *spatial)``: where a prediction ``(B, C, *spatial)`` is foreground (softmax: its argmax is not
    background; sigmoid regions: any region's logit is positive)."""
    return (logits > 0).any(1, keepdim=True) if has_regions else logits.argmax(1, keepdim=True) > 0


@torch.no_grad()
def background_outside_region(logits: torch.Tensor, region: torch.Tensor, has_regions: bool = False) -> torch.Tensor:
    """Teacher logits ``(B, C, *spatial)`` made confident background wherever ``region`` (bool ``(B, 1, *spatial)``)
    is False; sigmoid regions get ``-CONFIDENT_LOGIT`` in every channel there. Returns a new tensor."""
    if region.shape[0] != logits.shape[0] or tuple(region.shape[2:]) != tuple(logits.shape[2:]):
        raise ValueError(f"region {tuple(region.shape)} does not match the logits {tuple(logits.shape)}")
    outside = ~region.to(device=logits.device, dtype=torch.bool)
    if has_regions:
        return torch.where(outside, torch.full_like(logits, -CONFIDENT_LOGIT), logits)
    background = torch.zeros_like(logits)
    background[:, 0] = CONFIDENT_LOGIT
    return torch.where(outside, background, logits)
