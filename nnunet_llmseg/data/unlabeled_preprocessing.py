"""Preprocess ``imagesUnlabeled/`` with exactly the dataset's plans, into a folder of its own.

Raw convention: ``$nnUNet_raw/DatasetXXX/imagesUnlabeled/CASE_0000.nii.gz`` (same channel suffixes and file
ending as ``imagesTr``). Output: ``$nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/`` beside the
configuration's folder, never mixed into it (nnU-Net infers its case list from that folder):

- ``CASE.b2nd``: the image, made by nnU-Net's own preprocessor class
  (``configuration_manager.preprocessor_class``, ``run_case(files, None, ...)``), so transpose, cropping,
  normalisation and resampling are nnU-Net's; stored with nnU-Net's blosc2 chunk/block/codec parameters (or
  ``CASE.npz`` with ``data``/``mask`` members when the labelled folder is an old-style numpy folder).
- ``CASE_mask.b2nd`` (only when the configuration uses ``use_mask_for_norm``): the -1 (outside) / 0 (inside)
  nonzero mask that ``run_case`` returns as ``seg`` when there is no label file; nnU-Net's augmentation masks
  the image with it, exactly as it does with the -1 region of a labelled case's ``_seg.b2nd``.
- ``CASE.json``: the case properties, as JSON (never pickle: we write them and we read them).
- ``_complete.json``: marker with the plans hash, configuration, case list, raw file fingerprints and
  versions.

Every image is checked against the training images before it is preprocessed (:func:`check_image`): one
volume per channel file, the same dimensionality (a 2D slice in a 3D dataset would otherwise be resampled into
999 slices of nonsense), and a voxel spacing within a factor of :data:`SPACING_FACTOR` of the training images'
range (``dataset_fingerprint.json``). A failed check names the file and what was expected.

The folder is written under a temporary name and renamed into place at the end (the previous complete folder
is kept until then), every file is written under a temporary name and renamed, and a lock file serialises
concurrent runs (e.g. two trainers starting at once), so a failure never leaves a half-written folder.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MARKER = "_complete.json"
#: 2: images are checked against the training images' geometry (folders of format 1 are redone once)
MARKER_FORMAT = 2
#: an unlabelled image's spacing may differ from the training images' range by at most this factor per axis
SPACING_FACTOR = 10.0
#: nnU-Net's readers give 2D images a dummy first spacing of 999 x the in-plane spacing
_DUMMY_2D_RATIO = 998.0


class UnlabeledImageError(RuntimeError):
    """An unlabelled image that cannot be read or does not fit the dataset (the message names the file)."""


# ---- locations and listing ---------------------------------------------------------------------------------


def unlabeled_preprocessed_folder(preprocessed_dataset_folder_base: str | Path, data_identifier: str) -> Path:
    """``<base>/<data_identifier>_unlabeled``: beside the configuration's folder, never inside it."""
    return Path(preprocessed_dataset_folder_base) / f"{data_identifier}_unlabeled"


def _num_channels(dataset_json: dict) -> int:
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not channels:
        raise UnlabeledImageError(
            "dataset.json has no 'channel_names': cannot tell how many channel files a case has"
        )
    return len(channels)


def list_unlabeled_cases(raw_dataset_folder: str | Path, dataset_json: dict) -> dict[str, list[str]]:
    """Case id -> channel files (in channel order) of ``imagesUnlabeled``; {} when the folder is absent.

    Files must carry nnU-Net's channel suffix (``CASE_0000<file_ending>``); a case missing a channel file is
    an error naming the case and the missing file, so a typo never silently drops a modality.
    """
    folder = Path(raw_dataset_folder) / "imagesUnlabeled"
    if not folder.is_dir():
        return {}
    ending = dataset_json["file_ending"]
    n_channels = _num_channels(dataset_json)
    cases: dict[str, set[int]] = {}
    for f in sorted(folder.iterdir()):
        if not f.name.endswith(ending) or f.name.startswith((".", "_")):  # skips e.g. macOS '._x.nii.gz'
            continue
        stem = f.name[: -len(ending)]
        if len(stem) < 6 or stem[-5] != "_" or not stem[-4:].isdigit():
            raise UnlabeledImageError(
                f"{f}: unlabelled images need nnU-Net's channel suffix (CASE_0000{ending}); "
                "for MSD-style files (no suffix) run `nnunet-llmseg convert-msd-unlabeled` "
                "or rename them CASE_0000" + ending
            )
        cases.setdefault(stem[:-5], set()).add(int(stem[-4:]))
    out = {}
    for case, channels in sorted(cases.items()):
        missing = [c for c in range(n_channels) if c not in channels]
        if missing:
            raise UnlabeledImageError(
                f"unlabelled case {case}: missing channel file(s) "
                + ", ".join(str(folder / f"{case}_{c:04d}{ending}") for c in missing)
                + f" (dataset.json lists {n_channels} channel(s))"
            )
        extra = sorted(c for c in channels if c >= n_channels)
        if extra:
            raise UnlabeledImageError(
                f"unlabelled case {case}: unexpected channel file(s) "
                + ", ".join(str(folder / f"{case}_{c:04d}{ending}") for c in extra)
                + f" (dataset.json lists {n_channels} channel(s))"
            )
        out[case] = [str(folder / f"{case}_{c:04d}{ending}") for c in range(n_channels)]
    return out


# ---- staleness ---------------------------------------------------------------------------------------------


def _resolved_configuration(plans_file: Path, configuration: str) -> dict:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return dict(PlansManager(str(plans_file)).get_configuration(configuration).configuration)


def _plans_hash(plans_file: str | Path, configuration: str) -> str:
    """Hash of what determines the preprocessed arrays: the resolved configuration (``inherits_from`` applied)
    and the plans-level fields preprocessing reads. Training-only fields (batch size, patch size, architecture)
    are left out, so editing them (the benchmark's CPU plans copies) does not force re-preprocessing; the patch
    size only sets the storage chunking, as for nnU-Net's own preprocessed data."""
    plans = json.loads(Path(plans_file).read_text())
    relevant = {
        k: plans.get(k)
        for k in (
            "transpose_forward",
            "foreground_intensity_properties_per_channel",
            "image_reader_writer",
            "original_median_spacing_after_transp",
        )
    }
    cfg = _resolved_configuration(Path(plans_file), configuration)
    relevant["configuration"] = {k: v for k, v in cfg.items() if k not in ("batch_size", "patch_size", "architecture")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _raw_fingerprint(cases: dict[str, list[str]]) -> dict[str, list[int]]:
    """file name -> [size, mtime_ns]: a replaced image with the same name also triggers re-preprocessing."""
    out = {}
    for files in cases.values():
        for f in files:
            st = os.stat(f)
            out[os.path.basename(f)] = [int(st.st_size), int(st.st_mtime_ns)]
    return out


def _raw_cases_for(preprocessed_dataset_folder_base: Path) -> dict[str, list[str]] | None:
    """The raw unlabelled cases of this dataset, or None when the raw dataset folder is not available."""
    raw_root = os.environ.get("nnUNet_raw")
    if not raw_root:
        return None
    raw = Path(raw_root) / Path(preprocessed_dataset_folder_base).name
    dj = Path(preprocessed_dataset_folder_base) / "dataset.json"
    if not raw.is_dir() or not dj.is_file():
        return None
    return list_unlabeled_cases(raw, json.loads(dj.read_text()))


def read_marker(folder: str | Path) -> dict | None:
    """The ``_complete.json`` of a preprocessed unlabelled folder, or None when the folder is not complete."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None


def unlabeled_needs_preprocessing(
    preprocessed_dataset_folder_base: str | Path,
    data_identifier: str,
    plans_file: str | Path,
    cases: dict[str, list[str]] | list[str] | None = None,
    configuration: str | None = None,
) -> bool:
    """True when the folder or its marker is missing, the plans changed what preprocessing produces (hash), or
    the raw unlabelled images changed (case list, or a file's size/mtime).

    ``cases``: the raw listing (dict from :func:`list_unlabeled_cases`, or just the case ids); by default it
    is read from ``$nnUNet_raw/<dataset>/imagesUnlabeled`` when that folder exists. Without a raw folder (e.g.
    training on a machine that only has ``nnUNet_preprocessed``) a complete folder whose plans hash matches is
    considered up to date.
    """
    folder = unlabeled_preprocessed_folder(preprocessed_dataset_folder_base, data_identifier)
    info = read_marker(folder)
    if info is None or info.get("format") != MARKER_FORMAT:
        return True
    cfg = configuration or info.get("configuration")
    if info.get("configuration") != cfg or info.get("plans_hash") != _plans_hash(plans_file, cfg):
        return True
    if cases is None:
        cases = _raw_cases_for(Path(preprocessed_dataset_folder_base))
        if cases is None:
            return False
    if sorted(info.get("cases", [])) != sorted(cases):
        return True
    return isinstance(cases, dict) and info.get("raw_files") != _raw_fingerprint(cases)


# ---- checks against the training images -------------------------------------------------------------------


def _is_dummy_2d(spacing: list[float], shape: tuple[int, ...] | None = None) -> bool:
    """nnU-Net's readers return 2D images as (C, 1, X, Y) with a first spacing of 999 x the in-plane one."""
    if len(spacing) != 3 or (shape is not None and shape[0] != 1):
        return False
    return float(spacing[0]) >= _DUMMY_2D_RATIO * max(float(s) for s in spacing[1:])


def training_reference(preprocessed_dataset_folder_base: str | Path, dataset_json: dict, plans: dict) -> dict:
    """What an unlabelled image must agree with, from what nnU-Net recorded about the training images.

    ``dataset_fingerprint.json`` (written by ``nnUNetv2_plan_and_preprocess``) holds every training case's
    spacing in the reader's axis order, the order the unlabelled images are read in. Without it only the
    dimensionality (from the plans' median spacing) and the channel count are checked.
    """
    base = Path(preprocessed_dataset_folder_base)
    ref = {"n_channels": _num_channels(dataset_json), "file_ending": dataset_json.get("file_ending", ""),
           "spacing_min": None, "spacing_max": None, "n_cases": None, "source": None}
    fp_file = base / "dataset_fingerprint.json"
    spacings = None
    if fp_file.is_file():
        try:
            spacings = [[float(v) for v in s] for s in json.loads(fp_file.read_text())["spacings"]]
        except (ValueError, KeyError, TypeError):
            spacings = None
    if spacings and all(len(s) == len(spacings[0]) for s in spacings):
        ref["is_2d"] = all(_is_dummy_2d(s) for s in spacings)
        arr = np.array(spacings)
        ref.update(spacing_min=arr.min(0).tolist(), spacing_max=arr.max(0).tolist(), n_cases=len(spacings),
                   source=str(fp_file))
    else:
        median = [float(v) for v in plans.get("original_median_spacing_after_transp", [1.0, 1.0, 1.0])]
        ref["is_2d"] = len(median) == 3 and max(median) >= _DUMMY_2D_RATIO * min(median)
        ref["source"] = str(base / f"{plans.get('plans_name', 'nnUNetPlans')}.json")
    return ref


def _header_dimension(path: str) -> tuple[int, int] | None:
    """(dimension, components per voxel) from the file header (SimpleITK formats), None where it cannot be
    read cheaply."""
    try:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        return int(reader.GetDimension()), int(reader.GetNumberOfComponents())
    except Exception:
        return None


def _fmt(values) -> str:
    return " x ".join(f"{float(v):g}" for v in values)


def check_image(files: list[str], data_shape: tuple[int, ...], spacing: list[float], reference: dict,
                volumes_per_file: list[int] | None = None) -> None:
    """Refuse an unlabelled image that does not look like the training images (message names the file).

    ``data_shape`` and ``spacing`` are what nnU-Net's reader returned for the case's channel files:
    ``(C, X, Y, Z)`` and the spacing in the reader's axis order. ``volumes_per_file`` (only needed when
    ``C`` is wrong) tells which file holds more than one volume.
    """
    n_channels = reference["n_channels"]
    where = reference.get("source") or "the dataset's plans"
    if data_shape[0] != n_channels:
        counts = volumes_per_file or [data_shape[0]] * len(files)
        for f, k in zip(files, counts):
            if k != 1:
                header = _header_dimension(f)
                if header is not None and header[1] > 1:
                    what = f"{header[0]}D image with {header[1]} components per voxel (vector/RGB)"
                elif header is not None:
                    what = f"{header[0]}D image with {k} volumes"
                else:
                    what = f"file with {k} volumes"
                raise UnlabeledImageError(
                    f"{f}: {what}, expected a 3D image with one file per channel (like imagesTr: "
                    f"CASE_0000{reference['file_ending']} ... one volume each; dataset.json lists "
                    f"{n_channels} channel(s)). Split it into one file per channel, e.g. with "
                    "`nnunet-llmseg convert-msd-unlabeled` for MSD-style 4D files"
                )
        raise UnlabeledImageError(
            f"{', '.join(files)}: {data_shape[0]} channel volume(s), expected {n_channels} (dataset.json)"
        )
    sp = [float(v) for v in spacing]
    if not all(np.isfinite(v) and v > 0 for v in sp):
        raise UnlabeledImageError(f"{files[0]}: invalid voxel spacing {sp} (must be positive); fix the header")
    image_2d = _is_dummy_2d(sp, tuple(data_shape[1:]))
    size = _fmt(data_shape[2:] if image_2d else data_shape[1:])
    if image_2d and not reference["is_2d"]:
        raise UnlabeledImageError(
            f"{files[0]}: 2D image ({size} pixels), but the training images are 3D ({where}); unlabelled "
            "images must be 3D volumes like imagesTr (nnU-Net would resample a 2D slice into 999 slices)"
        )
    if not image_2d and reference["is_2d"] and data_shape[1] != 1:  # a one-slice volume is a 2D image too
        raise UnlabeledImageError(
            f"{files[0]}: 3D image ({size} voxels), but the training images are 2D ({where}); unlabelled "
            "images must be 2D like imagesTr"
        )
    lo, hi = reference.get("spacing_min"), reference.get("spacing_max")
    if lo is None or hi is None or len(lo) != len(sp):
        return
    # the dummy 999 axis of 2D data (and the slice axis of a one-slice volume in a 2D dataset) is not compared
    axes = range(1, len(sp)) if image_2d or reference["is_2d"] else range(len(sp))
    for i in axes:
        if not lo[i] / SPACING_FACTOR <= sp[i] <= hi[i] * SPACING_FACTOR:
            raise UnlabeledImageError(
                f"{files[0]}: voxel spacing {_fmt(sp)} (reader's axis order) is implausible for this dataset: "
                f"axis {i} is {sp[i]:g}, the {reference['n_cases']} training images have {lo[i]:g} to "
                f"{hi[i]:g} ({where}; allowed: up to {SPACING_FACTOR:g}x outside that range). Fix the image "
                "header (wrong units?) or remove the image"
            )


# ---- writing -----------------------------------------------------------------------------------------------


def _jsonable(x):
    """Properties -> JSON types (numpy scalars/arrays and tuples become plain numbers and lists)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def _storage_format(labelled_folder: Path) -> str:
    """'b2nd' like nnU-Net 2.5+, or 'npz' when the labelled folder uses the numpy dataset class."""
    if labelled_folder.is_dir() and any(p.suffix == ".npz" for p in labelled_folder.iterdir()):
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class, nnUNetDatasetNumpy

        if infer_dataset_class(str(labelled_folder)) is nnUNetDatasetNumpy:
            return "npz"
    return "b2nd"


def _save_b2nd(arr: np.ndarray, path: Path, patch_size: tuple[int, ...]) -> None:
    """Like ``nnUNetDatasetBlosc2.save_case``: nnU-Net's chunks/blocks for this patch size, LZ4HC level 5 and
    its per-array filter choice; written under a temporary name, then renamed."""
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    blocks, chunks = comp_blosc2_params(arr.shape, patch_size, arr.itemsize)
    codec, clevel = blosc2.Codec.LZ4HC, 5
    select = getattr(nnUNetDatasetBlosc2, "_select_filter", None)
    filters = [select(arr, blocks, chunks, codec, clevel)] if select is not None else [blosc2.Filter.SHUFFLE]
    part = path.with_name(path.name + ".part")
    blosc2.asarray(
        np.ascontiguousarray(arr),
        urlpath=str(part),
        chunks=chunks,
        blocks=blocks,
        cparams={"codec": codec, "clevel": clevel, "filters": filters, "nthreads": 1},
    )
    os.replace(part, path)


def _write_text_atomic(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


def _check_readable(path: str) -> None:
    """ITK reads a truncated .nii.gz without complaint (zeros where data is missing): check the stream
    first."""
    import gzip
    import zlib

    if not os.path.isfile(path):
        raise UnlabeledImageError(f"cannot read {path}: file does not exist")
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(1 << 22):
                    pass
        except (OSError, EOFError, zlib.error) as e:
            raise UnlabeledImageError(f"cannot read {path}: corrupt or truncated gzip stream ({e})") from e


def _preprocess_one(
    out_truncated: str,
    files: list[str],
    plans_file: str,
    configuration: str,
    dataset_json: dict,
    storage: str,
    reference: dict | None = None,
) -> None:
    """One case: read with the plans' reader, check against the training images (``reference``), nnU-Net's
    preprocessing without a label, then atomic writes of image, mask and properties."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(plans_file)
    cm = plans.get_configuration(configuration)
    for f in files:
        _check_readable(f)
    preprocessor = cm.preprocessor_class(verbose=False)
    rw = plans.image_reader_writer_class()
    try:
        image, props = rw.read_images(files)
    except Exception as e:
        raise UnlabeledImageError(_read_failure(files, plans, e)) from e
    if reference is not None:
        per_file = None
        if image.shape[0] != reference["n_channels"]:
            per_file = [int(rw.read_images([f])[0].shape[0]) for f in files]
        check_image(files, tuple(image.shape), list(props["spacing"]), reference, per_file)
    try:
        if type(preprocessor).run_case is DefaultPreprocessor.run_case:  # = read_images + run_case_npy
            data, seg, props = preprocessor.run_case_npy(image, None, props, plans, cm, dataset_json)
        else:  # a custom preprocessor may read differently: let it read again
            data, seg, props = preprocessor.run_case(files, None, plans, cm, dataset_json)
    except Exception as e:
        raise UnlabeledImageError(f"cannot preprocess {', '.join(files)}: {type(e).__name__}: {e}") from e
    del image
    data = data.astype(np.float32, copy=False)
    use_mask = cm.use_mask_for_norm is not None and any(cm.use_mask_for_norm)
    mask = seg.astype(np.int8, copy=False) if use_mask else None  # -1 outside the nonzero region, 0 inside
    out = Path(out_truncated)
    if storage == "npz":
        part = out.with_name(out.name + ".npz.part")
        with open(part, "wb") as fh:  # a file object keeps numpy from appending another '.npz'
            np.savez_compressed(fh, data=data, **({"mask": mask} if mask is not None else {}))
        os.replace(part, out.with_name(out.name + ".npz"))
    else:
        _save_b2nd(data, out.with_name(out.name + ".b2nd"), tuple(cm.patch_size))
        if mask is not None:
            _save_b2nd(mask, out.with_name(out.name + "_mask.b2nd"), tuple(cm.patch_size))
    props = dict(props)
    props["nnunet_llmseg"] = {
        "source_files": [os.path.basename(f) for f in files],
        "has_mask": mask is not None,
    }
    _write_text_atomic(out.with_name(out.name + ".json"), json.dumps(_jsonable(props)))


def _read_failure(files: list[str], plans, error: Exception) -> str:
    """Name the file the reader fails on, or say how the channel files disagree (shape or spacing)."""
    rw = plans.image_reader_writer_class()
    shapes = {}
    for f in files:
        try:
            data, props = rw.read_images([f])
        except Exception as e:
            return f"cannot read {f}: {type(e).__name__}: {' '.join(str(e).split()) or 'unreadable image'}"
        shapes[f] = (tuple(data.shape[1:]), tuple(float(v) for v in props["spacing"]))
    if len(set(shapes.values())) > 1:
        return ("the channel files of one case differ in shape or spacing: "
                + "; ".join(f"{f} shape {_fmt(s)} spacing {_fmt(sp)}" for f, (s, sp) in shapes.items()))
    return f"cannot read {', '.join(files)}: {type(error).__name__}: {error}"


@contextlib.contextmanager
def _folder_lock(base: Path, name: str) -> Iterator[bool]:
    """Exclusive lock for writing ``name`` (POSIX flock; yields False where unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, temporary names still keep runs apart
        yield False
        return
    with open(base / f".{name}.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _labelled_identifiers(labelled_folder: Path) -> set[str]:
    if not labelled_folder.is_dir():
        return set()
    return {
        p.name.split(".")[0]
        for p in labelled_folder.iterdir()
        if p.suffix in (".b2nd", ".npz") and not p.name.endswith("_seg.b2nd")
    }


def preprocess_unlabeled(
    dataset_name_or_id: str | int,
    configuration: str = "3d_fullres",
    plans_identifier: str = "nnUNetPlans",
    num_processes: int = 1,
    force: bool = False,
    verbose: bool = True,
) -> Path:
    """Preprocess the dataset's ``imagesUnlabeled`` exactly as nnU-Net preprocesses its training images.

    Returns the output folder (:func:`unlabeled_preprocessed_folder`). Nothing is done when the folder is up
    to date (see :func:`unlabeled_needs_preprocessing`) unless ``force``. With no unlabelled images the folder
    is not created (a stale folder from earlier images is replaced by an empty complete one, so training never
    uses images that were removed from ``imagesUnlabeled``). Raises :class:`UnlabeledImageError` naming the
    file for unreadable images and for images that do not fit the training images (:func:`check_image`); the
    previous complete folder is then kept and no temporary folder is left. An unknown dataset, unset
    ``nnUNet_preprocessed``, missing plans or an unknown configuration raise
    :class:`~nnunet_llmseg.cli_errors.UsageError`.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_llmseg import __version__
    from nnunet_llmseg.cli_errors import UsageError, dataset_id, resolve_dataset

    name, base = resolve_dataset(dataset_name_or_id, "nnUNet_preprocessed")
    plans_file = base / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise UsageError(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess -d {dataset_id(name)}"
                         + (" (or pass the plans identifier you planned with as -p)"
                            if plans_identifier != "nnUNetPlans" else ""))
    dataset_json = json.loads((base / "dataset.json").read_text())
    plans = PlansManager(str(plans_file))
    if configuration not in plans.available_configurations:
        raise UsageError(
            f"configuration {configuration!r} is not in {plans_file} "
            f"(available: {', '.join(plans.available_configurations)})"
        )
    cm = plans.get_configuration(configuration)
    out = unlabeled_preprocessed_folder(base, cm.data_identifier)
    raw_root = os.environ.get("nnUNet_raw", "").strip()
    raw_folder = Path(raw_root) / name if raw_root else None
    if raw_folder is None or not raw_folder.is_dir():
        if read_marker(out) is not None:
            if verbose:
                print(f"raw dataset folder {raw_folder} not found; using the existing {out}")
            return out
        raise FileNotFoundError(
            f"raw dataset folder {raw_folder if raw_folder else '($nnUNet_raw is not set)'} not found: the "
            f"unlabelled images are read from $nnUNet_raw/{name}/imagesUnlabeled"
        )
    cases = list_unlabeled_cases(raw_folder, dataset_json)
    labelled_folder = base / cm.data_identifier
    clash = sorted(set(cases) & _labelled_identifiers(labelled_folder))
    if clash:
        raise UnlabeledImageError(
            f"unlabelled case name(s) {clash} in {raw_folder / 'imagesUnlabeled'} are also "
            f"training cases in {labelled_folder}; rename them (e.g. unl_{clash[0]}_0000...)"
        )
    if not cases and read_marker(out) is None:
        if verbose:
            print(f"no unlabelled images in {raw_folder / 'imagesUnlabeled'}; nothing to do")
        return out

    with _folder_lock(base, out.name) as locked:
        if not force and not unlabeled_needs_preprocessing(
            base, cm.data_identifier, plans_file, cases, configuration
        ):
            if verbose:
                print(f"unlabelled cases already preprocessed in {out} ({len(cases)} case(s))")
            return out
        if locked:  # we hold the lock: leftovers of killed runs can go
            for stale in base.glob(f"{out.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            for stale in base.glob(f"{out.name}.old-*"):
                shutil.rmtree(stale, ignore_errors=True)
        storage = _storage_format(labelled_folder)
        tmp = base / f"{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0 = time.time()
        reference = training_reference(base, dataset_json, plans.plans)
        try:
            jobs = [
                (str(tmp / case), files, str(plans_file), configuration, dataset_json, storage, reference)
                for case, files in cases.items()
            ]
            if num_processes > 1 and len(jobs) > 1:
                import multiprocessing

                with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
                    pool.starmap(_preprocess_one, jobs)
            else:
                for job in jobs:
                    _preprocess_one(*job)
            marker = {
                "format": MARKER_FORMAT,
                "plans_identifier": plans_identifier,
                "configuration": configuration,
                "data_identifier": cm.data_identifier,
                "plans_hash": _plans_hash(plans_file, configuration),
                "storage": storage,
                "has_mask": bool(cm.use_mask_for_norm and any(cm.use_mask_for_norm)),
                "cases": sorted(cases),
                "raw_files": _raw_fingerprint(cases),
                "nnunet_llmseg_version": __version__,
                "nnunetv2_version": _nnunet_version(),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            _write_text_atomic(tmp / MARKER, json.dumps(marker, indent=2))
            old = None
            if out.exists():
                old = base / f"{out.name}.old-{os.getpid()}"
                os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                if old is not None:
                    os.replace(old, out)
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if verbose:
        print(
            f"preprocessed {len(cases)} unlabelled case(s) ({configuration}, {plans_identifier}) into {out} "
            f"in {time.time() - t0:.1f} s"
        )
    return out


def _nnunet_version() -> str:
    try:
        from importlib.metadata import version

        return version("nnunetv2")
    except Exception:
        return "unknown"


def ensure_unlabeled_preprocessed(
    dataset_name_or_id: str | int,
    configuration: str = "3d_fullres",
    plans_identifier: str = "nnUNetPlans",
    num_processes: int = 1,
    verbose: bool = True,
) -> Path:
    """What the trainer calls (on rank 0 only; the trainer then waits at a barrier): preprocess only when
    missing or stale, otherwise return the existing folder. The folder may not exist (no unlabelled
    images)."""
    return preprocess_unlabeled(
        dataset_name_or_id, configuration, plans_identifier, num_processes, force=False, verbose=verbose
    )


# ---- MSD conversion ----------------------------------------------------------------------------------------


def convert_msd_unlabeled(msd_task_folder: str | Path, dataset_id_or_name: str | int) -> list[Path]:
    """Copy an MSD task's ``imagesUnlabeled/*.nii.gz`` (no channel suffix) into the already converted nnU-Net
    dataset's ``imagesUnlabeled/`` as ``CASE_0000.nii.gz`` ...; 4D images are split into channels by nnU-Net's
    own MSD converter function (``split_4d_nifti``), so the unlabelled images match the converted
    ``imagesTr``.
    """
    import SimpleITK as sitk
    from nnunetv2.dataset_conversion.convert_MSD_dataset import split_4d_nifti

    from nnunet_llmseg.cli_errors import resolve_dataset

    src = Path(msd_task_folder) / "imagesUnlabeled"
    if not src.is_dir():
        raise FileNotFoundError(
            f"{src} does not exist: expected the MSD task folder that holds imagesUnlabeled/"
        )
    _name, target = resolve_dataset(dataset_id_or_name, "nnUNet_raw")
    dj_file = target / "dataset.json"
    if not dj_file.is_file():
        raise FileNotFoundError(
            f"{dj_file} not found: convert the task first (nnUNetv2_convert_MSD_dataset -i {msd_task_folder})"
        )
    dataset_json = json.loads(dj_file.read_text())
    if dataset_json.get("file_ending", ".nii.gz") != ".nii.gz":
        raise ValueError(f"{dj_file}: file_ending is {dataset_json['file_ending']!r}, MSD images are .nii.gz")
    n_channels = _num_channels(dataset_json)
    sources = sorted(f for f in src.glob("*.nii.gz") if not f.name.startswith((".", "_")))
    if not sources:
        raise FileNotFoundError(f"no .nii.gz images in {src}")
    dst = target / "imagesUnlabeled"
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for f in sources:
        case = f.name[: -len(".nii.gz")]
        _check_readable(str(f))
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(f))
            reader.ReadImageInformation()
            dim = reader.GetDimension()
            size = reader.GetSize()
        except RuntimeError as e:
            raise UnlabeledImageError(f"cannot read {f}: {e}") from e
        got = size[3] if dim == 4 else 1
        if dim not in (3, 4) or got != n_channels:
            raise UnlabeledImageError(
                f"{f}: {dim}D image with {got} channel(s), but {dj_file} lists {n_channels} channel(s)"
            )
        try:
            split_4d_nifti(str(f), str(dst))
        except RuntimeError as e:
            raise UnlabeledImageError(f"cannot read {f}: {e}") from e
        written += [dst / f"{case}_{c:04d}.nii.gz" for c in range(n_channels)]
    print(f"wrote {len(written)} unlabelled image file(s) ({len(sources)} case(s)) into {dst}")
    return written


# ---- command line ------------------------------------------------------------------------------------------


def _run_preprocess(args: argparse.Namespace) -> int:
    preprocess_unlabeled(args.d, args.c, args.p, args.np, force=args.force)  # errors: one line (cli.main)
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    convert_msd_unlabeled(args.i, args.d)
    return 0


def register(subparsers) -> None:
    from nnunet_llmseg.cli_errors import positive_int

    p = subparsers.add_parser(
        "preprocess-unlabeled",
        help="preprocess imagesUnlabeled with the dataset's plans (run after planning)",
        description="Preprocess nnUNet_raw/DatasetXXX/imagesUnlabeled (CASE_0000.nii.gz ...) "
        "with nnU-Net's own "
        "preprocessor and the dataset's plans into nnUNet_preprocessed/DatasetXXX/"
        "<plans>_<configuration>_unlabeled. Semi-supervised trainers also do this on first use.",
    )
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-np", type=positive_int, default=1, help="worker processes (default 1)")
    p.add_argument("--force", action="store_true", help="preprocess again even if the folder is up to date")
    p.set_defaults(func=_run_preprocess)
    p = subparsers.add_parser(
        "convert-msd-unlabeled",
        help="copy an MSD task's imagesUnlabeled into the converted nnU-Net dataset",
        description="After nnUNetv2_convert_MSD_dataset: copies MSD_TASK/imagesUnlabeled/*.nii.gz to "
        "nnUNet_raw/DatasetXXX/imagesUnlabeled/CASE_0000.nii.gz (4D images split into channels).",
    )
    p.add_argument("-i", required=True, help="MSD task folder (holding imagesUnlabeled/)")
    p.add_argument("-d", required=True, help="target nnU-Net dataset id or name (already converted)")
    p.set_defaults(func=_run_convert)
