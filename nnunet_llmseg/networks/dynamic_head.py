"""TAK's text-driven segmentation head (dynamic convolution, as in the CLIP-Driven Universal Model).

For class ``k`` and sample ``b`` a controller turns ``[global image feature_b, class embedding_k]`` into the
weights and biases of a small stack of 1x1(x1) convolutions (widths ``in -> hidden -> ... -> 1``), applied to the
decoder's final features; the output is one logit map per class. The class embedding is an MLP of the class's
text embedding (TAK: shape and location texts, concatenated). All (b, k) heads run at once as one einsum per
layer - no Python loop over samples or classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TextDrivenDynamicHead(nn.Module):
    def __init__(self, in_channels: int, text_dim: int, num_classes: int, global_channels: int,
                 hidden_channels: int = 8, num_layers: int = 3, class_embed_dim: int = 256, conv_dims: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv_dims = conv_dims
        widths = [in_channels] + [hidden_channels] * (num_layers - 1) + [1]
        self.layer_shapes = [(widths[i + 1], widths[i]) for i in range(num_layers)]  # (out, in)
        n_params = sum(o * i + o for o, i in self.layer_shapes)
        self.class_embed = nn.Sequential(nn.Linear(text_dim, class_embed_dim), nn.ReLU(inplace=True),
                                         nn.Linear(class_embed_dim, class_embed_dim))
        self.global_proj = nn.Linear(global_channels, class_embed_dim)
        self.controller = nn.Linear(2 * class_embed_dim, n_params)
        # start with small generated kernels so the initial logits are well-scaled
        nn.init.normal_(self.controller.weight, std=1e-3)
        nn.init.zeros_(self.controller.bias)

    def _params(self, global_feature: Tensor, class_text: Tensor) -> list[tuple[Tensor, Tensor]]:
        b, k = global_feature.shape[0], class_text.shape[0]
        e = self.class_embed(class_text.to(global_feature.dtype))  # (K, E)
        g = self.global_proj(global_feature)  # (B, E)
        z = torch.cat((g[:, None].expand(b, k, -1), e[None].expand(b, k, -1)), dim=-1)
        flat = self.controller(z)  # (B, K, n_params)
        params, offset = [], 0
        for out_c, in_c in self.layer_shapes:
            w = flat[..., offset:offset + out_c * in_c].reshape(b, k, out_c, in_c)
            offset += out_c * in_c
            bias = flat[..., offset:offset + out_c]
            offset += out_c
            params.append((w, bias))
        return params

    def forward(self, features: Tensor, global_feature: Tensor, class_text: Tensor) -> Tensor:
        b, c = features.shape[:2]
        spatial = features.shape[2:]
        x = features.reshape(b, 1, c, -1)  # (B, 1, C, V): shared by all K heads
        params = self._params(global_feature, class_text)
        for i, (w, bias) in enumerate(params):
            x = torch.einsum("bkoc,bkcv->bkov", w, x.expand(b, w.shape[1], *x.shape[2:])) + bias[..., None]
            if i < len(params) - 1:
                x = torch.relu(x)
        return x[:, :, 0].reshape(b, self.num_classes, *spatial)

    def reference_forward(self, features: Tensor, global_feature: Tensor, class_text: Tensor) -> Tensor:
        """Per-sample, per-class loop with explicit 1x1 convolutions (for tests only)."""
        conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[
            features.dim() - 2]
        params = self._params(global_feature, class_text)
        out = []
        for bi in range(features.shape[0]):
            maps = []
            for ki in range(self.num_classes):
                x = features[bi:bi + 1]
                for i, (w, bias) in enumerate(params):
                    kernel = w[bi, ki].reshape(*w.shape[2:], *([1] * (features.dim() - 2)))
                    x = conv(x, kernel, bias[bi, ki])
                    if i < len(params) - 1:
                        x = torch.relu(x)
                maps.append(x)
            out.append(torch.cat(maps, 1))
        return torch.cat(out, 0)
