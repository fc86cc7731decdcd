"""The base trainers: labelled subsets, unlabelled data, and the co-training loop both methods share.

- :class:`nnUNetTrainerLabelledOnly` - vanilla nnU-Net trained on the labelled subset only (the fair baseline).
- :class:`nnUNetTrainerSemiSupervised` - owns the data side: the labelled subset of the fold, unlabelled
  preprocessing on first use, and a loader that yields a labelled and an unlabelled batch every iteration.
- :class:`nnUNetTrainerCoTraining` - two networks (one :class:`TwinNetwork`), each teaching the other on a CutMix
  view of the unlabelled batch; method trainers override ``build_network_architecture`` and ``compute_losses``.

Everything else (planning, preprocessing, augmentation, poly LR, mixed precision, DDP, sliding-window
validation and prediction) is nnU-Net's own.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from torch import nn
from torch._dynamo import OptimizedModule

from nnunet_llmseg.data import mixing
from nnunet_llmseg.data.intensity import strong_intensity_view
from nnunet_llmseg.data.labelled_subset import load_labelled_subset, split_training_keys
from nnunet_llmseg.data.unlabeled_loader import (
    UnlabeledDataLoader,
    UnlabeledDataset,
    build_unlabeled_dataset,
    get_unlabeled_batch_size,
)
from nnunet_llmseg.data.unlabeled_preprocessing import (
    ensure_unlabeled_preprocessed,
    unlabeled_preprocessed_folder,
)
from nnunet_llmseg.losses.cps import CrossPseudoSupervisionLoss
from nnunet_llmseg.losses.regions import OutputSpace
from nnunet_llmseg.losses.teacher_cleaning import (
    CONFIDENT_LOGIT,
    background_outside_largest_components,
    background_outside_region,
    foreground,
    organ_region,
)
from nnunet_llmseg.networks.text_unets import TwinNetwork, predict_networks_from_env
from nnunet_llmseg.trainers.crash_safety import CrashSafeTraining
from nnunet_llmseg.trainers.pretrained import describe, install_pretrained_hook, load_pretrained_into_twin
from nnunet_llmseg.trainers.progress import SemiSupervisedLocalLogger
from nnunet_llmseg.trainers.text_priors import check_checkpoint_priors, load_text_spec, stacked_rows

TWIN_PLANS_KEY = "nnunet_llmseg"


def twin_has_regions(plans_manager) -> bool:
    """Whether the outputs are sigmoid regions; recorded in the plans by the trainer (the predictor has no labels)."""
    return bool(plans_manager.plans.get(TWIN_PLANS_KEY, {}).get("has_regions", False))


def unwrap(network: nn.Module) -> nn.Module:
    """The module under DDP and torch.compile wrappers."""
    mod = network.module if hasattr(network, "module") and not isinstance(network, TwinNetwork) else network
    return mod._orig_mod if isinstance(mod, OptimizedModule) else mod


def labelled_split(trainer: nnUNetTrainer, log: bool = True) -> tuple[list[str], list[str], list[str]]:
    """(labelled training keys, unlabelled-designated training keys, validation keys) of the trainer's fold.

    The subset file (``labelled_subset_fold{F}.json`` written by ``nnunet-llmseg subset``) decides which training
    cases keep their labels; without it every training case is labelled. Validation cases are never touched.
    """
    tr_keys, val_keys = trainer.do_split()
    subset = load_labelled_subset(trainer.preprocessed_dataset_folder_base, trainer.fold) \
        if trainer.fold != "all" else None
    labelled, unlabelled = split_training_keys(list(tr_keys), subset)
    if subset is not None and log:
        trainer.print_to_log_file(
            f"Labelled subset (fold {trainer.fold}, rule {subset.get('rule')}, seed {subset.get('seed')}): "
            f"{len(labelled)} labelled, {len(unlabelled)} training cases used as unlabelled, "
            f"{len(val_keys)} validation cases. Labelled: {sorted(labelled)}")
    return labelled, unlabelled, list(val_keys)


class nnUNetTrainerLabelledOnly(CrashSafeTraining, nnUNetTrainer):
    """Vanilla nnU-Net on the labelled subset only: the baseline every semi-supervised result is compared to."""

    def get_tr_and_val_datasets(self):
        labelled, _, val_keys = labelled_split(self)
        kw = {"folder_with_segs_from_previous_stage": self.folder_with_segs_from_previous_stage}
        return (self.dataset_class(self.preprocessed_dataset_folder, labelled, **kw),
                self.dataset_class(self.preprocessed_dataset_folder, val_keys, **kw))


def cascade_refusal(trainer_name: str, configuration: str, previous_stage: str) -> str:
    """Why the semi-supervised trainers do not train a cascade stage, and what to do instead."""
    return (
        f"{trainer_name} cannot train the cascade configuration '{configuration}': its network takes the "
        f"'{previous_stage}' model's segmentation as extra input channels, and nnU-Net produces those only for "
        "labelled cases (predicted_next_stage, from the previous stage's cross-validation). There are none for the "
        "unlabelled images, so the unlabelled half of every batch would have no input for those channels. Train "
        f"{trainer_name} on 3d_fullres, 3d_lowres or 2d (and combine them with nnUNetv2_find_best_configuration / "
        f"nnUNetv2_ensemble), or train the cascade with nnUNetTrainer / nnUNetTrainerLabelledOnly.")


class DualBatchLoader:
    """Yields nnU-Net's labelled batch with the unlabelled batch added under ``data_u`` (two augmenters)."""

    def __init__(self, labelled, unlabelled) -> None:
        self.labelled = labelled
        self.unlabelled = unlabelled

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.labelled)
        unlabelled = next(self.unlabelled)
        batch["data_u"] = unlabelled["data"]
        if "region" in unlabelled:  # organ regions of the unlabelled crops (teacher_region_margin_mm)
            batch["region_u"] = unlabelled["region"]
        return batch

    def _finish(self) -> None:
        for gen in (self.labelled, self.unlabelled):
            if isinstance(gen, NonDetMultiThreadedAugmenter):
                gen._finish()


class nnUNetTrainerSemiSupervised(CrashSafeTraining, nnUNetTrainer):
    """Base of the semi-supervised trainers: the data side.

    Every iteration gets nnU-Net's labelled batch (foreground oversampling, nnU-Net's augmentation) plus an
    unlabelled batch of random crops with the same spatial and intensity augmentation. By default the
    labelled batch is nnU-Net's planned batch and the unlabelled batch has the same size
    (``unlabelled_batch_ratio = 1``), so at the same schedule each network gets exactly the labelled
    supervision that vanilla nnU-Net gets (a step costs about twice nnU-Net's step per network). Halving the
    planned batch instead (``unlabelled_batch_ratio = None``) made co-training lag labelled-only nnU-Net by
    about three epochs on Hippocampus (docs/methods.md).

    Start-up order: the unlabelled data are checked (and preprocessed on first use) before nnU-Net's loaders
    start their workers, so a missing or bad unlabelled image stops training with our message as the last
    thing printed and no background worker left behind. Checkpoints and workers: :class:`CrashSafeTraining`.
    """

    #: share of nnU-Net's planned batch size that is labelled (rest: unlabelled); used when
    #: ``unlabelled_batch_ratio`` is None
    labelled_batch_fraction: float = 0.5
    #: ``r``: keep nnU-Net's planned batch of labelled crops and add ``r`` times as many unlabelled crops
    #: (``None``: split the planned batch by ``labelled_batch_fraction``)
    unlabelled_batch_ratio: float | None = 1.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:
            raise RuntimeError(cascade_refusal(self.__class__.__name__, configuration,
                                               self.configuration_manager.previous_stage_name))
        self.unlabeled_batch_size: int | None = None
        self.unlabeled_train_keys: list[str] = []
        #: the unlabelled cases the training loader draws from (set by ``get_dataloaders``)
        self.unlabelled_dataset: UnlabeledDataset | None = None
        self.logger.local_logger = SemiSupervisedLocalLogger()

    def _set_batch_size_and_oversample(self) -> None:
        super()._set_batch_size_and_oversample()
        if self.unlabelled_batch_ratio is None:
            self.batch_size, self.unlabeled_batch_size = get_unlabeled_batch_size(
                self.batch_size, self.labelled_batch_fraction)
        else:
            self.unlabeled_batch_size = max(1, round(self.batch_size * self.unlabelled_batch_ratio))

    def get_tr_and_val_datasets(self):
        labelled, unlabelled, val_keys = labelled_split(self)
        self.unlabeled_train_keys = unlabelled
        kw = {"folder_with_segs_from_previous_stage": self.folder_with_segs_from_previous_stage}
        return (self.dataset_class(self.preprocessed_dataset_folder, labelled, **kw),
                self.dataset_class(self.preprocessed_dataset_folder, val_keys, **kw))

    def get_dataloaders(self):
        unlabelled = self.prepare_unlabeled_dataset()  # before any worker process exists
        self.unlabelled_dataset = unlabelled
        dl_train, dl_val = super().get_dataloaders()
        return DualBatchLoader(dl_train, self.get_unlabeled_dataloader(unlabelled)), dl_val

    def prepare_unlabeled_dataset(self) -> UnlabeledDataset:
        """Preprocess ``imagesUnlabeled`` on first use (rank 0) and list the unlabelled cases; refuses to start
        without any. Starts no process, so its errors are the last thing a failed start prints."""
        plans_file = join(self.preprocessed_dataset_folder_base, self.plans_manager.plans_name + ".json")
        _, self.unlabeled_train_keys, _ = labelled_split(self, log=False)
        if self.local_rank == 0:
            ensure_unlabeled_preprocessed(self.plans_manager.dataset_name, self.configuration_name,
                                          self.plans_manager.plans_name)
        if self.is_ddp:
            dist.barrier()
        folder = unlabeled_preprocessed_folder(self.preprocessed_dataset_folder_base,
                                               self.configuration_manager.data_identifier)
        dataset = build_unlabeled_dataset(self.preprocessed_dataset_folder,
                                          folder if folder.is_dir() else None, self.unlabeled_train_keys)
        if len(dataset.identifiers) == 0:
            raise RuntimeError(
                f"{self.__class__.__name__} is a semi-supervised trainer but found no unlabelled data for "
                f"{self.plans_manager.dataset_name} fold {self.fold}: no images in nnUNet_raw/"
                f"{self.plans_manager.dataset_name}/imagesUnlabeled and no labelled subset file "
                f"(labelled_subset_fold{self.fold}.json) that leaves training cases unlabelled. Add unlabelled "
                "images, or run `nnunet-llmseg subset -d DATASET -f FOLD --count N`, or train with "
                f"nnUNetTrainer. (plans: {plans_file})")
        return dataset

    def get_unlabeled_dataloader(self, dataset: UnlabeledDataset | None = None):
        """The augmented unlabelled loader over ``dataset`` (default: :meth:`prepare_unlabeled_dataset`)."""
        if dataset is None:
            dataset = self.prepare_unlabeled_dataset()
        self.print_to_log_file(f"Unlabelled cases: {len(dataset.identifiers)}; batch {self.batch_size} labelled + "
                               f"{self.unlabeled_batch_size} unlabelled")
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=self.label_manager.foreground_labels, regions=None, ignore_label=None)
        world = dist.get_world_size() if self.is_ddp else 1
        loader = UnlabeledDataLoader(dataset, self.unlabeled_batch_size, initial_patch_size,
                                     self.configuration_manager.patch_size, transforms=transforms,
                                     rank=self.local_rank, world_size=world, region_folder=self.region_folder())
        n_proc = get_allowed_n_proc_DA()
        if n_proc == 0:
            return SingleThreadedAugmenter(loader, None)
        return NonDetMultiThreadedAugmenter(loader, None, num_processes=max(1, n_proc // 2),
                                            num_cached=max(3, n_proc // 2), seeds=None,
                                            pin_memory=self.device.type == "cuda", wait_time=0.002)

    def region_folder(self) -> str | None:
        """Where the organ regions of the unlabelled cases are kept; None when the trainer uses none."""
        return None

    def on_train_end(self) -> None:
        if isinstance(self.dataloader_train, DualBatchLoader):
            self.dataloader_train._finish()
        super().on_train_end()


#: per-step shares the engine options report (``train_step`` output key, epoch log line with the epoch's mean)
_OPTION_SHARES = (
    ("pasted_foreground_ignored", "pasted foreground: {:.4f} of the unlabelled voxels were the teachers' foreground "
                                  "inside pasted boxes, left out of the unsupervised loss"),
    ("region_cleaned", "organ regions: {:.4f} of the teachers' foreground voxels on unlabelled crops lay outside and "
                       "were taught as background"),
)


class nnUNetTrainerCoTraining(nnUNetTrainerSemiSupervised):
    """Two networks, each teaching the other on unlabelled data (cross pseudo-supervision with CutMix).

    Per iteration both networks see ``[labelled, CutMix(unlabelled)]`` (one ``TwinNetwork`` call, so DDP
    synchronises both). Both get nnU-Net's Dice+CE with deep supervision on the labelled part; on the mixed
    unlabelled part each is supervised by its peer's predictions on the *unmixed* crops, mixed the same way (one
    extra forward of the unlabelled crops per network, without gradient), as in Chen et al.'s CPS with CutMix
    (``compute_losses``, ``mixed_frame``). ``mixed_view = "b"`` is the first engine: A sees the plain crops and
    B the mixed ones, each taught through the other's outputs in the mixed frame. One SGD optimiser holds both
    networks' parameters (identical to two optimisers with nnU-Net's settings, and nnU-Net's poly schedule,
    checkpointing and resume apply unchanged); gradients are clipped per network.
    """

    #: maximum weight of the unsupervised loss, reached after ``rampup_fraction`` of all iterations
    unsup_weight_max: float = 1.0
    rampup_fraction: float = 0.2
    #: scale each network's unsupervised loss by its teacher's reliability (EMA of the teacher's labelled Dice)
    use_reliability_gate: bool = True
    #: CutMix box volume as a fraction of the patch
    cutmix_volume_fraction: tuple[float, float] = (0.25, 0.5)
    #: the students' view of the unlabelled crops: CutMix for "both" networks, or for network "b" only (A on the
    #: plain crops; the first engine, where network B alone beat labelled-only nnU-Net and A fell below it -
    #: docs/methods.md), "none" (no CutMix: both networks see the plain crops and each is taught by its peer's output
    #: on them, CPS without mixing), "intensity" (no box: both students see a strong intensity view of the crops,
    #: ``data/intensity.py``, taught by their peer's prediction on the plain crops), or "labelled" (as "both", but
    #: every partner is a labelled crop, every second box inverted, and the ground truth teaches the labelled part:
    #: the bidirectional copy-paste of Bai et al., CVPR 2023)
    mixed_view: str = "both"
    #: turn each class's components outside its largest one in the teachers' predictions on the unmixed crops
    #: into confident background before they teach (``losses/teacher_cleaning.py``); needs mixed_view "both" or
    #: "intensity" (the views with a separate teacher forward)
    clean_teacher_strays: bool = False
    #: organ-region teachers (None: off): in the teachers' predictions on the unmixed crops, foreground farther than
    #: this many mm from the largest connected foreground component of both networks' prediction of the *whole*
    #: unlabelled volume becomes confident background (``losses/teacher_cleaning.py``, ``organ_region``). The
    #: regions are predicted with nnU-Net's sliding window after ``region_start_fraction`` of the epochs and again
    #: every ``region_refresh_epochs``; for targets that are one connected structure. Needs the views of
    #: ``clean_teacher_strays``
    teacher_region_margin_mm: float | None = None
    region_start_fraction: float = 0.1
    region_refresh_epochs: int = 10
    #: leave the teachers' foreground inside the pasted CutMix boxes out of the unsupervised loss (their background
    #: there still teaches): a pasted box shows its content cut from its surroundings, and a student taught to label
    #: an LV cavity cut from its myocardium may learn to label any bright blob as one (docs/methods.md: the
    #: co-trained networks' own far false foreground). Needs mixed_view "both"
    ignore_pasted_foreground: bool = False
    #: whether ``TwinNetwork`` must also return decoder features (TAK's contrastive loss needs them)
    return_features: bool = False
    #: text priors the networks read (keys of ``prior_generation``'s embeddings, concatenated per class);
    #: with ``use_text`` the trainer refuses to start without matching priors
    use_text: bool = False
    text_keys: tuple[str, ...] = ()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.mixed_view not in ("both", "b", "none", "intensity", "labelled"):  # checked once, at start
            raise ValueError(f"{type(self).__name__}.mixed_view must be 'both', 'b', 'none', 'intensity' or "
                             f"'labelled', not {self.mixed_view!r}")
        if self.ignore_pasted_foreground and self.mixed_view != "both":
            raise ValueError(f"{type(self).__name__}.ignore_pasted_foreground needs mixed_view 'both' (unlabelled "
                             f"partners, a separate teacher pass), not {self.mixed_view!r}")
        for option, on in (("clean_teacher_strays", self.clean_teacher_strays),
                           ("teacher_region_margin_mm", self.teacher_region_margin_mm is not None)):
            if on and self.mixed_view not in ("both", "intensity", "labelled"):  # both clean the teachers' pass
                raise ValueError(f"{type(self).__name__}.{option} needs mixed_view 'both', 'intensity' or 'labelled' "
                                 f"(a separate teacher forward on the plain crops), not {self.mixed_view!r}")
        self._regions_epoch: int | None = None  # epoch of the organ regions on disk (None: none this run)
        self._iteration_in_epoch = 0
        self.unsupervised_loss: nn.Module | None = None
        #: softmax classes or sigmoid regions, and the ignore label (losses/regions.py)
        self.outputs = OutputSpace.from_label_manager(self.label_manager)
        # what the inference-time network build needs beyond nnU-Net's plans (copied into the model folder)
        self.plans_manager.plans[TWIN_PLANS_KEY] = {"has_regions": bool(self.label_manager.has_regions)}
        self.priors, self.prior_rows = (None, None)
        if self.use_text:
            self.priors, self.prior_rows = load_text_spec(self)
        # nnUNetv2_train -pretrained_weights: initialise both networks from a plain nnU-Net checkpoint
        install_pretrained_hook(self)

    def initialize(self) -> None:
        super().initialize()
        self.unsupervised_loss = self._build_unsupervised_loss()
        if self.priors is not None:  # fill both networks' persistent text buffers
            text = stacked_rows(self.priors, self.text_keys, self.prior_rows).to(self.device)
            twin = unwrap(self.network)
            for net in (twin.net_a, twin.net_b):
                net.text_embeddings.copy_(text)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's, after checking that a checkpoint file continues with the priors it was trained with."""
        if self.priors is not None and isinstance(filename_or_checkpoint, str):
            check_checkpoint_priors(self, filename_or_checkpoint)
        super().load_checkpoint(filename_or_checkpoint)

    def load_pretrained_weights(self, fname: str) -> dict:
        """``-pretrained_weights``: both networks' U-Nets from a plain nnU-Net checkpoint (trainers/pretrained.py)."""
        if not self.was_initialized:
            self.initialize()
        report = load_pretrained_into_twin(unwrap(self.network), fname)
        self.print_to_log_file(describe(report, fname), also_print_to_console=True)
        return report

    def _build_unsupervised_loss(self) -> nn.Module:
        """Plain cross pseudo-supervision (Chen et al. 2021); method trainers override this."""
        return CrossPseudoSupervisionLoss(regions=self.label_manager.has_regions)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        def one() -> nn.Module:
            return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager,
                                                            num_input_channels, num_output_channels,
                                                            enable_deep_supervision)
        return TwinNetwork(one(), one(), predict_networks_from_env(), has_regions=twin_has_regions(plans_manager),
                           num_outputs=num_output_channels)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        unwrap(self.network).set_deep_supervision(enabled)

    # ---- schedule -------------------------------------------------------------------------------------------
    def unsup_weight(self) -> float:
        """Sigmoid ramp-up (Laine & Aila 2017): w_max * exp(-5 (1 - t)^2), t = progress / rampup share."""
        total = max(1, self.num_epochs * self.num_iterations_per_epoch)
        it = self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch
        ramp = max(1.0, self.rampup_fraction * total)
        t = min(1.0, it / ramp)
        return float(self.unsup_weight_max * math.exp(-5.0 * (1.0 - t) ** 2))

    def on_train_epoch_start(self) -> None:
        self._iteration_in_epoch = 0
        super().on_train_epoch_start()
        if self.teacher_region_margin_mm is not None and self._regions_due():
            self._refresh_organ_regions()

    # ---- organ-region teachers (teacher_region_margin_mm) ---------------------------------------------------
    def region_folder(self) -> str | None:
        return None if self.teacher_region_margin_mm is None else join(self.output_folder, "teacher_regions")

    def on_train_start(self) -> None:
        """nnU-Net's, then the organ regions of an earlier run are dropped: they are recomputed from the networks
        this run starts with (a resumed run as soon as it is past the first refresh epoch)."""
        super().on_train_start()
        folder = self.region_folder()
        if folder is not None and self.local_rank == 0:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder, exist_ok=True)
        if folder is not None and self.is_ddp:
            dist.barrier()
        self._regions_epoch = None

    def _regions_due(self) -> bool:
        first = max(1, round(self.region_start_fraction * self.num_epochs))
        if self.current_epoch < first:
            return False
        return self._regions_epoch is None or self.current_epoch - self._regions_epoch >= self.region_refresh_epochs

    @torch.no_grad()
    def _refresh_organ_regions(self) -> None:
        """Predict every unlabelled volume with both networks (nnU-Net's sliding window, no mirroring) and store
        its organ region for the loader's workers (``CASE.npy``, replaced atomically). Rank 0 predicts; the other
        ranks wait."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        start = time.time()
        folder = self.region_folder()
        if self.local_rank == 0:
            dataset = self.unlabelled_dataset  # the loader's cases (set up before any refresh, on every rank)
            twin = unwrap(self.network)
            self.set_deep_supervision_enabled(False)
            predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                        perform_everything_on_device=True, device=self.device, verbose=False,
                                        verbose_preprocessing=False, allow_tqdm=False)
            predictor.manual_initialization(twin, self.plans_manager, self.configuration_manager, None,
                                            self.dataset_json, type(self).__name__, None)
            spacing = tuple(float(s) for s in self.configuration_manager.spacing)
            in_plane_only = len(self.configuration_manager.patch_size) == 2
            inside = 0.0
            try:
                for case in dataset.identifiers:
                    data, _ = dataset.load_case(case)
                    logits = predictor.predict_sliding_window_return_logits(
                        torch.from_numpy(np.asarray(data[:], dtype=np.float32)))
                    fg = foreground(logits[None], self.label_manager.has_regions)[0, 0]
                    region = organ_region(fg.cpu().numpy(), spacing if not in_plane_only else (1.0, *spacing),
                                          float(self.teacher_region_margin_mm), in_plane_only)
                    inside += float(region.mean())
                    tmp = join(folder, f".{case}.tmp.npy")
                    np.save(tmp, region[None].astype(np.uint8))
                    os.replace(tmp, join(folder, f"{case}.npy"))
            finally:
                twin.train()
                self.set_deep_supervision_enabled(self.enable_deep_supervision)
            self.print_to_log_file(
                f"organ regions of {len(dataset.identifiers)} unlabelled cases refreshed in "
                f"{time.time() - start:.1f} s "
                f"(margin {self.teacher_region_margin_mm} mm; mean share of the volume inside: "
                f"{inside / max(1, len(dataset.identifiers)):.3f})")
        if self.is_ddp:
            dist.barrier()
        self._regions_epoch = self.current_epoch

    def _clean_outside_organ_region(self, plain: tuple[torch.Tensor, ...], region: torch.Tensor
                                    ) -> tuple[tuple[torch.Tensor, ...], float]:
        """The teachers' unmixed predictions with foreground outside the crops' organ regions made background, and
        the share of the first teacher's foreground voxels that this removed (logged per epoch)."""
        has_regions = self.label_manager.has_regions
        region = region.to(self.device, non_blocking=True)
        fg = foreground(plain[0], has_regions)
        cleaned = float((fg & ~region).sum()) / max(1.0, float(fg.sum()))
        return tuple(background_outside_region(p, region, has_regions) for p in plain), cleaned

    # ---- one iteration --------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else nullcontext()

    def train_step(self, batch: dict) -> dict:
        x_l = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        y_l = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        x_u = batch["data_u"].to(self.device, non_blocking=True)
        n_l, n_u = x_l.shape[0], x_u.shape[0]
        region_cleaned = None  # share of the teachers' foreground outside the organ regions (when they are used)

        if self.mixed_view in ("none", "intensity"):  # an empty box: nothing is pasted
            mask = torch.zeros((n_u, 1, *x_u.shape[2:]), dtype=torch.bool, device=self.device)
        else:
            mask = mixing.cutmix_box_mask(n_u, tuple(x_u.shape[2:]), self.cutmix_volume_fraction, self.device)
        if self.mixed_view == "labelled":  # labelled partners, boxes both ways, the truth teaching in them
            mask = mixing.both_directions(mask)
            partner = mixing.labelled_partner_indices(n_u, n_l).to(self.device)
            out = self.outputs
            truth = mixing.truth_as_teacher_logits(out.target_labels(_full_res(y_l)), out.num_outputs,
                                                   out.has_regions, CONFIDENT_LOGIT)
            cutmix = mixing.CutMixBatch(mask, partner, truth=truth)
        else:
            cutmix = mixing.CutMixBatch(mask, mixing.partner_indices(n_u, n_u + n_l).to(self.device))
        x_mix = strong_intensity_view(x_u) if self.mixed_view == "intensity" else cutmix.mixed(x_u, x_l)
        if self.mixed_view in ("both", "intensity", "labelled"):
            with torch.no_grad(), self._autocast():  # the teachers' view: predictions on the unmixed crops
                plain_a, plain_b = unwrap(self.network)(x_u, x_u)
            cutmix.plain = (_full_res(plain_a).detach(), _full_res(plain_b).detach())
            if self.clean_teacher_strays:
                regions = self.label_manager.has_regions
                cutmix.plain = tuple(background_outside_largest_components(p, regions) for p in cutmix.plain)
            if "region_u" in batch:
                cutmix.plain, region_cleaned = self._clean_outside_organ_region(cutmix.plain, batch["region_u"])

        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out_a, out_b = self.network(torch.cat((x_l, x_u if self.mixed_view == "b" else x_mix)),
                                        torch.cat((x_l, x_mix)), return_features=self.return_features)
            losses = self.compute_losses(out_a, out_b, y_l, n_l, n_u, cutmix)
        self._backward_and_step(losses["loss"])
        if region_cleaned is not None:
            losses["region_cleaned"] = region_cleaned
        self._iteration_in_epoch += 1
        return {k: (v.detach().float().cpu().numpy() if torch.is_tensor(v) else np.asarray(v))
                for k, v in losses.items()}

    def compute_losses(self, out_a, out_b, y_l, n_l: int, n_u: int, cutmix: mixing.CutMixBatch) -> dict:
        """Supervised Dice+CE for both networks + weighted mutual unsupervised loss on the mixed view.

        ``out_*`` are nnU-Net outputs (a list over deep-supervision scales, full resolution first) for the
        concatenated batch; the first ``n_l`` samples are labelled. Returns a dict with ``loss`` (to backprop)
        and the values to log.
        """
        sup = self.loss(_take(out_a, 0, n_l), y_l) + self.loss(_take(out_b, 0, n_l), y_l)
        logits_a, logits_b = _full_res(out_a), _full_res(out_b)
        rel_a, rel_b = self.teacher_reliabilities(logits_a[:n_l], logits_b[:n_l], y_l)
        student_a, student_b, teacher_a, teacher_b = self.mixed_frame(logits_a, logits_b, n_l, cutmix)
        keep_b, keep_a = self.teaching_mask(teacher_a, cutmix), self.teaching_mask(teacher_b, cutmix)
        loss_b, stats_b = self.unsupervised_loss(student_b, teacher_a, keep_b)  # A teaches B
        loss_a, stats_a = self.unsupervised_loss(student_a, teacher_b, keep_a)  # B teaches A
        w = self.unsup_weight()
        unsup = loss_a + loss_b
        gated = rel_a * loss_b + rel_b * loss_a
        losses = {"loss": sup + w * gated, "sup_loss": sup.detach(), "unsup_loss": unsup.detach(),
                  "unsup_weight": w, "reliability": 0.5 * (rel_a + rel_b),
                  "confident_fraction": 0.5 * (stats_a["confident_fraction"] + stats_b["confident_fraction"])}
        return self._with_pasted_share(losses, keep_a, keep_b)

    def teaching_mask(self, teacher: torch.Tensor, cutmix: mixing.CutMixBatch) -> torch.Tensor | None:
        """Where a teacher's output (mixed frame, ``(n_u, C, *spatial)``) teaches: everywhere (``None``), or with
        ``ignore_pasted_foreground`` everywhere but its foreground inside the pasted boxes (bool
        ``(n_u, 1, *spatial)``, True = teaches)."""
        if not self.ignore_pasted_foreground:
            return None
        return ~(cutmix.mask & foreground(teacher.detach(), self.label_manager.has_regions))

    @staticmethod
    def _with_pasted_share(losses: dict, *keeps: torch.Tensor | None) -> dict:
        """``losses`` plus, when pasted foreground is left out, the share of unlabelled voxels it covered."""
        if keeps and keeps[0] is not None:
            losses["pasted_foreground_ignored"] = torch.stack([(~k).float().mean() for k in keeps]).mean().detach()
        return losses

    @staticmethod
    def mixed_frame(logits_a: torch.Tensor, logits_b: torch.Tensor, n_l: int, cutmix: mixing.CutMixBatch
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(student_a, student_b, teacher_a, teacher_b)``, all in the mixed frame of the unlabelled crops.

        ``student_x`` is network x's output its peer's teaching acts on (it carries x's gradient), ``teacher_x``
        what x teaches its peer (the losses detach it). ``logits_*`` are full-resolution outputs for the whole
        batch, labelled first. Both networks on the mixed view: the students are their mixed-view outputs and the
        teachers their unmixed predictions mixed the same way; only B on it: A's outputs are mixed (and are both
        A's student and its teaching), B's mixed-view outputs likewise.
        """
        if cutmix.plain is None:
            a_mixed = cutmix.mixed(logits_a[n_l:], logits_a[:n_l])
            return a_mixed, logits_b[n_l:], a_mixed, logits_b[n_l:]
        plain_a, plain_b = cutmix.plain
        teacher_a = cutmix.mixed(plain_a.to(logits_a.dtype), cutmix.labelled_teacher(logits_a[:n_l].detach()))
        teacher_b = cutmix.mixed(plain_b.to(logits_b.dtype), cutmix.labelled_teacher(logits_b[:n_l].detach()))
        return logits_a[n_l:], logits_b[n_l:], teacher_a, teacher_b

    def teacher_reliabilities(self, labelled_logits_a: torch.Tensor, labelled_logits_b: torch.Tensor, y_l
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update and return both networks' reliability as teachers (``losses/teacher_reliability.py``).

        With ``use_reliability_gate = False`` both are 1 (the unsupervised loss follows the ramp-up alone).
        """
        if not self.use_reliability_gate:
            one = labelled_logits_a.new_ones((), dtype=torch.float32)
            return one, one
        target = _full_res(y_l)
        gate = unwrap(self.network).teacher_reliability
        kw = {"has_regions": self.label_manager.has_regions, "ignore_label": self.label_manager.ignore_label}
        return gate.update(0, labelled_logits_a, target, **kw), gate.update(1, labelled_logits_b, target, **kw)

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        twin = unwrap(self.network)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            self._clip(twin)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            self._clip(twin)
            self.optimizer.step()

    @staticmethod
    def _clip(twin: nn.Module) -> None:
        torch.nn.utils.clip_grad_norm_(twin.net_a.parameters(), 12)
        torch.nn.utils.clip_grad_norm_(twin.net_b.parameters(), 12)

    # ---- logging --------------------------------------------------------------------------------------------
    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        for key, log_key in (("sup_loss", "sup_losses"), ("unsup_loss", "unsup_losses"),
                             ("unsup_weight", "unsup_weight"), ("confident_fraction", "confident_fraction"),
                             ("reliability", "reliability")):
            values = [float(o[key]) for o in train_outputs if key in o]
            value = float(np.mean(values)) if values else float("nan")
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, value)
                value = float(np.nanmean(gathered))
            self.logger.log(log_key, value, self.current_epoch)
        self.logger.log("gate", self.gate_value(), self.current_epoch)
        self.logger.log("text_share", self.text_share(), self.current_epoch)
        self.logger.log("class_weights", self.class_weights_for_log(), self.current_epoch)
        log = self.logger.local_logger.my_fantastic_logging
        for key, message in _OPTION_SHARES:  # what an engine option changed this epoch, when it is on
            shares = [float(o[key]) for o in train_outputs if key in o]
            if shares:
                self.print_to_log_file(message.format(np.mean(shares)))
        self.print_to_log_file(
            f"sup_loss {log['sup_losses'][-1]:.4f} unsup_loss {log['unsup_losses'][-1]:.4f} "
            f"(weight {log['unsup_weight'][-1]:.3f}, teacher reliability {log['reliability'][-1]:.3f}) "
            f"confident {log['confident_fraction'][-1]:.3f} "
            f"gate {log['gate'][-1]:.4f} text share {log['text_share'][-1]:.4f}")

    def gate_value(self) -> float:
        """Fusion gate to log (LLM-SegNet); 0 for trainers without one."""
        return 0.0

    def text_share(self) -> float:
        """Relative size of the text-driven change of the bottleneck (LLM-SegNet); 0 without one."""
        return 0.0

    def class_weights_for_log(self) -> list[float] | None:
        """Per-class loss weights to log (TAK); None for trainers without them."""
        return None


def _take(out, start: int, stop: int):
    return [o[start:stop] for o in out] if isinstance(out, (list, tuple)) else out[start:stop]


def _full_res(out) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out
