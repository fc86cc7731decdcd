"""TAK's text-driven segmentation head (dynamic convolution, as in the CLIP-Driven Universal Model).

For sample ``b`` and class ``k`` (``L`` layers, hidden width ``H``):

    e_k       = MLP(text_k)                            class embedding from the class's text     (E,)
    theta_bk  = W_c [g_b, e_k] + b_c                   controller: all head parameters    (n_params,)
    h^0       = F_b                                    decoder features             (F, *spatial)
    h^l       = ReLU(W^l_bk h^(l-1) + b^l_bk), l < L   1x1(x1) convolutions, widths F -> H -> ... -> H
    logit_bk  = W^L_bk h^(L-1) + b^L_bk                last layer has one output channel

``g_b`` is a global image feature (the caller pools encoder stages), ``text_k`` the class's text embedding
(TAK: shape and location embeddings concatenated by the caller). ``theta_bk`` is split in layer order into
each layer's weight (out x in, row-major) and bias. All ``B x K`` heads run at once: one batched matmul per layer, no
Python loop over samples or classes.

Initialisation: the controller's bias holds one Kaiming-initialised "base" head and its weight is small, so
at the start every (b, k) head is the base head plus a small, input-dependent perturbation. A
default-initialised controller makes each generated layer's scale depend on ``|g|`` and ``|e|``, and a
near-zero one makes the logit a product of ``L`` near-zero layers whose gradients vanish; the base head gives
a well-scaled output and O(1) gradients from the first step, and the per-class heads diverge through the
controller weight (the class embeddings differ, and so do the classes' targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TextDrivenDynamicHead(nn.Module):
    """TAK / CLIP-Driven Universal Model: per-class text + global image feature -> parameters of a small
    per-class conv head (1x1x1 convs, layer widths ``in -> hidden -> ... -> 1``), applied to decoder
    features."""

    def __init__(
        self,
        in_channels: int,
        text_dim: int,
        num_classes: int,
        global_channels: int,
        hidden_channels: int = 8,
        num_layers: int = 3,
        class_embed_dim: int = 256,
        conv_dims: int = 3,
        perturbation_std: float = 0.1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if conv_dims not in (1, 2, 3):
            raise ValueError(f"conv_dims must be 1, 2 or 3, got {conv_dims}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.conv_dims = conv_dims
        widths = [in_channels] + [hidden_channels] * (num_layers - 1) + [1]
        self.layer_shapes = [(widths[i + 1], widths[i]) for i in range(num_layers)]  # (out, in)
        self.n_params = sum(o * i + o for o, i in self.layer_shapes)
        self.class_embed = nn.Sequential(
            nn.Linear(text_dim, class_embed_dim),
            nn.ReLU(inplace=True),
            nn.Linear(class_embed_dim, class_embed_dim),
        )
        self.controller = nn.Linear(global_channels + class_embed_dim, self.n_params)
        self._init_controller(perturbation_std)

    @torch.no_grad()
    def _init_controller(self, perturbation_std: float) -> None:
        fan_in = self.controller.in_features
        nn.init.normal_(self.controller.weight, std=perturbation_std / math.sqrt(fan_in))
        base = []
        for out_c, in_c in self.layer_shapes:
            base.append(torch.randn(out_c * in_c) * math.sqrt(2.0 / in_c))  # Kaiming (ReLU) for a 1x1 conv
            base.append(torch.zeros(out_c))
        self.controller.bias.copy_(torch.cat(base))

    def generate_params(self, global_feature: Tensor, class_text: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per layer: weights ``(B, K, out, in)`` and biases ``(B, K, out)``."""
        if global_feature.dim() != 2 or class_text.dim() != 2:
            raise ValueError(
                f"global_feature must be (B, G) and class_text (K, T), got "
                f"{tuple(global_feature.shape)} and {tuple(class_text.shape)}"
            )
        if class_text.shape[0] != self.num_classes:
            raise ValueError(
                f"class_text has {class_text.shape[0]} rows, the head was built for "
                f"{self.num_classes} classes"
            )
        b, k = global_feature.shape[0], class_text.shape[0]
        e = self.class_embed(class_text.to(device=global_feature.device, dtype=self.controller.weight.dtype))
        g = global_feature.to(e.dtype)
        z = torch.cat((g[:, None].expand(b, k, -1), e[None].expand(b, k, -1)), dim=-1)  # (B, K, G + E)
        flat = self.controller(z)  # (B, K, n_params)
        params, offset = [], 0
        for out_c, in_c in self.layer_shapes:
            w = flat[..., offset : offset + out_c * in_c].reshape(b, k, out_c, in_c)
            offset += out_c * in_c
            params.append((w, flat[..., offset : offset + out_c]))
            offset += out_c
        return params

    def forward(self, features: Tensor, global_feature: Tensor, class_text: Tensor) -> Tensor:
        b, c = features.shape[:2]
        if c != self.in_channels or features.dim() != 2 + self.conv_dims:
            raise ValueError(
                f"features must be (B, {self.in_channels}, {self.conv_dims} spatial dims), got "
                f"{tuple(features.shape)}"
            )
        spatial = features.shape[2:]
        params = self.generate_params(global_feature, class_text)
        k = self.num_classes
        x = features.reshape(b, c, -1)  # (B, F, V), shared by all K heads: no copy per class
        # one batched matmul per layer with the bias fused in (baddbmm) and the ReLU in place: the head runs at
        # full resolution, where a separate bias pass and a new tensor per ReLU cost as much as the matmul
        w0, b0 = params[0]
        out0 = w0.shape[2]
        h = torch.baddbmm(b0.reshape(b, k * out0, 1).to(x.dtype), w0.reshape(b, k * out0, c).to(x.dtype), x)
        for w, bias in params[1:]:
            out_c, in_c = w.shape[2:]
            h = torch.baddbmm(bias.reshape(b * k, out_c, 1).to(h.dtype), w.reshape(b * k, out_c, in_c).to(h.dtype),
                              h.relu_().reshape(b * k, in_c, -1))
        return h.reshape(b, k, *spatial)

    def reference_forward(self, features: Tensor, global_feature: Tensor, class_text: Tensor) -> Tensor:
        """The same head as an explicit loop of per-sample, per-class 1x1 convolutions (tests only)."""
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[features.dim() - 2]
        params = self.generate_params(global_feature, class_text)
        ones = (1,) * (features.dim() - 2)
        out = []
        for bi in range(features.shape[0]):
            maps = []
            for ki in range(self.num_classes):
                x = features[bi : bi + 1]
                for li, (w, bias) in enumerate(params):
                    if li > 0:
                        x = torch.relu(x)
                    x = conv(x, w[bi, ki].reshape(*w.shape[2:], *ones), bias[bi, ki])
                maps.append(x)
            out.append(torch.cat(maps, 1))
        return torch.cat(out, 0)
