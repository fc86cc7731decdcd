"""TAK's contrastive alignment of voxel features with class text embeddings.

Supervised contrastive loss (Khosla et al., NeurIPS 2020, Eq. 2, "L_out"): for each anchor ``i`` with positives
``P(i)`` (same class, ``i`` excluded),

    L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i . z_p / T) / sum_{a != i} exp(z_i . z_a / T) ),

on L2-normalised features, temperature ``T = 0.07``. The class text embeddings join the batch as extra samples
(one per class), so every voxel is pulled towards its class's text and away from the others' (TAK).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sample_class_voxels(features: Tensor, labels: Tensor, max_per_class: int, num_classes: int,
                        ignore_index: int = -1, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """At most ``max_per_class`` random voxels per class: ``(N, D)`` features and ``(N,)`` labels.

    ``features``: ``(B, D, *spatial)``; ``labels``: ``(B, *spatial)`` at the same resolution. Vectorised: a random
    score per voxel, then the ``max_per_class`` lowest scores within each class (one sort).
    """
    d = features.shape[1]
    flat_f = features.movedim(1, -1).reshape(-1, d)
    flat_l = labels.reshape(-1)
    valid = (flat_l != ignore_index) & (flat_l >= 0) & (flat_l < num_classes)
    idx = valid.nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        return flat_f[:0], flat_l[:0]
    lab = flat_l[idx]
    score = torch.rand(idx.numel(), device=features.device, generator=generator)
    order = torch.argsort(lab.float() * 2 + score)  # group by class, random within class
    lab_sorted = lab[order]
    counts = torch.bincount(lab_sorted, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(lab_sorted.numel(), device=features.device) - starts[lab_sorted]
    keep = order[rank < max_per_class]
    return flat_f[idx[keep]], lab[keep]


class TextAnchoredContrastiveLoss(nn.Module):
    """Supervised contrastive loss over voxels, with class text embeddings as extra labelled samples."""

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, features: Tensor, labels: Tensor, anchors: Tensor | None = None,
                anchor_labels: Tensor | None = None) -> Tensor:
        z, y = features.float(), labels
        if anchors is not None:
            a_lab = anchor_labels if anchor_labels is not None else torch.arange(anchors.shape[0], device=z.device)
            z = torch.cat((z, anchors.float()))
            y = torch.cat((y, a_lab.to(y.dtype)))
        if z.shape[0] < 2:
            return features.sum() * 0.0
        z = F.normalize(z, dim=1)
        logits = z @ z.t() / self.temperature
        n = z.shape[0]
        self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        pos = (y[:, None] == y[None, :]) & ~self_mask
        n_pos = pos.sum(1)
        has_pos = n_pos > 0
        if not has_pos.any():
            return features.sum() * 0.0
        mean_log_prob_pos = (log_prob.masked_fill(~pos, 0.0)).sum(1)[has_pos] / n_pos[has_pos]
        return -mean_log_prob_pos.mean()
