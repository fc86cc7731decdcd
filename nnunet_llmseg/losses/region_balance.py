"""TAK's class-balance losses for nnU-Net's sigmoid regions (region-based datasets such as BraTS).

Same names and interface as ``class_balance.py`` (``update(probs, labels)``, ``weights()``,
``forward(logits, labels, ignore_index=-1)``, ``pseudo_label_loss(logits, labels, ignore_index=-1)``), with
``probs = sigmoid(logits)`` and ``labels`` of shape ``(B, R, *spatial)``: 0/1 region membership, ``-1`` where the
voxel is ignored (nnU-Net's ``ignore`` label). Each region is its own binary problem; a region takes the place of
a class:

- ``dhc``: :class:`RegionDistributionDifficultyWeights` - DHC's DistDW on the region frequencies
  ``f_r`` = share of the labelled voxels inside region ``r`` (small regions, e.g. enhancing tumour, get the
  large weights) and DiffDW on the hard Dice of ``p_r >= 0.5`` per region - feeding :class:`WeightedBCEDiceLoss`;
  on pseudo-labels the region-weighted BCE alone (as DHC's CE-only unsupervised term).
- ``galoss``: :class:`GALossStyleRegionLoss` - GALoss's per-class hard voxels with the two outcomes of every
  region ("in r", "not in r") as the classes: ``2R`` groups of binary cross-entropies.
- ``none``: the zero loss on labelled data; plain BCE on pseudo-labels (cross pseudo-supervision).

Pseudo-labels are ``(B, R, *spatial)`` too, ``-1`` per (region, voxel) where the peer is not confident.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnunet_llmseg.losses.class_balance import (
    ClassBalancedCEDice,
    DistributionDifficultyWeights,
    GALossStyleHardVoxelLoss,
    NoClassBalance,
    hard_voxel_group_mean,
    resolve_balance_name,
    split_dhc_options,
)


def _region_labels(labels: Tensor, like: Tensor) -> Tensor:
    if labels.shape != like.shape:
        raise ValueError(f"region labels must be (B, R, *spatial) like the outputs {tuple(like.shape)}, "
                         f"got {tuple(labels.shape)}")
    return labels.long()


def _mean_bce(logits: Tensor, labels: Tensor, class_weights: Tensor | None) -> Tensor:
    """``sum_r w_r mean_{v valid} BCE_rv / sum_r w_r`` over the (region, voxel) pairs with label ``>= 0``."""
    r = logits.shape[1]
    lab = _region_labels(labels, logits)
    valid = lab >= 0
    x = logits.float()
    bce = F.binary_cross_entropy_with_logits(x, (lab == 1).float(), reduction="none")
    dims = (0, *range(2, x.dim()))
    per_region = torch.where(valid, bce, x.new_zeros(())).sum(dims) / valid.sum(dims).clamp_min(1)
    w = torch.ones(r, device=x.device) if class_weights is None else class_weights.to(x.device).float()
    return (w * per_region).sum() / w.sum().clamp_min(1e-8)


class RegionDistributionDifficultyWeights(DistributionDifficultyWeights):
    """DHC's DistDW / DiffDW (see :class:`DistributionDifficultyWeights`) with regions as the classes:
    ``f_r`` = EMA of the share of labelled voxels in region ``r``, ``d_r`` = hard Dice of ``p_r >= 0.5``."""

    def _batch_statistics(self, probs: Tensor, labels: Tensor) -> Tensor:
        lab = _region_labels(labels, probs)
        valid = lab >= 0
        gt = (lab == 1) & valid
        pred = (probs >= 0.5) & valid
        dims = (0, *range(2, probs.dim()))
        counts = gt.sum(dims).float()
        return torch.stack((counts, (gt & pred).sum(dims).float(), pred.sum(dims).float(),
                            valid.sum(dims).float()))


class WeightedBCEDiceLoss(nn.Module):
    """Per-region BCE + soft Dice with per-region weights (the region form of ``WeightedCEDiceLoss``):

        L_BCE  = sum_r w_r mean_{v valid} BCE_rv / sum_r w_r
        L_Dice = sum_r w_r (1 - Dice_r) / sum_r w_r,  Dice_r = (2 sum p_rv g_rv + s) / (sum p_rv + sum g_rv + s)

    over the valid voxels (label ``>= 0``); batch Dice (sums over the whole batch) when ``batch_dice``, else
    per sample and averaged."""

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1e-5,
                 batch_dice: bool = True, ignore_index: int = -1) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.batch_dice = batch_dice
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, labels: Tensor, class_weights: Tensor | None = None,
                ignore_index: int | None = None) -> Tensor:
        r = logits.shape[1]
        lab = _region_labels(labels, logits)
        valid = lab >= 0
        g = (lab == 1).float()
        x = logits.float()
        w = torch.ones(r, device=x.device) if class_weights is None else class_weights.to(x.device).float()
        if w.shape != (r,):
            raise ValueError(f"class_weights must have shape ({r},), got {tuple(w.shape)}")
        loss = x.new_zeros(())
        spatial = tuple(range(2, x.dim()))
        if self.ce_weight:
            loss = loss + self.ce_weight * _mean_bce(logits, lab, w)
        if self.dice_weight:
            p = torch.sigmoid(x) * valid
            g = g * valid
            dims = (0, *spatial) if self.batch_dice else spatial
            inter = (p * g).sum(dims)
            dice = (2 * inter + self.smooth) / (p.sum(dims) + g.sum(dims) + self.smooth)
            per_region = (1 - dice) if self.batch_dice else (1 - dice).mean(0)
            loss = loss + self.dice_weight * (w * per_region).sum() / w.sum().clamp_min(1e-8)
        return loss


class RegionClassBalancedBCEDice(ClassBalancedCEDice):
    """DHC for regions: region weights + :class:`WeightedBCEDiceLoss`; pseudo-labels get the BCE alone, weighted
    only with ``weight_pseudo_labels`` (see :class:`ClassBalancedCEDice`)."""

    def pseudo_label_loss(self, logits: Tensor, labels: Tensor, ignore_index: int = -1) -> Tensor:
        return _mean_bce(logits, labels, self.pseudo_label_weights())


class RegionNoClassBalance(NoClassBalance):
    """The ``none`` ablation for regions: zero on labelled data, plain BCE on the pseudo-labels."""

    def pseudo_label_loss(self, logits: Tensor, labels: Tensor, ignore_index: int = -1) -> Tensor:
        return _mean_bce(logits, labels, None)


class GALossStyleRegionLoss(GALossStyleHardVoxelLoss):
    """GALoss-style hard-voxel BCE for regions: the groups are (region, outcome) pairs - the voxels inside region
    ``r`` and those outside it - and every present group contributes the mean of its ``ceil(topk_ratio * n)``
    highest BCEs (``gamma`` as in :class:`GALossStyleHardVoxelLoss`, whose options, validation and
    ``pseudo_label_loss`` it shares). ``absent_class_weight``: GADice's term for regions with no voxel in the
    batch, ``1/R sum_{r absent} mean_v p_rv^2``."""

    def forward(self, logits: Tensor, labels: Tensor, ignore_index: int = -1) -> Tensor:
        r = logits.shape[1]
        lab = _region_labels(labels, logits)
        valid = lab >= 0
        x = logits.float()
        g = (lab == 1)
        bce = F.binary_cross_entropy_with_logits(x, g.float(), reduction="none")
        region = torch.arange(r, device=x.device).view(1, r, *([1] * (x.dim() - 2))).expand_as(x)
        group = 2 * region + g.long()  # (r, outside) = 2r, (r, inside) = 2r + 1
        values, groups = bce[valid], group[valid]
        if values.numel() == 0:
            return x.sum() * 0.0
        loss, present = hard_voxel_group_mean(values, groups, 2 * r, self.topk_ratio, self.gamma)
        absent = ~present.view(r, 2)[:, 1]
        if self.absent_class_weight and bool(absent.any()):
            p = torch.sigmoid(x).movedim(1, -1)[valid.movedim(1, -1).all(-1)]  # (valid voxels, R)
            loss = loss + self.absent_class_weight * p[:, absent].pow(2).mean(0).sum() / r
        return loss


def build_region_balance(name: str, num_regions: int, **kw) -> nn.Module:
    """``dhc`` / ``dhc_dist`` / ``dhc_diff`` / ``galoss`` / ``none`` for sigmoid regions."""
    key, kw = resolve_balance_name(name, kw)
    if key == "dhc":
        weight_kw, loss_kw, module_kw = split_dhc_options(kw)
        return RegionClassBalancedBCEDice(num_regions, RegionDistributionDifficultyWeights(num_regions, **weight_kw),
                                          WeightedBCEDiceLoss(**loss_kw), **module_kw)
    if key == "galoss":
        return GALossStyleRegionLoss(num_regions, **kw)
    return RegionNoClassBalance(num_regions)
