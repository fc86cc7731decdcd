"""Class-imbalance-aware losses for TAK, selectable by name (:func:`build_class_balance`).

Each module has ``update(probs, labels)`` (statistics from the labelled batch, no gradient), ``weights()`` (the
per-class weights, logged every epoch) and ``forward(logits, labels) -> loss``. Statistics are buffers, so they
are checkpointed and a resumed run continues with them.

- ``dhc_dist`` - DHC's distribution-aware weights (Wang & Li, "DHC: Dual-debiased Heterogeneous Co-training",
  MICCAI 2023, DistDW, Eq. 3): ``w_k = log(f_max / f_k) + 1`` from an EMA of the class frequencies ``f_k``, so rarer
  classes weigh more; used in a weighted cross-entropy.
- ``dhc_diff`` - DHC's difficulty-aware weights (DiffDW, Eq. 4-6): per-class learning difficulty from the EMA
  of the Dice ``d_k`` and its recent change; ``w_k = (1 - d_k)^alpha`` grows for classes that are still poorly
  segmented (alpha = 1 here); in a weighted cross-entropy.
- ``galoss`` - GALoss-style hard-voxel loss: per class, the top-``ratio`` hardest voxels (highest CE), averaged
  per class and then over classes, so every present class contributes equally whatever its size.
- ``none`` - no extra term (returns 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Balance(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def update(self, probs: Tensor, labels: Tensor) -> None:
        pass

    def weights(self) -> Tensor:
        return torch.ones(self.num_classes)


class NoBalance(_Balance):
    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return logits.sum() * 0.0


def _weighted_ce(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    labels = labels.long()
    valid = labels >= 0
    ce = F.cross_entropy(logits.float(), labels.clamp_min(0), reduction="none")
    w = weights.to(logits.device)[labels.clamp_min(0)]
    return (ce * w * valid).sum() / (w * valid).sum().clamp_min(1e-6)


class DistributionAwareWeights(_Balance):
    """DHC DistDW: rarer classes (EMA of voxel frequency) get larger weights."""

    def __init__(self, num_classes: int, momentum: float = 0.99) -> None:
        super().__init__(num_classes)
        self.momentum = momentum
        self.register_buffer("frequency", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, probs: Tensor, labels: Tensor) -> None:
        lab = labels.long().reshape(-1)
        lab = lab[lab >= 0]
        freq = torch.bincount(lab, minlength=self.num_classes).float()[: self.num_classes]
        freq = freq / freq.sum().clamp_min(1)
        if not bool(self.initialised):
            self.frequency.copy_(freq.to(self.frequency))
            self.initialised.fill_(True)
        else:
            self.frequency.mul_(self.momentum).add_((1 - self.momentum) * freq.to(self.frequency))

    def weights(self) -> Tensor:
        f = self.frequency.clamp_min(1e-6)
        w = torch.log(f.max() / f) + 1.0
        return w / w.mean()

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return _weighted_ce(logits, labels, self.weights())


class DifficultyAwareWeights(_Balance):
    """DHC DiffDW: classes with low (EMA) Dice get larger weights."""

    def __init__(self, num_classes: int, momentum: float = 0.99, alpha: float = 1.0) -> None:
        super().__init__(num_classes)
        self.momentum = momentum
        self.alpha = alpha
        self.register_buffer("dice", torch.zeros(num_classes))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, probs: Tensor, labels: Tensor) -> None:
        k = self.num_classes
        lab = labels.long()
        valid = (lab >= 0)[:, None]
        onehot = F.one_hot(lab.clamp_min(0), k).movedim(-1, 1).float() * valid
        p = probs.float() * valid
        dims = (0, *range(2, p.dim()))
        inter = (p * onehot).sum(dims)
        denom = p.sum(dims) + onehot.sum(dims)
        present = onehot.sum(dims) > 0
        dice = torch.where(present, 2 * inter / denom.clamp_min(1e-6), self.dice)
        if not bool(self.initialised):
            self.dice.copy_(dice)
            self.initialised.fill_(True)
        else:
            self.dice.mul_(self.momentum).add_((1 - self.momentum) * dice)

    def weights(self) -> Tensor:
        w = (1.0 - self.dice).clamp_min(1e-3) ** self.alpha
        return w / w.mean()

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return _weighted_ce(logits, labels, self.weights())


class HardVoxelClassBalancedLoss(_Balance):
    """GALoss-style: per class, mean CE of its hardest ``topk_ratio`` voxels; then the mean over present classes."""

    def __init__(self, num_classes: int, topk_ratio: float = 0.3) -> None:
        super().__init__(num_classes)
        self.topk_ratio = topk_ratio

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        lab = labels.long().reshape(-1)
        ce = F.cross_entropy(logits.float(), labels.long().clamp_min(0), reduction="none").reshape(-1)
        valid = lab >= 0
        lab, ce = lab[valid], ce[valid]
        if lab.numel() == 0:
            return logits.sum() * 0.0
        # sort by (class, -ce): each class's hardest voxels first, one sort for all classes
        order = torch.argsort(lab.float() * (ce.max().detach() + 1) * 2 - ce.detach())
        lab_s, ce_s = lab[order], ce[order]
        counts = torch.bincount(lab_s, minlength=self.num_classes)
        keep_n = torch.clamp((counts.float() * self.topk_ratio).ceil().long(), min=1) * (counts > 0)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(lab_s.numel(), device=lab_s.device) - starts[lab_s]
        keep = rank < keep_n[lab_s]
        per_class = torch.zeros(self.num_classes, device=ce.device).index_add(0, lab_s[keep], ce_s[keep])
        present = counts > 0
        return (per_class[present] / keep_n[present].float()).mean()


def build_class_balance(name: str, num_classes: int, **kwargs) -> nn.Module:
    """The class-balance module by name: ``dhc_dist``, ``dhc_diff``, ``galoss`` or ``none``."""
    registry = {"dhc_dist": DistributionAwareWeights, "dhc_diff": DifficultyAwareWeights,
                "galoss": HardVoxelClassBalancedLoss, "none": NoBalance}
    if name not in registry:
        raise ValueError(f"unknown class balance '{name}'; choose one of {sorted(registry)}")
    return registry[name](num_classes, **kwargs)


__all__ = [
    "DifficultyAwareWeights",
    "DistributionAwareWeights",
    "HardVoxelClassBalancedLoss",
    "NoBalance",
    "build_class_balance",
    "math",
]
