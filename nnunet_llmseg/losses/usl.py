"""The Unified Segmentation Loss (USL) of LLM-SegNet.

Kumari et al., "Leveraging Task-Specific Knowledge from LLM for Semi-Supervised 3D Medical Image
Segmentation" (the USL equation of the method section). On unlabelled voxels each co-trained network (the
*student*) is supervised by its peer. With ``p_s = softmax(student)``, ``p_t = softmax(peer)`` (the peer is
detached), ``c_v = max_k p_t[k, v]``, ``y_v = argmax_k p_t[k, v]`` and the confident set
``M = {v : c_v >= tau}``:

    L_USL = 1/N * [ sum_{v in M} c_v * (-log p_s[y_v, v])
                    + sum_{v not in M} 1/K * ||p_s[:, v] - p_t[:, v]||^2 ]

``N`` is the number of voxels considered (all voxels, or those in ``mask``) and ``K`` the number of classes.
The squared distance is divided by ``K`` (i.e. it is the per-class *mean* squared error, as ``F.mse_loss``
computes it and as TraCoCo's softmax-MSE does), so the unconfident term stays in ``[0, 2/K]`` whatever the
label count. Both terms share the denominator ``N``: a voxel contributes to exactly one of them, so the loss
is a plain per-voxel average and its scale does not jump when the confident share changes.

Optional negative learning (off by default; TraCoCo's "negative" branch, Kim et al. ICCV 2019): for every
(class, voxel) pair the peer rules out (``p_t[k, v] < negative_tau``) add ``-log(1 - p_s[k, v])``, averaged
over those pairs and weighted by ``negative_weight``:

    L = L_USL + negative_weight * mean_{(k, v): p_t[k, v] < negative_tau} -log(1 - p_s[k, v])

Region-based datasets (``regions=True``, nnU-Net's sigmoid outputs): the same loss per (region, voxel) pair as a
two-outcome problem, ``c = max(p_t, 1 - p_t)``, ``y = [p_t >= 0.5]``, BCE where confident and ``(p_s - p_t)^2``
where not (``losses/regions.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnunet_llmseg.losses.regions import region_usl


def _voxel_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    """``(B, *spatial)`` bool mask from an optional ``(B, 1, *spatial)`` (or ``(B, *spatial)``) mask."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if mask.dim() == like.dim() + 1:
        if mask.shape[1] != 1:
            raise ValueError(f"mask must have one channel, got shape {tuple(mask.shape)}")
        mask = mask[:, 0]
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the voxels {tuple(like.shape)}")
    return mask.bool()


@torch.no_grad()
def peer_targets(student_logits: Tensor, peer_logits: Tensor, mask: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """What every peer-supervised loss needs from the (detached) peer: ``p_t`` (float32 softmax), its
    confidence ``c`` and hard label ``y`` per voxel, the valid-voxel mask and their count ``N`` (>= 1)."""
    if student_logits.shape != peer_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and peer {tuple(peer_logits.shape)} logits "
            "must have the same shape"
        )
    p_t = torch.softmax(peer_logits.detach().float(), dim=1)
    conf, hard = p_t.max(dim=1)
    valid = _voxel_mask(mask, conf)
    return p_t, conf, hard, valid, valid.sum().clamp_min(1).float()


class UnifiedSegmentationLoss(nn.Module):
    """USL: confidence-weighted NLL where the peer is confident, softmax MSE where it is not.

    ``forward(student_logits, peer_logits, mask=None) -> (loss, stats)``; logits are ``(B, K, *spatial)``
    (2D or 3D). No gradient reaches the peer. ``stats`` holds detached scalars: ``confident_fraction``
    (share of the considered voxels in ``M``), ``nll`` and ``mse`` (the two terms, each already divided by
    ``N``, so ``nll + mse + negative_weight * negative == loss``) and ``negative`` (0 when negative learning
    is off).
    """

    def __init__(
        self,
        tau: float = 0.65,
        negative_learning: bool = False,
        negative_tau: float = 0.05,
        negative_weight: float = 1.0,
        regions: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"USL tau must lie in [0, 1], got {tau}")
        self.tau = tau
        self.negative_learning = negative_learning
        self.negative_tau = negative_tau
        self.negative_weight = negative_weight
        #: sigmoid regions (per-region Bernoulli) instead of softmax classes
        self.regions = regions

    def forward(
        self, student_logits: Tensor, peer_logits: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, dict]:
        if self.regions:
            return region_usl(student_logits, peer_logits, mask, self.tau, self.negative_learning,
                              self.negative_tau, self.negative_weight)
        p_t, conf, hard, valid, n = peer_targets(student_logits, peer_logits, mask)
        confident = (conf >= self.tau) & valid
        unconfident = valid & ~confident
        k = student_logits.shape[1]
        # float32 whatever the autocast state: log-softmax of fp16 logits loses the small probabilities
        log_p_s = F.log_softmax(student_logits.float(), dim=1)
        p_s = log_p_s.exp()
        zero = log_p_s.new_zeros(())
        nll = -log_p_s.gather(1, hard[:, None])[:, 0]
        # where (not multiply) so that a -inf log-probability outside the set cannot turn into NaN
        nll_term = torch.where(confident, conf * nll, zero).sum() / n
        mse = ((p_s - p_t) ** 2).sum(dim=1) / k
        mse_term = torch.where(unconfident, mse, zero).sum() / n
        loss = nll_term + mse_term
        neg_term = zero
        if self.negative_learning:
            ruled_out = (p_t < self.negative_tau) & valid[:, None]
            neg = -torch.log1p(-p_s.clamp(max=1.0 - 1e-6))
            neg_term = torch.where(ruled_out, neg, zero).sum() / ruled_out.sum().clamp_min(1)
            loss = loss + self.negative_weight * neg_term
        stats = {
            "confident_fraction": (confident.sum().float() / n).detach(),
            "nll": nll_term.detach(),
            "mse": mse_term.detach(),
            "negative": neg_term.detach(),
        }
        return loss, stats
