"""The one-command demo runs end to end (tiny setting): generate, plan, priors, subset, train, predict, evaluate.

It is also the suite's real ``nnUNetv2_train`` / ``nnUNetv2_predict`` run of TAK (the two-epoch smoke test in
``test_semi_supervised.py`` covers LLM-SegNet): the checkpoint must carry the text priors as persistent buffers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import predictor_from_model_folder, run_cli
from nnunet_llmseg.benchmark.training_logs import parse_logs
from nnunet_llmseg.trainers.tak import nnUNetTrainerTAK
from nnunet_llmseg.trainers.text_priors import stacked_rows
from prior_generation.priors_file import load_priors


@pytest.mark.slow
def test_demo_runs_end_to_end_offline(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli(["nnunet-llmseg", "demo", "--out", str(out), "--cases", "6", "--labels", "2", "--unlabelled", "2",
                    "--test", "2"], timeout=1500)  # the default method (TAK) and schedule (10 x 10)
    assert f"everything goes under {out}" in proc.stdout
    assert "[7/7] evaluating" in proc.stdout and "Dice" in proc.stdout and "hippocampus_anterior" in proc.stdout
    result = json.loads((out / "evaluation.json").read_text())
    overall = result["summary"]["overall"]
    assert 0.0 <= overall["dice"]["mean"] <= 1.0
    # every class learnt (issue 11): the first TAK collapsed to background here; with 5 x 10 iterations the small
    # structure was still unlearnt in 2 of 6 runs (one of them in CI), so the demo's default became 10 x 10
    per_class = {name: r["dice"]["mean"] for name, r in result["summary"]["per_class"].items()}
    assert set(per_class) == {"hippocampus_anterior", "hippocampus_posterior"}, per_class
    assert min(per_class.values()) > 0.5, f"a class is not learnt: {per_class}"
    assert sorted(p.name for p in (out / "predictions").glob("*.nii.gz")) == ["test_000.nii.gz", "test_001.nii.gz"]
    pre = out / "nnUNet_preprocessed" / "Dataset990_LLMSegDemo"
    assert (pre / "text_priors.safetensors").is_file()

    # the trained TAK checkpoint rebuilds from the priors alone: shape + location texts as persistent buffers
    fold = next((out / "nnUNet_results" / "Dataset990_LLMSegDemo").glob("nnUNetTrainerTAK_*/fold_0"))
    assert (fold / "validation" / "summary.json").is_file() and (fold / "progress.png").is_file()
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    priors = load_priors(pre)
    expected = stacked_rows(priors, nnUNetTrainerTAK.text_keys, list(range(len(priors.class_names))))
    for net in ("net_a", "net_b"):
        torch.testing.assert_close(ckpt["network_weights"][f"{net}.text_embeddings"], expected)
    log = ckpt["logging"]
    assert len(log["unsup_losses"]) == 10 and len(log["confident_fraction"]) == 10  # one entry per epoch
    text_log = next(fold.glob("training_log_*.txt")).read_text()
    assert "contrast_loss" in text_log
    # both networks' class-balance weights reach the text log every epoch (DHC: mean 1 over the 3 classes)
    assert text_log.count("class weights ") == 10
    weights = parse_logs(fold).class_weights
    assert len(weights) == 10, weights
    for epoch in weights:
        assert sorted(epoch) == ["a", "b"], epoch
        for values in epoch.values():
            assert len(values) == 3 and all(np.isfinite(values)), epoch
            assert abs(np.mean(values) - 1) < 0.01, epoch

    # one network of the pair predicts on its own, as nnU-Net's predictor builds it from the model folder (in this
    # process: the demo's own step 6 already ran the nnUNetv2_predict command on both networks)
    predictor = predictor_from_model_folder(fold.parent, "a")
    assert predictor.network.predict_networks == "a"
    images = out / "nnUNet_raw" / "Dataset990_LLMSegDemo" / "imagesTs"
    (tmp_path / "pred_a").mkdir()  # nnUNetv2_predict creates it before calling the predictor
    predictor.predict_from_files_sequential(str(images), str(tmp_path / "pred_a"), save_probabilities=False,
                                            overwrite=True, folder_with_segs_from_prev_stage=None)
    assert sorted(p.name for p in (tmp_path / "pred_a").glob("*.nii.gz")) == ["test_000.nii.gz", "test_001.nii.gz"]
