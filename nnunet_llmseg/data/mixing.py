"""CutMix on the GPU: the second, mixed view of the unlabelled crops that co-training needs.

Doing it on the device costs a few element-wise ops per batch instead of a second augmentation pipeline in the
loader. The partner of each unlabelled crop is the next crop in a pool made of the unlabelled and the labelled
crops of the same iteration, so a batch with a single unlabelled crop still gets a real partner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def cutmix_box_mask(batch_size: int, spatial_shape: tuple[int, ...], volume_fraction: tuple[float, float],
                    device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random axis-aligned box per sample; ``True`` inside the box (where the partner is pasted).

    The box's volume is a fraction ``r ~ U(volume_fraction)`` of the patch, with the same relative side
    ``r ** (1/ndim)`` along every axis (so anisotropic patches get proportional boxes).
    Returns a bool tensor of shape ``(B, 1, *spatial_shape)``.
    """
    ndim = len(spatial_shape)
    lo, hi = volume_fraction
    r = torch.rand(batch_size, generator=generator) * (hi - lo) + lo
    side = r ** (1.0 / ndim)
    mask = torch.zeros((batch_size, 1, *spatial_shape), dtype=torch.bool)
    for b in range(batch_size):
        slices = []
        for _d, size in enumerate(spatial_shape):
            length = max(1, round(float(side[b]) * size))
            start = int(torch.randint(0, size - length + 1, (1,), generator=generator))
            slices.append(slice(start, start + length))
        mask[(b, 0, *slices)] = True
    return mask.to(device, non_blocking=True)


def partner_indices(num_unlabeled: int, pool_size: int) -> torch.Tensor:
    """Index into the pool (unlabelled first, then labelled) of each unlabelled crop's partner: the next one."""
    return (torch.arange(num_unlabeled) + 1) % pool_size


def labelled_partner_indices(num_unlabeled: int, num_labelled: int) -> torch.Tensor:
    """Index into the pool ``[unlabelled, labelled]`` of a *labelled* partner for every unlabelled crop (in turn)."""
    if num_labelled < 1:
        raise ValueError("a labelled partner for each unlabelled crop needs at least one labelled crop in the batch")
    return num_unlabeled + torch.arange(num_unlabeled) % num_labelled


def both_directions(mask: torch.Tensor) -> torch.Tensor:
    """Invert every second sample's box: the partner fills all *but* the box there.

    With labelled partners (``labelled_partner_indices``) half the mixed crops are a labelled box in unlabelled
    surroundings and half an unlabelled box in labelled surroundings, so neither kind of content is always the
    small, cut-out part (the bidirectional copy-paste of Bai et al., CVPR 2023).
    """
    flip = (torch.arange(mask.shape[0], device=mask.device) % 2 == 1).view(-1, *([1] * (mask.ndim - 1)))
    return mask ^ flip


def truth_as_teacher_logits(labels: torch.Tensor, num_outputs: int, has_regions: bool,
                            confident_logit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth written as a teacher's logits, and where it is known.

    ``labels`` as ``OutputSpace.target_labels`` gives them (``-1`` where the ignore label is): ``(B, *spatial)``
    class indices, or ``(B, R, *spatial)`` region memberships. Returns ``(logits, known)``: softmax outputs get
    ``confident_logit`` on the true class and 0 elsewhere (``known`` is ``(B, 1, *spatial)``), regions
    ``+/- confident_logit`` per region (``known`` per region). Every unsupervised loss then reads the truth as a
    fully confident teacher.
    """
    if has_regions:
        known = labels >= 0
        return (labels.clamp(min=0).float() * 2.0 - 1.0) * confident_logit, known
    known = (labels >= 0).unsqueeze(1)
    onehot = torch.nn.functional.one_hot(labels.clamp(min=0), num_outputs).movedim(-1, 1).float()
    return onehot * confident_logit, known


def mix(x: torch.Tensor, partner: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paste ``partner`` into ``x`` where ``mask`` is set (mask broadcasts over channels)."""
    return torch.where(mask, partner, x)


@dataclass
class CutMixBatch:
    """One iteration's CutMix, what the unsupervised losses need to work in the mixed frame.

    ``mask`` (``(n_u, 1, *spatial)``, True where the partner is pasted) and ``partner`` (index into the pool
    ``[unlabelled, labelled]``) say how the mixed crops were made. ``plain`` holds each network's (detached,
    full-resolution) predictions on the *unmixed* unlabelled crops when both networks train on the mixed view;
    ``None`` when only network B does. ``truth`` (``truth_as_teacher_logits``: logits and where they are known)
    replaces the peers' predictions on the labelled crops as the teacher there; ``None``: the peers teach them too.
    """

    mask: torch.Tensor
    partner: torch.Tensor
    plain: tuple[torch.Tensor, torch.Tensor] | None = None
    truth: tuple[torch.Tensor, torch.Tensor] | None = None

    def labelled_teacher(self, peer_logits: torch.Tensor) -> torch.Tensor:
        """What teaches on the labelled crops: the ground truth where known, else the peer's (detached) logits."""
        if self.truth is None:
            return peer_logits
        logits, known = self.truth
        return torch.where(known, logits.to(peer_logits.dtype), peer_logits)

    def mixed(self, unlabelled: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        """Images, or predictions made on the unmixed crops, brought into the mixed frame the same way."""
        pool = torch.cat((unlabelled, labelled))
        return mix(unlabelled, pool[self.partner], self.mask)
