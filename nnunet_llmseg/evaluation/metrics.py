"""Dice, Jaccard, HD95 and ASD of one binary structure, as semi-supervised segmentation papers report them.

The surface distances come from medpy 0.5.2 (``medpy.metric.binary.hd95`` and ``asd``), the library behind the
UA-MT, TraCoCo and DHC evaluation scripts, so our numbers are comparable with theirs; we only add physical
spacing (millimetres), a crop that makes it fast on large volumes without changing the result, and an explicit
convention for empty structures (medpy raises on those).

* ``hd95``: medpy's symmetric 95th percentile - the surface-voxel distances pred->ref and ref->pred are pooled
  into one set and its 95th percentile (``numpy.percentile``, linear interpolation) is taken.
* ``asd``: medpy's ``asd(pred, ref)`` - the mean distance from each prediction surface voxel to the nearest
  reference surface voxel (directed, pred -> ref), exactly the call ``metric.binary.asd(pred, gt)`` of those
  code bases. The symmetric variant (medpy ``assd``) is *not* what they report.
* Surfaces use medpy's default connectivity 1 (face neighbours); voxels on the image border count as surface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METRICS: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")
DISTANCE_METRICS: tuple[str, ...] = ("hd95", "asd")

CONVENTIONS: dict[str, str] = {
    "hd95": "medpy.metric.binary.hd95(pred, ref, voxelspacing, connectivity=1): symmetric 95th percentile "
            "of the pooled surface distances pred->ref and ref->pred, in mm",
    "asd": "medpy.metric.binary.asd(pred, ref, voxelspacing, connectivity=1): mean distance from each "
           "prediction surface voxel to the reference surface (directed pred->ref, as in UA-MT/TraCoCo/DHC; "
           "not assd), in mm",
    "spacing": "SimpleITK GetSpacing() (x, y, z) reversed to the array order (z, y, x)",
    "both_empty": "reference and prediction both empty: dice 1, jaccard 1, hd95 0, asd 0 (a correct case)",
    "one_empty": "exactly one of reference/prediction empty: dice 0, jaccard 0, hd95 and asd undefined "
                 "(null in JSON, empty in CSV) and excluded from the distance means; per class, "
                 "n_excluded_distance counts them",
    "means": "per class: mean and population std (ddof=0) over cases, ignoring undefined values; "
             "overall: mean over classes of the per-class means, std over cases of each case's mean over its "
             "classes",
}


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Smallest box holding every True voxel of ``mask`` (which must not be empty)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def case_metrics(ref: np.ndarray, pred: np.ndarray, spacing_zyx: Sequence[float]) -> dict:
    """Dice, Jaccard, HD95 (mm) and ASD (mm) of one binary structure (non-zero = foreground).

    ``spacing_zyx`` is the voxel size along the array axes (numpy/SimpleITK array order, i.e. z, y, x for 3D).
    Empty structures follow :data:`CONVENTIONS`: both empty is a perfect case; exactly one empty gives
    Dice = Jaccard = 0 and NaN distances, which the report excludes from its means and counts. Also returns
    the voxel counts (``ref_voxels``, ``pred_voxels``) so a reader can see why a value is NaN.
    """
    from medpy.metric.binary import asd, hd95

    ref = np.asarray(ref).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values for a {ref.ndim}-D mask")
    if any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")

    n_ref, n_pred = int(ref.sum()), int(pred.sum())
    out = {"ref_voxels": n_ref, "pred_voxels": n_pred}
    if n_ref == 0 and n_pred == 0:
        return {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, **out}
    intersection = int(np.logical_and(ref, pred).sum())
    dice = 2.0 * intersection / (n_ref + n_pred)
    jaccard = intersection / (n_ref + n_pred - intersection)
    if n_ref == 0 or n_pred == 0:
        return {"dice": dice, "jaccard": jaccard, "hd95": math.nan, "asd": math.nan, **out}
    # medpy erodes with a background border and measures distances between surface voxels only, all of which
    # lie inside the union's bounding box: cropping to it gives identical values at a fraction of the cost.
    box = _bounding_box(ref | pred)
    r, p = ref[box], pred[box]
    return {"dice": dice, "jaccard": jaccard,
            "hd95": float(hd95(p, r, voxelspacing=spacing, connectivity=1)),
            "asd": float(asd(p, r, voxelspacing=spacing, connectivity=1)), **out}
