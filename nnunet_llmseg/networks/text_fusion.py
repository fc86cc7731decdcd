"""LLM-SegNet's text fusion at the encoder bottleneck, with a learnable balance.

The CLIP embeddings of the LLM's per-class descriptors (``(K, T)``) are projected to the bottleneck's channels.
An image-conditioned attention over the K descriptors (query: the globally pooled bottleneck) yields one text
vector per sample, which modulates the bottleneck features channel-wise; a 1x1 conv mixes image and
text-modulated features. The result is added through a gate, ``out = x + tanh(g) * fused``, with ``g``
initialised to 0, so training starts exactly as the plain network (as Flamingo's gated cross-attention does)
and the balance between image and text is learnt.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TextFusionBlock(nn.Module):
    """Fuse per-class text embeddings into bottleneck features; ``out == features`` at ``gate_init=0``."""

    def __init__(self, text_dim: int, channels: int, conv_op: type[nn.Module] = nn.Conv3d,
                 hidden: int | None = None, gate_init: float = 0.0) -> None:
        super().__init__()
        hidden = hidden or channels
        self.text_proj = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, channels))
        self.query = nn.Linear(channels, channels)
        self.mix = conv_op(2 * channels, channels, kernel_size=1)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        b, c = features.shape[:2]
        t = self.text_proj(text.to(features.dtype))  # (K, C)
        pooled = features.flatten(2).mean(-1)  # (B, C)
        attn = torch.softmax(self.query(pooled) @ t.t() / c ** 0.5, dim=-1)  # (B, K)
        t_b = attn @ t  # (B, C)
        shape = (b, c) + (1,) * (features.dim() - 2)
        modulated = features * torch.sigmoid(t_b).view(shape)
        fused = self.mix(torch.cat((features, modulated), dim=1))
        return features + torch.tanh(self.gate) * fused

    def gate_value(self) -> float:
        return float(torch.tanh(self.gate.detach()))
