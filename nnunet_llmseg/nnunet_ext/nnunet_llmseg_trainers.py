"""The one module nnU-Net's ``nnUNet_extTrainer`` lookup imports.

nnU-Net adds this folder to ``sys.path``, imports every module in it and looks for the ``-tr`` class by name.
The module name is deliberately unique so it cannot shadow anything else on ``sys.path``. All it does is
re-export our trainers from their real home in ``nnunet_llmseg.trainers``.
"""

from nnunet_llmseg.trainers import *  # noqa: F403
from nnunet_llmseg.trainers import __all__  # noqa: F401
