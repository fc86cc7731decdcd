"""nnunet-llmseg: semi-supervised nnU-Net v2 trainers guided by LLM-written anatomical knowledge.

This top-level module is imported at every interpreter start-up by our ``.pth`` hook, so it must stay
free of heavy imports (no torch, no nnunetv2). Import the trainers from ``nnunet_llmseg.trainers``.
"""

__version__ = "0.1.0"
