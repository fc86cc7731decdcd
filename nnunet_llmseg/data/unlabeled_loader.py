"""The unlabelled half of every training iteration.

Sources: the preprocessed ``imagesUnlabeled`` cases and the training cases that the labelled subset designates
as unlabelled. The latter are read from nnU-Net's labelled folder, but only their image array: this module
never opens ``CASE_seg.b2nd``, ``CASE_seg.npy`` or an npz's ``seg`` member, nor the case's ``.pkl`` (it holds
the foreground locations nnU-Net sampled from the label), so their labels cannot leak into training.

Crops are random (uniform over the padded image exactly like nnU-Net's non-oversampled crops; there is no
label to oversample foreground with) and go through the transform pipeline nnU-Net trains with, so both halves
of the batch see the same augmentation. nnU-Net's pipeline needs a segmentation: it gets an all-zero one, or
for configurations with ``use_mask_for_norm`` the -1/0 nonzero mask, so that its ``MaskImageTransform`` zeroes
the background of unlabelled crops as it does for labelled ones.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.dataloading.data_loader import DataLoader
from threadpoolctl import threadpool_limits

from nnunet_llmseg.data.unlabeled_preprocessing import MARKER, read_marker
from nnunet_llmseg.data.worker_guard import exit_with_parent


def _open_array(path: Path, member: str = "data"):
    """A preprocessed array, lazily where the format allows (blosc2 and .npy are memory-mapped)."""
    if path.suffix == ".b2nd":
        import blosc2

        kw = {} if os.name == "nt" else {"mmap_mode": "r"}  # as nnU-Net: no mmap on Windows
        return blosc2.open(urlpath=str(path), mode="r", dparams={"nthreads": 1}, **kw)
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    if path.suffix == ".npz":
        with np.load(path) as z:  # members are decompressed on access: only ``member`` is read
            return z[member]
    raise ValueError(f"unsupported array file {path} (expected .b2nd, .npy or .npz)")


class UnlabeledDataset:
    """Case id -> preprocessed image file (and, for ``imagesUnlabeled`` cases, the nonzero-mask file).

    ``sources``: case id -> file of the data array (``.b2nd``, ``.npy``, or ``.npz`` whose ``data`` member is
    used). ``masks``: case id -> file holding the -1/0 mask (``.b2nd``, or ``.npz`` with a ``mask`` member).
    ``properties``: case id -> JSON properties file written by the unlabelled preprocessing.
    """

    def __init__(
        self,
        sources: dict[str, Path],
        masks: dict[str, Path] | None = None,
        properties: dict[str, Path] | None = None,
    ) -> None:
        self.sources = {k: Path(v) for k, v in sources.items()}
        self.masks = {k: Path(v) for k, v in (masks or {}).items()}
        self.properties_files = {k: Path(v) for k, v in (properties or {}).items()}
        unknown = sorted((set(self.masks) | set(self.properties_files)) - set(self.sources))
        if unknown:
            raise ValueError(f"masks/properties given for cases without an image: {unknown}")
        self.identifiers: list[str] = sorted(self.sources)
        self._properties_cache: dict[str, dict] = {}

    @property
    def images(self) -> dict[str, Path]:
        """Alias of ``sources`` (case id -> data file)."""
        return self.sources

    def __len__(self) -> int:
        return len(self.identifiers)

    def __getitem__(self, identifier: str):
        return self.load_case(identifier)

    def load_case(self, identifier: str) -> tuple[object, dict]:
        """(image array-like (C, *spatial), properties). The array may be lazy (blosc2, memory-mapped .npy).

        Properties are the JSON of the unlabelled preprocessing; for training cases used as unlabelled they
        are only ``{'source': 'training_case'}``: nnU-Net's ``.pkl`` is not read (it holds label-derived
        foreground locations, and we never unpickle files we did not write).
        """
        return _open_array(self.sources[identifier], "data"), self.properties(identifier)

    def load_mask(self, identifier: str):
        """The -1 (outside) / 0 (inside) nonzero mask (1, *spatial), or None when none was stored."""
        path = self.masks.get(identifier)
        return None if path is None else _open_array(path, "mask")

    def properties(self, identifier: str) -> dict:
        if identifier not in self._properties_cache:
            path = self.properties_files.get(identifier)
            if path is None:
                props = {"source": "training_case", "file": str(self.sources[identifier])}
            else:
                props = json.loads(path.read_text())
                props["source"] = "imagesUnlabeled"
            self._properties_cache[identifier] = props
        return self._properties_cache[identifier]


def build_unlabeled_dataset(
    preprocessed_dataset_folder: str | Path,
    unlabeled_folder: str | Path | None,
    unlabeled_train_keys: list[str],
) -> UnlabeledDataset:
    """Images of the preprocessed ``imagesUnlabeled`` folder (when given) plus the unlabelled-designated
    training cases of the labelled folder (image only, never the segmentation).

    ``unlabeled_folder`` must be complete (``_complete.json``, written last by the preprocessing); its case
    list is taken from that marker, so stray files are ignored.
    """
    sources: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    props: dict[str, Path] = {}
    labelled_folder = Path(preprocessed_dataset_folder)
    for key in unlabeled_train_keys:
        # image files only: .npy is nnU-Net's unpacked image (the label is KEY_seg.npy), .npz is read for
        # 'data'
        for suffix in (".b2nd", ".npy", ".npz"):
            if (labelled_folder / f"{key}{suffix}").is_file():
                sources[key] = labelled_folder / f"{key}{suffix}"
                break
        else:
            raise FileNotFoundError(
                f"no preprocessed image for training case {key} in {labelled_folder} "
                f"(expected {key}.b2nd); run nnUNetv2_preprocess for this configuration"
            )
    if unlabeled_folder is not None:
        folder = Path(unlabeled_folder)
        marker = read_marker(folder)
        if marker is None:
            raise FileNotFoundError(
                f"{folder / MARKER} missing: the unlabelled folder is incomplete; run "
                "`nnunet-llmseg preprocess-unlabeled -d DATASET -c CONFIGURATION --force`"
            )
        ext = ".npz" if marker.get("storage") == "npz" else ".b2nd"
        for case in marker.get("cases", []):
            if case in sources:
                raise ValueError(
                    f"unlabelled case name {case} clashes with a training case; rename "
                    f"imagesUnlabeled/{case}_XXXX"
                )
            sources[case] = folder / f"{case}{ext}"
            if not sources[case].is_file():
                raise FileNotFoundError(
                    f"{sources[case]} listed in {folder / MARKER} is missing; run "
                    "`nnunet-llmseg preprocess-unlabeled ... --force`"
                )
            props[case] = folder / f"{case}.json"
            if marker.get("has_mask"):
                masks[case] = sources[case] if ext == ".npz" else folder / f"{case}_mask.b2nd"
    return UnlabeledDataset(sources, masks, props)


def get_unlabeled_batch_size(planned_batch_size: int, labelled_fraction: float = 0.5) -> tuple[int, int]:
    """(labelled, unlabelled) split of nnU-Net's planned batch, at least 1 each.

    The labelled share is rounded half up, so odd batches favour labels: 2 -> (1, 1), 3 -> (2, 1), 5 -> (3,
    2), 9 -> (5, 4). A planned batch of 1 gives (1, 1): a step then holds two samples.
    """
    if planned_batch_size < 1:
        raise ValueError(f"planned batch size must be >= 1, got {planned_batch_size}")
    if not 0 < labelled_fraction < 1:
        raise ValueError(f"labelled_fraction must be in (0, 1), got {labelled_fraction}")
    n_l = int(np.floor(planned_batch_size * labelled_fraction + 0.5))
    n_l = min(max(1, n_l), max(1, planned_batch_size - 1))
    return n_l, max(1, planned_batch_size - n_l)


def mask_channels_of(transforms) -> list[int]:
    """Channels that nnU-Net's ``MaskImageTransform`` in ``transforms`` masks (empty when there is none)."""
    from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform

    found: list[int] = []

    def walk(t) -> None:
        if isinstance(t, MaskImageTransform):
            found.extend(int(c) for c in t.apply_to_channels)
        for child in getattr(t, "transforms", None) or []:
            walk(child)
        inner = getattr(t, "transform", None)
        if inner is not None:
            walk(inner)

    if transforms is not None:
        walk(transforms)
    return sorted(set(found))


class UnlabeledDataLoader(DataLoader):
    """Random crops of unlabelled images through nnU-Net's training transforms; yields ``{'data', 'keys'}``.

    ``patch_size`` is the larger initial patch nnU-Net crops before its spatial transform,
    ``final_patch_size`` what the network sees; ``data`` comes out as float32 ``(batch_size, C,
    *final_patch_size)``. Without ``transforms`` the crop is centre-cropped to ``final_patch_size`` (an
    un-augmented reference). 2D configurations work like nnU-Net's loader: a random slice of the 3D case.

    Randomness (case choice and crop position) comes from the loader's own generator, created in the process
    that draws (so every augmenter worker has its own): ``seed=None`` (default) seeds it from the OS like
    nnU-Net's workers; with ``seed`` it is ``SeedSequence(seed, spawn_key=(seed_offset, rank, worker id))``,
    reproducible and still different per worker, per rank and per ``seed_offset`` (e.g. a second loader).
    The augmentation itself draws from the global RNGs that nnU-Net's augmenters seed per worker.

    DDP: each rank samples from its own shard of the sorted case list (``identifiers[rank::world_size]``), so
    ranks see different cases; with fewer cases than ranks every rank uses all cases (its generator still
    differs by rank).

    ``mask_channels``: channels for which the crop's -1/0 nonzero mask is given to the transforms. By default
    the channels of the ``MaskImageTransform`` found in ``transforms`` (nnU-Net adds one only for
    ``use_mask_for_norm``). ``imagesUnlabeled`` cases use the mask stored by the preprocessing; training cases
    used as unlabelled (whose ``_seg`` file, where nnU-Net keeps that mask, must not be read) get it from the
    image itself: nnU-Net's masked z-score leaves the outside exactly 0, so ``image == 0`` in all masked
    channels marks it.

    ``region_folder``: where the trainer keeps each case's organ region (``CASE.npy``, uint8 ``(1, *spatial)``,
    written by ``nnUNetTrainerCoTraining._refresh_organ_regions``). With it every crop's region is cut with the same
    box and passed through the transforms as a second segmentation channel, so it stays aligned with the augmented
    crop, and the batch gets ``region`` (bool ``(B, 1, *final_patch_size)``). A case without a file yet is all
    region (nothing is cleaned); the padding outside the image is outside it.

    An augmenter worker drawing from this loader exits when the process that built the loader dies, even by
    ``kill -9`` (:func:`~nnunet_llmseg.data.worker_guard.exit_with_parent`).
    """

    def __init__(
        self,
        data: UnlabeledDataset,
        batch_size: int,
        patch_size: Sequence[int],
        final_patch_size: Sequence[int],
        transforms=None,
        seed_offset: int = 0,
        rank: int = 0,
        world_size: int = 1,
        seed: int | None = None,
        mask_channels: Sequence[int] | None = None,
        region_folder: str | Path | None = None,
    ) -> None:
        super().__init__(data, batch_size, 1, None, True, False, True, None)
        if len(data.identifiers) == 0:
            raise ValueError("UnlabeledDataLoader got a dataset without cases")
        if not 0 <= rank < max(1, world_size):
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if len(patch_size) != len(final_patch_size) or len(patch_size) not in (2, 3):
            raise ValueError(
                f"patch_size {patch_size} and final_patch_size {final_patch_size} must both be 2D or 3D"
            )
        ids = list(data.identifiers)
        self.indices = ids[rank::world_size] if len(ids) >= world_size > 1 else ids
        self.patch_size_was_2d = len(patch_size) == 2
        pre = (1,) if self.patch_size_was_2d else ()
        self.patch_size = (*pre, *(int(p) for p in patch_size))
        self.final_patch_size = (*pre, *(int(p) for p in final_patch_size))
        self.need_to_pad = np.maximum(np.array(self.patch_size) - np.array(self.final_patch_size), 0)
        self.transforms = transforms
        self.seed, self.seed_offset, self.rank, self.world_size = (
            seed,
            int(seed_offset),
            int(rank),
            int(world_size),
        )
        self.mask_channels = (
            list(mask_channels) if mask_channels is not None else mask_channels_of(transforms)
        )
        self.region_folder = None if region_folder is None else Path(region_folder)
        self._rng: np.random.Generator | None = None
        self._rng_owner: tuple[int, int] | None = None
        self._parent_pid = os.getpid()  # an augmenter worker drawing from this loader exits when it dies

    @property
    def rng(self) -> np.random.Generator:
        owner = (os.getpid(), int(getattr(self, "thread_id", 0)))
        if self._rng is None or self._rng_owner != owner:
            seq = np.random.SeedSequence(self.seed, spawn_key=(self.seed_offset, self.rank, owner[1]))
            self._rng, self._rng_owner = np.random.default_rng(seq), owner
        return self._rng

    def get_indices(self) -> list[str]:
        return [self.indices[i] for i in self.rng.integers(0, len(self.indices), self.batch_size)]

    def get_bbox(self, data_shape: Sequence[int]) -> list[list[int]]:
        """nnU-Net's random (not foreground-forced) crop: lower bounds uniform in [-pad/2, shape + pad/2 -
        patch], with pad = initial - final patch size (more when the image is smaller than the patch)."""
        bbox = []
        for d, size in enumerate(data_shape):
            pad = int(self.need_to_pad[d])
            if pad + size < self.patch_size[d]:
                pad = self.patch_size[d] - size
            lb = -pad // 2  # same expressions (and integer rounding) as nnUNetDataLoader.get_bbox
            ub = size + pad // 2 + pad % 2 - self.patch_size[d]
            start = int(self.rng.integers(lb, ub + 1))
            bbox.append([start, start + self.patch_size[d]])
        return bbox

    def _region_crop(self, key: str, data_shape: Sequence[int], bbox: list[list[int]]) -> torch.Tensor:
        """The case's organ region cut with ``bbox`` (int16, 1 inside), or all 1 while the case has none."""
        path = self.region_folder / f"{key}.npy"
        if not path.is_file():
            return torch.ones((1, *(b - a for a, b in bbox)), dtype=torch.int16)
        region = np.load(path, mmap_mode="r")
        if tuple(region.shape[1:]) != tuple(data_shape):
            raise ValueError(f"{path}: organ region of shape {region.shape[1:]} does not match the image's "
                             f"{tuple(data_shape)}; delete the folder {self.region_folder} and continue training")
        return torch.from_numpy(np.asarray(crop_and_pad_nd(region, bbox, 0))).to(torch.int16)

    def _center_crop(self, img: torch.Tensor) -> torch.Tensor:
        final = self.final_patch_size[1:] if self.patch_size_was_2d else self.final_patch_size
        slices = [slice(None)]
        for size, f in zip(img.shape[1:], final):
            start = (size - f) // 2
            slices.append(slice(start, start + f))
        return img[tuple(slices)]

    def generate_train_batch(self) -> dict:
        exit_with_parent(self._parent_pid)  # no-op in the trainer's own process and after the first batch
        keys = self.get_indices()
        images, regions = None, None
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for j, key in enumerate(keys):
                data, _ = self._data.load_case(key)
                mask = self._data.load_mask(key)
                bbox = self.get_bbox(tuple(data.shape[1:]))
                img = torch.from_numpy(np.asarray(crop_and_pad_nd(data, bbox, 0))).float()
                if mask is not None:
                    seg = torch.from_numpy(crop_and_pad_nd(mask, bbox, -1, cast_cropped_to=np.int16)).to(
                        torch.int16
                    )
                elif self.mask_channels:
                    outside = torch.stack([img[c] == 0 for c in self.mask_channels]).all(0)
                    seg = torch.where(outside, -1, 0).to(torch.int16)[None]
                else:
                    seg = torch.zeros((1, *img.shape[1:]), dtype=torch.int16)
                if self.region_folder is not None:  # a second channel: augmented exactly like the crop
                    seg = torch.cat((seg, self._region_crop(key, tuple(data.shape[1:]), bbox)))
                if self.patch_size_was_2d:
                    img, seg = img[:, 0], seg[:, 0]
                if self.transforms is not None:
                    out = self.transforms(image=img, segmentation=seg)
                    img, seg = out["image"], out["segmentation"]
                    seg = seg[0] if isinstance(seg, (list, tuple)) else seg
                else:
                    img, seg = self._center_crop(img), self._center_crop(seg)
                if images is None:
                    images = torch.empty((len(keys), *img.shape), dtype=torch.float32)
                    if self.region_folder is not None:
                        regions = torch.empty((len(keys), 1, *img.shape[1:]), dtype=torch.bool)
                images[j] = img
                if regions is not None:
                    regions[j] = seg[-1:] > 0
        batch = {"data": images, "keys": keys}
        if regions is not None:
            batch["region"] = regions
        return batch


def load_properties(unlabeled_folder: str | Path, case: str) -> dict:
    """Properties written by the unlabelled preprocessing (JSON; never pickle)."""
    return json.loads((Path(unlabeled_folder) / f"{case}.json").read_text())
