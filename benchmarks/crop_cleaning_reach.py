"""How much of a run's false foreground a teacher-cleaning rule can reach, per training crop or per whole slice.

``clean_teacher_strays`` (``losses/teacher_cleaning.py``) turns each class's components outside its largest into
background in the teacher's prediction on every unlabelled *crop*. A crop that holds a stray but not the organ keeps
the stray (it is that crop's largest component), so the rule's reach depends on the crop size. At 7 labelled ACDC
patients the cleaned runs kept as many strays as the uncleaned ones, which the README read as "the strays are the
networks' own". This script asks, on a run's validation predictions as a stand-in for a teacher's prediction on
unlabelled slices, how much of that run's false foreground each rule would have turned to background:

- ``volume rule``: each class's components outside its largest in the whole 3D volume (the benchmark's
  largest-component rule, applied after prediction);
- ``slice rule``: each class's components outside its largest in the whole 2D slice;
- ``crop rule``: the same inside random square crops of ``--crop-mm`` (default 128 mm: 64 px at the 2 mm spacing
  of the 64 x 64 protocol), placed uniformly over the slice and clipped to it; a voxel's share is the fraction of
  the crops covering it that remove it;
- ``region rule``: what the organ-region teachers (``teacher_region_margin_mm``) turn to background: foreground
  outside the largest connected component of *all* foreground classes together (one organ), grown in plane by
  ``--region-margin-mm`` (default 10, the `_organRegion` variants'). A stray of one class that touches another
  class's prediction lies inside that component, so this rule can reach less than the per-class volume rule.

    python benchmarks/crop_cleaning_reach.py --labels RAW/labelsTr NAME=RESULTS/.../fold_0/validation ...

Slices are taken along the image's first array axis (SimpleITK's z), crop sizes with its in-plane spacing.
Components are those of the teacher-cleaning rule (acvl_utils, full connectivity, every largest kept). Prints one
markdown table of voxel counts summed over cases.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from stray_components import named_folders, prediction_reference_pairs

from nnunet_llmseg.losses.teacher_cleaning import organ_region, stray_mask


def outside_largest(pred: np.ndarray, labels: list[int]) -> np.ndarray:
    """True where the rule turns a voxel to background, on a whole slice (2D) or a whole volume (3D)."""
    out = np.zeros(pred.shape, dtype=bool)
    for c in labels:
        out |= stray_mask(pred == c)
    return out


def crop_rule_share(pred2d: np.ndarray, labels: list[int], crop_px: tuple[int, int], crops: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(share of covering crops that remove each voxel, how many crops covered it) for one slice."""
    covered = np.zeros(pred2d.shape, dtype=np.int32)
    removed = np.zeros(pred2d.shape, dtype=np.int32)
    h, w = pred2d.shape
    ch, cw = crop_px
    for _ in range(crops):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y0, x0 = max(0, round(cy - ch / 2)), max(0, round(cx - cw / 2))
        y1, x1 = min(h, y0 + ch), min(w, x0 + cw)
        crop = pred2d[y0:y1, x0:x1]
        covered[y0:y1, x0:x1] += 1
        removed[y0:y1, x0:x1] += outside_largest(crop, labels)
    share = np.divide(removed, covered, out=np.zeros(pred2d.shape), where=covered > 0)
    return share, covered


def reach(pred: np.ndarray, ref: np.ndarray, spacing_yx: tuple[float, float], labels: list[int], crop_mm: float,
          crops: int, rng: np.random.Generator, region_margin_mm: float = 10.0) -> dict[str, float]:
    """Voxel counts for one case: false foreground, and how much of it each rule removes."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the reference's {ref.shape}")
    crop_px = tuple(max(1, round(crop_mm / s)) for s in spacing_yx)
    by_volume = outside_largest(pred, labels)
    fg = np.isin(pred, labels)
    by_region = fg & ~organ_region(fg, (1.0, *spacing_yx), region_margin_mm, in_plane_only=True)
    out = {"false_volume_rule": float((by_volume & (pred > 0) & (ref == 0)).sum()),
           "true_volume_rule": float((by_volume & (pred > 0) & (pred == ref)).sum()),
           "false_region_rule": float((by_region & (ref == 0)).sum()),
           "true_region_rule": float((by_region & (pred == ref)).sum()),
           "false": 0.0, "false_slice_rule": 0.0, "false_crop_rule": 0.0, "false_uncovered": 0.0,
           "true": 0.0, "true_slice_rule": 0.0, "true_crop_rule": 0.0}
    for z in range(pred.shape[0]):
        p, r = pred[z], ref[z]
        if not (p > 0).any():
            continue
        false, true = (p > 0) & (r == 0), (p > 0) & (p == r)
        by_slice = outside_largest(p, labels)
        share, covered = crop_rule_share(p, labels, crop_px, crops, rng)
        out["false"] += false.sum()
        out["false_slice_rule"] += (by_slice & false).sum()
        out["false_crop_rule"] += share[false].sum()
        out["false_uncovered"] += (false & (covered == 0)).sum()
        out["true"] += true.sum()
        out["true_slice_rule"] += (by_slice & true).sum()
        out["true_crop_rule"] += share[true].sum()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", required=True, help="reference label folder (nnUNet_raw/DatasetXXX/labelsTr)")
    ap.add_argument("--classes", type=int, nargs="+", default=[1, 2, 3], help="foreground labels (default 1 2 3)")
    ap.add_argument("--crop-mm", type=float, default=128.0, help="side of the square crops in mm (default 128)")
    ap.add_argument("--crops", type=int, default=64, help="random crops per slice (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--region-margin-mm", type=float, default=10.0,
                    help="margin of the region rule in mm (default 10, the _organRegion variants')")
    ap.add_argument("runs", nargs="+", help="NAME=FOLDER of .nii.gz predictions")
    args = ap.parse_args(argv)
    print("| run | false foreground | removed by the volume rule | removed by the slice rule "
          f"| removed by the {args.crop_mm:g} mm crop rule "
          f"| removed by the {args.region_margin_mm:g} mm region rule "
          "| true foreground removed (volume / slice / crop / region rule) |")
    print("|---|---|---|---|---|---|---|")
    for name, folder in named_folders(args.runs):
        rng = np.random.default_rng(args.seed)
        tot: dict[str, float] = {}
        for f, ref_file in prediction_reference_pairs(folder, Path(args.labels)):
            img = sitk.ReadImage(str(f))
            pred = sitk.GetArrayFromImage(img)
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_file)))
            sx, sy = img.GetSpacing()[:2]
            for k, v in reach(pred, ref, (sy, sx), args.classes, args.crop_mm, args.crops, rng,
                              args.region_margin_mm).items():
                tot[k] = tot.get(k, 0.0) + float(v)
        f_all = max(tot["false"], 1.0)
        print(f"| {name} | {tot['false']:,.0f} | {tot['false_volume_rule']:,.0f} "
              f"({100 * tot['false_volume_rule'] / f_all:.0f} %) | {tot['false_slice_rule']:,.0f} "
              f"({100 * tot['false_slice_rule'] / f_all:.0f} %) | {tot['false_crop_rule']:,.0f} "
              f"({100 * tot['false_crop_rule'] / f_all:.0f} %) | {tot['false_region_rule']:,.0f} "
              f"({100 * tot['false_region_rule'] / f_all:.0f} %) | {tot['true_volume_rule']:,.0f} / "
              f"{tot['true_slice_rule']:,.0f} / {tot['true_crop_rule']:,.0f} / {tot['true_region_rule']:,.0f} |")


if __name__ == "__main__":
    main()
