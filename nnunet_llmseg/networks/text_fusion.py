"""LLM-SegNet's text fusion at the encoder bottleneck, with a learnable balance.

The text encoder's embeddings of the LLM-written per-class descriptors, ``E`` of shape ``(K, T)``, enter the
bottleneck features ``x`` (``(B, C, *spatial)``) as follows:

    t_k   = MLP(E_k)                                     text projected to the C channels      (K, C)
    q_b   = W_q GAP(x_b)                                 image query from the pooled bottleneck (B, C)
    a_bk  = softmax_k(q_b . t_k / sqrt(C))               which descriptors matter for this image (B, K)
    s_b   = sum_k a_bk t_k                               one text vector per sample             (B, C)
    m_b   = x_b * (1 + gamma(s_b)) + beta(s_b)           FiLM channel modulation by the text
    f_b   = Conv1x1([x_b, m_b])                          mixes image and text-modulated features
    out_b = x_b + tanh(g) * f_b                          gated residual, g learnable, g_0 = gate_init

Attention pooling (instead of the mean over ``K``) lets each image weight the descriptors of the structures
it actually shows. With ``gate_init = 0``, ``tanh(g) = 0`` and the output equals the input exactly, so
training starts as the plain nnU-Net and learns how much text to let in (as Flamingo's tanh-gated
cross-attention does); the gate still gets a gradient (``d out / d g = f * (1 - tanh^2 g)``) and the other
parameters start learning as soon as it moves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TextFusionBlock(nn.Module):
    """LLM-SegNet text fusion at the encoder bottleneck with a learnable balance (``out == x`` at g = 0)."""

    def __init__(
        self,
        text_dim: int,
        channels: int,
        conv_op: type[nn.Module] = nn.Conv3d,
        hidden: int | None = None,
        gate_init: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = hidden or max(channels, 64)
        self.channels = channels
        self.text_proj = nn.Sequential(
            nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, channels)
        )
        self.query = nn.Linear(channels, channels)
        self.film = nn.Linear(channels, 2 * channels)
        self.mix = conv_op(2 * channels, channels, kernel_size=1)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def text_summary(self, features: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample text vector ``(B, C)`` and the attention over the ``K`` descriptors ``(B, K)``."""
        if text.dim() != 2:
            raise ValueError(f"text must be (K, T) descriptor embeddings, got shape {tuple(text.shape)}")
        t = self.text_proj(text.to(device=features.device, dtype=self.query.weight.dtype))  # (K, C)
        pooled = features.flatten(2).mean(-1)  # (B, C)
        scores = self.query(pooled) @ t.t().to(pooled.dtype) / self.channels**0.5
        attn = torch.softmax(scores.float(), dim=-1)  # (B, K)
        return attn.to(t.dtype) @ t, attn

    def forward(self, features: Tensor, text: Tensor) -> Tensor:
        if features.shape[1] != self.channels:
            raise ValueError(
                f"features have {features.shape[1]} channels, the fusion block was built for {self.channels}"
            )
        b, c = features.shape[:2]
        summary, _ = self.text_summary(features, text)
        gamma, beta = self.film(summary).chunk(2, dim=-1)
        shape = (b, c) + (1,) * (features.dim() - 2)
        modulated = features * (1 + gamma.view(shape).to(features.dtype)) + beta.view(shape).to(
            features.dtype
        )
        fused = self.mix(torch.cat((features, modulated), dim=1))
        return features + torch.tanh(self.gate).to(fused.dtype) * fused

    def gate_value(self) -> float:
        """``tanh(g)``: the share of text-fused features added to the bottleneck (0 = plain network)."""
        return float(torch.tanh(self.gate.detach()))
