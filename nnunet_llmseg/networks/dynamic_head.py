"""TAK's text-driven segmentation head (dynamic convolution, as in the CLIP-Driven Universal Model).

For sample ``b`` and class ``k`` (``L`` layers, hidden width ``H``):

    t~_k      = text_k - mean_j text_j                  what sets class k apart from the other classes  (T,)
    e_k       = MLP(t~_k) / ||MLP(t~_k)||               unit-norm class embedding                        (E,)
    g^_b      = g_b / ||g_b||                           unit-norm global image feature                   (G,)
    theta_bk  = W_t e_k + W_g g^_b + c                  controller: all head parameters           (n_params,)
    h^0       = F_b                                     decoder features                    (F, *spatial)
    h^l       = ReLU(W^l_bk h^(l-1) + b^l_bk), l < L    1x1(x1) convolutions, widths F -> H -> ... -> H
    logit_bk  = W^L_bk h^(L-1) + b^L_bk                 last layer has one output channel

``g_b`` is a global image feature (the caller pools encoder stages), ``text_k`` the class's text embedding
(TAK: shape and location embeddings concatenated by the caller). ``theta_bk`` is split in layer order into
each layer's weight (out x in, row-major) and bias. All ``B x K`` heads run at once: one batched matmul per layer, no
Python loop over samples or classes.

Why it is built this way (issue 11's diagnosis of TAK's collapse to background, docs/methods.md):

- **Classes separate from the first step.** Every head is generated from the class's own embedding through
  ``W_t``, initialised so that each generated layer has Kaiming variance: class ``k`` starts with its own
  random head, as a plain nnU-Net head starts with its own weights per output channel. The earlier design put
  one shared "base head" into the controller's bias and a small perturbation on top, so every class started
  with (almost) the same head: the per-class logit maps differed by ~0.2 % of their scale, the gradients of
  the shared bias cancel across classes under softmax cross-entropy, and classes could separate only through
  the small perturbation weights - while the pseudo-labels and class-balance terms locked in whatever was
  predicted first (background).
- **Only what distinguishes the classes.** Text embeddings of anatomical descriptions are strongly correlated
  (cosine 0.5-0.85 between the MSD Hippocampus classes); the component shared by all classes says nothing
  about which class a head is for, so it is removed (centering) before the class MLP.
- **Unit-norm inputs to the controller.** With ``||e_k|| = ||g^_b|| = 1`` an SGD step on ``W_t`` or ``W_g``
  changes the generated parameters by the optimiser's step size, like a step on a plain head's weights; with
  raw inputs the change is scaled by ``||e||^2`` (hundreds for a 256-d embedding), which makes nnU-Net's SGD
  (lr 0.01, momentum 0.99) unstable on the generated head.
- **Image conditioning grows from zero.** ``W_g`` starts at 0 (it still receives gradient, since
  ``dL/dW_g = dL/dtheta g^^T``): at the start the heads depend on the class text only, and the per-image
  adaptation of the Universal Model is learnt on top.
"""

from __future__ import annotations

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
        self.controller_text = nn.Linear(class_embed_dim, self.n_params)
        self.controller_image = nn.Linear(global_channels, self.n_params, bias=False)
        self._init_controller()

    @torch.no_grad()
    def _init_controller(self) -> None:
        """Kaiming-variance generated weights from a unit-norm class embedding; zero biases; no image term yet."""
        rows = []
        for out_c, in_c in self.layer_shapes:
            rows.append(torch.full((out_c * in_c,), (2.0 / in_c) ** 0.5))  # Kaiming (ReLU) std of a 1x1 conv
            rows.append(torch.zeros(out_c))  # generated biases start at 0
        std = torch.cat(rows)
        # ||e|| = 1, so theta_j = sum_i W_ji e_i has std ||W_j|| ~ std_j when W_ji ~ N(0, std_j^2)
        self.controller_text.weight.copy_(torch.randn_like(self.controller_text.weight) * std[:, None])
        self.controller_text.bias.zero_()
        self.controller_image.weight.zero_()

    def class_embeddings(self, class_text: Tensor) -> Tensor:
        """Unit-norm ``(K, E)`` embeddings of the classes' texts, after removing what all classes share."""
        t = class_text.to(dtype=self.controller_text.weight.dtype)
        centred = t - t.mean(0, keepdim=True) if t.shape[0] > 1 else t
        return F.normalize(self.class_embed(centred), dim=-1)

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
        e = self.class_embeddings(class_text.to(global_feature.device))
        g = F.normalize(global_feature.to(e.dtype), dim=-1)
        # (B, K, n_params): class part per class, image part per sample, broadcast to every (b, k) pair
        flat = self.controller_text(e)[None] + self.controller_image(g)[:, None]
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
