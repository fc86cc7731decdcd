"""How far each co-trained network can be trusted as a teacher: the reliability gate of the unsupervised loss.

Co-training under class imbalance has a failure mode that both methods hit on short schedules (issue 11,
docs/methods.md "Co-training engine"): early in training both networks predict background almost everywhere,
confidently. Their pseudo-labels are then all background, the unsupervised loss - computed on every unlabelled
voxel, many more than the labelled foreground voxels - teaches background with full weight once the ramp-up
ends, and the pair locks into predicting nothing (LLM-SegNet: pseudo-Dice 0.00 for 200 iterations with 99 %
"confident" voxels; TAK lost its rarer class). A fixed ramp-up cannot know when the teachers have become
worth listening to; the labelled part of every batch can tell.

Each network keeps, per foreground class (or region) ``k``, an exponential moving average (momentum ``m``) of
its hard Dice on the labelled part of the batch (nnU-Net's pseudo-Dice, on training crops), and its reliability
is the worst of them:

    D_kt = 2 TP_k / (2 TP_k + FP_k + FN_k)              for the classes k present in the batch
    d_kt = m d_k(t-1) + (1 - m) D_kt                      (absent classes keep their value)
    r_t  = min_{k seen so far} d_kt

and the unsupervised loss of the student taught by network ``T`` is multiplied by ``r_T`` (on top of the usual
ramp-up). A teacher that segments nothing teaches nothing; as it learns the labelled data its pseudo-labels
count more. The *minimum* over classes, not the mean: a teacher that has learnt the large class but not yet
the small one labels the small structure as background on every unlabelled image, and its confident
pseudo-labels then erase the small class from the student (measured: LLM-SegNet on the tiny synthetic data
kept class 2 at Dice 0.00 with a mean-Dice gate of 0.45, while the same gate on the worst class waits until
both are learnt). Batches without foreground leave ``r`` unchanged. Region-based outputs (sigmoid) use
``sigmoid > 0.5`` per region; voxels of nnU-Net's ``ignore`` label are left out.

The statistics are buffers of the twin network, so nnU-Net's checkpoint (and a resume) carries them. Under DDP
each step's Dice is averaged over the ranks before it is folded in, so all ranks hold the same reliabilities.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


@torch.no_grad()
def hard_dice_per_class(logits: Tensor, target: Tensor, has_regions: bool = False,
                        ignore_label: int | None = None) -> tuple[Tensor, Tensor]:
    """Hard Dice per foreground class (or region) and which of them are present in ``target``.

    ``logits``: ``(B, K, *spatial)``; ``target``: nnU-Net's ``(B, 1, *spatial)`` label map, or ``(B, R, ...)``
    region masks (plus a last ignore channel when the dataset has an ignore label) for region-based training.
    Counts are summed over the batch (nnU-Net's batch Dice). Returns ``(dice, present)``, both of length ``K - 1``
    (softmax) or ``R`` (regions).
    """
    axes = (0, *range(2, logits.dim()))
    if has_regions:
        tgt = target.bool()
        mask = None
        if ignore_label is not None:
            mask, tgt = ~tgt[:, -1:], tgt[:, :-1]
        pred = logits > 0  # sigmoid > 0.5
        fg = slice(None)
    else:
        lab = target[:, 0].long() if target.dim() == logits.dim() else target.long()
        mask = None
        if ignore_label is not None:
            mask = (lab != ignore_label)[:, None]
            lab = torch.where(mask[:, 0], lab, torch.zeros_like(lab))
        k = logits.shape[1]
        pred = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, logits.argmax(1, keepdim=True), True)
        tgt = torch.zeros_like(pred).scatter_(1, lab[:, None].clamp(0, k - 1), True)
        fg = slice(1, None)
    if mask is not None:
        pred, tgt = pred & mask, tgt & mask
    tp = (pred & tgt).sum(axes)[fg].float()
    fp = (pred & ~tgt).sum(axes)[fg].float()
    fn = (~pred & tgt).sum(axes)[fg].float()
    return 2 * tp / (2 * tp + fp + fn).clamp_min(1), (tp + fn) > 0


@torch.no_grad()
def hard_foreground_dice(logits: Tensor, target: Tensor, has_regions: bool = False,
                         ignore_label: int | None = None) -> Tensor | None:
    """Mean hard Dice over the foreground classes (or regions) present in ``target``; ``None`` if none is."""
    dice, present = hard_dice_per_class(logits, target, has_regions, ignore_label)
    if not bool(present.any()):
        return None
    return dice[present].mean()


class TeacherReliability(nn.Module):
    """Per-class EMA of each network's hard Dice on labelled crops; the worst class is the weight of what it
    teaches its peer. ``num_classes``: foreground classes (regions); ``None`` gates with the mean over the
    classes present instead (one statistic, for networks whose output size is unknown here)."""

    def __init__(self, num_networks: int = 2, momentum: float = 0.9, num_classes: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.momentum = momentum
        self.per_class = num_classes is not None
        n = num_classes if num_classes is not None else 1
        self.register_buffer("reliability", torch.zeros(num_networks))
        self.register_buffer("class_dice", torch.zeros(num_networks, n))
        self.register_buffer("seen", torch.zeros(num_networks, n))

    @torch.no_grad()
    def update(self, index: int, logits: Tensor, target: Tensor, has_regions: bool = False,
               ignore_label: int | None = None) -> Tensor:
        """Fold network ``index``'s labelled-batch Dice into its reliability; return the new value (a 0-d tensor)."""
        dice, present = hard_dice_per_class(logits.detach(), target, has_regions, ignore_label)
        if not self.per_class:  # one statistic: the mean over the classes present
            mean = dice[present].mean() if bool(present.any()) else dice.new_zeros(())
            dice, present = mean.reshape(1), present.any().reshape(1)
        if dice.numel() != self.class_dice.shape[1]:
            raise ValueError(f"the network predicts {dice.numel()} foreground classes, the reliability gate was "
                             f"built for {self.class_dice.shape[1]}")
        dev = self.class_dice.device
        total, count = (dice * present).to(dev, torch.float32), present.to(dev, torch.float32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # DDP: per class, the mean over the ranks whose batch held it, so every rank gates with the same value
            stats = torch.stack((total, count))
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
            total, count = stats[0], stats[1]
        here = count > 0
        if bool(here.any()):
            d = self.class_dice[index]
            mean = total / count.clamp_min(1)
            d[here] = self.momentum * d[here] + (1 - self.momentum) * mean[here]
            self.seen[index, here] = 1.0
            seen = self.seen[index] > 0
            self.reliability[index] = d[seen].min()
        return self.reliability[index].clone()
