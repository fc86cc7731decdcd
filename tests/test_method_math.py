"""The methods' maths on hand-built tensors: USL, CPS, contrastive loss, class balance (blocks: test_network_blocks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nnunet_llmseg.losses.class_balance import build_class_balance
from nnunet_llmseg.losses.contrastive import TextAnchoredContrastiveLoss, sample_class_voxels
from nnunet_llmseg.losses.cps import CrossPseudoSupervisionLoss
from nnunet_llmseg.losses.usl import UnifiedSegmentationLoss


def _logits_from_probs(p: list[list[float]]) -> torch.Tensor:
    """(1, K, V) logits whose softmax is exactly ``p`` (rows: voxels)."""
    return torch.log(torch.tensor(p, dtype=torch.float64)).t()[None]


def test_usl_matches_hand_computation_on_mixed_voxels():
    # two voxels, two classes. voxel 0: peer confident (0.9) in class 0; voxel 1: peer unsure (0.6 < 0.65)
    peer = _logits_from_probs([[0.9, 0.1], [0.6, 0.4]])
    student = _logits_from_probs([[0.7, 0.3], [0.2, 0.8]])
    loss, stats = UnifiedSegmentationLoss(tau=0.65)(student.float(), peer.float())
    nll = 0.9 * -math.log(0.7)  # confidence-weighted NLL of the peer's label (class 0)
    mse = ((0.2 - 0.6) ** 2 + (0.8 - 0.4) ** 2) / 2  # squared distance of softmax maps / K
    assert loss.item() == pytest.approx((nll + mse) / 2, rel=1e-5)
    assert stats["confident_fraction"].item() == pytest.approx(0.5)


def test_usl_all_confident_and_none_confident_edge_cases():
    peer = _logits_from_probs([[0.95, 0.05], [0.2, 0.8]]).float()
    student = _logits_from_probs([[0.6, 0.4], [0.3, 0.7]]).float()
    all_conf, s1 = UnifiedSegmentationLoss(tau=0.65)(student, peer)
    assert all_conf.item() == pytest.approx((0.95 * -math.log(0.6) + 0.8 * -math.log(0.7)) / 2, rel=1e-5)
    assert s1["confident_fraction"].item() == 1.0
    none_conf, s2 = UnifiedSegmentationLoss(tau=0.99)(student, peer)
    expected = (((0.6 - 0.95) ** 2 + (0.4 - 0.05) ** 2) / 2 + ((0.3 - 0.2) ** 2 + (0.7 - 0.8) ** 2) / 2) / 2
    assert none_conf.item() == pytest.approx(expected, rel=1e-5)
    assert s2["confident_fraction"].item() == 0.0


def test_usl_gradient_reaches_student_only_and_empty_mask_is_finite():
    student = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    peer = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    loss, _ = UnifiedSegmentationLoss()(student, peer)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert peer.grad is None
    empty = torch.zeros(2, 1, 4, 4, 4, dtype=torch.bool)
    loss_empty, stats = UnifiedSegmentationLoss()(student, peer, mask=empty)
    assert torch.isfinite(loss_empty) and loss_empty.item() == 0.0 and stats["confident_fraction"].item() == 0.0


def test_usl_negative_learning_penalises_confidently_absent_classes():
    peer = _logits_from_probs([[0.98, 0.01, 0.01]]).float()
    good = _logits_from_probs([[0.9, 0.05, 0.05]]).float()
    bad = _logits_from_probs([[0.5, 0.45, 0.05]]).float()
    usl = UnifiedSegmentationLoss(negative_learning=True)
    assert usl(bad, peer)[1]["negative"] > usl(good, peer)[1]["negative"]


def test_cps_is_cross_entropy_against_peer_argmax():
    peer = _logits_from_probs([[0.9, 0.1], [0.3, 0.7]]).float()
    student = _logits_from_probs([[0.6, 0.4], [0.5, 0.5]]).float()
    loss, _ = CrossPseudoSupervisionLoss()(student, peer)
    assert loss.item() == pytest.approx((-math.log(0.6) - math.log(0.5)) / 2, rel=1e-5)


def test_contrastive_minimum_for_identical_features_and_swapped_labels_raise_it():
    loss_fn = TextAnchoredContrastiveLoss(temperature=0.07)
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    feats = torch.stack([a, a, a, b, b, b])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    ideal = loss_fn(feats, labels)
    noisy = loss_fn(feats + 0.3 * torch.randn_like(feats, generator=torch.Generator().manual_seed(0)), labels)
    swapped = loss_fn(feats, torch.tensor([0, 1, 0, 1, 0, 1]))
    assert ideal < noisy and ideal < swapped
    # the minimum: every sample's positives are exact copies, negatives orthogonal
    n_pos, n_neg = 2, 3
    expected = -math.log(math.exp(1 / 0.07) / (n_pos * math.exp(1 / 0.07) + n_neg * math.exp(0)))
    assert ideal.item() == pytest.approx(expected, rel=1e-4)
    # text anchors join: anchors at the class centres keep the loss low, swapped anchors raise it
    with_anchors = loss_fn(feats, labels, anchors=torch.stack([a, b]))
    wrong_anchors = loss_fn(feats, labels, anchors=torch.stack([b, a]))
    assert with_anchors < wrong_anchors


def test_sample_class_voxels_caps_each_class():
    feats = torch.randn(2, 5, 6, 6, 6)
    labels = torch.zeros(2, 6, 6, 6, dtype=torch.long)
    labels[:, :2] = 1
    labels[0, 0, 0, 0] = 2
    labels[1, 5] = -1
    f, lab = sample_class_voxels(feats, labels, max_per_class=10, num_classes=3)
    counts = torch.bincount(lab, minlength=3)
    assert counts.tolist() == [10, 10, 1] and f.shape == (21, 5)


def test_distribution_weights_rise_for_a_class_made_rarer():
    dist = build_class_balance("dhc_dist", 3)
    balanced = torch.tensor([0] * 40 + [1] * 30 + [2] * 30).reshape(1, 100)
    rare2 = torch.tensor([0] * 60 + [1] * 38 + [2] * 2).reshape(1, 100)
    probs = torch.full((1, 3, 100), 1 / 3)
    dist.update(probs, balanced)
    before = dist.weights()[2].item()
    for _ in range(300):
        dist.update(probs, rare2)
    assert dist.weights()[2].item() > before
    assert dist.weights()[2] > dist.weights()[1] > dist.weights()[0]


def test_difficulty_weights_rise_for_a_poorly_segmented_class():
    diff = build_class_balance("dhc_diff", 3)
    labels = torch.tensor([0] * 40 + [1] * 30 + [2] * 30).reshape(1, 100)
    probs = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float()
    probs[:, :, 70:] = torch.tensor([0.5, 0.5, 0.0])[None, :, None]  # class 2 never predicted
    diff.update(probs, labels)
    w = diff.weights()
    assert w[2] > w[0] and w[2] > w[1]


def test_galoss_gives_every_present_class_equal_say():
    loss_fn = build_class_balance("galoss", 2, topk_ratio=1.0)
    logits = torch.zeros(1, 2, 100)
    labels = torch.zeros(1, 100, dtype=torch.long)
    labels[0, :2] = 1  # tiny class
    logits[0, 0, 2:] = 5.0  # big class well predicted, tiny class wrong
    loss = loss_fn(logits, labels)
    ce_big = torch.nn.functional.cross_entropy(torch.tensor([[5.0, 0.0]]), torch.tensor([0])).item()
    ce_small = torch.nn.functional.cross_entropy(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).item()
    assert loss.item() == pytest.approx((ce_big + ce_small) / 2, rel=1e-5)


# ---- the strong intensity view ---------------------------------------------------------------------------------

def test_strong_intensity_view_changes_intensities_and_moves_nothing():
    from nnunet_llmseg.data.intensity import strong_intensity_view

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 5, 7, 9, generator=g)
    y = strong_intensity_view(x, p_contrast=1.0, p_brightness=1.0, p_gamma=1.0, p_noise=0.0, generator=g)
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    for i in range(x.shape[0]):
        assert not torch.allclose(y[i], x[i])
        # contrast, brightness and gamma are increasing maps of each sample: the voxels' order is unchanged
        assert torch.equal(torch.argsort(x[i].flatten()), torch.argsort(y[i].flatten()))
    z = strong_intensity_view(x, p_contrast=0.0, p_brightness=0.0, p_gamma=0.0, p_noise=0.0, generator=g)
    torch.testing.assert_close(z, x)  # every part off: the crops unchanged


# ---- teacher cleaning: strays become background before they teach ----------------------------------------------

def test_teacher_cleaning_turns_each_class_s_smaller_components_into_confident_background():
    from nnunet_llmseg.losses.teacher_cleaning import CONFIDENT_LOGIT, background_outside_largest_components

    hard = torch.zeros(2, 8, 8, dtype=torch.long)
    hard[0, 1:4, 1:4] = 1  # class 1: 9 voxels, its largest component
    hard[0, 6, 6] = 1  # class 1: one voxel apart from it (not touching, not even diagonally): stray
    hard[0, 1:3, 6:8] = 2  # class 2: one component, kept
    hard[1, 0:2, 0:2] = 1  # second crop: two class-1 components of equal size, both kept (as nnU-Net's rule)
    hard[1, 5:7, 5:7] = 1
    logits = torch.nn.functional.one_hot(hard, 3).permute(0, 3, 1, 2).float() * 3.0 + 0.1 * torch.randn(2, 3, 8, 8)
    cleaned = background_outside_largest_components(logits)
    stray = torch.zeros_like(hard, dtype=torch.bool)
    stray[0, 6, 6] = True
    torch.testing.assert_close(cleaned[:, :, ~stray[0]][:1], logits[:, :, ~stray[0]][:1])  # crop 0 elsewhere
    torch.testing.assert_close(cleaned[1], logits[1])  # ties are kept
    assert cleaned[0, :, 6, 6].tolist() == [CONFIDENT_LOGIT, 0.0, 0.0]
    assert cleaned.argmax(1)[0, 6, 6] == 0 and logits.argmax(1)[0, 6, 6] == 1  # the input is not changed

    # sigmoid regions: each channel on its own; a stray gets a confident "outside" in its channel only
    regions = torch.full((1, 2, 8, 8), -2.0)
    regions[0, 0, 0:3, 0:3] = 2.0
    regions[0, 0, 6:8, 6:8] = 2.0  # channel 0: 9 and 4 voxels -> the 4 are stray
    regions[0, 1, 6:8, 6:8] = 2.0  # channel 1: its only component there, kept
    cleaned = background_outside_largest_components(regions, has_regions=True)
    assert bool((cleaned[0, 0, 6:8, 6:8] == -CONFIDENT_LOGIT).all())
    cleaned[0, 0, 6:8, 6:8] = regions[0, 0, 6:8, 6:8]
    torch.testing.assert_close(cleaned, regions)


def test_organ_region_is_the_largest_component_grown_by_the_margin():
    from nnunet_llmseg.losses.teacher_cleaning import organ_region

    fg = np.zeros((3, 20, 20), dtype=bool)
    fg[1, 5:9, 5:9] = True  # the organ, on the middle slice
    fg[1, 16:18, 16:18] = True  # a stray, about 20 mm away at 2 mm per voxel
    fg[0, 16:18, 16:18] = True  # a stray on a slice the organ does not reach
    region = organ_region(fg, (5.0, 2.0, 2.0), margin_mm=4.0, in_plane_only=True)
    assert region[1, 5:9, 5:9].all() and region[1, 5, 3] and not region[1, 5, 2]  # 2 voxels = 4 mm grown
    assert not region[1, 16:18, 16:18].any() and not region[0].any() and not region[2].any()
    grown_3d = organ_region(fg, (5.0, 2.0, 2.0), margin_mm=6.0, in_plane_only=False)
    assert grown_3d[0, 5:9, 5:9].all() and grown_3d[2, 6, 6] and not grown_3d[0, 16, 16]  # one 5 mm slice reached
    assert organ_region(np.zeros((2, 4, 4), dtype=bool), (1.0, 1.0, 1.0), 1.0, True).all()  # nothing to anchor
    with pytest.raises(ValueError, match="margin_mm"):
        organ_region(fg, (1.0, 1.0, 1.0), -1.0, True)


def test_teacher_foreground_outside_the_organ_region_becomes_confident_background():
    from nnunet_llmseg.losses.teacher_cleaning import CONFIDENT_LOGIT, background_outside_region

    logits = torch.randn(2, 3, 6, 6)
    region = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    region[0, 0, :, 3:] = False
    cleaned = background_outside_region(logits, region)
    assert (cleaned[0, :, :, 3:].permute(1, 2, 0) == torch.tensor([CONFIDENT_LOGIT, 0.0, 0.0])).all()
    torch.testing.assert_close(cleaned[0, :, :, :3], logits[0, :, :, :3])
    torch.testing.assert_close(cleaned[1], logits[1])
    regions = background_outside_region(logits, region, has_regions=True)
    assert (regions[0, :, :, 3:] == -CONFIDENT_LOGIT).all()
    with pytest.raises(ValueError, match="does not match the logits"):
        background_outside_region(logits, region[:, :, :5])


# ---- the co-training engine's CutMix frame ------------------------------------------------------------------

def _cutmix_case(seed: int = 0):
    from nnunet_llmseg.data import mixing

    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Conv3d(1, 3, 1)  # a pointwise network: its output on a mixed image is the mix of its outputs
    x_l, x_u = torch.randn(2, 1, 4, 6, 8, generator=g), torch.randn(3, 1, 4, 6, 8, generator=g)
    mask = mixing.cutmix_box_mask(3, (4, 6, 8), (0.25, 0.5), torch.device("cpu"), generator=g)
    cutmix = mixing.CutMixBatch(mask, mixing.partner_indices(3, 5))
    return net, x_l, x_u, cutmix


def test_cutmix_partners_come_from_the_pool_and_the_box_is_in_range():
    _net, x_l, x_u, cutmix = _cutmix_case()
    share = cutmix.mask.float().mean(dim=(1, 2, 3, 4))
    assert bool(((share > 0.1) & (share < 0.6)).all()), share  # (0.25, 0.5) of the patch, up to rounding
    x_mix = cutmix.mixed(x_u, x_l)
    pool = torch.cat((x_u, x_l))
    for i, j in enumerate(cutmix.partner.tolist()):
        assert j != i  # never pasted into itself
        torch.testing.assert_close(x_mix[i][cutmix.mask[i]], pool[j][cutmix.mask[i]])
        torch.testing.assert_close(x_mix[i][~cutmix.mask[i]], x_u[i][~cutmix.mask[i]])


def test_both_networks_on_the_mixed_view_are_taught_by_the_peer_on_the_unmixed_crops():
    """CPS with CutMix (Chen et al. 2021): the student sees the mixed crop, the teacher's target is its
    prediction on the unmixed crops mixed the same way; for a pointwise network the two frames agree exactly."""
    from nnunet_llmseg.trainers.semi_supervised import nnUNetTrainerCoTraining

    net, x_l, x_u, cutmix = _cutmix_case(1)
    x_mix = cutmix.mixed(x_u, x_l)
    with torch.no_grad():
        cutmix.plain = (net(x_u), 2.0 * net(x_u))
    la = net(torch.cat((x_l, x_mix)))  # network A's training forward, labelled first
    lb = 2.0 * net(torch.cat((x_l, x_mix)))
    student_a, student_b, teacher_a, teacher_b = nnUNetTrainerCoTraining.mixed_frame(la, lb, 2, cutmix)
    torch.testing.assert_close(student_a, la[2:])
    torch.testing.assert_close(student_b, lb[2:])
    torch.testing.assert_close(teacher_a, la[2:].detach())  # = A's prediction on the mixed crops
    torch.testing.assert_close(teacher_b, lb[2:].detach())
    assert student_a.requires_grad and not teacher_a.requires_grad and not teacher_b.requires_grad


def test_only_b_on_the_mixed_view_mixes_network_a_outputs():
    from nnunet_llmseg.trainers.semi_supervised import nnUNetTrainerCoTraining

    net, x_l, x_u, cutmix = _cutmix_case(2)
    la = net(torch.cat((x_l, x_u)))  # A saw the plain crops
    lb = net(torch.cat((x_l, cutmix.mixed(x_u, x_l))))
    student_a, student_b, teacher_a, teacher_b = nnUNetTrainerCoTraining.mixed_frame(la, lb, 2, cutmix)
    torch.testing.assert_close(student_a, lb[2:])  # A's outputs mixed = what it would say on B's view
    assert torch.equal(student_a, teacher_a) and torch.equal(student_b, teacher_b) and student_a.requires_grad


def test_labelled_mix_pastes_labelled_content_both_ways_and_the_truth_teaches_it():
    """``mixed_view = "labelled"`` (bidirectional copy-paste, Bai et al. 2023): every partner is a labelled crop,
    every second box is inverted, and in the mixed frame the ground truth (confident, where known) teaches the
    labelled content, the peer's unmixed prediction the rest; ignored voxels fall back to the peer."""
    from nnunet_llmseg.data import mixing
    from nnunet_llmseg.trainers.semi_supervised import nnUNetTrainerCoTraining

    g = torch.Generator().manual_seed(3)
    net = torch.nn.Conv3d(1, 3, 1)
    x_l, x_u = torch.randn(2, 1, 4, 6, 8, generator=g), torch.randn(4, 1, 4, 6, 8, generator=g)
    box = mixing.cutmix_box_mask(4, (4, 6, 8), (0.25, 0.5), torch.device("cpu"), generator=g)
    mask = mixing.both_directions(box)
    partner = mixing.labelled_partner_indices(4, 2)
    assert partner.tolist() == [4, 5, 4, 5]
    assert torch.equal(mask[0], box[0]) and torch.equal(mask[1], ~box[1])  # odd samples: labelled surroundings
    labels = torch.randint(0, 3, (2, 4, 6, 8), generator=g)
    labels[0, 0, 0, 0] = -1  # an ignored voxel
    logits, known = mixing.truth_as_teacher_logits(labels, 3, has_regions=False, confident_logit=20.0)
    assert torch.equal(logits.argmax(1)[known[:, 0]], labels[known[:, 0]]) and not bool(known[0, 0, 0, 0, 0])
    cutmix = mixing.CutMixBatch(mask, partner, truth=(logits, known))
    x_mix = cutmix.mixed(x_u, x_l)
    for i, j in enumerate(partner.tolist()):
        torch.testing.assert_close(x_mix[i][mask[i]], x_l[j - 4][mask[i]])
    with torch.no_grad():
        cutmix.plain = (net(x_u), net(x_u))
    la = net(torch.cat((x_l, x_mix)))
    _sa, _sb, teacher_a, _tb = nnUNetTrainerCoTraining.mixed_frame(la, la, 2, cutmix)
    for i, j in enumerate(partner.tolist()):
        inside = mask[i, 0]
        truth_here = labels[j - 4][inside]
        taught = teacher_a[i].argmax(0)[inside]
        assert torch.equal(taught[truth_here >= 0], truth_here[truth_here >= 0])
        torch.testing.assert_close(teacher_a[i][:, ~inside], cutmix.plain[0][i][:, ~inside])
    if mask[0, 0, 0, 0, 0]:  # the ignored voxel, if pasted into crop 0, is taught by the peer's own output on it
        torch.testing.assert_close(teacher_a[0, :, 0, 0, 0], la[0, :, 0, 0, 0].detach())
    regions, known_r = mixing.truth_as_teacher_logits(torch.tensor([[[1, 0, -1]]]), 1, has_regions=True,
                                                      confident_logit=20.0)
    assert regions.tolist()[0][0][:2] == [20.0, -20.0] and known_r.tolist() == [[[True, True, False]]]
