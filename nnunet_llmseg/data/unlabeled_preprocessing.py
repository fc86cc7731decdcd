"""Preprocess ``imagesUnlabeled/`` with exactly the dataset's plans, into a folder of its own.

Raw convention: ``$nnUNet_raw/DatasetXXX/imagesUnlabeled/CASE_0000.nii.gz`` (same channel suffixes and file ending
as ``imagesTr``). Output: ``$nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/`` beside the
configuration's folder, never mixed into it: ``CASE.b2nd`` (the image, preprocessed by nnU-Net's own
preprocessor class: same transpose, cropping, normalisation and resampling), ``CASE_mask.b2nd`` (the nonzero
mask nnU-Net derives when there is no label: -1 outside, 0 inside; the augmentation needs it) and
``CASE.json`` (properties, JSON instead of pickle). A ``_complete.json`` marker records the plans hash and the
case list; the whole folder is written under a temporary name and renamed into place, so a failure never
leaves a half-written folder (and keeps the previous complete one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

MARKER = "_complete.json"


class UnlabeledImageError(RuntimeError):
    """An unlabelled image that cannot be read or does not fit the dataset."""


def unlabeled_preprocessed_folder(preprocessed_dataset_folder_base: str | Path, data_identifier: str) -> Path:
    return Path(preprocessed_dataset_folder_base) / f"{data_identifier}_unlabeled"


def list_unlabeled_cases(raw_dataset_folder: str | Path, dataset_json: dict) -> dict[str, list[str]]:
    """Case id -> channel files (in channel order) of ``imagesUnlabeled``; {} when the folder is absent."""
    folder = Path(raw_dataset_folder) / "imagesUnlabeled"
    if not folder.is_dir():
        return {}
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {"0": ""})))
    cases: dict[str, set[int]] = {}
    for f in sorted(folder.iterdir()):
        if not f.name.endswith(ending):
            continue
        stem = f.name[: -len(ending)]
        if len(stem) < 6 or stem[-5] != "_" or not stem[-4:].isdigit():
            raise UnlabeledImageError(f"{f}: unlabelled images need nnU-Net's channel suffix (CASE_0000{ending}); "
                                      "for MSD-style files run `nnunet-llmseg convert-msd-unlabeled`")
        cases.setdefault(stem[:-5], set()).add(int(stem[-4:]))
    out = {}
    for case, channels in sorted(cases.items()):
        missing = [c for c in range(n_channels) if c not in channels]
        if missing:
            raise UnlabeledImageError(f"unlabelled case {case}: missing channel file(s) "
                                      + ", ".join(str(folder / f"{case}_{c:04d}{ending}") for c in missing))
        out[case] = [str(folder / f"{case}_{c:04d}{ending}") for c in range(n_channels)]
    return out


def _plans_hash(plans_file: Path, configuration: str | None = None) -> str:
    """Hash of what determines preprocessing (not e.g. the batch size, so plans copies share the folder)."""
    plans = json.loads(Path(plans_file).read_text())
    relevant = {k: plans.get(k) for k in ("transpose_forward", "foreground_intensity_properties_per_channel",
                                          "image_reader_writer", "original_median_spacing_after_transp")}
    configs = plans.get("configurations", {})
    for name in ([configuration] if configuration else sorted(configs)):
        cfg = {k: v for k, v in configs.get(name, {}).items() if k not in ("batch_size",)}
        relevant[f"configuration:{name}"] = cfg
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def unlabeled_needs_preprocessing(preprocessed_dataset_folder_base: str | Path, data_identifier: str,
                                  plans_file: str | Path, cases: list[str] | None = None,
                                  configuration: str | None = None) -> bool:
    """Missing folder or marker, plans changed since, or the raw case list changed."""
    folder = unlabeled_preprocessed_folder(preprocessed_dataset_folder_base, data_identifier)
    marker = folder / MARKER
    if not marker.is_file():
        return True
    info = json.loads(marker.read_text())
    if info.get("plans_hash") != _plans_hash(Path(plans_file), configuration or info.get("configuration")):
        return True
    return cases is not None and sorted(info.get("cases", [])) != sorted(cases)


def preprocess_unlabeled(dataset_name_or_id: str | int, configuration: str = "3d_fullres",
                         plans_identifier: str = "nnUNetPlans", num_processes: int = 1, force: bool = False,
                         verbose: bool = True) -> Path | None:
    """Preprocess the dataset's unlabelled images; returns the output folder (None when there are none)."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = maybe_convert_to_dataset_name(dataset_name_or_id)
    base = Path(nnUNet_preprocessed) / name
    plans_file = base / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file} not found: run nnUNetv2_plan_and_preprocess -d {dataset_name_or_id}")
    dataset_json = json.loads((base / "dataset.json").read_text())
    cases = list_unlabeled_cases(Path(nnUNet_raw) / name, dataset_json)
    plans = PlansManager(str(plans_file))
    cm = plans.get_configuration(configuration)
    out = unlabeled_preprocessed_folder(base, cm.data_identifier)
    if not cases:
        return None
    if not force and not unlabeled_needs_preprocessing(base, cm.data_identifier, plans_file, list(cases),
                                                       configuration):
        if verbose:
            print(f"unlabelled cases already preprocessed in {out}")
        return out
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        jobs = [(str(tmp / case), files, str(plans_file), configuration, dataset_json)
                for case, files in cases.items()]
        if num_processes > 1:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
                pool.starmap(_preprocess_one, jobs)
        else:
            for job in jobs:
                _preprocess_one(*job)
        (tmp / MARKER).write_text(json.dumps({
            "plans_hash": _plans_hash(plans_file, configuration), "plans_identifier": plans_identifier,
            "configuration": configuration, "cases": sorted(cases)}, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        print(f"preprocessed {len(cases)} unlabelled case(s) into {out}")
    return out


def _preprocess_one(out_truncated: str, files: list[str], plans_file: str, configuration: str,
                    dataset_json: dict) -> None:
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(plans_file)
    cm = plans.get_configuration(configuration)
    preprocessor = cm.preprocessor_class(verbose=False)
    for f in files:
        _check_readable(f)
    try:
        data, mask, props = preprocessor.run_case(files, None, plans, cm, dataset_json)
    except Exception as e:
        raise UnlabeledImageError(f"cannot read or preprocess unlabelled image {', '.join(files)}: "
                                  f"{type(e).__name__}: {e}") from e
    data = data.astype(np.float32, copy=False)
    mask = mask.astype(np.int8, copy=False)
    blosc2.set_nthreads(1)
    for arr, suffix in ((data, ".b2nd"), (mask, "_mask.b2nd")):
        blocks, chunks = comp_blosc2_params(arr.shape, tuple(cm.patch_size), arr.itemsize)
        part = out_truncated + suffix + ".part"
        blosc2.asarray(np.ascontiguousarray(arr), urlpath=part, chunks=chunks, blocks=blocks,
                       cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 1})
        os.replace(part, out_truncated + suffix)
    Path(out_truncated + ".json").write_text(json.dumps(_jsonable(props)))


def _check_readable(path: str) -> None:
    """ITK reads a truncated .nii.gz without complaint (zeros where data is missing); check the stream first."""
    import gzip
    import zlib

    if not os.path.isfile(path):
        raise UnlabeledImageError(f"unlabelled image {path} does not exist")
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(1 << 22):
                    pass
        except (OSError, EOFError, zlib.error) as e:
            raise UnlabeledImageError(f"cannot read unlabelled image {path}: corrupt or truncated gzip ({e})") from e


def ensure_unlabeled_preprocessed(dataset_name_or_id: str | int, configuration: str = "3d_fullres",
                                  plans_identifier: str = "nnUNetPlans", num_processes: int = 1) -> Path | None:
    """What the trainer calls on rank 0: (re)preprocess only when missing or stale."""
    return preprocess_unlabeled(dataset_name_or_id, configuration, plans_identifier, num_processes, force=False)


def convert_msd_unlabeled(msd_task_folder: str | Path, dataset_name_or_id: str | int) -> list[Path]:
    """Copy MSD-style ``imagesUnlabeled/*.nii.gz`` (no channel suffix; 4D = channels) into the converted
    nnU-Net dataset's ``imagesUnlabeled/`` as ``CASE_0000.nii.gz`` ..."""
    import SimpleITK as sitk
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    src = Path(msd_task_folder) / "imagesUnlabeled"
    if not src.is_dir():
        raise FileNotFoundError(f"{src} does not exist")
    dst = Path(nnUNet_raw) / maybe_convert_to_dataset_name(dataset_name_or_id) / "imagesUnlabeled"
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for f in sorted(src.glob("*.nii.gz")):
        case = f.name[: -len(".nii.gz")]
        try:
            img = sitk.ReadImage(str(f))
        except RuntimeError as e:
            raise UnlabeledImageError(f"cannot read {f}: {e}") from e
        if img.GetDimension() == 4:
            arr = sitk.GetArrayFromImage(img)
            for c in range(arr.shape[0]):
                ch = sitk.GetImageFromArray(arr[c])
                ch.SetSpacing(img.GetSpacing()[:3])
                ch.SetOrigin(img.GetOrigin()[:3])
                d = np.array(img.GetDirection()).reshape(4, 4)[:3, :3].flatten()
                ch.SetDirection(tuple(d))
                out = dst / f"{case}_{c:04d}.nii.gz"
                sitk.WriteImage(ch, str(out))
                written.append(out)
        else:
            out = dst / f"{case}_0000.nii.gz"
            shutil.copyfile(f, out)
            written.append(out)
    print(f"wrote {len(written)} unlabelled image file(s) into {dst}")
    return written


def _run_preprocess(args: argparse.Namespace) -> int:
    out = preprocess_unlabeled(args.d, args.c, args.p, args.np, force=args.force)
    if out is None:
        print("no unlabelled images found (nnUNet_raw/DatasetXXX/imagesUnlabeled)")
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    convert_msd_unlabeled(args.i, args.d)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("preprocess-unlabeled", help="preprocess imagesUnlabeled with the dataset's plans")
    p.add_argument("-d", required=True, help="dataset id or name")
    p.add_argument("-c", default="3d_fullres")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier")
    p.add_argument("-np", type=int, default=1)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_run_preprocess)
    p = subparsers.add_parser("convert-msd-unlabeled",
                              help="copy an MSD task's imagesUnlabeled into the converted nnU-Net dataset")
    p.add_argument("-i", required=True, help="MSD task folder (holding imagesUnlabeled/)")
    p.add_argument("-d", required=True, help="target nnU-Net dataset id or name (already converted)")
    p.set_defaults(func=_run_convert)
