"""The unlabelled half of every training iteration.

Sources: the preprocessed ``imagesUnlabeled`` cases and the training cases that the labelled subset designates
as unlabelled. The latter are read from nnU-Net's labelled folder, but only their image array: the loader never
opens ``CASE_seg.b2nd`` (nor an npz's ``seg``), so their labels cannot leak into training. Crops are random
(uniform over the padded image, no foreground oversampling: there is no label to oversample with) and go through
the transform pipeline nnU-Net trains with, so both halves of the batch see the same augmentation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.dataloading.data_loader import DataLoader
from threadpoolctl import threadpool_limits


class UnlabeledDataset:
    """Case id -> image array (and, for ``imagesUnlabeled`` cases, the nonzero mask nnU-Net derived)."""

    def __init__(self, images: dict[str, Path], masks: dict[str, Path] | None = None) -> None:
        self.images = {k: Path(v) for k, v in images.items()}
        self.masks = {k: Path(v) for k, v in (masks or {}).items()}
        self.identifiers = sorted(self.images)

    def load_case(self, identifier: str):
        """(image (C, *spatial), mask (1, *spatial) int8 or None); arrays may be lazy (blosc2)."""
        return _open_array(self.images[identifier]), \
            (_open_array(self.masks[identifier]) if identifier in self.masks else None)


def _open_array(path: Path):
    if path.suffix == ".b2nd":
        import blosc2

        return blosc2.open(urlpath=str(path), mode="r", dparams={"nthreads": 1}, mmap_mode="r")
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    if path.suffix == ".npz":
        with np.load(path) as z:
            return z["data"]  # only the image member is read
    raise ValueError(f"unsupported array file {path}")


def build_unlabeled_dataset(preprocessed_dataset_folder: str | Path, unlabeled_folder: str | Path | None,
                            unlabeled_train_keys: list[str]) -> UnlabeledDataset:
    """Images of ``imagesUnlabeled`` (if preprocessed) plus the unlabelled-designated training cases."""
    images, masks = {}, {}
    labelled_folder = Path(preprocessed_dataset_folder)
    for key in unlabeled_train_keys:
        for suffix in (".b2nd", ".npy", ".npz"):
            if (labelled_folder / f"{key}{suffix}").is_file():
                images[key] = labelled_folder / f"{key}{suffix}"
                break
        else:
            raise FileNotFoundError(f"no preprocessed image for training case {key} in {labelled_folder}")
    if unlabeled_folder is not None:
        folder = Path(unlabeled_folder)
        for f in sorted(folder.glob("*.json")):
            if f.name.startswith("_"):
                continue
            case = f.stem
            if case in images:
                raise ValueError(f"unlabelled case name {case} clashes with a training case; rename "
                                 f"imagesUnlabeled/{case}_XXXX")
            images[case] = folder / f"{case}.b2nd"
            if (folder / f"{case}_mask.b2nd").is_file():
                masks[case] = folder / f"{case}_mask.b2nd"
    return UnlabeledDataset(images, masks)


def get_unlabeled_batch_size(planned_batch_size: int, labelled_fraction: float = 0.5) -> tuple[int, int]:
    """(labelled, unlabelled) split of nnU-Net's planned batch, at least 1 each; odd batches favour labels
    (``round`` half up), e.g. 2 -> (1, 1), 3 -> (2, 1), 9 -> (5, 4). A planned batch of 1 gives (1, 1)."""
    n_l = int(np.floor(planned_batch_size * labelled_fraction + 0.5))
    n_l = min(max(1, n_l), max(1, planned_batch_size - 1))
    return n_l, max(1, planned_batch_size - n_l)


class UnlabeledDataLoader(DataLoader):
    """Random crops of unlabelled images through nnU-Net's training transforms; yields ``{'data', 'keys'}``.

    ``patch_size`` is the larger initial patch nnU-Net crops before its spatial transform, ``final_patch_size``
    what the network sees. Under DDP each rank samples from its own shard of the case list (``rank::world``), so
    ranks draw different cases; with fewer cases than ranks every rank uses all of them.
    """

    def __init__(self, data: UnlabeledDataset, batch_size: int, patch_size, final_patch_size, transforms=None,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(data, batch_size, 1, None, True, False, True, None)
        ids = data.identifiers
        shard = ids[rank::world_size] if len(ids) >= world_size > 1 else ids
        self.indices = shard
        self.patch_size = tuple(int(p) for p in patch_size)
        self.final_patch_size = tuple(int(p) for p in final_patch_size)
        self.transforms = transforms

    def _random_bbox(self, shape: tuple[int, ...]) -> list[list[int]]:
        bbox = []
        for size, patch, final in zip(shape, self.patch_size, self.final_patch_size):
            pad = max(0, patch - final)  # nnU-Net's need_to_pad: the final patch may reach the border
            lb_min = -(pad // 2)
            ub_max = size + pad // 2 + pad % 2 - patch
            if ub_max < lb_min:  # image smaller than the patch: centre it
                lb_min = ub_max = (size - patch) // 2
            lb = np.random.randint(lb_min, ub_max + 1)
            bbox.append([lb, lb + patch])
        return bbox

    def generate_train_batch(self) -> dict:
        keys = self.get_indices()
        images = None
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for j, key in enumerate(keys):
                data, mask = self._data.load_case(key)
                bbox = self._random_bbox(tuple(data.shape[1:]))
                img = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()
                if mask is not None:
                    seg = torch.from_numpy(crop_and_pad_nd(mask, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16)
                else:
                    seg = torch.zeros((1, *img.shape[1:]), dtype=torch.int16)
                if self.transforms is not None:
                    img = self.transforms(image=img, segmentation=seg)["image"]
                if images is None:
                    images = torch.empty((len(keys), *img.shape), dtype=torch.float32)
                images[j] = img
        return {"data": images, "keys": keys}


def load_properties(unlabeled_folder: str | Path, case: str) -> dict:
    """Properties written by the unlabelled preprocessing (JSON; never pickle)."""
    return json.loads((Path(unlabeled_folder) / f"{case}.json").read_text())
