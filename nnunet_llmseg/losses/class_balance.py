"""Class-imbalance-aware losses for TAK, selectable by name (:func:`build_class_balance`).

Every module returned by :func:`build_class_balance` has the same interface, so a trainer can switch by
name:

- ``update(probs, labels)`` - statistics from a labelled batch (no gradient; ``probs`` = softmax
  ``(B, K, ...)``, ``labels`` = ``(B, ...)`` integers, ``-1`` ignored);
- ``weights() -> (K,)`` - the current per-class weights (mean 1), for the loss and for the training log;
- ``forward(logits, labels, ignore_index=-1) -> scalar`` - the balanced loss on labelled data;
- ``pseudo_label_loss(logits, labels, ignore_index=-1) -> scalar`` - the balanced loss on a peer's
  pseudo-labels (``ignore_index`` where the peer is not confident). DHC supervises pseudo-labels with the
  class-weighted cross-entropy alone: a soft Dice against hard pseudo-labels rewards predicting nothing where
  the peer predicted nothing, which early in training - when the peer predicts mostly background - pushes
  both networks towards background (issue 11).

Statistics are registered buffers, so they are saved in ``state_dict`` and a resumed run continues with
them.

Names:

- ``dhc`` - DHC (Wang & Li, "Towards Realistic Long-tailed Semi-supervised Learning in Medical Image
  Segmentation: Dual-debiased Heterogeneous Co-training", MICCAI 2023):
  :class:`DistributionDifficultyWeights` (``mode="dist"`` DistDW, ``"diff"`` DiffDW, ``"both"`` their
  product) feeding :class:`WeightedCEDiceLoss`. ``dhc_dist`` / ``dhc_diff`` are shorthands for ``dhc`` with
  ``mode="dist"`` / ``"diff"`` (DHC's heterogeneous pair trains one network with each).
- ``galoss`` - :class:`GALossStyleHardVoxelLoss`: the hardest voxels of every class, normalised per class so
  that every present class contributes equally (after GALoss's GACE).
- ``none`` - :class:`NoClassBalance`, a zero loss (the ablation).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _flat_labels(labels: Tensor, logits_or_probs: Tensor) -> Tensor:
    """``(B, *spatial)`` long labels; nnU-Net's ``(B, 1, *spatial)`` targets are accepted too."""
    if labels.dim() == logits_or_probs.dim():
        if labels.shape[1] != 1:
            raise ValueError(f"labels must be (B, *spatial) or (B, 1, *spatial), got {tuple(labels.shape)}")
        labels = labels[:, 0]
    if labels.shape != logits_or_probs.shape[:1] + logits_or_probs.shape[2:]:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match predictions {tuple(logits_or_probs.shape)}"
        )
    return labels.long()


def _sync_sum(stats: Tensor, device: torch.device) -> Tensor:
    """``stats`` on ``device``, summed over the ranks when ``torch.distributed`` runs with more than one."""
    stats = stats.to(device=device, dtype=torch.float32)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    return stats


def _normalise_mean_one(w: Tensor) -> Tensor:
    mean = w.mean()
    return w / mean if float(mean) > 0 else torch.ones_like(w)


class DistributionDifficultyWeights(nn.Module):
    """DHC's distribution-aware (DistDW) and difficulty-aware (DiffDW) class weights, as EMAs in buffers.

    **Distribution-aware** (DHC's DistDW): with ``f_k`` the EMA (``momentum``) of class ``k``'s voxel
    frequency in the labels,

        w_dist_k = log(f_max / f_k) / max_j log(f_max / f_j),

    so the rarest class gets 1 and the most frequent 0; a floor ``dist_floor`` is added
    (``w = dist_floor + (1 - dist_floor) * w``) so the most frequent class (usually background) keeps some
    weight - with exactly 0 its voxels would stop producing a cross-entropy gradient.

    **Difficulty-aware** (DHC's DiffDW): from the hard (argmax) Dice ``d_k`` of each labelled batch and the
    previous one ``d'_k`` (per class, only batches where the class is present count):

        learn_k   <- EMA( [d_k > d'_k]  (d_k - d'_k) log(d_k / d'_k) )     (improving)
        unlearn_k <- EMA( [d_k <= d'_k] (d_k - d'_k) log(d_k / d'_k) )     (stagnating / forgetting)
        u_k       <- EMA( 1 - d_k )
        w_diff_k  =  ((unlearn_k + eps) / (learn_k + eps)) ** difficulty_power * u_k

    with EMA momentum ``difficulty_momentum`` (DHC: (50-1)/50 = 0.98) and power 1/5. Classes not yet seen
    count as hard (``u_k = 1``). The first batch only initialises ``d'`` and ``u`` (DHC starts ``d'`` at 1e-8,
    which makes the first ``learn`` step a spike of ``log(d/1e-8)``).

    ``difficulty_measure`` picks the per-batch score ``d_k``: ``"recall"`` (default; TP / label voxels) or
    ``"dice"`` (DHC's hard Dice). Why recall (issue 11): a class weight can only trade missed voxels for false
    positives. With Dice, a class's own false positives lower ``d_k``, which raises its weight, which brings
    more false positives - a positive feedback loop. On MSD Hippocampus (2d, 10 labelled, 20 x 100 iterations)
    that loop took TAK's ``Anterior`` class from pseudo-Dice 0.77 to 0.44 in the last third of training, while
    the same trainer without class balance stayed at 0.82. With recall, false positives leave the weight alone
    and missed voxels raise it, which brings more of the class to be predicted and lowers the weight again: a
    negative (stabilising) loop.

    ``mode``: ``"dist"``, ``"diff"`` or ``"both"`` (``w_dist * w_diff``). ``weights()`` is normalised to
    mean 1 (DHC scales to max ``K``; mean 1 keeps the loss on the unweighted scale).
    """

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.99,
        mode: str = "both",
        difficulty_momentum: float = 0.98,
        difficulty_power: float = 0.2,
        dist_floor: float = 0.1,
        eps: float = 1e-8,
        difficulty_measure: str = "recall",
    ) -> None:
        super().__init__()
        if difficulty_measure not in ("recall", "dice"):
            raise ValueError(f"difficulty_measure must be 'recall' or 'dice', got {difficulty_measure!r}")
        if mode not in ("dist", "diff", "both"):
            raise ValueError(
                f"DistributionDifficultyWeights mode must be 'dist', 'diff' or 'both', got {mode!r}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.momentum = momentum
        self.mode = mode
        self.difficulty_momentum = difficulty_momentum
        self.difficulty_power = difficulty_power
        self.dist_floor = dist_floor
        self.eps = eps
        self.difficulty_measure = difficulty_measure
        k = num_classes
        self.register_buffer("frequency", torch.full((k,), 1.0 / k))
        self.register_buffer("last_dice", torch.zeros(k))
        self.register_buffer("learn", torch.zeros(k))
        self.register_buffer("unlearn", torch.zeros(k))
        self.register_buffer("one_minus_dice", torch.ones(k))
        self.register_buffer("seen", torch.zeros(k, dtype=torch.bool))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, probs: Tensor, labels: Tensor, update_difficulty: bool = True) -> None:
        """Fold one labelled batch into the statistics.

        ``update_difficulty=False`` updates only the frequencies - for DHC's variant that counts the argmax
        pseudo-labels of unlabelled data (pass ``probs.argmax(1)`` as ``labels``).

        Under ``torch.distributed`` (DDP) the batch statistics are summed over all ranks before they are folded
        in, so every rank holds the same buffers and uses the same weights: the statistics of the global batch,
        as in single-process training. Every rank must call ``update`` equally often (the trainers do, once per
        step).
        """
        k = self.num_classes
        if probs.shape[1] != k:
            raise ValueError(f"probs have {probs.shape[1]} channels, expected num_classes={k}")
        counts, inter, pred_counts, totals = _sync_sum(self._batch_statistics(probs, labels), self.frequency.device)
        if float(totals.max()) <= 0:  # the same on every rank after the sum: no rank skips a later collective
            return
        freq = counts / totals.clamp_min(1)
        if int(self.num_updates) == 0:
            self.frequency.copy_(freq)
        else:
            self.frequency.mul_(self.momentum).add_(freq, alpha=1 - self.momentum)
        self.num_updates.add_(1)
        if not update_difficulty:
            return
        if self.difficulty_measure == "recall":  # the score d_k; see the class docstring
            score = inter / counts.clamp_min(1)
        else:
            score = 2 * inter / (counts + pred_counts).clamp_min(1)
        present = counts > 0
        step = present & self.seen
        m = self.difficulty_momentum
        ratio = torch.log((score + self.eps) / (self.last_dice + self.eps))
        delta = score - self.last_dice
        zero = torch.zeros_like(delta)
        cur_learn = torch.where(delta > 0, delta * ratio, zero)
        cur_unlearn = torch.where(delta <= 0, delta * ratio, zero)
        self.learn.copy_(torch.where(step, m * self.learn + (1 - m) * cur_learn, self.learn))
        self.unlearn.copy_(torch.where(step, m * self.unlearn + (1 - m) * cur_unlearn, self.unlearn))
        first = present & ~self.seen
        ema_u = m * self.one_minus_dice + (1 - m) * (1 - score)
        self.one_minus_dice.copy_(torch.where(first, 1 - score, torch.where(step, ema_u, self.one_minus_dice)))
        self.last_dice.copy_(torch.where(present, score, self.last_dice))  # buffer names kept for checkpoints
        self.seen.logical_or_(present)

    def _batch_statistics(self, probs: Tensor, labels: Tensor) -> Tensor:
        """``(4, K)`` float: per class the label voxel count, hard true positives, predicted voxel count, and
        the number of labelled voxels the count is taken over (the same in every column here). Labels outside
        ``[0, K)`` (``-1``, the ignore label) are left out before anything is indexed with them."""
        k = self.num_classes
        lab = _flat_labels(labels, probs).reshape(-1)
        valid = (lab >= 0) & (lab < k)
        lab_v = lab[valid]
        pred = probs.argmax(1).reshape(-1)[valid]
        counts = torch.bincount(lab_v, minlength=k)[:k].float()
        inter = torch.bincount(lab_v[pred == lab_v], minlength=k)[:k].float()
        pred_counts = torch.bincount(pred, minlength=k)[:k].float()
        return torch.stack((counts, inter, pred_counts, torch.full_like(counts, float(lab_v.numel()))))

    def distribution_weights(self) -> Tensor:
        """DistDW, in ``[dist_floor, 1]`` before normalisation (all ones while frequencies are equal)."""
        f = self.frequency.clamp_min(self.eps)
        log_ratio = torch.log(f.max() / f)
        top = log_ratio.max()
        if float(top) <= 0:
            return torch.ones_like(f)
        return self.dist_floor + (1 - self.dist_floor) * log_ratio / top

    def difficulty_weights(self) -> Tensor:
        """DiffDW before normalisation."""
        ratio = (self.unlearn + self.eps) / (self.learn + self.eps)
        return ratio.pow(self.difficulty_power) * self.one_minus_dice

    def weights(self) -> Tensor:
        """Current ``(K,)`` class weights, mean 1, detached (safe to log and to pass to a loss)."""
        if self.mode == "dist":
            w = self.distribution_weights()
        elif self.mode == "diff":
            w = self.difficulty_weights()
        else:
            w = self.distribution_weights() * self.difficulty_weights()
        return _normalise_mean_one(w.clamp_min(0)).detach().clone()


class WeightedCEDiceLoss(nn.Module):
    """Cross-entropy + soft Dice with per-class weights given at call time (DHC's ``w_ce+dice``).

        L_CE   = sum_v w_{y_v} CE_v / sum_v w_{y_v}                  (weighted mean, as torch's weighted CE)
        L_Dice = sum_k w_k (1 - Dice_k) / sum_k w_k
        Dice_k = (2 sum_v p_kv g_kv + s) / (sum_v p_kv + sum_v g_kv + s)
        L      = ce_weight * L_CE + dice_weight * L_Dice

    Soft Dice is summed over the whole batch when ``batch_dice`` (nnU-Net's default for 3D), else computed per
    sample and averaged.

    Voxels labelled ``ignore_index`` count in neither term. ``class_weights=None`` means all ones.
    ``dice_weight=0`` gives DHC's weighted CE alone (what DHC uses for the cross pseudo-labels).
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1e-5,
        batch_dice: bool = True,
        ignore_index: int = -1,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.batch_dice = batch_dice
        self.ignore_index = ignore_index

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        class_weights: Tensor | None = None,
        ignore_index: int | None = None,
    ) -> Tensor:
        k = logits.shape[1]
        lab = _flat_labels(labels, logits)
        ignore = self.ignore_index if ignore_index is None else ignore_index
        valid = (lab != ignore) & (lab >= 0) & (lab < k)
        safe = torch.where(valid, lab, torch.zeros_like(lab))
        x = logits.float()
        w = torch.ones(k, device=x.device) if class_weights is None else class_weights.to(x.device).float()
        if w.shape != (k,):
            raise ValueError(f"class_weights must have shape ({k},), got {tuple(w.shape)}")
        zero = x.new_zeros(())
        loss = zero
        if self.ce_weight:
            ce = F.cross_entropy(x, safe, reduction="none")
            w_v = torch.where(valid, w[safe], zero)
            loss = loss + self.ce_weight * (w_v * ce).sum() / w_v.sum().clamp_min(1e-8)
        if self.dice_weight:
            p = torch.softmax(x, dim=1) * valid[:, None]
            g = F.one_hot(safe, k).movedim(-1, 1).to(p.dtype) * valid[:, None]
            dims = (0, *range(2, p.dim())) if self.batch_dice else tuple(range(2, p.dim()))
            inter = (p * g).sum(dims)
            dice = (2 * inter + self.smooth) / (p.sum(dims) + g.sum(dims) + self.smooth)
            per_class = (1 - dice) if self.batch_dice else (1 - dice).mean(0)
            loss = loss + self.dice_weight * (w * per_class).sum() / w.sum().clamp_min(1e-8)
        return loss


class _StatelessBalance(nn.Module):
    """Shared no-op ``update`` and uniform ``weights`` for the losses that keep no statistics."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def update(self, probs: Tensor, labels: Tensor, update_difficulty: bool = True) -> None:
        """Nothing to track (kept so every class-balance module has the same interface)."""

    def weights(self) -> Tensor:
        return torch.ones(self.num_classes)


def hard_voxel_group_mean(values: Tensor, groups: Tensor, num_groups: int, topk_ratio: float, gamma: float
                          ) -> tuple[Tensor, Tensor]:
    """GALoss-style hard-voxel mean (see :class:`GALossStyleHardVoxelLoss`): per present group the
    ``ceil(topk_ratio * n_g)`` largest ``values``, ``1/|P| sum_g sum_hard values / (n'_g^(1-gamma) nbar^gamma)``.

    ``values`` and ``groups`` (integers in ``[0, num_groups)``) are flat and already restricted to valid voxels
    (non-empty). Returns ``(loss, present)`` with ``present`` the ``(num_groups,)`` bool mask of groups seen."""
    # each group's voxels contiguous, hardest first: sort by value (descending), then stably by group
    by_value = torch.argsort(values.detach(), descending=True)
    order = by_value[torch.sort(groups[by_value], stable=True).indices]
    grp_s, val_s = groups[order], values[order]
    counts = torch.bincount(grp_s, minlength=num_groups)[:num_groups]
    present = counts > 0
    keep_n = torch.where(present, (counts.float() * topk_ratio).ceil().clamp_min(1), 0.0)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(grp_s.numel(), device=grp_s.device) - starts[grp_s]
    keep = rank < keep_n[grp_s]
    per_group = torch.zeros(num_groups, device=values.device, dtype=val_s.dtype).index_add(
        0, grp_s[keep], val_s[keep])
    n_keep = keep_n[present]
    norm = n_keep.pow(1 - gamma) * n_keep.mean().pow(gamma)
    return (per_group[present] / norm).sum() / present.sum(), present


class GALossStyleHardVoxelLoss(_StatelessBalance):
    """Hard-voxel cross-entropy with per-class normalisation, after GALoss (GACE + GADice).

    For every class ``k`` present in the batch keep its ``n'_k = ceil(topk_ratio * n_k)`` voxels ``H_k`` with
    the highest cross-entropy (per class, unlike GACE's global top-k, so small classes always keep their hard
    voxels), then, with ``P`` the present classes and ``nbar = mean_{k in P} n'_k``,

        L = 1/|P| * sum_{k in P} sum_{v in H_k} CE_v / ( n'_k^(1 - gamma) * nbar^gamma )

    With ``gamma = 0`` (default) this is the mean over present classes of each class's mean hard-voxel CE:
    every class contributes equally whatever its size. ``gamma = 1`` is the plain mean over the kept voxels;
    in between interpolates as GACE's ``gama`` does (GACE: ``n'_k^(1-gamma) * N'^gamma``, summed over
    classes; here divided by ``|P|`` as well so the scale matches an ordinary CE). Optional
    ``absent_class_weight`` adds GADice's term
    for classes absent from the batch's labels: ``1/K * sum_{k absent} mean_v p_kv^2`` over the valid voxels
    (predicting an absent class is penalised in proportion to how much of it is predicted; GADice's
    ``sum_v beta_v p_kv`` with the detached ``beta_v = p_kv / N``, divided by ``K`` like GADice).
    """

    def __init__(
        self, num_classes: int, topk_ratio: float = 0.3, gamma: float = 0.0, absent_class_weight: float = 0.0
    ) -> None:
        super().__init__(num_classes)
        if not 0.0 < topk_ratio <= 1.0:
            raise ValueError(f"topk_ratio must lie in (0, 1], got {topk_ratio}")
        self.topk_ratio = topk_ratio
        self.gamma = gamma
        self.absent_class_weight = absent_class_weight

    def forward(self, logits: Tensor, labels: Tensor, ignore_index: int = -1) -> Tensor:
        k = logits.shape[1]
        lab = _flat_labels(labels, logits)
        valid = (lab != ignore_index) & (lab >= 0) & (lab < k)
        x = logits.float()
        ce = F.cross_entropy(x, torch.where(valid, lab, torch.zeros_like(lab)), reduction="none").reshape(-1)
        flat_valid = valid.reshape(-1)
        lab_v, ce_v = lab.reshape(-1)[flat_valid], ce[flat_valid]
        if lab_v.numel() == 0:
            return x.sum() * 0.0
        loss, present = hard_voxel_group_mean(ce_v, lab_v, k, self.topk_ratio, self.gamma)
        if self.absent_class_weight and bool((~present).any()):
            p = torch.softmax(x, dim=1).movedim(1, -1).reshape(-1, k)[flat_valid]
            absent_term = p[:, ~present].pow(2).mean(0).sum() / k
            loss = loss + self.absent_class_weight * absent_term
        return loss

    def pseudo_label_loss(self, logits: Tensor, labels: Tensor, ignore_index: int = -1) -> Tensor:
        """The same hard-voxel, per-class-normalised CE on the pseudo-labels (no Dice term involved)."""
        return self.forward(logits, labels, ignore_index=ignore_index)


def _mean_ce(logits: Tensor, labels: Tensor, class_weights: Tensor | None, ignore_index: int) -> Tensor:
    """(Weighted) mean cross-entropy over the voxels that are not ``ignore_index``; 0 (with a graph) if none."""
    k = logits.shape[1]
    lab = _flat_labels(labels, logits)
    valid = (lab != ignore_index) & (lab >= 0) & (lab < k)
    x = logits.float()
    ce = F.cross_entropy(x, torch.where(valid, lab, torch.zeros_like(lab)), reduction="none")
    w = torch.ones(k, device=x.device) if class_weights is None else class_weights.to(x.device).float()
    w_v = torch.where(valid, w[torch.where(valid, lab, torch.zeros_like(lab))], x.new_zeros(()))
    return (w_v * ce).sum() / w_v.sum().clamp_min(1e-8)


class ClassBalancedCEDice(nn.Module):
    """DHC as one module: :class:`DistributionDifficultyWeights` statistics + :class:`WeightedCEDiceLoss`.

    ``weight_pseudo_labels``: DHC weights the cross pseudo-supervision CE with the same class weights. Here the
    default is ``False`` (plain CE on pseudo-labels; the weights act on labelled data only). Why (issue 11): the
    weights give background 1/10 (DistDW's floor) to 1/40 (DiffDW) of a foreground class's weight, so a
    network learns a peer's foreground pseudo-label 10-40 times faster than it unlearns one. Every stray
    foreground voxel a peer predicts is copied and hardly ever removed: a ratchet towards distant false-positive
    fragments, which the two networks pass back and forth. On labelled data the ground truth anchors the
    weighted loss.
    """

    def __init__(
        self, num_classes: int, weighter: DistributionDifficultyWeights, loss: WeightedCEDiceLoss,
        weight_pseudo_labels: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.weighter = weighter
        self.loss = loss
        self.weight_pseudo_labels = weight_pseudo_labels

    def pseudo_label_weights(self) -> Tensor | None:
        """The class weights for the pseudo-label loss: ``None`` (plain) unless ``weight_pseudo_labels``."""
        return self.weights() if self.weight_pseudo_labels else None

    def update(self, probs: Tensor, labels: Tensor, update_difficulty: bool = True) -> None:
        self.weighter.update(probs, labels, update_difficulty=update_difficulty)

    def weights(self) -> Tensor:
        return self.weighter.weights()

    def forward(self, logits: Tensor, labels: Tensor, ignore_index: int = -1) -> Tensor:
        return self.loss(logits, labels, self.weights().to(logits.device), ignore_index=ignore_index)

    def pseudo_label_loss(self, logits: Tensor, labels: Tensor, ignore_index: int = -1) -> Tensor:
        """The cross-entropy alone (no Dice against pseudo-labels), class-weighted as DHC only with
        ``weight_pseudo_labels`` (see the class docstring)."""
        return _mean_ce(logits, labels, self.pseudo_label_weights(), ignore_index)


class NoClassBalance(_StatelessBalance):
    """The ``none`` ablation: no extra loss on labelled data (a zero that keeps the graph), and plain
    cross pseudo-supervision (Chen et al. 2021, unweighted CE) on the pseudo-labels."""

    def forward(self, logits: Tensor, labels: Tensor, ignore_index: int = -1) -> Tensor:
        return logits.float().sum() * 0.0

    def pseudo_label_loss(self, logits: Tensor, labels: Tensor, ignore_index: int = -1) -> Tensor:
        return _mean_ce(logits, labels, None, ignore_index)


_WEIGHT_KW = ("momentum", "mode", "difficulty_momentum", "difficulty_power", "dist_floor", "eps",
              "difficulty_measure")
_LOSS_KW = ("ce_weight", "dice_weight", "smooth", "batch_dice")
_MODULE_KW = ("weight_pseudo_labels",)


def split_dhc_options(kw: dict) -> tuple[dict, dict, dict]:
    """``dhc``'s keyword options split into (weighter, loss, module) arguments; unknown names are refused.
    Shared by :func:`build_class_balance` and the region builder."""
    unknown = set(kw) - set(_WEIGHT_KW) - set(_LOSS_KW) - set(_MODULE_KW)
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for class balance 'dhc'; "
            f"allowed: {sorted(_WEIGHT_KW + _LOSS_KW + _MODULE_KW)}"
        )
    return tuple({a: v for a, v in kw.items() if a in names} for names in (_WEIGHT_KW, _LOSS_KW, _MODULE_KW))


def build_class_balance(name: str, num_classes: int, regions: bool = False, **kw) -> nn.Module:
    """The class-balance module by name: ``dhc`` (``mode`` = ``both`` | ``dist`` | ``diff``), ``dhc_dist``,
    ``dhc_diff``, ``galoss`` or ``none``. Keyword arguments go to the matching constructor(s).

    ``regions=True``: the versions for nnU-Net's sigmoid regions (``losses/region_balance.py``), same names,
    same interface, labels ``(B, R, *spatial)`` 0/1 with ``-1`` for ignored voxels."""
    if regions:
        from nnunet_llmseg.losses.region_balance import build_region_balance

        return build_region_balance(name, num_classes, **kw)
    key, kw = resolve_balance_name(name, kw)
    if key == "dhc":
        weight_kw, loss_kw, module_kw = split_dhc_options(kw)
        return ClassBalancedCEDice(num_classes, DistributionDifficultyWeights(num_classes, **weight_kw),
                                   WeightedCEDiceLoss(**loss_kw), **module_kw)
    if key == "galoss":
        return GALossStyleHardVoxelLoss(num_classes, **kw)
    return NoClassBalance(num_classes)


def resolve_balance_name(name: str, kw: dict) -> tuple[str, dict]:
    """``(key, options)`` for a class-balance name, shared by the softmax and the region factories: ``key`` is
    ``dhc``, ``galoss`` or ``none``; ``dhc_dist`` / ``dhc_diff`` become ``dhc`` with that ``mode``. Raises a
    ``ValueError`` naming the choices for an unknown name, and for options the name does not take."""
    key = name.strip().lower()
    if key in ("dhc_dist", "dhc_diff"):
        if "mode" in kw:
            raise ValueError(f"class balance '{name}' fixes the mode; use 'dhc' with mode=... instead")
        return "dhc", {**kw, "mode": key.split("_")[1]}
    if key == "none" and kw:
        raise ValueError(f"class balance 'none' takes no options, got {sorted(kw)}")
    if key not in ("dhc", "galoss", "none"):
        raise ValueError(
            f"unknown class balance {name!r}; choose one of 'dhc', 'dhc_dist', 'dhc_diff', 'galoss', 'none'"
        )
    return key, kw


__all__ = [
    "ClassBalancedCEDice",
    "DistributionDifficultyWeights",
    "GALossStyleHardVoxelLoss",
    "NoClassBalance",
    "WeightedCEDiceLoss",
    "build_class_balance",
    "resolve_balance_name",
]
