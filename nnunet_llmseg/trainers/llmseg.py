"""LLM-SegNet as an nnU-Net trainer: co-training with text-fused bottlenecks and the Unified Segmentation Loss.

On top of :class:`nnUNetTrainerCoTraining` this trainer changes two things, one method each:
``build_network_architecture`` (each network gets a text-fusion block at the encoder bottleneck, fed with the
CLIP embeddings of the LLM's descriptors) and ``_build_unsupervised_loss`` (USL instead of plain cross
pseudo-supervision). See README "LLM-SegNet" for the equations and every choice made.
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_llmseg.losses.usl import UnifiedSegmentationLoss
from nnunet_llmseg.networks.text_unets import TextFusedUNet, TwinNetwork, predict_networks_from_env
from nnunet_llmseg.trainers.semi_supervised import nnUNetTrainerCoTraining, twin_has_regions, unwrap
from nnunet_llmseg.trainers.text_priors import text_spec_from_plans


class nnUNetTrainerLLMSeg(nnUNetTrainerCoTraining):
    """LLM-SegNet (Kumari et al.): text-fused bottlenecks + USL on the co-trained pair."""

    #: USL confidence threshold (TraCoCo's confident-region threshold)
    usl_tau: float = 0.65
    #: add USL's negative-learning term for classes the peer is confident are absent
    usl_negative_learning: bool = False
    #: fuse the LLM descriptors at the bottleneck (False: the ``_noText`` ablation)
    use_text: bool = True
    text_keys: tuple[str, ...] = ("llmseg",)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        spec = text_spec_from_plans(plans_manager) if cls.use_text else {"num_heads": 1, "text_dim": 1}

        def one() -> nn.Module:
            unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager,
                                                            num_input_channels, num_output_channels,
                                                            enable_deep_supervision)
            return TextFusedUNet(unet, spec["num_heads"], spec["text_dim"], use_text=cls.use_text)

        return TwinNetwork(one(), one(), predict_networks_from_env(), has_regions=twin_has_regions(plans_manager),
                           num_outputs=num_output_channels)

    def _build_unsupervised_loss(self) -> nn.Module:
        return UnifiedSegmentationLoss(tau=self.usl_tau, negative_learning=self.usl_negative_learning,
                                       regions=self.label_manager.has_regions)

    def gate_value(self) -> float:
        twin = unwrap(self.network)
        return 0.5 * (twin.net_a.gate_value() + twin.net_b.gate_value())

    def text_share(self) -> float:
        twin = unwrap(self.network)
        return 0.5 * (twin.net_a.text_share() + twin.net_b.text_share())
