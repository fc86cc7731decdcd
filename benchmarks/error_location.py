"""Where a run's voxel errors lie: missed foreground, class confusion, and false foreground near, far or off-slice.

At 7 labelled ACDC patients the co-trained networks score as high as all labels on nnU-Net's online validation
patches (centred on the heart) but not on whole volumes. Dice alone does not say why: a run can miss fewer voxels
and add more false ones. This script splits every run's errors against the reference, summed over all cases:

- ``missed``: reference foreground predicted as background;
- ``confused``: reference foreground predicted as another foreground class;
- ``false, near``: predicted foreground on reference background within ``--margin-mm`` (in-plane) of the
  reference foreground of the same slice (boundary errors);
- ``false, far``: predicted foreground on reference background farther than that, on a slice with reference
  foreground (stray blobs beside the organ);
- ``false, off-slice``: predicted foreground on slices without any reference foreground (above or below the organ).

    python benchmarks/error_location.py --labels RAW/labelsTr \\
        labelled_only=RESULTS/.../fold_0/validation cotraining=RESULTS2/.../fold_0/validation

Slices are taken along the image's first array axis (SimpleITK's z), distances with the image's in-plane spacing.
Prints one markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt
from stray_components import named_folders, prediction_reference_pairs

KINDS = ("correct", "missed", "confused", "false_near", "false_far", "false_off_slice")


def error_voxels(pred: np.ndarray, ref: np.ndarray, inplane_spacing: tuple[float, float],
                 margin_mm: float) -> dict[str, int]:
    """Voxel counts of each kind in :data:`KINDS` for one case (arrays indexed slice-first)."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the reference's {ref.shape}")
    ref_fg, pred_fg = ref > 0, pred > 0
    false_fg = pred_fg & ~ref_fg
    counts = {
        "correct": int((ref_fg & (pred == ref)).sum()),
        "missed": int((ref_fg & ~pred_fg).sum()),
        "confused": int((ref_fg & pred_fg & (pred != ref)).sum()),
        "false_near": 0, "false_far": 0, "false_off_slice": 0,
    }
    for z in range(ref.shape[0]):
        n_false = int(false_fg[z].sum())
        if n_false == 0:
            continue
        if not ref_fg[z].any():
            counts["false_off_slice"] += n_false
            continue
        # in-plane distance (mm) of every voxel to the slice's reference foreground
        dist = distance_transform_edt(~ref_fg[z], sampling=inplane_spacing)
        near = int((false_fg[z] & (dist <= margin_mm)).sum())
        counts["false_near"] += near
        counts["false_far"] += n_false - near
    return counts


def summarise(folder: Path, labels_dir: Path, margin_mm: float) -> dict[str, int]:
    total = dict.fromkeys(KINDS, 0)
    for f, ref_file in prediction_reference_pairs(folder, labels_dir):
        ref_img = sitk.ReadImage(str(ref_file))
        spacing_xyz = ref_img.GetSpacing()
        inplane = (float(spacing_xyz[1]), float(spacing_xyz[0]))  # array axes 1, 2 are image y, x
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
        try:
            counts = error_voxels(pred, sitk.GetArrayFromImage(ref_img), inplane, margin_mm)
        except ValueError as e:
            raise SystemExit(f"error: {f}: {e}") from None
        for k, v in counts.items():
            total[k] += v
    return total


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="NAME=FOLDER of validation predictions")
    ap.add_argument("--labels", type=Path, required=True, help="folder of the reference segmentations")
    ap.add_argument("--margin-mm", type=float, default=10.0,
                    help="in-plane distance from the reference foreground that still counts as 'near' (default 10)")
    args = ap.parse_args(argv)
    print(f"| run | correct | missed | confused | false, near (<= {args.margin_mm:g} mm) | false, far | "
          "false, off-slice | false, all |")
    print("|---|---|---|---|---|---|---|---|")
    for name, folder in named_folders(args.runs):
        t = summarise(folder, args.labels, args.margin_mm)
        false_all = t["false_near"] + t["false_far"] + t["false_off_slice"]
        print(f"| {name} | {t['correct']} | {t['missed']} | {t['confused']} | {t['false_near']} | {t['false_far']} | "
              f"{t['false_off_slice']} | {false_all} |")


if __name__ == "__main__":
    main()
