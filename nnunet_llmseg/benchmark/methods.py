"""Which trainers a benchmark runs: method aliases, nnU-Net's trainer lookup, generated schedule variants.

A method is an alias (``labelled_only``, ``llmseg``, ...) or any trainer class name nnU-Net can find - its own
trainers, ours, or classes in the user's ``nnUNet_extTrainer`` folders (tuning variants are added that way). The
benchmark never edits those classes: it trains ``{Trainer}_{E}epochs_{I}it``, a subclass made by
:func:`nnunet_llmseg.trainers.schedules.make_schedule_variant` that only sets the schedule and checkpoints every
epoch (``save_every = 1``), so a run stopped by a time limit loses at most one epoch when continued with ``--c``.
Each variant lives in a small generated module in one folder that is put first on ``nnUNet_extTrainer`` for the
training subprocesses; the module finds its base class with nnU-Net's own search, skipping its own folder.
"""

from __future__ import annotations

import os
from pathlib import Path

#: method alias -> trainer class name (the README's names)
METHOD_ALIASES: dict[str, str] = {
    "labelled_only": "nnUNetTrainerLabelledOnly",
    "llmseg": "nnUNetTrainerLLMSeg",
    "tak": "nnUNetTrainerTAK",
    "all_labels": "nnUNetTrainer",
    "cotraining": "nnUNetTrainerCoTraining",
    "cotraining_nomix": "nnUNetTrainerCoTraining_noMix",
    "cotraining_intensity": "nnUNetTrainerCoTraining_intensityView",
    "cotraining_clean": "nnUNetTrainerCoTraining_cleanTeacher",
    "cotraining_lmix": "nnUNetTrainerCoTraining_labelledMix",
    "cotraining_region": "nnUNetTrainerCoTraining_organRegion",
    "cotraining_pasted": "nnUNetTrainerCoTraining_pastedForegroundIgnored",
    "llmseg_notext": "nnUNetTrainerLLMSeg_noText",
    "llmseg_nousl": "nnUNetTrainerLLMSeg_noUSL",
    "llmseg_nomix": "nnUNetTrainerLLMSeg_noMix",
    "llmseg_clean": "nnUNetTrainerLLMSeg_cleanTeacher",
    "llmseg_lmix": "nnUNetTrainerLLMSeg_labelledMix",
    "llmseg_region": "nnUNetTrainerLLMSeg_organRegion",
    "llmseg_pasted": "nnUNetTrainerLLMSeg_pastedForegroundIgnored",
    "tak_notext": "nnUNetTrainerTAK_noText",
    "tak_nocontrast": "nnUNetTrainerTAK_noContrast",
    "tak_nobalance": "nnUNetTrainerTAK_noBalance",
    "tak_nounlabelled": "nnUNetTrainerTAK_noUnlabelled",
    "tak_clean": "nnUNetTrainerTAK_cleanTeacher",
    "tak_lmix": "nnUNetTrainerTAK_labelledMix",
    "tak_region": "nnUNetTrainerTAK_organRegion",
    "tak_pasted": "nnUNetTrainerTAK_pastedForegroundIgnored",
}
DEFAULT_METHODS: tuple[str, ...] = ("labelled_only", "llmseg", "tak", "all_labels")
#: folder (under the results root) holding the generated schedule-variant modules
VARIANT_FOLDER_NAME = "nnunet_llmseg_benchmark_trainers"
VARIANT_MODULE_PREFIX = "llmseg_bm_"


class MethodError(ValueError):
    """A method name nnU-Net cannot resolve, or a method that cannot run on this dataset (message says why)."""


def trainer_name_of(method: str) -> str:
    """The trainer class name of a method (an alias, or the name itself)."""
    return METHOD_ALIASES.get(method, method)


def variant_name(base: str, epochs: int, iterations: int) -> str:
    """``{base}_{E}epochs_{I}it``: the name nnU-Net's schedule variants use (see trainers/schedules.py)."""
    return f"{base}_{epochs}epochs_{iterations}it"


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return False


def find_trainer_class(name: str, skip_folders: tuple[str, ...] = ()) -> type | None:
    """The trainer class ``name`` as ``nnUNetv2_train`` would find it, or None.

    Same order as nnU-Net's ``recursive_find_trainer_class_by_name``: its own trainers first, then every folder
    of ``nnUNet_extTrainer``; folders in ``skip_folders`` are left out (a generated variant looking up its base
    must not find itself).
    """
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name,
                                      "nnunetv2.training.nnUNetTrainer", nnunetv2.__path__[0])
    if cls is not None:
        return cls
    for path in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep):
        if not path.strip() or not os.path.isdir(path) or any(_same_folder(path, s) for s in skip_folders):
            continue
        cls = recursive_find_python_class(path, name, None, base_folder=path, cleanup_imports_from_base_folder=True)
        if cls is not None:
            return cls
    return None


def resolve_method(method: str) -> type:
    """The trainer class behind ``method``; a :class:`MethodError` listing the aliases when nnU-Net cannot find it."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    name = trainer_name_of(method)
    cls = find_trainer_class(name)
    if cls is None:
        raise MethodError(
            f"method {method!r}: no trainer class {name!r} in nnU-Net or in the folders of nnUNet_extTrainer "
            f"({os.environ.get('nnUNet_extTrainer', '')!r}). Use an alias ({', '.join(METHOD_ALIASES)}) or the "
            "name of a trainer class in a module on nnUNet_extTrainer.")
    if not (isinstance(cls, type) and issubclass(cls, nnUNetTrainer)):
        raise MethodError(f"method {method!r}: {name} is not an nnUNetTrainer subclass")
    return cls


def reads_labelled_subset(cls: type) -> bool:
    """Whether the trainer chooses its own training cases (as our subset-aware trainers do).

    nnU-Net's own trainers (the all-labels upper bound) keep ``get_tr_and_val_datasets`` and ignore the subset
    file, so a finished run of theirs stays valid whatever subset a later benchmark uses.
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return cls.get_tr_and_val_datasets is not nnUNetTrainer.get_tr_and_val_datasets


def benchmark_variant(base_name: str, epochs: int, iterations: int, module_file: str,
                      save_every: int = 1) -> type | None:
    """``{base}_{E}epochs_{I}it`` checkpointing every ``save_every`` epochs; called by the generated modules.

    None (with a warning) when the base cannot be found: a stale module of an older benchmark must not break
    nnU-Net's search for other trainers in the same folder.
    """
    import sys

    import torch

    from nnunet_llmseg.trainers.schedules import make_schedule_variant

    base = find_trainer_class(base_name, skip_folders=(os.path.dirname(os.path.abspath(module_file)),))
    if base is None:
        print(f"warning: {module_file}: base trainer {base_name} not found by nnU-Net's trainer search "
              f"(nnUNet_extTrainer={os.environ.get('nnUNet_extTrainer', '')!r}); variant not defined",
              file=sys.stderr)
        return None
    scheduled = make_schedule_variant(base, epochs, iterations)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        scheduled.__init__(self, plans, configuration, fold, dataset_json, device)
        self.save_every = save_every  # nnU-Net writes checkpoint_latest.pth every save_every epochs

    doc = f"{scheduled.__doc__} Checkpoint every {save_every} epoch(s) (generated by nnunet-llmseg benchmark)."
    return type(scheduled.__name__, (scheduled,), {"__init__": __init__, "__doc__": doc,
                                                    "__module__": Path(module_file).stem})


def write_variant_module(folder: Path, base_name: str, epochs: int, iterations: int, save_every: int = 1) -> str:
    """Write (atomically, only when it changes) the module defining one variant; return the variant's name."""
    name = variant_name(base_name, epochs, iterations)
    folder.mkdir(parents=True, exist_ok=True)
    text = (f'"""Generated by nnunet-llmseg benchmark: {base_name}, {epochs} epochs x {iterations} iterations, '
            f'checkpoint every {save_every} epoch(s)."""\n\n'
            "from nnunet_llmseg.benchmark.methods import benchmark_variant\n\n"
            f"_variant = benchmark_variant({base_name!r}, {epochs}, {iterations}, __file__, save_every={save_every})\n"
            "if _variant is not None:\n"
            f"    {name} = _variant\n")
    target = folder / f"{VARIANT_MODULE_PREFIX}{name}.py"
    if not target.is_file() or target.read_text() != text:
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, target)
    return name


def ext_trainer_value(variant_folder: Path, current: str | None) -> str:
    """``nnUNet_extTrainer`` for the training subprocesses: the variant folder first, then the current value."""
    parts = [str(variant_folder)] + [p for p in (current or "").split(os.pathsep)
                                     if p and not _same_folder(p, str(variant_folder))]
    return os.pathsep.join(parts)
