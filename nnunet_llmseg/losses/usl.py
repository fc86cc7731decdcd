"""The Unified Segmentation Loss (USL) of LLM-SegNet.

Kumari et al., "Leveraging Task-Specific Knowledge from LLM for Semi-Supervised 3D Medical Image Segmentation",
Sec. 3 (USL): on unlabelled voxels the student is supervised by its peer; where the peer is confident
(``c_v = max_k p_t[k, v] >= tau``) by the confidence-weighted negative log-likelihood of the peer's hard label,
elsewhere by the mean squared error between the two softmax maps:

    L_USL = 1/N [ sum_{v: c_v >= tau} c_v * (-log p_s[y_v, v]) + sum_{v: c_v < tau} 1/K ||p_s[:, v] - p_t[:, v]||^2 ]

with ``y_v = argmax_k p_t[k, v]``, ``N`` the voxels considered and ``K`` the classes. The nearest public relative
is TraCoCo's confident-region loss (Liu et al. 2022). Optional negative learning (off by default): for classes
the peer is confident are absent (``p_t[k, v] < negative_tau``) add ``-log(1 - p_s[k, v])`` averaged over those
(class, voxel) pairs, weighted by ``negative_weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class UnifiedSegmentationLoss(nn.Module):
    """USL: confidence-weighted NLL where the peer is confident, MSE of softmax maps where it is not."""

    def __init__(self, tau: float = 0.65, negative_learning: bool = False, negative_tau: float = 0.05,
                 negative_weight: float = 1.0) -> None:
        super().__init__()
        self.tau = tau
        self.negative_learning = negative_learning
        self.negative_tau = negative_tau
        self.negative_weight = negative_weight

    def forward(self, student_logits: Tensor, peer_logits: Tensor, mask: Tensor | None = None) -> tuple[Tensor, dict]:
        log_p_s = F.log_softmax(student_logits.float(), dim=1)
        p_s = log_p_s.exp()
        with torch.no_grad():
            p_t = torch.softmax(peer_logits.detach().float(), dim=1)
            conf, hard = p_t.max(dim=1)  # (B, *spatial)
            valid = torch.ones_like(conf, dtype=torch.bool) if mask is None else mask[:, 0].bool()
            confident = (conf >= self.tau) & valid
            unconfident = (~confident) & valid
            n = valid.sum().clamp_min(1).float()
        k = student_logits.shape[1]
        nll = -log_p_s.gather(1, hard[:, None])[:, 0]  # (B, *spatial)
        nll_term = (conf * nll * confident).sum() / n
        mse = ((p_s - p_t) ** 2).sum(1) / k
        mse_term = (mse * unconfident).sum() / n
        loss = nll_term + mse_term
        neg_term = loss.new_zeros(())
        if self.negative_learning:
            absent = (p_t < self.negative_tau) & valid[:, None]
            neg = -torch.log((1 - p_s).clamp_min(1e-6))
            neg_term = (neg * absent).sum() / absent.sum().clamp_min(1)
            loss = loss + self.negative_weight * neg_term
        stats = {"confident_fraction": (confident.sum().float() / n).detach(), "nll": nll_term.detach(),
                 "mse": mse_term.detach(), "negative": neg_term.detach()}
        return loss, stats
