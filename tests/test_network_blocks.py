"""The two network blocks: LLM-SegNet's gated text fusion and TAK's text-driven dynamic head.

Besides shapes and the batched-equals-loop identity, these tests pin down the two failure mechanisms found in
issue 11, so they fail if either comes back: a fusion whose text path gets no gradient at the start (the gate
stayed at ~0.001), and a dynamic head whose classes start with the same head (per-class logits differed by
~0.2 % of their scale, and TAK collapsed to background).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nnunet_llmseg.networks.dynamic_head import TextDrivenDynamicHead
from nnunet_llmseg.networks.text_fusion import TextFusionBlock


def correlated_texts(k: int, dim: int, cosine: float = 0.85, seed: int = 0) -> torch.Tensor:
    """``k`` text embeddings with pairwise cosine ~``cosine``, like real descriptions of neighbouring anatomy."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(dim, generator=gen)
    own = torch.randn(k, dim, generator=gen)
    mix = (1 - cosine) ** 0.5
    return F.normalize(cosine**0.5 * common + mix * own, dim=-1)


# ---- LLM-SegNet: text fusion -------------------------------------------------------------------------------

@pytest.mark.parametrize(("conv_op", "spatial"), [(torch.nn.Conv3d, (3, 4, 5)), (torch.nn.Conv2d, (6, 7))])
def test_fusion_starts_as_identity_and_its_text_path_learns_from_the_first_step(conv_op, spatial):
    torch.manual_seed(0)
    block = TextFusionBlock(text_dim=16, channels=8, conv_op=conv_op)
    x = torch.randn(2, 8, *spatial)
    text = torch.randn(3, 16)
    out = block(x, text)
    assert torch.equal(out, x)  # training starts exactly as the plain network
    assert block.text_share() == 0.0
    assert block.gate_value() == pytest.approx(float(torch.tanh(torch.tensor(1.0))))
    (out * torch.randn_like(out)).sum().backward()
    # the output conv gets the full gradient at once (with a zero gate it would get exactly none)
    assert block.mix.weight.grad.abs().mean() > 1e-2
    with torch.no_grad():
        for p in block.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    moved = block(x, text)
    assert not torch.allclose(moved, x)
    assert not torch.allclose(moved, block(x, torch.randn(3, 16)))  # what it adds depends on the text
    assert block.text_share() > 0.0


def test_fusion_text_path_grows_under_nnunet_sgd():
    """With nnU-Net's optimiser settings the text path reaches a visible share of the bottleneck quickly."""
    torch.manual_seed(1)
    block = TextFusionBlock(text_dim=16, channels=8, conv_op=torch.nn.Conv2d)
    opt = torch.optim.SGD(block.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    text = torch.randn(3, 16)
    for _ in range(30):
        x = torch.randn(4, 8, 5, 5)
        target = x + 0.5  # a change the block can only make through its text-driven path
        opt.zero_grad()
        F.mse_loss(block(x, text), target).backward()
        opt.step()
    assert block.text_share() > 0.05


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


# ---- TAK: text-driven dynamic head -------------------------------------------------------------------------

def _perturb_image_controller(head: TextDrivenDynamicHead) -> None:
    torch.nn.init.normal_(head.controller_image.weight, std=0.2)  # per-sample heads differ too


@pytest.mark.parametrize("spatial", [(5, 6), (4, 5, 6)])
def test_dynamic_head_batched_equals_reference_loop(spatial):
    torch.manual_seed(0)
    head = TextDrivenDynamicHead(in_channels=6, text_dim=10, num_classes=4, global_channels=7, hidden_channels=5,
                                 num_layers=3, class_embed_dim=16, conv_dims=len(spatial))
    _perturb_image_controller(head)
    feats = torch.randn(3, 6, *spatial)
    g = torch.randn(3, 7)
    text = torch.randn(4, 10, requires_grad=True)
    out = head(feats, g, text)
    ref = head.reference_forward(feats, g, text)
    assert out.shape == (3, 4, *spatial)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0, 0], out[1, 0])  # the image conditions the head
    out.pow(2).mean().backward()
    assert head.class_embed[0].weight.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
    assert head.controller_text.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("num_layers", [1, 2])
def test_dynamic_head_other_depths_match_reference(num_layers):
    torch.manual_seed(2)
    head = TextDrivenDynamicHead(in_channels=4, text_dim=6, num_classes=3, global_channels=5, hidden_channels=3,
                                 num_layers=num_layers, class_embed_dim=8, conv_dims=3)
    _perturb_image_controller(head)
    widths = [4] + [3] * (num_layers - 1) + [1]
    assert head.n_params == sum(widths[i] * widths[i + 1] + widths[i + 1] for i in range(num_layers))
    feats, g, text = torch.randn(2, 4, 3, 3, 3), torch.randn(2, 5), torch.randn(3, 6)
    torch.testing.assert_close(head(feats, g, text), head.reference_forward(feats, g, text), atol=1e-5, rtol=1e-5)


def test_dynamic_head_classes_start_with_their_own_heads_even_for_similar_texts():
    """The collapse mechanism: with one shared initial head the classes could barely separate."""
    torch.manual_seed(3)
    texts = correlated_texts(3, 768, cosine=0.85)  # e.g. anterior vs posterior hippocampus descriptions
    head = TextDrivenDynamicHead(in_channels=32, text_dim=768, num_classes=3, global_channels=384, conv_dims=2)
    feats = F.leaky_relu(torch.randn(4, 32, 12, 10))
    out = head(feats, torch.randn(4, 384).abs(), texts)
    scale = out.std().item()
    assert 0.1 < scale < 10.0
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert (out[:, a] - out[:, b]).std().item() > 0.3 * scale


def test_dynamic_head_gradients_reach_every_layer_and_the_image_controller():
    torch.manual_seed(4)
    head = TextDrivenDynamicHead(in_channels=32, text_dim=64, num_classes=5, global_channels=96)
    feats = torch.relu(torch.randn(2, 32, 8, 8, 8))
    out = head(feats, torch.randn(2, 96), torch.randn(5, 64))
    out.pow(2).mean().backward()
    grad = head.controller_text.weight.grad
    first = grad[: 32 * 8].abs().mean()  # rows generating the first layer's weights
    last_w = grad[head.n_params - 9 : head.n_params - 1].abs().mean()
    assert first > 1e-4 and last_w > 1e-4  # no vanishing gradient through the generated stack
    assert head.controller_image.weight.grad.abs().mean() > 1e-5  # zero at the start, but it learns
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(feats, torch.randn(2, 96), torch.randn(5, 64))
    assert mixed.shape == (2, 5, 8, 8, 8) and torch.isfinite(mixed.float()).all()
    with pytest.raises(ValueError, match="rows"):
        head(feats, torch.randn(2, 96), torch.randn(4, 64))


def test_dynamic_head_learns_every_class_of_a_toy_problem_under_nnunet_sgd():
    """Three classes in distinct feature directions, nearly identical texts: every class must be learnt."""
    torch.manual_seed(5)
    k, c = 3, 16
    centres = torch.randn(k, c) * 2
    labels = torch.randint(0, k, (4, 10, 10))
    labels[:, :7] = 0  # background dominates, as in segmentation
    texts = correlated_texts(k, 64, cosine=0.9, seed=1)
    head = TextDrivenDynamicHead(in_channels=c, text_dim=64, num_classes=k, global_channels=8, conv_dims=2)
    opt = torch.optim.SGD(head.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    for _ in range(60):
        feats = centres[labels].movedim(-1, 1) + 0.5 * torch.randn(4, c, 10, 10)
        opt.zero_grad()
        F.cross_entropy(head(feats, torch.randn(4, 8), texts), labels).backward()
        opt.step()
    with torch.no_grad():
        feats = centres[labels].movedim(-1, 1) + 0.5 * torch.randn(4, c, 10, 10)
        pred = head(feats, torch.randn(4, 8), texts).argmax(1)
    for cls in range(k):
        assert (pred[labels == cls] == cls).float().mean() > 0.9, f"class {cls} not learnt"
