"""Independent sigmoid regions (nnU-Net's region-based training, e.g. BraTS) and nnU-Net's ``ignore`` label.

nnU-Net trains region-based datasets (``regions_class_order`` in dataset.json) with one sigmoid output per
region; regions may overlap (BraTS: whole tumour contains tumour core contains enhancing tumour). The softmax
view of the losses (one class per voxel, ``argmax``) does not apply. Each region ``r`` at voxel ``v`` is an
independent Bernoulli variable with ``p[r, v] = sigmoid(logit[r, v])``; the peer-supervised losses treat every
(region, voxel) pair as a two-outcome classification problem:

    confidence   c[r, v] = max(p_t[r, v], 1 - p_t[r, v])
    hard label   y[r, v] = [p_t[r, v] >= 0.5]

This is exactly the softmax definition for ``K = 2`` (outcomes "in r" / "not in r"): ``max_k p_t`` and ``argmax_k
p_t``, and the per-class mean squared error ``1/2 ((p_s - p_t)^2 + ((1 - p_s) - (1 - p_t))^2) = (p_s - p_t)^2``.

:class:`OutputSpace` hides the difference between the two output kinds for the trainers (probabilities,
hard labels, confidences, targets with the ignore label turned into ``-1``, and a single label per voxel for
the contrastive loss). Labels that are ``-1`` are never used as an index.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: the label every loss helper here uses for "not annotated / not usable"; never used as an index
IGNORE = -1


def _voxel_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    """``(B, 1, *spatial)`` bool mask broadcastable over regions (all True without ``mask``)."""
    if mask is None:
        return torch.ones((like.shape[0], 1, *like.shape[2:]), dtype=torch.bool, device=like.device)
    if mask.dim() == like.dim() - 1:
        mask = mask[:, None]
    if mask.shape[1] != 1 or mask.shape[2:] != like.shape[2:] or mask.shape[0] != like.shape[0]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the voxels of {tuple(like.shape)}")
    return mask.bool()


@torch.no_grad()
def bernoulli_peer_targets(student_logits: Tensor, peer_logits: Tensor, mask: Tensor | None
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The region counterpart of ``usl.peer_targets``: ``p_t`` (float32 sigmoid), confidence ``c`` and hard label
    ``y`` per (region, voxel), the valid mask ``(B, R, *spatial)`` and the number ``N`` (>= 1) of valid
    (region, voxel) pairs."""
    if student_logits.shape != peer_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and peer {tuple(peer_logits.shape)} logits "
            "must have the same shape"
        )
    p_t = torch.sigmoid(peer_logits.detach().float())
    conf = torch.maximum(p_t, 1.0 - p_t)
    hard = (p_t >= 0.5).float()
    valid = _voxel_mask(mask, p_t).expand_as(p_t)
    return p_t, conf, hard, valid, valid.sum().clamp_min(1).float()


def region_usl(student_logits: Tensor, peer_logits: Tensor, mask: Tensor | None, tau: float,
               negative_learning: bool = False, negative_tau: float = 0.05, negative_weight: float = 1.0
               ) -> tuple[Tensor, dict]:
    """USL for sigmoid regions (see the module docstring): over the valid (region, voxel) pairs,

        L = 1/N [ sum_{c >= tau} c * BCE(p_s, y) + sum_{c < tau} (p_s - p_t)^2 ]

    Negative learning (optional): ``-log(1 - p_s)`` where ``p_t < negative_tau`` and ``-log(p_s)`` where
    ``1 - p_t < negative_tau`` (the outcome the peer rules out), averaged over those pairs."""
    p_t, conf, hard, valid, n = bernoulli_peer_targets(student_logits, peer_logits, mask)
    confident = (conf >= tau) & valid
    unconfident = valid & ~confident
    x = student_logits.float()
    zero = x.new_zeros(())
    bce = F.binary_cross_entropy_with_logits(x, hard, reduction="none")
    nll_term = torch.where(confident, conf * bce, zero).sum() / n
    p_s = torch.sigmoid(x)
    mse_term = torch.where(unconfident, (p_s - p_t) ** 2, zero).sum() / n
    loss = nll_term + mse_term
    neg_term = zero
    if negative_learning:
        # -log(1 - p_s) = softplus(x), -log(p_s) = softplus(-x): stable for any logit
        rule_out_fg = (p_t < negative_tau) & valid
        rule_out_bg = ((1.0 - p_t) < negative_tau) & valid
        neg = torch.where(rule_out_fg, F.softplus(x), zero) + torch.where(rule_out_bg, F.softplus(-x), zero)
        neg_term = neg.sum() / (rule_out_fg.sum() + rule_out_bg.sum()).clamp_min(1)
        loss = loss + negative_weight * neg_term
    stats = {"confident_fraction": (confident.sum().float() / n).detach(), "nll": nll_term.detach(),
             "mse": mse_term.detach(), "negative": neg_term.detach()}
    return loss, stats


def region_cps(student_logits: Tensor, peer_logits: Tensor, mask: Tensor | None, log_tau: float
               ) -> tuple[Tensor, dict]:
    """Cross pseudo-supervision for sigmoid regions: mean BCE against the peer's hard labels ``p_t >= 0.5``."""
    _, conf, hard, valid, n = bernoulli_peer_targets(student_logits, peer_logits, mask)
    bce = F.binary_cross_entropy_with_logits(student_logits.float(), hard, reduction="none")
    loss = torch.where(valid, bce, bce.new_zeros(())).sum() / n
    stats = {"confident_fraction": (((conf >= log_tau) & valid).sum().float() / n).detach(), "ce": loss.detach()}
    return loss, stats


def exclusive_region_labels(binary: Tensor) -> Tensor:
    """One label per voxel from ``(B, R, *spatial)`` region memberships (``-1`` marks ignored voxels):
    ``1 + index of the last region containing the voxel``, ``0`` for none.

    "Last region wins" is nnU-Net's own rule for turning region predictions into a label map
    (``regions_class_order``): with nested regions (BraTS) a voxel gets its innermost region. Ignored voxels
    (any channel ``< 0``) stay ``-1``."""
    on = binary > 0
    r = binary.shape[1]
    idx = torch.arange(1, r + 1, device=binary.device).view(1, r, *([1] * (binary.dim() - 2)))
    labels = torch.where(on, idx, torch.zeros_like(idx)).amax(1)
    return labels.masked_fill((binary < 0).any(1), IGNORE)


class OutputSpace:
    """What the trainers need to know about the network outputs: softmax labels or sigmoid regions, and the
    dataset's ``ignore`` label (nnU-Net's sparse annotation).

    - ``probs(logits)``: softmax over classes, or per-region sigmoid.
    - ``target_labels(target)``: nnU-Net's (deep-supervision scale of the) target as loss labels. Softmax:
      ``(B, *spatial)`` class indices. Regions: ``(B, R, *spatial)`` 0/1 memberships (nnU-Net appends the ignore
      mask as an extra channel, which is dropped). The ignore label becomes ``-1`` in both.
    - ``hard_labels(probs)``: argmax, or ``p >= 0.5`` per region (same layout as ``target_labels``).
    - ``confidence(probs)``: ``max_k p`` per voxel, or ``max(p, 1 - p)`` per (region, voxel).
    - ``voxel_labels(labels)``: one class per voxel for the contrastive loss: the labels themselves, or
      :func:`exclusive_region_labels`; ``num_voxel_classes`` of them; the class text of head ``k`` anchors
      class ``anchor_labels[k]``.
    - ``normalised_entropy(probs)``: per voxel, in ``[0, 1]``: softmax entropy / log K, or the largest binary
      entropy / log 2 over the regions (a voxel is as uncertain as its most uncertain region).
    """

    def __init__(self, num_outputs: int, has_regions: bool, ignore_label: int | None) -> None:
        self.num_outputs = int(num_outputs)
        self.has_regions = bool(has_regions)
        self.ignore_label = ignore_label

    @classmethod
    def from_label_manager(cls, label_manager) -> OutputSpace:
        return cls(label_manager.num_segmentation_heads, label_manager.has_regions, label_manager.ignore_label)

    @property
    def num_voxel_classes(self) -> int:
        return self.num_outputs + 1 if self.has_regions else self.num_outputs

    def anchor_labels(self, device: torch.device | None = None) -> Tensor:
        start = 1 if self.has_regions else 0
        return torch.arange(start, start + self.num_outputs, device=device)

    def probs(self, logits: Tensor) -> Tensor:
        x = logits.float()
        return torch.sigmoid(x) if self.has_regions else torch.softmax(x, 1)

    def target_labels(self, target: Tensor) -> Tensor:
        if self.has_regions:
            regions = target[:, : self.num_outputs].long()
            if self.ignore_label is not None:
                if target.shape[1] != self.num_outputs + 1:
                    raise ValueError(f"region target with ignore label must have {self.num_outputs + 1} channels, "
                                     f"got {tuple(target.shape)}")
                regions = regions.masked_fill(target[:, -1:].bool(), IGNORE)
            return regions
        labels = target[:, 0].long()
        if self.ignore_label is not None:
            labels = labels.masked_fill(labels == self.ignore_label, IGNORE)
        return labels

    def hard_labels(self, probs: Tensor) -> Tensor:
        return (probs >= 0.5).long() if self.has_regions else probs.argmax(1)

    def confidence(self, probs: Tensor) -> Tensor:
        return torch.maximum(probs, 1.0 - probs) if self.has_regions else probs.max(1).values

    def voxel_labels(self, labels: Tensor) -> Tensor:
        return exclusive_region_labels(labels) if self.has_regions else labels

    def normalised_entropy(self, probs: Tensor) -> Tensor:
        p = probs.float().clamp(1e-8, 1 - 1e-8)
        if self.has_regions:
            h = -(p * torch.log(p) + (1 - p) * torch.log(1 - p)) / math.log(2.0)
            return h.amax(1)
        return -(p * torch.log(p)).sum(1) / math.log(max(self.num_outputs, 2))
