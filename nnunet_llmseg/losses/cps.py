"""Cross pseudo-supervision (Chen et al., "Semi-Supervised Semantic Segmentation with Cross Pseudo
Supervision", CVPR 2021, Eq. 3): cross-entropy of the student against the peer's one-hot (argmax) prediction.
Used by the ``_noUSL`` ablation and the plain co-training trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CrossPseudoSupervisionLoss(nn.Module):
    """Plain CE against the peer's hard labels; logs the same confident share as USL for comparability."""

    def __init__(self, log_tau: float = 0.65) -> None:
        super().__init__()
        self.log_tau = log_tau

    def forward(self, student_logits: Tensor, peer_logits: Tensor, mask: Tensor | None = None) -> tuple[Tensor, dict]:
        with torch.no_grad():
            p_t = torch.softmax(peer_logits.detach().float(), dim=1)
            conf, hard = p_t.max(dim=1)
            valid = torch.ones_like(conf, dtype=torch.bool) if mask is None else mask[:, 0].bool()
            n = valid.sum().clamp_min(1).float()
        ce = F.cross_entropy(student_logits.float(), hard, reduction="none")
        loss = (ce * valid).sum() / n
        return loss, {"confident_fraction": (((conf >= self.log_tau) & valid).sum().float() / n).detach()}
