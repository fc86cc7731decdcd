"""TAK's contrastive alignment of voxel features with class text embeddings.

Supervised contrastive loss (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, Eq. 2, the
"L_out" form): on L2-normalised embeddings ``z``, for each sample ``i`` with positives ``P(i)`` (same label,
``i`` itself excluded) and ``A(i)`` all samples but ``i``,

    L = 1/|I'| * sum_{i in I'} -1/|P(i)| * sum_{p in P(i)}
                                    log( exp(z_i . z_p / T) / sum_{a in A(i)} exp(z_i . z_a / T) )

with ``I'`` the samples that have at least one positive (others are skipped) and temperature ``T`` (0.07).
TAK's alignment: the class text embeddings (already projected to the feature size) join the batch as extra
samples labelled with their class, so every voxel is pulled towards its class's text and the other voxels of
its class, and pushed away from the other classes' texts and voxels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sample_class_voxels(
    features: Tensor,
    labels: Tensor,
    max_per_class: int,
    num_classes: int,
    ignore_index: int = -1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """At most ``max_per_class`` random voxels of every class: ``(N, D)`` features and ``(N,)`` labels.

    ``features``: ``(B, D, *spatial)``; ``labels``: ``(B, *spatial)`` integers at the same resolution (the
    caller resizes them); ``ignore_index`` and labels outside ``[0, num_classes)`` are never sampled.
    Contrastive losses are quadratic in the sample count, so a fixed budget per class keeps them cheap and
    stops the large classes from drowning the small ones. Vectorised: a random permutation, one stable sort
    by class, then the first ``max_per_class`` of each class's run. Gradients flow to the selected features.
    """
    if labels.shape[0] != features.shape[0] or labels.shape[1:] != features.shape[2:]:
        raise ValueError(
            f"labels {tuple(labels.shape)} must be (B, *spatial) of features {tuple(features.shape)}"
        )
    d = features.shape[1]
    flat_f = features.movedim(1, -1).reshape(-1, d)
    flat_l = labels.reshape(-1).long()
    valid = (flat_l != ignore_index) & (flat_l >= 0) & (flat_l < num_classes)
    idx = valid.nonzero(as_tuple=True)[0]
    if idx.numel() == 0 or max_per_class <= 0:
        return flat_f[:0], flat_l[:0]
    lab = flat_l[idx]
    gen_device = generator.device if generator is not None else features.device
    score = torch.rand(idx.numel(), device=gen_device, generator=generator).to(features.device)
    by_score = torch.argsort(score)
    order = by_score[torch.sort(lab[by_score], stable=True).indices]  # grouped by class, random within class
    lab_sorted = lab[order]
    counts = torch.bincount(lab_sorted, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(lab_sorted.numel(), device=lab.device) - starts[lab_sorted]
    keep = order[rank < max_per_class]
    return flat_f[idx[keep]], lab[keep]


class TextAnchoredContrastiveLoss(nn.Module):
    """Supervised contrastive loss over sampled voxels, with class text embeddings as extra labelled samples.

    ``forward(features (N, D), labels (N,), anchors (K, D) | None, anchor_labels (K,) | None) -> scalar``.
    Computed in float32 with autocast disabled (``1/T`` = 14 magnifies half-precision rounding). Returns a
    zero that still carries a graph when no sample has a positive, so the caller can always ``backward``.
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"contrastive temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(
        self,
        features: Tensor,
        labels: Tensor,
        anchors: Tensor | None = None,
        anchor_labels: Tensor | None = None,
    ) -> Tensor:
        if features.dim() != 2 or labels.shape != features.shape[:1]:
            raise ValueError(
                f"features must be (N, D) and labels (N,), got {tuple(features.shape)} and "
                f"{tuple(labels.shape)}"
            )
        zero = features.sum() * 0.0 if anchors is None else features.sum() * 0.0 + anchors.sum() * 0.0
        with torch.autocast(device_type=features.device.type, enabled=False):
            z, y = features.float(), labels.long()
            if anchors is not None:
                if anchors.dim() != 2 or anchors.shape[1] != features.shape[1]:
                    raise ValueError(f"anchors must be (K, {features.shape[1]}), got {tuple(anchors.shape)}")
                a_lab = (
                    anchor_labels
                    if anchor_labels is not None
                    else torch.arange(anchors.shape[0], device=z.device)
                )
                if a_lab.shape != anchors.shape[:1]:
                    raise ValueError(f"anchor_labels {tuple(a_lab.shape)} must be ({anchors.shape[0]},)")
                z = torch.cat((z, anchors.float()))
                y = torch.cat((y, a_lab.to(device=y.device, dtype=torch.long)))
            n = z.shape[0]
            if n < 2:
                return zero.float()
            z = F.normalize(z, dim=1)
            self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
            logits = (z @ z.t() / self.temperature).masked_fill(self_mask, float("-inf"))
            log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            pos = (y[:, None] == y[None, :]) & ~self_mask
            n_pos = pos.sum(1)
            has_pos = n_pos > 0
            if not bool(has_pos.any()):
                return zero.float()
            mean_log_prob_pos = torch.where(pos, log_prob, log_prob.new_zeros(())).sum(1) / n_pos.clamp_min(1)
            return -mean_log_prob_pos[has_pos].mean()
