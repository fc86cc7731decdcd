"""Region-based training as nnU-Net does it for BraTS, end to end through nnU-Net's own commands on tiny data.

``brats``: 4 channels, ``regions_class_order``, sigmoid outputs, planned with the ResEnc preset
``nnUNetPlannerResEncM``, text priors written by the real ``prior_generation`` (offline knowledge base, bundled
MiniLM encoder). LLM-SegNet starts from a plain nnUNetTrainer checkpoint (``-pretrained_weights``) with ``--npz``, is
validated again with ``--val --val_best``; TAK trains with ``--npz``; ``nnUNetv2_find_best_configuration`` and
``nnUNetv2_ensemble`` run over both model folders; ``nnUNetv2_predict`` runs with ``-chk checkpoint_best.pth``,
``--save_probabilities``, ``-step_size``, ``--disable_tta`` and ``NNUNET_LLMSEG_PREDICT_NETWORKS=a`` (that one on
nnU-Net's worker processes, ``-npp 1 -nps 1``; every other prediction of the suite runs sequentially).

Schedules are 2 epochs x 3 iterations; batch sizes are cut to 2 in the plans (a plans edit, as users make them). The
sparse-annotation set-up (ignore label, ``3d_lowres``, the cascade) is in test_setups_sparse.py: a file each, so that
``pytest -n 2 --dist loadfile`` can run the two on different workers.
"""

from __future__ import annotations

import json
from pathlib import Path

import blosc2
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
    write_brats_like,
)
from test_semi_supervised import build_trainer

from conftest import predictor_from_model_folder, run_cli
from nnunet_llmseg.demo import narrow_planned_networks

BRATS_ID, BRATS = 971, "Dataset971_LLMSegBraTS"
#: the BraTS-like volumes: the smallest the three nested regions stay a few voxels thick in (training cost ~ voxels)
BRATS_SHAPE = (16, 16, 16)
RESENC = "nnUNetResEncUNetMPlans"


def _plain_checkpoint(pre: Path, plans_name: str, configuration: str, out: Path) -> Path:
    """A checkpoint written by nnU-Net's own nnUNetTrainer.save_checkpoint (what a user's existing model holds)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans = json.loads((pre / f"{plans_name}.json").read_text())
    plans["continue_training"] = False
    trainer = nnUNetTrainer(plans, configuration, 0, json.loads((pre / "dataset.json").read_text()),
                            device=torch.device("cpu"))
    trainer.initialize()
    trainer.save_checkpoint(str(out))
    return out


@pytest.fixture(scope="module")
def brats(nnunet_env, tmp_path_factory):
    raw = write_brats_like(nnunet_env.raw, BRATS, n_labelled=5, n_unlabelled=2, shape=BRATS_SHAPE)
    env = nnunet_env.environ()
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(BRATS_ID), "-pl", "nnUNetPlannerResEncM", "-c", "3d_fullres",
             "-np", "1"], env=env)
    pre = nnunet_env.preprocessed / BRATS
    set_batch_size(pre / f"{RESENC}.json", **{"3d_fullres": 2})
    narrow_planned_networks(pre / f"{RESENC}.json")
    run_cli(["python", "-m", "prior_generation", "-d", str(BRATS_ID), "--encoder", "minilm-l6-v2", "--no-progress"],
            env=env)
    plain = _plain_checkpoint(pre, RESENC, "3d_fullres", tmp_path_factory.mktemp("plain") / "plain.pth")
    return {"env": nnunet_env, "raw": raw, "pre": pre, "plain": plain}


def test_region_priors_and_pretrained_weights_in_process(brats, tmp_path):
    """Region text priors from the knowledge base; -pretrained_weights' loader on a fresh trainer: both U-Nets
    equal the checkpoint (segmentation layers excepted), our modules untouched, a foreign checkpoint refused."""
    meta = json.loads((brats["pre"] / "text_priors.json").read_text())
    assert meta["class_names"] == ["background", "whole_tumor", "tumor_core", "enhancing_tumor"]
    assert meta["label_values"][1:] == [[1, 2, 3], [2, 3], 3]
    # a model folder no run uses
    trainer = build_trainer("nnUNetTrainerLLMSeg_5epochs_10it", BRATS, brats["pre"], plans_name=RESENC)
    trainer.initialize()
    twin = trainer.network
    assert type(twin.net_a.unet).__name__ == "ResidualEncoderUNet"
    fusion_before = {k: v.clone() for k, v in twin.net_a.fusion.state_dict().items()}
    report = trainer.load_pretrained_weights(str(brats["plain"]))
    weights = torch.load(brats["plain"], map_location="cpu", weights_only=False)["network_weights"]
    for net in (twin.net_a, twin.net_b):
        for k, v in net.unet.state_dict().items():
            if ".seg_layers." not in k:
                assert torch.equal(v, weights[k]), k
    for k, v in twin.net_a.fusion.state_dict().items():
        assert torch.equal(v, fusion_before[k])
    assert report["loaded"] > 100 and report["skipped_seg_layers"] > 0 and "fusion" in report["own_modules"]
    # nnUNetv2_train calls run_training.load_pretrained_weights(trainer.network, ...): ours for our network,
    # nnU-Net's original for any other
    import nnunetv2.run.run_training as run_training
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    assert run_training.load_pretrained_weights(trainer.network, str(brats["plain"]))["loaded"] == report["loaded"]
    plain_net = nnUNetTrainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 4, 3,
                                                         True)
    run_training.load_pretrained_weights(plain_net, str(brats["plain"]))
    assert torch.equal(plain_net.state_dict()["encoder.stem.convs.0.conv.weight"],
                       weights["encoder.stem.convs.0.conv.weight"])
    broken = dict(weights)
    broken.pop("encoder.stem.convs.0.conv.weight")
    torch.save({"network_weights": broken}, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match=r"does not fit the planned network.*encoder\.stem\.convs\.0\.conv\.weight"):
        trainer.load_pretrained_weights(str(tmp_path / "broken.pth"))


@pytest.mark.slow
def test_resenc_regions_train_validate_ensemble_predict(brats, tmp_path):
    env_obj = brats["env"]
    env = env_obj.environ()
    # LLM-SegNet from a plain nnU-Net checkpoint, validation probabilities exported
    proc = run_cli(["nnUNetv2_train", str(BRATS_ID), "3d_fullres", "0", "-tr", LLMSEG, "-p", RESENC, "-device", "cpu",
                    "--npz", "-pretrained_weights", str(brats["plain"])], env=env)
    assert "into each of net_a.unet and net_b.unet" in proc.stdout and "Not loaded: the segmentation layers" in \
        proc.stdout
    llm = model_folder(env_obj, BRATS, LLMSEG, RESENC, "3d_fullres")
    summary = llm / "fold_0" / "validation" / "summary.json"
    first = json.loads(summary.read_text())
    assert set(first["mean"]) == {"(1, 2, 3)", "(2, 3)", "3"}  # nnU-Net scored the three regions
    assert list((llm / "fold_0" / "validation").glob("*.npz"))
    ckpt = torch.load(llm / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["init_args"]["plans"]["nnunet_llmseg"]["has_regions"] is True
    # validation again, with checkpoint_best (nnU-Net loads the twin checkpoint strictly)
    summary.unlink()
    run_cli(["nnUNetv2_train", str(BRATS_ID), "3d_fullres", "0", "-tr", LLMSEG, "-p", RESENC, "-device", "cpu",
             "--val", "--val_best", "--npz"], env=env)
    assert summary.is_file()
    # TAK with regions: class balance and contrast on regions
    run_cli(["nnUNetv2_train", str(BRATS_ID), "3d_fullres", "0", "-tr", TAK, "-p", RESENC, "-device", "cpu", "--npz"],
            env=env)
    tak = model_folder(env_obj, BRATS, TAK, RESENC, "3d_fullres")
    log = next((tak / "fold_0").glob("training_log_*.txt")).read_text()
    contrast = [float(line.split("contrast_loss")[1]) for line in log.splitlines() if "contrast_loss" in line]
    assert contrast and all(np.isfinite(c) and c > 0 for c in contrast)
    weights = torch.load(tak / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                         weights_only=False)["logging"]["class_weights"][-1]
    assert len(weights) == 3 and all(np.isfinite(weights))

    # nnU-Net's model selection and ensembling over our two model folders
    run_cli(["nnUNetv2_find_best_configuration", str(BRATS_ID), "-c", "3d_fullres", "-p", RESENC, "-tr", LLMSEG,
             TAK, "-f", "0", "-np", "1"], env=env)
    info = json.loads((env_obj.results / BRATS / "inference_information.json").read_text())
    assert len(info["all_results"]) == 3  # both models and their ensemble
    assert all(np.isfinite(v) for v in info["all_results"].values())

    inp = copy_images(brats["raw"], ["brats_000", "brats_003"], 4, tmp_path / "in")
    out_a, out_t, out_e = tmp_path / "llmseg_a", tmp_path / "tak", tmp_path / "ensemble"
    proc = run_cli(["nnUNetv2_predict", "-i", str(inp), "-o", str(out_a), "-d", str(BRATS_ID), "-c", "3d_fullres",
                    "-p", RESENC, "-f", "0", "-tr", LLMSEG, "-chk", "checkpoint_best.pth", "--save_probabilities",
                    "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"],
                   env=dict(env, NNUNET_LLMSEG_PREDICT_NETWORKS="a"))
    assert "NNUNET_LLMSEG_PREDICT_NETWORKS=a: predictions use network a only" in proc.stdout
    run_cli(["nnUNetv2_predict", "-i", str(inp), "-o", str(out_t), "-d", str(BRATS_ID), "-c", "3d_fullres", "-p",
             RESENC, "-f", "0", "-tr", TAK, "--save_probabilities", "-step_size", "0.75", "-device", "cpu", "-npp",
             "0", "-nps", "0"], env=env)
    run_cli(["nnUNetv2_ensemble", "-i", str(out_a), str(out_t), "-o", str(out_e), "-np", "1"], env=env)
    for folder in (out_a, out_t, out_e):
        for case in ("brats_000", "brats_003"):
            assert labels_in(folder, case) <= {0, 1, 2, 3}
    probs = np.load(out_a / "brats_000.npz")["probabilities"]
    assert probs.shape == (3, *BRATS_SHAPE) and probs.min() >= 0 and probs.max() <= 1

    # prediction averaging of the two networks' sigmoid maps: the network nnU-Net's predictor builds from the model
    # folder (plans.json says "regions") and loads from checkpoint_best, for each NNUNET_LLMSEG_PREDICT_NETWORKS
    data = torch.from_numpy(np.asarray(blosc2.open(str(brats["pre"] / "nnUNetPlans_3d_fullres" / "brats_000.b2nd"),
                                                   mode="r")[:]))[None].float()
    probs = {mode: _predicted_probabilities(llm, mode, data) for mode in ("a", "b", "both")}
    torch.testing.assert_close(probs["both"], 0.5 * (probs["a"] + probs["b"]), atol=1e-6, rtol=0)
    assert not torch.allclose(probs["a"], probs["b"])


def _predicted_probabilities(model: Path, mode: str, data: torch.Tensor) -> torch.Tensor:
    predictor = predictor_from_model_folder(model, mode, checkpoint_name="checkpoint_best.pth")
    assert predictor.network.has_regions and predictor.network.predict_networks == mode
    predictor.network.eval()
    with torch.no_grad():  # nnU-Net's inference non-linearity (sigmoid for regions) on the network's output
        return predictor.label_manager.apply_inference_nonlin(predictor.network(data)[0]).float()
