"""The losses on hand-built tensors: USL, CPS, supervised contrastive with text anchors, class balance."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_llmseg.losses.class_balance import (
    DistributionDifficultyWeights,
    GALossStyleHardVoxelLoss,
    WeightedCEDiceLoss,
    build_class_balance,
)
from nnunet_llmseg.losses.contrastive import TextAnchoredContrastiveLoss, sample_class_voxels
from nnunet_llmseg.losses.cps import CrossPseudoSupervisionLoss
from nnunet_llmseg.losses.usl import UnifiedSegmentationLoss


def _logits(probs: list[list[float]], spatial: tuple[int, ...] | None = None) -> torch.Tensor:
    """``(1, K, V)`` (or ``(1, K, *spatial)``) float32 logits, softmax exactly ``probs`` (rows: voxels)."""
    t = torch.log(torch.tensor(probs, dtype=torch.float64)).t()[None].float()
    return t if spatial is None else t.reshape(1, t.shape[1], *spatial)


# ------------------------------------------------------------------------------------------------- USL ----
def test_usl_equals_hand_computed_value_on_confident_and_unconfident_voxels():
    # 3 classes, 4 voxels laid out as a 2x2 image (2D). Peer: voxel 0 confident (0.8, class 0), voxel 1
    # confident (0.7, class 2), voxels 2 and 3 unsure (0.5 and 0.6 < tau = 0.65).
    peer = _logits([[0.8, 0.1, 0.1], [0.2, 0.1, 0.7], [0.5, 0.3, 0.2], [0.2, 0.6, 0.2]], (2, 2))
    student = _logits([[0.6, 0.2, 0.2], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], (2, 2))
    loss, stats = UnifiedSegmentationLoss(tau=0.65)(student, peer)
    nll = 0.8 * -math.log(0.6) + 0.7 * -math.log(0.4)  # c_v * -log p_s[y_v]
    mse = ((0.1 - 0.5) ** 2 + (0.8 - 0.3) ** 2 + (0.1 - 0.2) ** 2) / 3 + (
        (0.3 - 0.2) ** 2 + (0.3 - 0.6) ** 2 + (0.4 - 0.2) ** 2
    ) / 3  # ||p_s - p_t||^2 / K
    assert loss.item() == pytest.approx((nll + mse) / 4, rel=1e-5)
    assert stats["confident_fraction"].item() == pytest.approx(0.5)
    assert stats["nll"].item() == pytest.approx(nll / 4, rel=1e-5)
    assert stats["mse"].item() == pytest.approx(mse / 4, rel=1e-5)
    assert stats["negative"].item() == 0.0


def test_usl_all_confident_and_none_confident():
    peer = _logits([[0.95, 0.05], [0.2, 0.8]])
    student = _logits([[0.6, 0.4], [0.3, 0.7]])
    loss, stats = UnifiedSegmentationLoss(tau=0.65)(student, peer)
    assert loss.item() == pytest.approx((0.95 * -math.log(0.6) + 0.8 * -math.log(0.7)) / 2, rel=1e-5)
    assert stats["confident_fraction"].item() == 1.0 and stats["mse"].item() == 0.0
    loss, stats = UnifiedSegmentationLoss(tau=0.99)(student, peer)
    expected = (((0.6 - 0.95) ** 2 + (0.4 - 0.05) ** 2) / 2 + ((0.3 - 0.2) ** 2 + (0.7 - 0.8) ** 2) / 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["confident_fraction"].item() == 0.0 and stats["nll"].item() == 0.0


def test_usl_tau_boundary_counts_as_confident():
    peer = _logits([[0.75, 0.25]])
    student = _logits([[0.5, 0.5]])
    loss, stats = UnifiedSegmentationLoss(tau=0.75)(student, peer)
    assert stats["confident_fraction"].item() == 1.0
    assert loss.item() == pytest.approx(0.75 * math.log(2), rel=1e-5)


def test_usl_mask_restricts_voxels_and_denominator():
    peer = _logits([[0.9, 0.1], [0.6, 0.4], [0.1, 0.9]], (3, 1, 1))
    student = _logits([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]], (3, 1, 1))
    mask = torch.tensor([True, False, True]).reshape(1, 1, 3, 1, 1)
    loss, stats = UnifiedSegmentationLoss()(student, peer, mask=mask)
    assert loss.item() == pytest.approx((0.9 * -math.log(0.7) + 0.9 * -math.log(0.5)) / 2, rel=1e-5)
    assert stats["confident_fraction"].item() == 1.0


def test_usl_gradient_reaches_student_only_and_empty_mask_gives_zero_without_nan():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, 4, 4, generator=gen, requires_grad=True)
    peer = torch.randn(2, 3, 4, 4, 4, generator=gen, requires_grad=True)
    loss, stats = UnifiedSegmentationLoss(tau=0.5)(student, peer)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert peer.grad is None
    assert 0.0 < stats["confident_fraction"].item() < 1.0
    student.grad = None
    empty = torch.zeros(2, 1, 4, 4, 4, dtype=torch.bool)
    loss_empty, stats = UnifiedSegmentationLoss(negative_learning=True)(student, peer, mask=empty)
    assert loss_empty.item() == 0.0 and stats["confident_fraction"].item() == 0.0
    loss_empty.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() == 0


def test_usl_extreme_logits_and_autocast_stay_finite_float32():
    student = torch.zeros(1, 2, 3, 3)
    student[:, 0] = 1e4  # log p_s[1] = -1e4 at every voxel
    peer = torch.zeros(1, 2, 3, 3)
    peer[:, 1] = 50.0
    student.requires_grad_(True)
    loss, _ = UnifiedSegmentationLoss()(student, peer)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    y = torch.randn(2, 4, 6, 6)
    reference, _ = UnifiedSegmentationLoss(negative_learning=True)(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = UnifiedSegmentationLoss(negative_learning=True)(x.bfloat16(), y.bfloat16())
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert mixed.item() == pytest.approx(reference.item(), rel=0.1, abs=0.05)


def test_usl_negative_learning_hand_value():
    # peer rules out classes 1 and 2 (< 0.05); the student gives them 0.3 and 0.1
    peer = _logits([[0.98, 0.01, 0.01]])
    student = _logits([[0.6, 0.3, 0.1]])
    usl = UnifiedSegmentationLoss(negative_learning=True, negative_weight=0.5)
    loss, stats = usl(student, peer)
    negative = (-math.log(1 - 0.3) - math.log(1 - 0.1)) / 2
    assert stats["negative"].item() == pytest.approx(negative, rel=1e-5)
    assert loss.item() == pytest.approx(0.98 * -math.log(0.6) + 0.5 * negative, rel=1e-5)


def test_usl_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        UnifiedSegmentationLoss()(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))


# ------------------------------------------------------------------------------------------------- CPS ----
def test_cps_is_cross_entropy_against_peer_argmax():
    peer = _logits([[0.9, 0.1], [0.3, 0.7], [0.55, 0.45]])
    student = _logits([[0.6, 0.4], [0.5, 0.5], [0.2, 0.8]])
    loss, stats = CrossPseudoSupervisionLoss()(student, peer)
    assert loss.item() == pytest.approx((-math.log(0.6) - math.log(0.5) - math.log(0.2)) / 3, rel=1e-5)
    assert stats["confident_fraction"].item() == pytest.approx(2 / 3)
    peer_t = peer.clone().requires_grad_(True)
    student_t = student.clone().requires_grad_(True)
    mask = torch.tensor([[[True, False, False]]])
    loss, _ = CrossPseudoSupervisionLoss()(student_t, peer_t, mask=mask)
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(0.6), rel=1e-5)
    assert peer_t.grad is None and student_t.grad[..., 1:].abs().sum() == 0


# ----------------------------------------------------------------------------------------- contrastive ----
def _supcon_by_hand(z: torch.Tensor, y: list[int], t: float) -> float:
    """Khosla et al. Eq. 2 with explicit Python loops (only for the test)."""
    z = F.normalize(z.double(), dim=1)
    total, count = 0.0, 0
    for i in range(len(y)):
        pos = [p for p in range(len(y)) if p != i and y[p] == y[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(len(y)) if a != i)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / t) / denom) for p in pos) / len(pos)
        count += 1
    return total / count


def test_contrastive_matches_equation_and_identical_features_give_the_minimum():
    loss_fn = TextAnchoredContrastiveLoss(temperature=0.07)
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    feats = torch.stack([a, a, a, b, b, b])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    ideal = loss_fn(feats, labels)
    # every positive an exact copy (similarity 1), negatives orthogonal (0): 2 positives, 3 negatives per row
    expected = -math.log(math.exp(1 / 0.07) / (2 * math.exp(1 / 0.07) + 3))
    assert ideal.item() == pytest.approx(expected, rel=1e-5)
    noisy_feats = feats + 0.3 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(0))
    noisy = loss_fn(noisy_feats, labels)
    assert noisy.item() == pytest.approx(_supcon_by_hand(noisy_feats, labels.tolist(), 0.07), rel=1e-4)
    swapped = loss_fn(feats, torch.tensor([0, 1, 0, 1, 0, 1]))
    assert ideal < noisy and ideal < swapped


def test_contrastive_text_anchors_join_and_samples_without_positive_are_skipped():
    loss_fn = TextAnchoredContrastiveLoss(temperature=0.1)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])
    feats = torch.stack([a, a, b, b]) + 0.05 * torch.randn(4, 4, generator=gen)
    labels = torch.tensor([0, 0, 1, 1])
    anchors = torch.stack([a, b, torch.tensor([0.0, 0.0, 1.0, 0.0])])  # class 2's text has no voxel: skipped
    with_anchors = loss_fn(feats, labels, anchors=anchors)
    all_z = torch.cat((feats, anchors))
    assert with_anchors.item() == pytest.approx(_supcon_by_hand(all_z, [0, 0, 1, 1, 0, 1, 2], 0.1), rel=1e-4)
    wrong = loss_fn(feats, labels, anchors=anchors, anchor_labels=torch.tensor([1, 0, 2]))
    assert with_anchors < wrong
    # one voxel per class: only the anchors give positives
    single = TextAnchoredContrastiveLoss(0.5)(feats[[0, 2]], labels[[0, 2]], anchors=anchors[:2])
    assert single.item() == pytest.approx(
        _supcon_by_hand(torch.cat((feats[[0, 2]], anchors[:2])), [0, 1, 0, 1], 0.5), rel=1e-4
    )


def test_contrastive_nothing_valid_returns_zero_with_grad_and_gradients_are_finite():
    loss_fn = TextAnchoredContrastiveLoss()
    feats = torch.randn(3, 5, requires_grad=True)
    zero = loss_fn(feats, torch.tensor([0, 1, 2]))
    zero.backward()
    assert zero.item() == 0.0 and feats.grad is not None
    anchors = torch.randn(2, 5, requires_grad=True)
    loss = loss_fn(feats, torch.tensor([0, 0, 1]), anchors=anchors)
    loss.backward()
    assert torch.isfinite(feats.grad).all() and anchors.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss_fn(feats.bfloat16(), torch.tensor([0, 0, 1]), anchors=anchors)
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(loss.item(), rel=0.05)


def test_sample_class_voxels_caps_each_class_and_keeps_feature_label_pairs():
    feats = torch.randn(2, 5, 6, 6, 6, requires_grad=True)
    labels = torch.zeros(2, 6, 6, 6, dtype=torch.long)
    labels[:, :2] = 1
    labels[0, 0, 0, 0] = 2
    labels[1, 5] = -1
    labels[1, 4, 0, 0] = 7  # outside [0, num_classes): never sampled
    # make each voxel's first feature equal to its label so pairs can be checked
    with torch.no_grad():
        feats[:, 0] = labels.float()
    f, lab = sample_class_voxels(
        feats, labels, max_per_class=10, num_classes=3, generator=torch.Generator().manual_seed(0)
    )
    assert torch.bincount(lab, minlength=3).tolist() == [10, 10, 1] and f.shape == (21, 5)
    assert torch.equal(f[:, 0], lab.float())
    f.sum().backward()
    assert feats.grad.abs().sum() == 21 * 5
    f2, _ = sample_class_voxels(feats, labels, 10, 3, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(f, f2)  # random within each class
    f_2d, lab_2d = sample_class_voxels(torch.randn(1, 4, 5, 5), torch.full((1, 5, 5), -1), 3, 2)
    assert f_2d.shape == (0, 4) and lab_2d.shape == (0,)


# --------------------------------------------------------------------------------------- class balance ----
def _labels(counts: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), k) for k, n in enumerate(counts)]).reshape(1, -1)


def _perfect_probs(labels: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(labels, k).movedim(-1, 1).float()


def test_distribution_weights_rise_for_a_class_made_rarer():
    dist = DistributionDifficultyWeights(3, momentum=0.9, mode="dist")
    balanced = _labels([40, 30, 30])
    dist.update(_perfect_probs(balanced, 3), balanced)
    before = dist.weights()
    assert before.mean().item() == pytest.approx(1.0)
    rare2 = _labels([60, 38, 2])
    history = []
    for _ in range(30):
        dist.update(_perfect_probs(rare2, 3), rare2)
        history.append(dist.weights()[2].item())
    after = dist.weights()
    assert after[2] > before[2] and after[2] > after[1] > after[0]
    assert all(b >= a - 1e-6 for a, b in itertools.pairwise(history))  # rises steadily as class 2 gets rarer
    assert after.mean().item() == pytest.approx(1.0) and after.min() > 0  # the floor keeps background in play
    # EMA by hand: 0.9^30 of the first frequency plus the rest of the new one
    f2 = 0.9**30 * 0.30 + (1 - 0.9**30) * 0.02
    assert dist.frequency[2].item() == pytest.approx(f2, rel=1e-4)


def test_difficulty_weights_rise_for_a_class_made_harder():
    diff = DistributionDifficultyWeights(3, mode="diff", difficulty_momentum=0.5)
    labels = _labels([40, 30, 30])
    good = _perfect_probs(labels, 3) * 0.8 + 0.2 / 3
    good[:, :, 70:75] = torch.tensor([0.0, 1.0, 0.0])[None, :, None]  # class 2 a little worse than the rest
    good[:, :, 40:44] = torch.tensor([1.0, 0.0, 0.0])[None, :, None]  # class 1 misses a few voxels too
    for _ in range(3):
        diff.update(good, labels)
    before = diff.weights()
    bad = good.clone()
    bad[:, :, 70:95] = torch.tensor([0.0, 1.0, 0.0])[None, :, None]  # class 2 now mostly missed
    for _ in range(3):
        diff.update(bad, labels)
    after = diff.weights()
    assert after[2] > before[2]
    assert after[2] > after[0] and after[2] > after[1]
    assert after.mean().item() == pytest.approx(1.0)
    # DiffDW's "unlearn" statistic registered the drop of class 2's Dice, "learn" did not
    assert diff.unlearn[2] > 0 and diff.learn[2] == 0


def test_difficulty_from_recall_does_not_reward_a_class_own_false_positives():
    """Issue 11: with DHC's Dice as the difficulty score, a class that starts predicting itself on background
    gets a larger weight (which brings more false positives); with recall its weight does not rise."""
    labels = _labels([60, 20, 20])
    probs = _perfect_probs(labels, 3)
    weights = {}
    for measure in ("dice", "recall"):
        diff = DistributionDifficultyWeights(3, mode="diff", difficulty_momentum=0.5, difficulty_measure=measure)
        for _ in range(3):
            diff.update(probs, labels)
        before = diff.weights()[1].item()
        for n_fp in (10, 20, 30, 40):  # class 1 spreads over more and more background voxels; nothing missed
            spread = probs.clone()
            spread[:, :, :n_fp] = torch.tensor([0.0, 1.0, 0.0])[None, :, None]
            diff.update(spread, labels)
        weights[measure] = (before, diff.weights()[1].item())
    assert weights["dice"][1] > 1.2 * weights["dice"][0]
    assert weights["recall"][1] <= weights["recall"][0] + 1e-6
    with pytest.raises(ValueError, match="difficulty_measure"):
        DistributionDifficultyWeights(3, difficulty_measure="f1")


def test_dhc_statistics_are_checkpointed_and_ignore_label_is_skipped():
    a = build_class_balance("dhc", 3)
    labels = _labels([50, 40, 10])
    labels[0, :5] = -1
    probs = torch.softmax(torch.randn(1, 3, 100, generator=torch.Generator().manual_seed(0)), 1)
    for _ in range(3):
        a.update(probs, labels)
    assert a.weighter.frequency[0].item() == pytest.approx(45 / 95, rel=1e-5)
    b = build_class_balance("dhc", 3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.weights(), b.weights()) and int(b.weighter.num_updates) == 3
    assert {"weighter.frequency", "weighter.learn", "weighter.unlearn"} <= set(a.state_dict())


def test_weighted_ce_dice_matches_hand_value_and_weights_shift_the_loss():
    logits = torch.log(torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])).t()[None]  # (1, 2, 3)
    labels = torch.tensor([[0, 1, 1]])
    w = torch.tensor([1.0, 3.0])
    ce_only = WeightedCEDiceLoss(dice_weight=0.0)(logits, labels, w)
    expected_ce = (1 * -math.log(0.7) + 3 * -math.log(0.6) + 3 * -math.log(0.1)) / 7
    assert ce_only.item() == pytest.approx(expected_ce, rel=1e-5)
    dice_only = WeightedCEDiceLoss(ce_weight=0.0, smooth=0.0)(logits, labels[:, None], w)  # (B, 1, ...) too
    d0 = 2 * 0.7 / (0.7 + 0.4 + 0.9 + 1)
    d1 = 2 * (0.6 + 0.1) / (0.3 + 0.6 + 0.1 + 2)
    assert dice_only.item() == pytest.approx((1 * (1 - d0) + 3 * (1 - d1)) / 4, rel=1e-5)
    unweighted = WeightedCEDiceLoss()(logits, labels, None)
    assert unweighted.item() != pytest.approx(WeightedCEDiceLoss()(logits, labels, w).item())
    ignored = WeightedCEDiceLoss(dice_weight=0.0)(logits, torch.tensor([[0, -1, -1]]), w)
    assert ignored.item() == pytest.approx(-math.log(0.7), rel=1e-5)


def test_galoss_gives_every_present_class_equal_say():
    loss_fn = GALossStyleHardVoxelLoss(2, topk_ratio=1.0)
    logits = torch.zeros(1, 2, 100)
    labels = torch.zeros(1, 100, dtype=torch.long)
    labels[0, :2] = 1  # tiny class, wrong
    logits[0, 0, 2:] = 5.0  # big class, right
    ce_big = F.cross_entropy(torch.tensor([[5.0, 0.0]]), torch.tensor([0])).item()
    ce_small = math.log(2)
    assert loss_fn(logits, labels).item() == pytest.approx((ce_big + ce_small) / 2, rel=1e-5)
    # plain CE would let the big class dominate
    assert F.cross_entropy(logits, labels).item() == pytest.approx(
        (98 * ce_big + 2 * ce_small) / 100, rel=1e-5
    )
    # gamma = 1: the plain mean over the kept voxels
    assert GALossStyleHardVoxelLoss(2, topk_ratio=1.0, gamma=1.0)(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-5
    )


def test_galoss_keeps_the_hardest_voxels_of_each_class_3d_with_ignore():
    # class 0: 10 voxels with CE 0..9 (logit margin), class 1: 4 voxels; topk 0.3 -> 3 and 2 voxels kept
    margins0 = torch.arange(10, dtype=torch.float32)
    logits = torch.zeros(1, 2, 16)
    logits[0, 1, :10] = margins0  # class-0 voxels with rising difficulty
    logits[0, 0, 10:14] = torch.tensor([0.0, 1.0, 2.0, 3.0])  # class-1 voxels
    labels = torch.tensor([[0] * 10 + [1] * 4 + [-1, -1]])
    ce = F.cross_entropy(logits[..., :14], labels[..., :14], reduction="none")[0]
    expected = (ce[7:10].mean() + ce[12:14].mean()) / 2
    out = GALossStyleHardVoxelLoss(2, topk_ratio=0.3)(
        logits.reshape(1, 2, 2, 2, 4), labels.reshape(1, 2, 2, 4)
    )
    assert out.item() == pytest.approx(expected.item(), rel=1e-5)


def test_galoss_absent_class_penalty_and_uniform_interface():
    loss_fn = build_class_balance("galoss", 3, topk_ratio=1.0, absent_class_weight=1.0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.6, 0.2]])).t()[None]
    labels = torch.tensor([[0, 1]])  # class 2 absent
    base = (-math.log(0.5) - math.log(0.6)) / 2
    assert loss_fn(logits, labels).item() == pytest.approx(base + (0.2**2 + 0.2**2) / 2 / 3, rel=1e-5)
    loss_fn.update(torch.softmax(logits, 1), labels)  # no statistics, same interface as DHC
    assert torch.equal(loss_fn.weights(), torch.ones(3))


def test_build_class_balance_names_and_errors():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 4))
    for name in ("dhc", "dhc_dist", "dhc_diff", "galoss", "none"):
        module = build_class_balance(name, 3)
        module.update(torch.softmax(x.detach(), 1), y)
        loss = module(x, y)
        loss.backward()
        assert torch.isfinite(loss) and module.weights().shape == (3,)
    assert build_class_balance("none", 3)(x, y).item() == 0.0
    assert build_class_balance("dhc_dist", 3).weighter.mode == "dist"
    assert build_class_balance("dhc_diff", 2, regions=True).weighter.mode == "diff"
    for regions in (False, True):  # softmax and region factories share the name rules and their errors
        with pytest.raises(ValueError, match="unknown class balance 'focal'"):
            build_class_balance("focal", 3, regions=regions)
        with pytest.raises(ValueError, match="fixes the mode"):
            build_class_balance("dhc_diff", 3, regions=regions, mode="dist")
        with pytest.raises(ValueError, match="'none' takes no options"):
            build_class_balance("none", 3, regions=regions, gamma=2.0)
    with pytest.raises(ValueError, match="unknown option"):
        build_class_balance("dhc", 3, topk_ratio=0.2)


def test_pseudo_label_losses_are_cross_entropies_that_skip_unconfident_voxels():
    """Pseudo-labels get the CE only (no Dice): plain by default (``dhc`` and ``none``), class-weighted as in DHC
    with ``weight_pseudo_labels=True``."""
    logits = torch.log(torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1], [0.5, 0.5]])).t()[None]  # (1, 2, 4)
    plab = torch.tensor([[0, 1, 1, -1]])  # the last voxel: peer not confident
    ce = [-math.log(0.7), -math.log(0.6), -math.log(0.1)]
    skewed = _labels([90, 10])  # background frequent: DistDW gives it the floor weight
    dhc = build_class_balance("dhc_dist", 2)
    dhc_weighted = build_class_balance("dhc_dist", 2, weight_pseudo_labels=True)
    for module in (dhc, dhc_weighted):
        module.update(_perfect_probs(skewed, 2), skewed)
    w = dhc_weighted.weights()
    assert w[0] < 0.5 * w[1]  # the weights really differ, so the two losses below must too
    expected = (w[0] * ce[0] + w[1] * (ce[1] + ce[2])) / (w[0] + 2 * w[1])
    assert dhc_weighted.pseudo_label_loss(logits, plab).item() == pytest.approx(expected.item(), rel=1e-5)
    assert dhc.pseudo_label_loss(logits, plab).item() == pytest.approx(sum(ce) / 3, rel=1e-5)
    assert torch.equal(dhc.weights(), w)  # the labelled loss keeps its class weights
    none = build_class_balance("none", 2)
    assert none.pseudo_label_loss(logits, plab).item() == pytest.approx(sum(ce) / 3, rel=1e-5)
    galoss = build_class_balance("galoss", 2, topk_ratio=1.0)
    assert galoss.pseudo_label_loss(logits, plab).item() == pytest.approx(galoss(logits, plab).item())
    # nothing confident: a zero that still backpropagates
    x = logits.clone().requires_grad_(True)
    empty = dhc.pseudo_label_loss(x, torch.full_like(plab, -1))
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_teacher_reliability_is_the_ema_of_the_labelled_hard_foreground_dice():
    from nnunet_llmseg.losses.teacher_reliability import TeacherReliability, hard_foreground_dice

    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, 0, :2] = 1  # class 1: 2 voxels; class 2 absent from the batch
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 0] = 1.0  # predicts background everywhere: a teacher that segments nothing
    assert hard_foreground_dice(logits, target).item() == 0.0
    logits[0, 1, 0, :3] = 5.0  # 2 TP, 1 FP for class 1; class 2 not present, so not averaged
    assert hard_foreground_dice(logits, target).item() == pytest.approx(2 * 2 / (2 * 2 + 1))
    # nnU-Net's ignore label: the FP voxel is unannotated, so it does not count
    ignored = target.clone()
    ignored[0, 0, 0, 2] = 3
    assert hard_foreground_dice(logits, ignored, ignore_label=3).item() == pytest.approx(1.0)
    # region-based (sigmoid) outputs: one channel per region
    regions = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    regions[0, 0, 0, :2] = True
    assert hard_foreground_dice(logits[:, 1:2], regions, has_regions=True).item() == pytest.approx(0.8)
    assert hard_foreground_dice(logits, torch.zeros_like(target)) is None  # no foreground: no evidence

    gate = TeacherReliability(2, momentum=0.5)
    assert gate.update(0, logits, target).item() == pytest.approx(0.5 * 0.8)
    assert gate.update(0, logits, target).item() == pytest.approx(0.5 * 0.4 + 0.5 * 0.8)
    assert gate.update(0, logits, torch.zeros_like(target)).item() == pytest.approx(0.6)  # unchanged
    assert gate.reliability[1].item() == 0.0  # the other network has shown nothing yet
    assert "reliability" in gate.state_dict()  # checkpointed with the weights


def test_teacher_reliability_per_class_gates_on_the_worst_class_seen():
    """A teacher that has learnt class 1 but predicts class 2 as background must not teach (issue 11: the
    mean-Dice gate let LLM-SegNet's pseudo-labels erase the small class)."""
    from nnunet_llmseg.losses.teacher_reliability import TeacherReliability, hard_dice_per_class

    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, 0, :2] = 1
    target[0, 0, 3, :2] = 2
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 0] = 1.0
    logits[0, 1, 0, :2] = 5.0  # class 1 perfect, class 2 missed
    dice, present = hard_dice_per_class(logits, target)
    assert dice.tolist() == [1.0, 0.0] and present.tolist() == [True, True]

    gate = TeacherReliability(2, momentum=0.5, num_classes=2)
    assert gate.update(0, logits, target).item() == 0.0  # the worst class decides
    logits[0, 2, 3, :2] = 5.0  # now class 2 is learnt as well
    assert gate.update(0, logits, target).item() == pytest.approx(0.5)  # EMAs: class 1 0.75, class 2 0.5
    only_one = target.clone()
    only_one[only_one == 2] = 0  # a batch without class 2 leaves its statistic unchanged
    assert gate.update(0, logits, only_one).item() == pytest.approx(0.5)
    assert gate.class_dice[0].tolist() == pytest.approx([0.875, 0.5])
    assert gate.update(1, logits, only_one).item() == pytest.approx(0.5)  # net b has seen class 1 only
    with pytest.raises(ValueError, match="predicts 2 foreground classes"):
        TeacherReliability(2, num_classes=3).update(0, logits, target)
