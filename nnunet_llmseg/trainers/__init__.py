"""Our nnU-Net trainers. The shim module that nnU-Net imports re-exports everything in ``__all__``.

Importing this package imports torch and nnunetv2; the start-up hook never does.
"""

from nnunet_llmseg.trainers.llmseg import nnUNetTrainerLLMSeg
from nnunet_llmseg.trainers.schedules import register_schedules
from nnunet_llmseg.trainers.semi_supervised import (
    nnUNetTrainerCoTraining,
    nnUNetTrainerLabelledOnly,
    nnUNetTrainerSemiSupervised,
)
from nnunet_llmseg.trainers.tak import nnUNetTrainerTAK
from nnunet_llmseg.trainers.variants import (
    nnUNetTrainerCoTraining_cleanTeacher,
    nnUNetTrainerCoTraining_intensityView,
    nnUNetTrainerCoTraining_labelledMix,
    nnUNetTrainerCoTraining_noMix,
    nnUNetTrainerCoTraining_organRegion,
    nnUNetTrainerCoTraining_pastedForegroundIgnored,
    nnUNetTrainerLLMSeg_cleanTeacher,
    nnUNetTrainerLLMSeg_labelledMix,
    nnUNetTrainerLLMSeg_noMix,
    nnUNetTrainerLLMSeg_noText,
    nnUNetTrainerLLMSeg_noUSL,
    nnUNetTrainerLLMSeg_organRegion,
    nnUNetTrainerLLMSeg_pastedForegroundIgnored,
    nnUNetTrainerTAK_cleanTeacher,
    nnUNetTrainerTAK_labelledMix,
    nnUNetTrainerTAK_noBalance,
    nnUNetTrainerTAK_noContrast,
    nnUNetTrainerTAK_noText,
    nnUNetTrainerTAK_noUnlabelled,
    nnUNetTrainerTAK_organRegion,
    nnUNetTrainerTAK_pastedForegroundIgnored,
)

_METHOD_TRAINERS = [
    nnUNetTrainerLabelledOnly,
    nnUNetTrainerCoTraining,
    nnUNetTrainerCoTraining_noMix,
    nnUNetTrainerCoTraining_intensityView,
    nnUNetTrainerCoTraining_cleanTeacher,
    nnUNetTrainerCoTraining_labelledMix,
    nnUNetTrainerCoTraining_organRegion,
    nnUNetTrainerCoTraining_pastedForegroundIgnored,
    nnUNetTrainerLLMSeg,
    nnUNetTrainerLLMSeg_noText,
    nnUNetTrainerLLMSeg_noUSL,
    nnUNetTrainerLLMSeg_noMix,
    nnUNetTrainerLLMSeg_cleanTeacher,
    nnUNetTrainerLLMSeg_labelledMix,
    nnUNetTrainerLLMSeg_organRegion,
    nnUNetTrainerLLMSeg_pastedForegroundIgnored,
    nnUNetTrainerTAK,
    nnUNetTrainerTAK_noText,
    nnUNetTrainerTAK_noContrast,
    nnUNetTrainerTAK_noBalance,
    nnUNetTrainerTAK_noUnlabelled,
    nnUNetTrainerTAK_cleanTeacher,
    nnUNetTrainerTAK_labelledMix,
    nnUNetTrainerTAK_organRegion,
    nnUNetTrainerTAK_pastedForegroundIgnored,
]

__all__ = [t.__name__ for t in _METHOD_TRAINERS] + ["nnUNetTrainerSemiSupervised"]
__all__ += register_schedules(_METHOD_TRAINERS, globals())
