"""Ablation variants: each changes one thing of its parent, so the difference reads at a glance."""

from __future__ import annotations

from torch import nn

from nnunet_llmseg.losses.cps import CrossPseudoSupervisionLoss
from nnunet_llmseg.trainers.llmseg import nnUNetTrainerLLMSeg
from nnunet_llmseg.trainers.tak import nnUNetTrainerTAK


class nnUNetTrainerLLMSeg_noText(nnUNetTrainerLLMSeg):
    """LLM-SegNet without the text-fusion block (co-training + USL only); needs no priors."""

    use_text = False


class nnUNetTrainerLLMSeg_noUSL(nnUNetTrainerLLMSeg):
    """LLM-SegNet with plain cross pseudo-supervision instead of the Unified Segmentation Loss."""

    def _build_unsupervised_loss(self) -> nn.Module:
        return CrossPseudoSupervisionLoss(regions=self.label_manager.has_regions)


class nnUNetTrainerTAK_noText(nnUNetTrainerTAK):
    """TAK with nnU-Net's plain segmentation head (no text-driven parameters, no text anchors); needs no priors."""

    use_text = False


class nnUNetTrainerTAK_noContrast(nnUNetTrainerTAK):
    """TAK without the contrastive alignment of voxel features and text embeddings."""

    use_contrast = False


class nnUNetTrainerTAK_noBalance(nnUNetTrainerTAK):
    """TAK without class-imbalance-aware losses (plain Dice+CE and cross pseudo-supervision)."""

    class_balance = "none"
