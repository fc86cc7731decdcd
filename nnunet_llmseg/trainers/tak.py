"""TAK as an nnU-Net trainer: text priors as segmentation-head parameters, contrastive alignment, class balance.

On top of :class:`nnUNetTrainerCoTraining` (the twin network and its CutMix view are TAK's teacher/mixing):

- ``build_network_architecture``: each network's full-resolution head is a text-driven dynamic head whose
  parameters a controller generates from the class's shape + location embeddings and a global image feature.
- ``compute_losses``: nnU-Net's Dice+CE with deep supervision, plus a class-imbalance-aware term (DHC's
  distribution-aware weights for network A and difficulty-aware weights for network B, i.e. DHC's heterogeneous
  pair, with difficulty measured by recall; or a GALoss-style hard-voxel loss), a plain CE on the peer's
  confident cross pseudo-labels (class weights there made a ratchet towards false positives, see
  ``ClassBalancedCEDice``), and a supervised contrastive loss that aligns voxel features of the two finest
  decoder scales with the class text embeddings.

See README "TAK" for the equations and the choices made where the paper and its code are silent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_llmseg.data import mixing
from nnunet_llmseg.losses.class_balance import build_class_balance
from nnunet_llmseg.losses.contrastive import TextAnchoredContrastiveLoss, sample_class_voxels
from nnunet_llmseg.networks.text_unets import TextDrivenUNet, TwinNetwork, predict_networks_from_env
from nnunet_llmseg.trainers.semi_supervised import _full_res, _take, nnUNetTrainerCoTraining, twin_has_regions, unwrap
from nnunet_llmseg.trainers.text_priors import text_spec_from_plans


class nnUNetTrainerTAK(nnUNetTrainerCoTraining):
    """TAK (textual anatomical knowledge) for class-imbalanced semi-supervised multi-organ segmentation."""

    use_text: bool = True
    text_keys: tuple[str, ...] = ("tak_shape", "tak_location")
    #: contrastive alignment: weight, start epoch (None: 10% of the epochs), projection size, voxels per class
    use_contrast: bool = True
    contrast_weight: float = 0.1
    contrast_start_epoch: int | None = None
    contrast_dim: int = 64
    contrast_voxels_per_class: int = 64
    contrast_temperature: float = 0.07
    #: normalised-entropy threshold for pseudo-labelled voxels; relaxes linearly from start to end over training
    entropy_threshold: tuple[float, float] = (0.25, 0.75)
    #: "dhc" (distribution-aware for A, difficulty-aware for B), "galoss", or "none"
    class_balance: str = "dhc"
    balance_weight: float = 1.0
    #: cross pseudo-labels: voxels where the peer's max probability is below this are ignored
    pseudo_label_threshold: float = 0.65

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.return_features = True
        self.contrastive = TextAnchoredContrastiveLoss(self.contrast_temperature)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        spec = text_spec_from_plans(plans_manager) if cls.use_text else {"text_dim": 1}

        def one() -> nn.Module:
            unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager,
                                                            num_input_channels, num_output_channels,
                                                            enable_deep_supervision)
            return TextDrivenUNet(unet, num_output_channels, spec["text_dim"], use_text=cls.use_text,
                                  contrast_dim=cls.contrast_dim if cls.use_contrast else 0)

        regions = twin_has_regions(plans_manager)
        balance = nn.ModuleDict({
            "a": build_class_balance(cls._balance_kind("a"), num_output_channels, regions=regions),
            "b": build_class_balance(cls._balance_kind("b"), num_output_channels, regions=regions),
        })
        return TwinNetwork(one(), one(), predict_networks_from_env(), has_regions=regions, training_state=balance,
                           num_outputs=num_output_channels)

    @classmethod
    def _balance_kind(cls, net: str) -> str:
        """DHC's heterogeneous pair: distribution-aware weights for A, difficulty-aware for B."""
        if cls.class_balance == "dhc":
            return "dhc_dist" if net == "a" else "dhc_diff"
        return cls.class_balance

    # ---- schedule ------------------------------------------------------------------------------------------
    def _progress(self) -> float:
        total = max(1, self.num_epochs * self.num_iterations_per_epoch)
        return min(1.0, (self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch) / total)

    def _contrast_active(self) -> bool:
        start = self.contrast_start_epoch if self.contrast_start_epoch is not None \
            else math.floor(0.1 * self.num_epochs)
        return self.use_contrast and self.current_epoch >= start

    # ---- losses --------------------------------------------------------------------------------------------
    def compute_losses(self, out_a, out_b, y_l, n_l: int, n_u: int, cutmix: mixing.CutMixBatch) -> dict:
        (logits_a, feats_a), (logits_b, feats_b) = out_a, out_b
        twin = unwrap(self.network)
        balance = twin.training_state
        sup = self.loss(_take(logits_a, 0, n_l), y_l) + self.loss(_take(logits_b, 0, n_l), y_l)

        out = self.outputs  # softmax labels or sigmoid regions; the ignore label becomes -1
        la, lb = _full_res(logits_a).float(), _full_res(logits_b).float()
        y_full = out.target_labels(_full_res(y_l))
        rel_a, rel_b = self.teacher_reliabilities(la[:n_l], lb[:n_l], y_l)
        with torch.no_grad():
            balance["a"].update(out.probs(la[:n_l]), y_full)
            balance["b"].update(out.probs(lb[:n_l]), y_full)
        bal_sup = balance["a"](la[:n_l], y_full) + balance["b"](lb[:n_l], y_full)

        # cross pseudo-supervision on the mixed view, with confidence-gated pseudo-labels
        student_a, student_b, teacher_a, teacher_b = self.mixed_frame(la, lb, n_l, cutmix)
        with torch.no_grad():
            prob_from_a = out.probs(teacher_a.detach())
            prob_from_b = out.probs(teacher_b.detach())
            keep_b, keep_a = self.teaching_mask(teacher_a, cutmix), self.teaching_mask(teacher_b, cutmix)
            plab_from_a = _drop_outside(self._confident_labels(prob_from_a), keep_b)
            plab_from_b = _drop_outside(self._confident_labels(prob_from_b), keep_a)
        unsup_b = balance["b"].pseudo_label_loss(student_b, plab_from_a)  # A teaches B
        unsup_a = balance["a"].pseudo_label_loss(student_a, plab_from_b)  # B teaches A
        unsup = unsup_a + unsup_b
        confident = 0.5 * ((plab_from_a >= 0).float().mean() + (plab_from_b >= 0).float().mean())

        contrast = la.new_zeros(())
        if self._contrast_active():
            thr = self._entropy_threshold()
            plab_b = self._reliable_labels(prob_from_a, thr)  # B's features are in the mixed frame
            plab_a = self._reliable_labels(prob_from_b, thr)  # A's too, unless only B sees the mixed view:
            if cutmix.plain is None:  # then A's are unmixed, and B's labels only hold outside the boxes
                plab_a = plab_a.masked_fill(cutmix.mask[:, 0], -1)
            contrast = 0.5 * (self._contrast(twin.net_a, feats_a, y_l, plab_a, n_l)
                              + self._contrast(twin.net_b, feats_b, y_l, plab_b, n_l))

        w = self.unsup_weight()
        gated = rel_a * unsup_b + rel_b * unsup_a
        total = sup + self.balance_weight * bal_sup + w * gated + self.contrast_weight * contrast
        if self.is_ddp:  # DDP wants a gradient for every parameter: add the idle ones with weight 0
            total = total + _zero_touch(twin, total)
        losses = {"loss": total, "sup_loss": (sup + self.balance_weight * bal_sup).detach(),
                  "unsup_loss": unsup.detach(), "unsup_weight": w, "reliability": 0.5 * (rel_a + rel_b),
                  "confident_fraction": confident.detach(), "contrast_loss": contrast.detach()}
        return self._with_pasted_share(losses, keep_a, keep_b)

    def _confident_labels(self, prob: torch.Tensor) -> torch.Tensor:
        """The peer's argmax, ``-1`` (ignored) where its max probability is below ``pseudo_label_threshold``.
        Regions: ``p >= 0.5`` per region, ``-1`` where ``max(p, 1 - p)`` is below the threshold."""
        out = self.outputs
        return out.hard_labels(prob).masked_fill(out.confidence(prob) < self.pseudo_label_threshold, -1)

    def _entropy_threshold(self) -> float:
        start, end = self.entropy_threshold
        return start + (end - start) * self._progress()

    def _reliable_labels(self, prob: torch.Tensor, threshold: float) -> torch.Tensor:
        """One pseudo-label per voxel (argmax; for regions the innermost region, see ``OutputSpace``); voxels
        whose normalised entropy exceeds ``threshold`` are ignored (-1)."""
        out = self.outputs
        labels = out.voxel_labels(out.hard_labels(prob))
        return labels.masked_fill(out.normalised_entropy(prob) > threshold, -1)

    def _contrast(self, net: nn.Module, feats: list[torch.Tensor], y_l, plab_u: torch.Tensor, n_l: int):
        """Supervised contrastive loss over the finest scales, class texts as extra anchors (TAK's alignment)."""
        targets = y_l if isinstance(y_l, (list, tuple)) else [y_l]
        out = self.outputs
        k = out.num_voxel_classes
        anchors = net.text_proj(net.class_text()) if net.text_proj is not None else None
        anchor_labels = out.anchor_labels(feats[0].device)
        losses = []
        for s, proj in enumerate(net.voxel_proj):
            f = feats[s].float()
            if s >= len(targets):
                break
            lab_l = out.voxel_labels(out.target_labels(targets[s]))  # ignore label -> -1, never sampled
            lab_u = F.interpolate(plab_u[:, None].float(), size=f.shape[2:], mode="nearest")[:, 0].long()
            labels = torch.cat((lab_l, lab_u))
            sampled, sampled_labels = sample_class_voxels(f, labels, self.contrast_voxels_per_class, k)
            if sampled.shape[0] == 0:
                continue
            losses.append(self.contrastive(proj(sampled), sampled_labels, anchors=anchors,
                                           anchor_labels=anchor_labels if anchors is not None else None))
        return torch.stack(losses).mean() if losses else feats[0].new_zeros(())

    # ---- logging -------------------------------------------------------------------------------------------
    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        values = [float(o["contrast_loss"]) for o in train_outputs if "contrast_loss" in o]
        if values:
            self.print_to_log_file(f"contrast_loss {sum(values) / len(values):.4f}")
        line = self.class_weights_line()
        if line:
            self.print_to_log_file(line)

    def class_weights_line(self) -> str | None:
        """Both networks' current class-balance weights for the text log, e.g. ``class weights a [..] b [..]``.

        The checkpoint's ``logging`` keeps network A's weights per epoch, but a benchmark keeps only the text logs
        (the whole-slice ACDC runs could not say why DHC's balance cost TAK 0.033 once the checkpoints were gone).
        Balances that keep no statistics (the ``none`` ablation, GALoss) log uniform ones.
        """
        parts = [f"{net} [" + ", ".join(f"{w:.3f}" for w in weights) + "]"
                 for net in ("a", "b") if (weights := self._balance_weights(net)) is not None]
        return "class weights " + " ".join(parts) if parts else None

    def class_weights_for_log(self) -> list[float] | None:
        weights = self._balance_weights("a")
        return [round(w, 4) for w in weights] if weights is not None else None

    def _balance_weights(self, net: str) -> list[float] | None:
        """Network ``net``'s current class-balance weights (None for a balance without ``weights``)."""
        weights = getattr(unwrap(self.network).training_state[net], "weights", None)
        return [float(w) for w in weights().tolist()] if callable(weights) else None


def _drop_outside(labels: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Pseudo-labels (``(B, *spatial)``, or ``(B, R, *spatial)`` for regions) set to ``-1`` (ignored) where ``keep``
    (bool ``(B, 1, *spatial)``) is False; unchanged when ``keep`` is None."""
    if keep is None:
        return labels
    return labels.masked_fill(~(keep[:, 0] if labels.dim() == keep.dim() - 1 else keep), -1)


def _zero_touch(twin: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """``0 * sum`` of the parameters a step may leave out of the graph - the plain full-resolution segmentation
    layer that the dynamic head replaces, and the contrastive projections before the contrast starts - so that
    DDP (``find_unused_parameters=False``, as nnU-Net wraps it) finds a gradient for every parameter."""
    zero = like.new_zeros(())
    for net in (twin.net_a, twin.net_b):
        idle = [net.voxel_proj, net.text_proj] + ([net.unet.decoder.seg_layers[-1]] if net.head is not None else [])
        for mod in idle:
            if mod is not None:
                for p in mod.parameters():
                    zero = zero + p.sum() * 0.0
    return zero
