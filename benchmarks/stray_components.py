"""Count the stray components of validation predictions: what the largest-component rule removes.

At 7 labelled ACDC patients the co-trained networks gained mainly after the benchmark's largest-component rule
(README): their raw predictions carry more foreground outside each class's largest connected component than
labelled-only nnU-Net's. This script measures that directly, per run and class, so a change meant to reduce it
can be judged by the count and not only through Dice:

    python benchmarks/stray_components.py --labels RAW/labelsTr \\
        cotraining=RESULTS/.../fold_0/validation nomix=RESULTS2/.../fold_0/validation

For every prediction (``.nii.gz``) and foreground label it keeps the largest connected component (as nnU-Net's
``remove_all_but_largest_component`` does) and counts the rest: voxels, components, and the
share of those voxels that are background in the reference. Prints one markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from acvl_utils.morphology.morphology_helper import label_with_component_sizes


def stray_counts(pred: np.ndarray, labels: list[int]) -> dict[int, tuple[np.ndarray, int]]:
    """Per label: a mask of its voxels the rule removes, and how many components that is.

    Labelled with ``acvl_utils``' ``label_with_component_sizes``, which nnU-Net's
    ``remove_all_but_largest_component`` uses (default connectivity), and keeping every component of the largest
    size as that rule does, so the count is what the benchmark's largest-component rule takes away.
    """
    out = {}
    for c in labels:
        comp, sizes = label_with_component_sizes(pred == c)
        largest = max(sizes.values(), default=0)
        removed = [i for i, size in sizes.items() if size < largest]
        out[c] = (np.isin(comp, removed), len(removed))
    return out


def prediction_reference_pairs(folder: Path, labels_dir: Path) -> list[tuple[Path, Path]]:
    """``(prediction, reference)`` files for each ``.nii.gz`` prediction in ``folder``; exits naming what is missing."""
    files = sorted(folder.glob("*.nii.gz"))
    if not files:
        raise SystemExit(f"error: no .nii.gz predictions in {folder}")
    pairs = []
    for f in files:
        ref_file = labels_dir / f.name
        if not ref_file.is_file():
            raise SystemExit(f"error: no reference {ref_file} for the prediction {f}")
        pairs.append((f, ref_file))
    return pairs


def named_folders(specs: list[str]) -> list[tuple[str, Path]]:
    """``NAME=FOLDER`` command-line arguments as ``(name, folder)``."""
    out = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"error: {spec!r} is not NAME=FOLDER")
        out.append((name, Path(folder)))
    return out


def summarise(folder: Path, labels_dir: Path, labels: list[int]) -> dict[int, dict[str, float]]:
    total = {c: {"voxels": 0, "components": 0, "on_background": 0, "predicted": 0} for c in labels}
    for f, ref_file in prediction_reference_pairs(folder, labels_dir):
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_file)))
        for c, (mask, n) in stray_counts(pred, labels).items():
            total[c]["voxels"] += int(mask.sum())
            total[c]["components"] += n
            total[c]["on_background"] += int((mask & (ref == 0)).sum())
            total[c]["predicted"] += int((pred == c).sum())
    return total


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="NAME=FOLDER of validation predictions")
    ap.add_argument("--labels", type=Path, required=True, help="folder of the reference segmentations")
    ap.add_argument("--classes", type=int, nargs="+", default=[1, 2, 3], help="foreground labels (default 1 2 3)")
    args = ap.parse_args(argv)
    print("| run | class | stray voxels | stray components | share of the class's predicted voxels | "
          "share on reference background |")
    print("|---|---|---|---|---|---|")
    for name, folder in named_folders(args.runs):
        total = summarise(folder, args.labels, args.classes)
        for c in [*args.classes, "all"]:
            t = total[c] if c != "all" else {k: sum(total[x][k] for x in args.classes) for k in total[args.classes[0]]}
            share = t["voxels"] / t["predicted"] if t["predicted"] else 0.0
            bg = t["on_background"] / t["voxels"] if t["voxels"] else 0.0
            print(f"| {name} | {c} | {t['voxels']} | {t['components']} | {share:.3f} | {bg:.2f} |")


if __name__ == "__main__":
    main()
