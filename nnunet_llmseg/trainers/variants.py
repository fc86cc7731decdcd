"""Ablation variants: each changes one thing of its parent, so the difference reads at a glance."""

from __future__ import annotations

import torch
from torch import nn

from nnunet_llmseg.losses.cps import CrossPseudoSupervisionLoss
from nnunet_llmseg.trainers.llmseg import nnUNetTrainerLLMSeg
from nnunet_llmseg.trainers.semi_supervised import nnUNetTrainerCoTraining
from nnunet_llmseg.trainers.tak import nnUNetTrainerTAK


class nnUNetTrainerCoTraining_noMix(nnUNetTrainerCoTraining):
    """Plain co-training without CutMix: both networks see the plain unlabelled crops (nnU-Net's augmentation
    only), each taught by its peer's output on them. Isolates what the mixing does: on ACDC (3 labelled patients)
    it lost all of co-training's gain (docs/methods.md, "Co-training engine")."""

    mixed_view = "none"


class nnUNetTrainerCoTraining_intensityView(nnUNetTrainerCoTraining):
    """Plain co-training with a strong intensity view in place of CutMix: the students see the crops with their
    intensities perturbed (nothing moved or cut, ``data/intensity.py``), the teachers the plain crops. Asks whether
    the gain CutMix gives needs its boxes, which also break the anatomy's context (docs/methods.md)."""

    mixed_view = "intensity"


class nnUNetTrainerCoTraining_cleanTeacher(nnUNetTrainerCoTraining):
    """Plain co-training whose teachers' predictions lose each class's stray components before they teach
    (``losses/teacher_cleaning.py``): asks whether the far false foreground co-training adds at 7 labelled ACDC
    patients is passed between the peers, and whether stopping that keeps the gain (docs/methods.md)."""

    clean_teacher_strays = True


class nnUNetTrainerCoTraining_labelledMix(nnUNetTrainerCoTraining):
    """Plain co-training whose students mix each unlabelled crop with a labelled one, both ways, the ground truth
    teaching the labelled part (``mixed_view = "labelled"``; Bai et al.'s bidirectional copy-paste, CVPR 2023):
    asks whether anchoring the mixed view in labelled content closes more of the 7-patient ACDC gap."""

    mixed_view = "labelled"


class nnUNetTrainerCoTraining_organRegion(nnUNetTrainerCoTraining):
    """Plain co-training with organ-region teachers: teacher foreground farther than 10 mm from the largest component
    of both networks' prediction of the whole unlabelled volume is taught as background (``teacher_region_margin_mm``,
    ``losses/teacher_cleaning.py``). The per-crop ``_cleanTeacher`` rule reaches a fifth of the false foreground that
    the whole-volume rule removes (``benchmarks/crop_cleaning_reach.py``); this one reaches it all."""

    teacher_region_margin_mm = 10.0


class nnUNetTrainerCoTraining_pastedForegroundIgnored(nnUNetTrainerCoTraining):
    """Plain co-training whose students are not taught the foreground pasted into their crops by CutMix
    (``ignore_pasted_foreground``): background inside the boxes and everything outside them still teaches. Asks
    whether the co-trained networks' own far false foreground comes from labelling structures cut from their
    surroundings (docs/methods.md)."""

    ignore_pasted_foreground = True


class nnUNetTrainerLLMSeg_noText(nnUNetTrainerLLMSeg):
    """LLM-SegNet without the text-fusion block (co-training + USL only); needs no priors."""

    use_text = False


class nnUNetTrainerLLMSeg_noMix(nnUNetTrainerLLMSeg):
    """LLM-SegNet without CutMix: both networks see the plain unlabelled crops (see ``CoTraining_noMix``)."""

    mixed_view = "none"


class nnUNetTrainerLLMSeg_cleanTeacher(nnUNetTrainerLLMSeg):
    """LLM-SegNet whose teachers lose their stray components before they teach (see ``CoTraining_cleanTeacher``)."""

    clean_teacher_strays = True


class nnUNetTrainerLLMSeg_labelledMix(nnUNetTrainerLLMSeg):
    """LLM-SegNet with labelled partners in the mixed view (see ``CoTraining_labelledMix``)."""

    mixed_view = "labelled"


class nnUNetTrainerLLMSeg_organRegion(nnUNetTrainerLLMSeg):
    """LLM-SegNet with organ-region teachers (see ``CoTraining_organRegion``)."""

    teacher_region_margin_mm = 10.0


class nnUNetTrainerLLMSeg_pastedForegroundIgnored(nnUNetTrainerLLMSeg):
    """LLM-SegNet without teaching of pasted foreground (see ``CoTraining_pastedForegroundIgnored``)."""

    ignore_pasted_foreground = True


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


class nnUNetTrainerTAK_cleanTeacher(nnUNetTrainerTAK):
    """TAK whose teachers lose their stray components before they teach (see ``CoTraining_cleanTeacher``): TAK adds
    the most far false foreground of the 7-patient ACDC runs (docs/methods.md, error split)."""

    clean_teacher_strays = True


class nnUNetTrainerTAK_labelledMix(nnUNetTrainerTAK):
    """TAK with labelled partners in the mixed view (see ``CoTraining_labelledMix``)."""

    mixed_view = "labelled"


class nnUNetTrainerTAK_organRegion(nnUNetTrainerTAK):
    """TAK with organ-region teachers (see ``CoTraining_organRegion``)."""

    teacher_region_margin_mm = 10.0


class nnUNetTrainerTAK_pastedForegroundIgnored(nnUNetTrainerTAK):
    """TAK without pseudo-labels on pasted foreground (see ``CoTraining_pastedForegroundIgnored``; the contrast's
    voxel labels are unchanged)."""

    ignore_pasted_foreground = True


class nnUNetTrainerTAK_noBalance(nnUNetTrainerTAK):
    """TAK without class-imbalance-aware losses (plain Dice+CE and cross pseudo-supervision)."""

    class_balance = "none"


class nnUNetTrainerTAK_noUnlabelled(nnUNetTrainerTAK):
    """TAK with every unlabelled voxel ignored: the control for "do the unlabelled images pay?".

    Everything TAK does on labelled data stays - two networks (predicted as an ensemble), the text-driven head,
    the class-balanced loss, the contrast among labelled voxels - but no unlabelled voxel gets a pseudo-label, so
    neither the cross pseudo-supervision nor the contrast sees one. The unlabelled batch still passes through
    the networks (instance norm: it changes nothing), so schedule, data and cost are TAK's own.
    """

    def _confident_labels(self, prob: torch.Tensor) -> torch.Tensor:
        return super()._confident_labels(prob).fill_(-1)

    def _reliable_labels(self, prob: torch.Tensor, threshold: float) -> torch.Tensor:
        return super()._reliable_labels(prob, threshold).fill_(-1)
