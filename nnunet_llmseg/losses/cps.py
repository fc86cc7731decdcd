"""Cross pseudo-supervision (Chen et al., "Semi-Supervised Semantic Segmentation with Cross Pseudo
Supervision", CVPR 2021, Eq. 3): cross-entropy of the student against the peer's one-hot (argmax) prediction,

    L_cps = 1/N * sum_v -log p_s[y_v, v],   y_v = argmax_k p_t[k, v],

over all voxels (or those in ``mask``). Used by the ``_noUSL`` ablation and the plain co-training trainer.
It logs the same ``confident_fraction`` as USL (share of voxels whose peer max-probability is >= 0.65) so
the two runs' logs compare directly. ``regions=True`` (sigmoid outputs): BCE against ``[p_t >= 0.5]`` per
(region, voxel) (``losses/regions.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnunet_llmseg.losses.regions import region_cps
from nnunet_llmseg.losses.usl import peer_targets


class CrossPseudoSupervisionLoss(nn.Module):
    """Plain CE against the peer's hard labels; ``forward(...) -> (loss, {"confident_fraction", "ce"})``."""

    def __init__(self, log_tau: float = 0.65, regions: bool = False) -> None:
        super().__init__()
        self.log_tau = log_tau
        self.regions = regions

    def forward(
        self, student_logits: Tensor, peer_logits: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, dict]:
        if self.regions:
            return region_cps(student_logits, peer_logits, mask, self.log_tau)
        _, conf, hard, valid, n = peer_targets(student_logits, peer_logits, mask)
        ce = F.cross_entropy(student_logits.float(), hard, reduction="none")
        loss = torch.where(valid, ce, ce.new_zeros(())).sum() / n
        stats = {
            "confident_fraction": (((conf >= self.log_tau) & valid).sum().float() / n).detach(),
            "ce": loss.detach(),
        }
        return loss, stats
