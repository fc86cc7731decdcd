"""nnU-Net's ``ignore`` label and its low-resolution stage, end to end through nnU-Net's own commands on tiny data.

``sparse``: every other slab unannotated (nnU-Net's ``ignore`` label), 64^3 images planned with a small GPU memory
target so that the planner itself creates ``3d_lowres`` and ``3d_cascade_fullres``: LLM-SegNet on ``3d_lowres``, TAK
on ``2d``, the cascade refused at start. Schedules are 2 epochs x 3 iterations; the 2d batch size is cut to 2 in the
plans. The region-based (BraTS-like) set-up is in test_setups_regions.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from setups_data import (
    LLMSEG,
    TAK,
    copy_images,
    labels_in,
    model_folder,
    set_batch_size,
    write_sparse_dataset,
)
from test_semi_supervised import build_trainer, write_test_priors

from conftest import run_cli
from nnunet_llmseg.demo import narrow_planned_networks

SPARSE_ID, SPARSE = 972, "Dataset972_LLMSegSparse"


@pytest.fixture(scope="module")
def sparse(nnunet_env):
    raw = write_sparse_dataset(nnunet_env.raw, SPARSE, n_labelled=5, n_unlabelled=2, shape=(64, 64, 64))
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(SPARSE_ID), "-c", "2d", "3d_fullres", "3d_lowres", "-np",
             "1", "-gpu_memory_target", "0.05"], env=nnunet_env.environ())
    pre = nnunet_env.preprocessed / SPARSE
    set_batch_size(pre / "nnUNetPlans.json", **{"2d": 2})
    narrow_planned_networks(pre / "nnUNetPlans.json")
    write_test_priors(pre, json.loads((pre / "dataset.json").read_text()))
    return {"env": nnunet_env, "raw": raw, "pre": pre}


def test_cascade_is_refused_at_start_with_the_reason(sparse):
    plans = json.loads((sparse["pre"] / "nnUNetPlans.json").read_text())
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(plans["configurations"]), "the planner made a lowres stage"
    with pytest.raises(RuntimeError, match=r"cannot train the cascade configuration '3d_cascade_fullres'.*"
                                           r"none for the unlabelled images"):
        build_trainer(LLMSEG, SPARSE, sparse["pre"], configuration="3d_cascade_fullres")


@pytest.mark.slow
def test_ignore_label_on_3d_lowres_and_2d(sparse, tmp_path):
    env_obj = sparse["env"]
    env = env_obj.environ()
    run_cli(["nnUNetv2_train", str(SPARSE_ID), "3d_lowres", "0", "-tr", LLMSEG, "-device", "cpu"], env=env)
    run_cli(["nnUNetv2_train", str(SPARSE_ID), "2d", "0", "-tr", TAK, "-device", "cpu"], env=env)
    for trainer, cfg in ((LLMSEG, "3d_lowres"), (TAK, "2d")):
        fold = model_folder(env_obj, SPARSE, trainer, "nnUNetPlans", cfg) / "fold_0"
        assert (fold / "validation" / "summary.json").is_file()
        log = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
        assert all(np.isfinite(log["sup_losses"])) and all(np.isfinite(log["unsup_losses"]))
        if trainer == TAK:
            assert len(log["class_weights"][-1]) == 3 and all(np.isfinite(log["class_weights"][-1]))
    inp = copy_images(sparse["raw"], ["sparse_001"], 1, tmp_path / "in")
    out = tmp_path / "out"
    run_cli(["nnUNetv2_predict", "-i", str(inp), "-o", str(out), "-d", str(SPARSE_ID), "-c", "3d_lowres", "-f", "0",
             "-tr", LLMSEG, "-step_size", "0.75", "-device", "cpu", "-npp", "0", "-nps", "0"], env=env)
    assert labels_in(out, "sparse_001") <= {0, 1, 2}  # never the ignore label
