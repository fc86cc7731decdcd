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


def mix(x: torch.Tensor, partner: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paste ``partner`` into ``x`` where ``mask`` is set (mask broadcasts over channels)."""
    return torch.where(mask, partner, x)


@dataclass
class CutMixBatch:
    """One iteration's CutMix, what the unsupervised losses need to work in the mixed frame.

    ``mask`` (``(n_u, 1, *spatial)``, True where the partner is pasted) and ``partner`` (index into the pool
    ``[unlabelled, labelled]``) say how the mixed crops were made. ``plain`` holds each network's (detached,
    full-resolution) predictions on the *unmixed* unlabelled crops when both networks train on the mixed view;
    ``None`` when only network B does.
    """

    mask: torch.Tensor
    partner: torch.Tensor
    plain: tuple[torch.Tensor, torch.Tensor] | None = None

    def mixed(self, unlabelled: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
        """Images, or predictions made on the unmixed crops, brought into the mixed frame the same way."""
        pool = torch.cat((unlabelled, labelled))
        return mix(unlabelled, pool[self.partner], self.mask)
