"""Class frequencies and DHC distribution weights that nnU-Net's own sampling gives at two patch settings.

TAK's network A is balanced by DHC's distribution-aware weights (``DistributionDifficultyWeights(mode="dist")``),
an EMA of the class frequencies in the labelled batches. Those batches come from nnU-Net's ``nnUNetDataLoader``
(random crops, a third forced onto foreground), so the weights depend on the patch and batch size. This script
draws labelled batches exactly as the trainer's loader does (no augmentation: the spatial transforms barely move
class frequencies) and feeds their labels, one-hot as ``probs``, into the same weights module, for each
``--setting BATCHxHxW``. Why: the whole-slice ACDC runs measured that the class balance costs TAK 0.033 at
128 x 112 (batch 2) against 0.007 at 64 x 64 (batch 8); this says whether network A's weights differ between them.

    python benchmarks/class_frequency_by_patch.py --preprocessed WS/nnUNet_preprocessed/Dataset027_ACDC \
        --plans nnUNetPlans_sp2 --configuration 2d --setting 2x128x112 8x64x64 --batches 500
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_llmseg.losses.class_balance import DistributionDifficultyWeights


def measure(preprocessed: Path, plans: str, configuration: str, cases: list[str], batch: int,
            patch: list[int], batches: int, seed: int, oversample_foreground: float = 0.33) -> dict:
    """Mean class frequencies over ``batches`` labelled batches and DHC's DistDW weights after them.

    The labels are taken as the loss sees them: nnU-Net's training transforms end with ``RemoveLabelTansform(-1,
    0)``, so the loader's padding and the voxels outside the nonzero mask (``-1``) count as background, in the
    frequencies and in the weights alike; nnU-Net's ignore label (outside ``[0, K)``) counts in neither, as
    ``DistributionDifficultyWeights.update`` leaves it out. ``oversample_foreground`` is the share of crops forced
    onto foreground (nnU-Net's ``nnUNetTrainer.oversample_foreground_percent``, 0.33 unless a trainer changes it;
    ours do not)."""
    pm = PlansManager(preprocessed / f"{plans}.json")
    cm = pm.get_configuration(configuration)
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    lm = pm.get_label_manager(dataset_json)
    folder = preprocessed / cm.data_identifier
    data = infer_dataset_class(str(folder))(str(folder), cases)
    np.random.seed(seed)
    loader = nnUNetDataLoader(data, batch, patch, patch, lm, oversample_foreground_percent=oversample_foreground)
    k = len(lm.all_labels)
    weights = DistributionDifficultyWeights(k, mode="dist")
    counts = np.zeros(k)
    for _ in range(batches):
        target = torch.as_tensor(np.asarray(loader.generate_train_batch()["target"])).long()[:, 0]
        target = target.clamp_min(0)  # RemoveLabelTansform(-1, 0), as in training
        counts += np.bincount(target[target < k].numpy(), minlength=k)[:k]
        one_hot = torch.nn.functional.one_hot(target.clamp_max(k - 1), k).movedim(-1, 1).float()
        weights.update(one_hot, target, update_difficulty=False)
    return {"batch": batch, "patch": patch, "batches": batches,
            "frequency": (counts / counts.sum()).round(4).tolist(),
            "dist_weights": [round(float(w), 3) for w in weights.weights().tolist()]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preprocessed", type=Path, required=True, help="nnUNet_preprocessed/DatasetXXX folder")
    parser.add_argument("--plans", default="nnUNetPlans")
    parser.add_argument("--configuration", default="2d")
    parser.add_argument("--setting", nargs="+", required=True, help="BATCHxHxW[xD], e.g. 2x128x112")
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oversample-foreground", type=float, default=0.33,
                        help="share of crops forced onto foreground (nnU-Net's default 0.33)")
    parser.add_argument("--cases", nargs="*", help="labelled case ids (default: labelled_subset_fold0.json)")
    args = parser.parse_args(argv)
    subset_file = args.preprocessed / "labelled_subset_fold0.json"
    if args.cases:
        subset = args.cases
    elif subset_file.is_file():  # the benchmark's labelled subset (what TAK's labelled batches are drawn from)
        subset = json.loads(subset_file.read_text())["labelled"]
    else:
        raise SystemExit(f"no --cases given and no {subset_file}: name the labelled cases to sample")
    print("| batch | patch | class frequency (background first) | DHC DistDW weights (mean 1) |")
    print("|---|---|---|---|")
    for setting in args.setting:
        batch, *patch = (int(v) for v in setting.split("x"))
        r = measure(args.preprocessed, args.plans, args.configuration, subset, batch, patch, args.batches, args.seed,
                    args.oversample_foreground)
        print(f"| {batch} | {' x '.join(map(str, patch))} | {r['frequency']} | {r['dist_weights']} |")


if __name__ == "__main__":
    main()
