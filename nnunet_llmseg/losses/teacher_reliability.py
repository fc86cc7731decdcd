"""How far each co-trained network can be trusted as a teacher: the reliability gate of the unsupervised loss.

Co-training under class imbalance has a failure mode that both methods hit on short schedules (issue 11,
docs/methods.md "Co-training engine"): early in training both networks predict background almost everywhere,
confidently. Their pseudo-labels are then all background, the unsupervised loss - computed on every unlabelled
voxel, many more than the labelled foreground voxels - teaches background with full weight once the ramp-up
ends, and the pair locks into predicting nothing (LLM-SegNet: pseudo-Dice 0.00 for 200 iterations with 99 %
"confident" voxels; TAK lost its rarer class). A fixed ramp-up cannot know when the teachers have become
worth listening to; the labelled part of every batch can tell.

Each network's reliability ``r`` is an exponential moving average (momentum ``m``) of its hard foreground Dice
on the labelled part of the batch (the same quantity as nnU-Net's pseudo-Dice, on training crops):

    D_t = mean_{k in F_t} 2 TP_k / (2 TP_k + FP_k + FN_k)     F_t: foreground classes present in the batch
    r_t = m r_(t-1) + (1 - m) D_t

and the unsupervised loss of the student taught by network ``T`` is multiplied by ``r_T`` (on top of the usual
ramp-up). A teacher that segments nothing teaches nothing; as it learns the labelled data its pseudo-labels
count more. Batches without foreground leave ``r`` unchanged. Region-based outputs (sigmoid) use
``sigmoid > 0.5`` per region; voxels of nnU-Net's ``ignore`` label are left out.

The statistics are buffers of the twin network, so nnU-Net's checkpoint (and a resume) carries them. Under DDP
each step's Dice is averaged over the ranks before it is folded in, so all ranks hold the same reliabilities.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


@torch.no_grad()
def hard_foreground_dice(logits: Tensor, target: Tensor, has_regions: bool = False,
                         ignore_label: int | None = None) -> Tensor | None:
    """Mean hard Dice over the foreground classes (or regions) present in ``target``; ``None`` if none is.

    ``logits``: ``(B, K, *spatial)``; ``target``: nnU-Net's ``(B, 1, *spatial)`` label map, or ``(B, R, ...)``
    region masks (plus a last ignore channel when the dataset has an ignore label) for region-based training.
    Counts are summed over the batch (nnU-Net's batch Dice).
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
    present = (tp + fn) > 0
    if not bool(present.any()):
        return None
    return (2 * tp / (2 * tp + fp + fn).clamp_min(1))[present].mean()


class TeacherReliability(nn.Module):
    """EMA of each network's hard foreground Dice on labelled crops: the weight of what it teaches its peer."""

    def __init__(self, num_networks: int = 2, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("reliability", torch.zeros(num_networks))

    @torch.no_grad()
    def update(self, index: int, logits: Tensor, target: Tensor, has_regions: bool = False,
               ignore_label: int | None = None) -> Tensor:
        """Fold network ``index``'s labelled-batch Dice into its reliability; return the new value (a 0-d tensor)."""
        dice = hard_foreground_dice(logits.detach(), target, has_regions, ignore_label)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # DDP: the mean over the ranks that saw foreground, so every rank gates with the same value
            stats = torch.stack((dice.float() if dice is not None else torch.zeros(()),
                                 torch.ones(()) if dice is not None else torch.zeros(()))).to(self.reliability.device)
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
            dice = stats[0] / stats[1] if float(stats[1]) > 0 else None
        if dice is not None:
            r = self.reliability[index]
            self.reliability[index] = self.momentum * r + (1 - self.momentum) * dice.to(r.device, r.dtype)
        return self.reliability[index].clone()
