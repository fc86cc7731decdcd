"""The nnU-Net set-ups of issue 12 on hand-built tensors and networks: ResEnc placement, sigmoid regions, ignore label.

The end-to-end runs through nnU-Net's commands are in test_setups_regions.py and test_setups_sparse.py; DDP code on
gloo in test_ddp_gloo.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_llmseg.losses.class_balance import build_class_balance
from nnunet_llmseg.losses.contrastive import sample_class_voxels
from nnunet_llmseg.losses.cps import CrossPseudoSupervisionLoss
from nnunet_llmseg.losses.region_balance import RegionDistributionDifficultyWeights
from nnunet_llmseg.losses.regions import OutputSpace, exclusive_region_labels
from nnunet_llmseg.losses.usl import UnifiedSegmentationLoss
from nnunet_llmseg.networks.text_unets import TextDrivenUNet, TextFusedUNet, TwinNetwork


def _arch(kind: str, dims: int) -> tuple[str, dict]:
    conv = "torch.nn.modules.conv.Conv3d" if dims == 3 else "torch.nn.modules.conv.Conv2d"
    norm = "torch.nn.modules.instancenorm.InstanceNorm3d" if dims == 3 else \
        "torch.nn.modules.instancenorm.InstanceNorm2d"
    k, s1, s2 = [3] * dims, [1] * dims, [2] * dims
    common = {"n_stages": 4, "features_per_stage": [8, 16, 32, 48], "conv_op": conv, "kernel_sizes": [k] * 4,
              "strides": [s1, s2, s2, s2], "n_conv_per_stage_decoder": [1, 1, 1], "conv_bias": True,
              "norm_op": norm, "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
              "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    if kind == "resenc":  # what nnUNetPlannerResEncM writes (blocks per stage 1, 3, 4, 6), narrower
        return ("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                {**common, "n_blocks_per_stage": [1, 3, 4, 6]})
    return ("dynamic_network_architectures.architectures.unet.PlainConvUNet",
            {**common, "n_conv_per_stage": [2, 2, 2, 2]})


def _unet(kind: str, dims: int, in_ch: int, out_ch: int, ds: bool):
    name, kw = _arch(kind, dims)
    torch.manual_seed(0)
    return get_network_from_plans(name, kw, ["conv_op", "norm_op", "dropout_op", "nonlin"], in_ch, out_ch,
                                  allow_init=True, deep_supervision=ds).eval()


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread (two OpenMP threads spin against each other on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("ds", [True, False])
@pytest.mark.parametrize(("kind", "dims"), [("resenc", 3), ("resenc", 2), ("plain", 3)])
def test_wrappers_sit_where_the_planned_unet_has_its_bottleneck_and_head(kind, dims, ds, one_thread):
    """ResidualEncoderUNet (encoder with a stem) and PlainConvUNet: the fusion block gets exactly the encoder's
    bottleneck, at initialisation the wrapped network is the planned one output for output, the TAK wrapper's decoder
    is nnU-Net's UNetDecoder.forward, and the dynamic head reads the last decoder stage."""
    shape = (2, 4, *([16] * dims))
    x = torch.randn(shape)
    unet = _unet(kind, dims, 4, 3, ds)
    with torch.no_grad():
        plain = unet(x)
        fused = TextFusedUNet(unet, num_texts=3, text_dim=10)  # at initialisation: the plain network
        seen = {}
        fused.fusion.register_forward_hook(lambda m, inp, out: seen.update(bottleneck=inp[0]))
        wrapped = fused(x)
        assert torch.equal(seen["bottleneck"], unet.encoder(x)[-1])
        assert seen["bottleneck"].shape[1] == unet.encoder.output_channels[-1]
        for a, b in zip(plain if ds else [plain], wrapped if ds else [wrapped]):
            assert torch.equal(a, b)
        for p in fused.fusion.parameters():  # a trained fusion block: the text changes the output
            p.add_(torch.randn_like(p) * 0.5)
        assert not torch.allclose(fused(x)[0] if ds else fused(x), plain[0] if ds else plain)

        no_text = TextDrivenUNet(unet, num_heads=3, text_dim=10, use_text=False)
        out = no_text(x)
        for a, b in zip(plain if ds else [plain], out if ds else [out]):
            assert torch.equal(a, b)

        tak = TextDrivenUNet(unet, num_heads=3, text_dim=10)
        tak.text_embeddings.normal_()
        last = {}
        unet.decoder.stages[-1].register_forward_hook(lambda m, inp, o: last.update(f=o))
        logits, feats = tak.forward_with_features(x)
        skips = unet.encoder(x)
        g = torch.cat([s.flatten(2).mean(-1) for s in skips[-2:]], 1)
        full = logits[0] if ds else logits
        torch.testing.assert_close(full, tak.head(last["f"], g, tak.text_embeddings))
        assert full.shape == (2, 3, *([16] * dims)) and torch.equal(feats[0], last["f"])
        if ds:  # the auxiliary scales keep nnU-Net's plain heads
            for a, b in zip(plain[1:], logits[1:]):
                assert torch.equal(a, b)


def _as_two_class(z: torch.Tensor) -> torch.Tensor:
    """(B, R, *S) region logits -> (B*R, 2, *S) softmax logits [0, z]: softmax = [1 - sigmoid(z), sigmoid(z)]."""
    flat = z.reshape(z.shape[0] * z.shape[1], 1, *z.shape[2:])
    return torch.cat((torch.zeros_like(flat), flat), 1)


@pytest.mark.parametrize("negative", [False, True])
def test_region_usl_and_cps_are_the_softmax_losses_with_two_outcomes_per_region(negative):
    torch.manual_seed(0)
    zs, zt = torch.randn(2, 3, 5, 6, 4) * 3, torch.randn(2, 3, 5, 6, 4) * 3
    mask = torch.rand(2, 1, 5, 6, 4) > 0.3
    mask_2c = mask.expand(2, 3, 5, 6, 4).reshape(6, 1, 5, 6, 4)
    kw = {"tau": 0.7, "negative_learning": negative, "negative_tau": 0.1}
    zs.requires_grad_(True)
    loss_r, stats_r = UnifiedSegmentationLoss(**kw, regions=True)(zs, zt, mask)
    loss_s, stats_s = UnifiedSegmentationLoss(**kw)(_as_two_class(zs), _as_two_class(zt), mask_2c)
    torch.testing.assert_close(loss_r, loss_s)
    for key in stats_r:
        torch.testing.assert_close(stats_r[key], stats_s[key])
    assert 0 < float(stats_r["confident_fraction"]) < 1
    loss_r.backward()
    assert torch.isfinite(zs.grad).all() and zs.grad[~mask.expand_as(zs)].abs().max() == 0
    cps_r, cstats_r = CrossPseudoSupervisionLoss(regions=True)(zs, zt)
    cps_s, cstats_s = CrossPseudoSupervisionLoss()(_as_two_class(zs), _as_two_class(zt))
    torch.testing.assert_close(cps_r, cps_s)
    torch.testing.assert_close(cstats_r["confident_fraction"], cstats_s["confident_fraction"])


BRATS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": 3}


def test_region_labels_follow_nnunets_regions_class_order_and_the_twin_averages_sigmoids():
    lm = LabelManager(BRATS, regions_class_order=[1, 2, 3])
    torch.manual_seed(0)
    logits_a, logits_b = torch.randn(3, 8, 8, 8) * 4, torch.randn(3, 8, 8, 8) * 4
    probs = torch.sigmoid(logits_a)
    seg = lm.convert_probabilities_to_segmentation(probs)  # nnU-Net's own region -> label rule
    ours = exclusive_region_labels((probs > 0.5).long()[None])[0]
    assert torch.equal(torch.as_tensor(seg).long(), torch.tensor([0, 1, 2, 3])[ours])
    # ignore: any channel -1 marks the voxel
    binary = (probs > 0.5).long()[None].clone()
    binary[:, :, 0] = -1
    assert (exclusive_region_labels(binary)[0, 0] == -1).all()
    # prediction averaging of both networks, as nnU-Net's inference non-linearity turns it back
    twin = TwinNetwork(torch.nn.Identity(), torch.nn.Identity(), has_regions=True)
    averaged = lm.apply_inference_nonlin(twin.ensemble(logits_a[None], logits_b[None])[0])
    torch.testing.assert_close(averaged, 0.5 * (torch.sigmoid(logits_a) + torch.sigmoid(logits_b)), atol=2e-6,
                               rtol=0)


def test_output_space_targets_from_nnunet_batches_with_ignore_label():
    # softmax labels with the ignore label (value 3 = K): becomes -1
    space = OutputSpace(3, has_regions=False, ignore_label=3)
    target = torch.tensor([0, 1, 2, 3, 3, 1]).view(1, 1, 6).float()
    assert space.target_labels(target).tolist() == [[0, 1, 2, -1, -1, 1]]
    # regions: nnU-Net appends the ignore mask as the last channel
    regions = OutputSpace(3, has_regions=True, ignore_label=4)
    t = torch.zeros(1, 4, 5)
    t[0, 0, :3] = 1
    t[0, 1, 1:3] = 1
    t[0, 3, 4] = 1  # voxel 4 ignored
    lab = regions.target_labels(t)
    assert lab.shape == (1, 3, 5) and lab[0, :, 4].tolist() == [-1, -1, -1]
    assert regions.voxel_labels(lab).tolist() == [[1, 2, 2, 0, -1]]
    assert regions.num_voxel_classes == 4 and regions.anchor_labels().tolist() == [1, 2, 3]
    ent = regions.normalised_entropy(torch.tensor([[[0.5, 0.99]], [[0.99, 0.99]], [[0.01, 0.99]]]).view(1, 3, 2))
    assert ent[0, 0] == pytest.approx(1.0) and ent[0, 1] < 0.1


@pytest.mark.parametrize("regions", [False, True])
@pytest.mark.parametrize("name", ["dhc", "dhc_dist", "dhc_diff", "galoss", "none"])
def test_class_balance_never_uses_ignored_voxels(name, regions):
    """Statistics and losses are the same whatever the network predicts on ignored voxels, and the ignore value
    (K for labels, -1 after OutputSpace) is never used as an index."""
    torch.manual_seed(0)
    k = 3
    logits = torch.randn(2, k, 6, 6, 6)
    if regions:
        labels = (torch.rand(2, k, 6, 6, 6) > 0.6).long()
        labels[:, :, :, :, 3:] = -1
    else:
        labels = torch.randint(0, k, (2, 6, 6, 6))
        labels[:, :, :, 3:] = -1
    ignored = (labels < 0) if regions else (labels < 0)[:, None].expand_as(logits)
    other = logits.clone()
    other[ignored] = torch.randn(int(ignored.sum())) * 50
    probs = (lambda z: torch.sigmoid(z)) if regions else (lambda z: torch.softmax(z, 1))
    m1, m2 = build_class_balance(name, k, regions=regions), build_class_balance(name, k, regions=regions)
    for _ in range(3):
        m1.update(probs(logits), labels)
        m2.update(probs(other), labels)
    torch.testing.assert_close(m1.weights(), m2.weights())
    torch.testing.assert_close(m1(logits, labels), m2(other, labels))
    torch.testing.assert_close(m1.pseudo_label_loss(logits, labels), m2.pseudo_label_loss(other, labels))
    assert torch.isfinite(m1(logits, labels)) and float(m1.pseudo_label_loss(logits, labels)) > 0
    if not regions:  # the raw ignore value K in the labels is equally harmless
        raw = labels.masked_fill(labels < 0, k)
        torch.testing.assert_close(m1(logits, raw), m2(other, raw))
        torch.testing.assert_close(m1.pseudo_label_loss(logits, raw), m2.pseudo_label_loss(other, raw))
        f = torch.randn(2, 4, 6, 6, 6)
        _, sampled = sample_class_voxels(f, raw, 50, k)
        assert set(sampled.tolist()) <= set(range(k))


def test_region_distribution_weights_favour_the_small_regions():
    w = RegionDistributionDifficultyWeights(3, mode="dist")
    labels = torch.zeros(1, 3, 10, 10, 10, dtype=torch.long)
    labels[:, 0, :8] = 1  # large (whole tumour)
    labels[:, 1, :3] = 1
    labels[:, 2, :1] = 1  # small (enhancing)
    w.update(torch.rand(1, 3, 10, 10, 10), labels)
    weights = w.weights()
    assert weights[2] > weights[1] > weights[0] and weights.mean() == pytest.approx(1.0)
    torch.testing.assert_close(w.frequency, torch.tensor([0.8, 0.3, 0.1]))


def test_weighted_bce_dice_and_galoss_for_regions_match_hand_computation():
    torch.manual_seed(1)
    z = torch.randn(2, 2, 4, 4)
    lab = (torch.rand(2, 2, 4, 4) > 0.5).long()
    plain = build_class_balance("dhc", 2, regions=True, dice_weight=0.0)
    bce = F.binary_cross_entropy_with_logits(z, lab.float(), reduction="none").mean((0, 2, 3))
    torch.testing.assert_close(plain(z, lab), bce.mean())  # fresh statistics: equal weights
    galoss = build_class_balance("galoss", 2, regions=True, topk_ratio=1.0)
    per = F.binary_cross_entropy_with_logits(z, lab.float(), reduction="none")
    groups = [per[:, r][lab[:, r] == g].mean() for r in range(2) for g in (0, 1)]
    torch.testing.assert_close(galoss(z, lab), torch.stack(groups).mean())
