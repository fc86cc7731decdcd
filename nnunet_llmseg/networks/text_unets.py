"""Text-guided wrappers around the U-Net that nnU-Net planned, and the twin wrapper used for co-training.

nnU-Net builds ``PlainConvUNet`` or ``ResidualEncoderUNet`` from the plans; both expose ``encoder`` (returning the
skips, bottleneck last) and ``decoder`` (``UNetDecoder`` with ``transpconvs``, ``stages``, ``seg_layers`` and a
``deep_supervision`` flag). We wrap that network instead of re-implementing it, so every planned architecture
keeps working:

- :class:`TextFusedUNet` (LLM-SegNet): the bottleneck skip goes through :class:`TextFusionBlock` before decoding.
- :class:`TextDrivenUNet` (TAK): the full-resolution segmentation layer is replaced by the text-driven dynamic
  head; the auxiliary (deep-supervision) scales keep nnU-Net's plain 1x1 heads.
- :class:`TwinNetwork`: the two co-trained networks in one module, so that a checkpoint holds both, DDP and
  ``torch.compile`` see one module, and ``nnUNetv2_predict`` averages both softmax maps (or uses one network).

Text embeddings are persistent buffers (filled by the trainer from the priors; restored from the checkpoint at
inference), so inference needs neither an LLM nor a text encoder.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from nnunet_llmseg.losses.teacher_reliability import TeacherReliability
from nnunet_llmseg.networks.dynamic_head import TextDrivenDynamicHead
from nnunet_llmseg.networks.text_fusion import TextFusionBlock

#: Environment switch read when the network is built for inference: ``both`` (default) averages the two
#: co-trained networks' softmax maps; ``a`` or ``b`` predicts with one network only (half the compute).
PREDICT_NETWORKS_ENV = "NNUNET_LLMSEG_PREDICT_NETWORKS"


def _decode(decoder: nn.Module, skips: list[torch.Tensor], final_head=None) -> tuple[object, list[torch.Tensor]]:
    """Run nnU-Net's ``UNetDecoder`` stage by stage, also returning the decoder features of every stage.

    Mirrors ``UNetDecoder.forward`` (same modules, same order) so weights and outputs are identical; the only
    additions are (a) the per-stage features are returned for contrastive learning and (b) an optional
    ``final_head(features) -> logits`` replaces the last plain segmentation layer.
    """
    lres = skips[-1]
    seg_outputs = []
    features = []
    n = len(decoder.stages)
    for s in range(n):
        x = decoder.transpconvs[s](lres)
        x = torch.cat((x, skips[-(s + 2)]), 1)
        x = decoder.stages[s](x)
        features.append(x)
        last = s == n - 1
        if last and final_head is not None:
            seg_outputs.append(final_head(x))
        elif decoder.deep_supervision or last:
            seg_outputs.append(decoder.seg_layers[s](x))
        lres = x
    seg_outputs = seg_outputs[::-1]
    out = seg_outputs if decoder.deep_supervision else seg_outputs[0]
    return out, features[::-1]  # features: full resolution first, like the outputs


class TextFusedUNet(nn.Module):
    """A plan-built U-Net whose bottleneck is fused with the dataset's LLM descriptor embeddings (LLM-SegNet)."""

    def __init__(self, unet: nn.Module, num_texts: int, text_dim: int, use_text: bool = True) -> None:
        super().__init__()
        self.unet = unet
        self.use_text = use_text
        bottleneck_channels = unet.encoder.output_channels[-1]
        self.register_buffer("text_embeddings", torch.zeros(num_texts, text_dim), persistent=True)
        self.fusion = TextFusionBlock(text_dim, bottleneck_channels, conv_op=unet.encoder.conv_op) \
            if use_text else None

    @property
    def decoder(self) -> nn.Module:
        """nnU-Net toggles ``network.decoder.deep_supervision``; expose the wrapped decoder for that."""
        return self.unet.decoder

    def forward_with_features(self, x: torch.Tensor) -> tuple[object, list[torch.Tensor]]:
        skips = list(self.unet.encoder(x))
        if self.fusion is not None:
            skips[-1] = self.fusion(skips[-1], self.text_embeddings)
        return _decode(self.unet.decoder, skips)

    def forward(self, x: torch.Tensor):
        skips = list(self.unet.encoder(x))
        if self.fusion is not None:
            skips[-1] = self.fusion(skips[-1], self.text_embeddings)
        return self.unet.decoder(skips)

    def gate_value(self) -> float:
        return self.fusion.gate_value() if self.fusion is not None else 0.0

    def text_share(self) -> float:
        return self.fusion.text_share() if self.fusion is not None else 0.0


class TextDrivenUNet(nn.Module):
    """A plan-built U-Net whose full-resolution head is generated from class text embeddings (TAK).

    The controller input is the concatenation of global-average-pooled features of the last ``n_global_stages``
    encoder stages (the bottleneck and the stage above it by default), i.e. "a global image feature pooled from
    encoder stages". The class text of head ``k`` is ``[shape_k, location_k]`` (concatenated embeddings).
    With ``use_text=False`` the wrapper keeps nnU-Net's plain head (the ``_noText`` ablation) but still returns
    decoder features, so the rest of the TAK pipeline is unchanged.
    """

    def __init__(self, unet: nn.Module, num_heads: int, text_dim: int, use_text: bool = True,
                 n_global_stages: int = 2, hidden_channels: int = 8, contrast_dim: int = 0,
                 contrast_scales: int = 2) -> None:
        super().__init__()
        self.unet = unet
        self.use_text = use_text
        enc_channels = list(unet.encoder.output_channels)
        self.n_global_stages = min(n_global_stages, len(enc_channels))
        global_channels = sum(enc_channels[-self.n_global_stages:])
        # two texts per head: shape and location embeddings, concatenated
        self.register_buffer("text_embeddings", torch.zeros(num_heads, 2 * text_dim), persistent=True)
        self.head = TextDrivenDynamicHead(
            # the last decoder stage has the first encoder stage's width
            in_channels=enc_channels[0], text_dim=2 * text_dim, num_classes=num_heads,
            global_channels=global_channels, hidden_channels=hidden_channels,
            conv_dims=len(unet.encoder.strides[0]),
        ) if use_text else None
        # contrastive alignment (training only): voxel features of the finest decoder scales and the class texts
        # are projected into one space; applied to sampled voxels only, so they cost next to nothing
        self.contrast_scales = min(contrast_scales, len(enc_channels) - 1) if contrast_dim > 0 else 0
        self.voxel_proj = nn.ModuleList(
            nn.Sequential(nn.Linear(c, contrast_dim), nn.ReLU(inplace=True), nn.Linear(contrast_dim, contrast_dim))
            for c in enc_channels[:self.contrast_scales])
        self.text_proj = nn.Linear(2 * text_dim, contrast_dim) if (contrast_dim > 0 and use_text) else None

    @property
    def decoder(self) -> nn.Module:
        return self.unet.decoder

    def _global_feature(self, skips: list[torch.Tensor]) -> torch.Tensor:
        pooled = [s.flatten(2).mean(-1) for s in skips[-self.n_global_stages:]]
        return torch.cat(pooled, dim=1)

    def forward_with_features(self, x: torch.Tensor) -> tuple[object, list[torch.Tensor]]:
        skips = list(self.unet.encoder(x))
        if self.head is None:
            return _decode(self.unet.decoder, skips)
        g = self._global_feature(skips)
        return _decode(self.unet.decoder, skips,
                       final_head=lambda feats: self.head(feats, g, self.text_embeddings))

    def forward(self, x: torch.Tensor):
        return self.forward_with_features(x)[0]

    def class_text(self) -> torch.Tensor:
        return self.text_embeddings


class TwinNetwork(nn.Module):
    """The two co-trained networks as one module.

    Training: ``forward(x_a, x_b)`` runs both networks (one call, so DDP synchronises both) and returns
    ``(out_a, out_b)``; with ``return_features=True`` each output is ``(logits, decoder_features)``.
    Inference (``forward(x)``): returns ``log(mean softmax)`` of the selected networks, which nnU-Net's
    softmax turns back into the averaged probabilities exactly (argmax and exported probabilities both right).
    For region-based (sigmoid) outputs the averaged sigmoid is returned as logits via ``logit``.
    """

    def __init__(self, net_a: nn.Module, net_b: nn.Module, predict_networks: str = "both",
                 has_regions: bool = False, training_state: nn.Module | None = None,
                 num_outputs: int | None = None) -> None:
        super().__init__()
        #: small training-only state that must survive a resume (e.g. TAK's class-weight statistics); kept here
        #: so nnU-Net's checkpointing, DDP buffer sync and strict loading handle it like any other buffer
        self.training_state = training_state
        #: each network's reliability as a teacher (per-class EMA of its labelled-batch Dice, the worst class
        #: counts), checkpointed with the weights; ``num_outputs``: the networks' output channels
        fg = None if num_outputs is None else (num_outputs if has_regions else num_outputs - 1)
        self.teacher_reliability = TeacherReliability(2, num_classes=fg)
        if predict_networks not in ("both", "a", "b"):
            raise ValueError(f"{PREDICT_NETWORKS_ENV} must be 'both', 'a' or 'b', got {predict_networks!r}")
        self.net_a = net_a
        self.net_b = net_b
        self.predict_networks = predict_networks
        self.has_regions = has_regions
        if predict_networks != "both":  # say so: the user chose half the inference cost
            print(f"nnunet-llmseg: {PREDICT_NETWORKS_ENV}={predict_networks}: predictions use network "
                  f"{predict_networks} only")

    @property
    def decoder(self) -> nn.Module:  # pragma: no cover - use set_deep_supervision
        return self.net_a.decoder

    def set_deep_supervision(self, enabled: bool) -> None:
        self.net_a.decoder.deep_supervision = enabled
        self.net_b.decoder.deep_supervision = enabled

    def forward(self, x: torch.Tensor, x_b: torch.Tensor | None = None, return_features: bool = False):
        if x_b is not None:
            if return_features:
                return self.net_a.forward_with_features(x), self.net_b.forward_with_features(x_b)
            return self.net_a(x), self.net_b(x_b)
        if self.predict_networks == "a":
            return self.net_a(x)
        if self.predict_networks == "b":
            return self.net_b(x)
        return self.ensemble(self.net_a(x), self.net_b(x))

    def ensemble(self, logits_a, logits_b):
        if isinstance(logits_a, (list, tuple)):  # deep supervision left on: ensemble every scale
            return [self.ensemble(a, b) for a, b in zip(logits_a, logits_b)]
        if self.has_regions:
            p = 0.5 * (torch.sigmoid(logits_a.float()) + torch.sigmoid(logits_b.float()))
            return torch.logit(p.clamp(1e-6, 1 - 1e-6))
        p = 0.5 * (torch.softmax(logits_a.float(), 1) + torch.softmax(logits_b.float(), 1))
        return torch.log(p.clamp_min(1e-12))


def predict_networks_from_env() -> str:
    return os.environ.get(PREDICT_NETWORKS_ENV, "both").strip().lower() or "both"
