"""The two network blocks: LLM-SegNet's gated text fusion and TAK's text-driven dynamic head."""

from __future__ import annotations

import pytest
import torch

from nnunet_llmseg.networks.dynamic_head import TextDrivenDynamicHead
from nnunet_llmseg.networks.text_fusion import TextFusionBlock


@pytest.mark.parametrize(("conv_op", "spatial"), [(torch.nn.Conv3d, (3, 4, 5)), (torch.nn.Conv2d, (6, 7))])
def test_fusion_gate_zero_leaves_features_exactly_unchanged_and_gate_learns(conv_op, spatial):
    torch.manual_seed(0)
    block = TextFusionBlock(text_dim=16, channels=8, conv_op=conv_op)
    x = torch.randn(2, 8, *spatial, requires_grad=True)
    text = torch.randn(3, 16)
    out = block(x, text)
    assert torch.equal(out, x)
    assert block.gate_value() == 0.0
    (out * torch.randn_like(out)).sum().backward()
    assert block.gate.grad is not None and block.gate.grad.abs() > 0
    # once the gate is open the text changes the output, and differently for a different text
    with torch.no_grad():
        block.gate.fill_(0.5)
    assert not torch.allclose(block(x, text), x)
    assert not torch.allclose(block(x, text), block(x, torch.randn(3, 16)))
    assert block.gate_value() == pytest.approx(float(torch.tanh(torch.tensor(0.5))))


def test_fusion_attention_is_per_sample_and_runs_under_autocast():
    torch.manual_seed(1)
    block = TextFusionBlock(text_dim=12, channels=6, conv_op=torch.nn.Conv3d, gate_init=0.3)
    x = torch.randn(2, 6, 2, 3, 4)
    text = torch.randn(5, 12)
    summary, attn = block.text_summary(x, text)
    assert summary.shape == (2, 6) and attn.shape == (2, 5)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x, text)
    assert out.shape == x.shape and torch.isfinite(out.float()).all()
    with pytest.raises(ValueError, match="channels"):
        block(torch.randn(1, 5, 2, 2, 2), text)


@pytest.mark.parametrize("spatial", [(5, 6), (4, 5, 6)])
def test_dynamic_head_batched_equals_reference_loop(spatial):
    torch.manual_seed(0)
    head = TextDrivenDynamicHead(
        in_channels=6,
        text_dim=10,
        num_classes=4,
        global_channels=7,
        hidden_channels=5,
        num_layers=3,
        class_embed_dim=16,
        conv_dims=len(spatial),
    )
    torch.nn.init.normal_(head.controller.weight, std=0.2)  # make the per-(b, k) heads clearly different
    feats = torch.randn(3, 6, *spatial)
    g = torch.randn(3, 7)
    text = torch.randn(4, 10, requires_grad=True)
    out = head(feats, g, text)
    ref = head.reference_forward(feats, g, text)
    assert out.shape == (3, 4, *spatial)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[:, 0], out[:, 1])  # classes get different heads
    out.pow(2).mean().backward()
    assert head.class_embed[0].weight.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
    assert head.controller.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("num_layers", [1, 2])
def test_dynamic_head_other_depths_match_reference(num_layers):
    torch.manual_seed(2)
    head = TextDrivenDynamicHead(
        in_channels=4,
        text_dim=6,
        num_classes=3,
        global_channels=5,
        hidden_channels=3,
        num_layers=num_layers,
        class_embed_dim=8,
        conv_dims=3,
    )
    widths = [4] + [3] * (num_layers - 1) + [1]
    assert head.n_params == sum(widths[i] * widths[i + 1] + widths[i + 1] for i in range(num_layers))
    feats, g, text = torch.randn(2, 4, 3, 3, 3), torch.randn(2, 5), torch.randn(3, 6)
    torch.testing.assert_close(
        head(feats, g, text), head.reference_forward(feats, g, text), atol=1e-5, rtol=1e-5
    )


def test_dynamic_head_initial_logits_are_well_scaled_and_all_layers_get_gradient():
    torch.manual_seed(3)
    head = TextDrivenDynamicHead(in_channels=32, text_dim=64, num_classes=5, global_channels=96)
    feats = torch.relu(torch.randn(2, 32, 8, 8, 8))
    out = head(feats, torch.randn(2, 96), torch.randn(5, 64))
    assert 0.1 < out.std().item() < 10.0
    out.pow(2).mean().backward()
    grad = head.controller.weight.grad
    first = grad[: 32 * 8].abs().mean()  # rows generating the first layer's weights
    last_w = grad[head.n_params - 9 : head.n_params - 1].abs().mean()
    assert first > 1e-4 and last_w > 1e-4  # no vanishing gradient through the generated stack
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(feats, torch.randn(2, 96), torch.randn(5, 64))
    assert mixed.shape == (2, 5, 8, 8, 8) and torch.isfinite(mixed.float()).all()
    with pytest.raises(ValueError, match="rows"):
        head(feats, torch.randn(2, 96), torch.randn(4, 64))
