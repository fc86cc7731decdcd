"""Bad inputs and faults a new user met (issue 13): each case reproduced, on copies of the tiny dataset.

1. unlabelled images that do not look like the training images (2D in a 3D dataset, a 4D file, a spacing in
   the wrong units) are refused, naming the file and what was expected;
2. a trainer that cannot start because of its unlabelled data ends its output with our message (checked on a
   real ``nnUNetv2_train``), with no augmentation worker started;
3. priors that do not match the preprocessed dataset.json: the error names that file and a command that fixes
   it, and ``python -m prior_generation`` reads the same file;
4. ``evaluate`` warns about label values dataset.json does not define and never writes into a dataset;
5. every command answers an unknown dataset or an unset nnU-Net variable with one ``error:`` line (exit 2),
   and refuses ``--retries -1`` / ``--timeout 0``;
6. ``kill -9`` of a real ``nnUNetv2_train``: every augmentation worker exits by itself, and ``--c`` continues
   from the last finished epoch with the state it ended with.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_semi_supervised import build_trainer, copy_dataset, write_test_priors

from conftest import _bin
from nnunet_llmseg.cli import main as cli_main
from nnunet_llmseg.data.unlabeled_preprocessing import (
    UnlabeledImageError,
    check_image,
    preprocess_unlabeled,
    unlabeled_preprocessed_folder,
)
from nnunet_llmseg.demo_data import write_nifti
from prior_generation.cli import main as priors_main
from prior_generation.dataset_info import load_dataset_classes
from prior_generation.llm import OpenAIChatBackend
from prior_generation.priors_file import PriorsError

DATA_ID = "nnUNetPlans_3d_fullres"


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error:" in line]


# ---- 1. unlabelled images must look like the training images ----------------------------------------------------

def test_unlabelled_images_must_match_the_training_images(tiny_dataset, capsys):
    _name, raw, pre = copy_dataset(tiny_dataset, 931, "LLMSegBadUnl")
    unl = raw / "imagesUnlabeled"
    out = unlabeled_preprocessed_folder(pre, DATA_ID)
    rng = np.random.default_rng(0)

    # a 2D slice in a 3D dataset: nnU-Net's reader would make it a (1, 1, 32, 32) volume with 999 mm spacing
    write_nifti(rng.normal(size=(32, 32)).astype(np.float32), unl / "flat_0000.nii.gz", (1.0, 1.0))
    with pytest.raises(UnlabeledImageError, match=r"flat_0000\.nii\.gz: 2D image \(32 x 32 pixels\), but the "
                                                  r"training images are 3D \(.*dataset_fingerprint\.json\)"):
        preprocess_unlabeled(931, "3d_fullres", verbose=False)
    assert not out.exists(), "nothing is stored for a refused image"
    # the command line says the same in one line, exit code 1 (bad data)
    assert cli_main(["preprocess-unlabeled", "-d", "931"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "flat_0000.nii.gz: 2D image" in err[0]
    (unl / "flat_0000.nii.gz").unlink()

    # a 4D file where one 3D volume per channel file is expected (was: IndexError: list index out of range)
    four = sitk.GetImageFromArray(rng.normal(size=(2, 32, 32, 32)).astype(np.float32), isVector=False)
    sitk.WriteImage(four, str(unl / "four_0000.nii.gz"))
    with pytest.raises(UnlabeledImageError, match=r"four_0000\.nii\.gz: 4D image with 2 volumes, expected a 3D "
                                                  r"image with one file per channel"):
        preprocess_unlabeled(931, "3d_fullres", verbose=False)
    (unl / "four_0000.nii.gz").unlink()

    # a header in metres (0.001) where the training images have 1 mm
    write_nifti(rng.normal(size=(32, 32, 32)).astype(np.float32), unl / "metres_0000.nii.gz", (1e-3,) * 3)
    with pytest.raises(UnlabeledImageError, match=r"metres_0000\.nii\.gz: voxel spacing 0\.001 x 0\.001 x 0\.001 "
                                                  r".* implausible .* training images have 1 to 1"):
        preprocess_unlabeled(931, "3d_fullres", verbose=False)
    (unl / "metres_0000.nii.gz").unlink()

    # the good images still go through, bit for bit nnU-Net's (tested elsewhere), and a 2D dataset refuses 3D
    assert sorted(json.loads((preprocess_unlabeled(931, "3d_fullres", verbose=False) / "_complete.json")
                             .read_text())["cases"]) == tiny_dataset.unlabelled_cases
    ref_2d = {"n_channels": 1, "file_ending": ".png", "is_2d": True, "spacing_min": [999.0, 1.0, 1.0],
              "spacing_max": [999.0, 1.0, 1.0], "n_cases": 3, "source": "fingerprint"}
    check_image(["slice_0000.png"], (1, 1, 64, 64), [999.0, 1.0, 1.0], ref_2d)  # a 2D image: fine
    check_image(["slice_0000.nii.gz"], (1, 1, 64, 64), [3.0, 1.0, 1.0], ref_2d)  # a one-slice volume too
    with pytest.raises(UnlabeledImageError, match=r"vol_0000\.png: 3D image \(8 x 64 x 64 voxels\), but the "
                                                  r"training images are 2D"):
        check_image(["vol_0000.png"], (1, 8, 64, 64), [2.0, 1.0, 1.0], ref_2d)


# ---- 2. a trainer that cannot start says why, last ----------------------------------------------------------------

def test_trainer_start_failures_end_with_our_message(tiny_dataset):
    """A corrupt unlabelled image found while the trainer preprocesses: the output of the real nnUNetv2_train ends
    with our message (it used to end 20-50 lines later with batchgenerators' 'background workers' error)."""
    name, raw, _pre = copy_dataset(tiny_dataset, 932, "LLMSegBadStart")
    good = raw / "imagesUnlabeled" / "unl_000_0000.nii.gz"
    (raw / "imagesUnlabeled" / "broken_0000.nii.gz").write_bytes(good.read_bytes()[:300])  # truncated gzip
    proc = subprocess.run(
        [_bin("nnUNetv2_train"), "932", "3d_fullres", "0", "-tr", "nnUNetTrainerLLMSeg_noText_2epochs_3it",
         "-device", "cpu"], env=tiny_dataset.env.environ(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode != 0
    assert "broken_0000.nii.gz" in lines[-1] and "corrupt or truncated gzip" in lines[-1], proc.stdout[-3000:]
    assert "background workers" not in proc.stdout

    # no unlabelled data at all: refused before nnU-Net's loaders start any worker process
    (raw / "imagesUnlabeled" / "broken_0000.nii.gz").unlink()
    shutil.rmtree(raw / "imagesUnlabeled")
    from nnunet_llmseg.trainers import nnUNetTrainerLLMSeg_noText

    trainer = build_trainer("", name, tiny_dataset.env.preprocessed / name, trainer_cls=nnUNetTrainerLLMSeg_noText)
    trainer.initialize()
    before = set(multiprocessing.active_children())
    with pytest.raises(RuntimeError, match="found no unlabelled data"):
        trainer.get_dataloaders()
    assert set(multiprocessing.active_children()) == before, "no augmentation worker was started"


# ---- 3. priors checked against the preprocessed dataset.json -------------------------------------------------------

def test_priors_error_names_the_compared_file_and_a_fix_that_works(tiny_dataset, capsys):
    name, raw, pre = copy_dataset(tiny_dataset, 933, "LLMSegBadPriors")
    planned = json.loads((pre / "dataset.json").read_text())
    edited = dict(planned, labels={"background": 0, "hippocampus_anterior": 1, "hippocampus_tail": 2})
    (raw / "dataset.json").write_text(json.dumps(edited))  # the user edits only nnUNet_raw's dataset.json
    write_test_priors(pre, edited)  # priors made from the edited file (what prior_generation read before)
    with pytest.raises(PriorsError) as e:
        build_trainer("nnUNetTrainerLLMSeg", name, pre, dataset_json=planned)  # nnUNetv2_train reads pre's copy
    msg = str(e.value)
    assert f"do not match the labels of {pre / 'dataset.json'}, the copy nnUNetv2_train reads" in msg
    assert "missing from the priors: hippocampus_posterior" in msg
    assert f"{raw / 'dataset.json'} has other labels than that copy" in msg
    assert "nnUNetv2_plan_and_preprocess -d 933 " in msg and f"python -m prior_generation -d {name}" in msg

    # the advice works: prior_generation now reads the file the trainer compares with, and says so
    assert load_dataset_classes(933).dataset_json_path == pre / "dataset.json"
    assert priors_main(["-d", "933", "--encoder", "minilm-l6-v2", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert f"labels from {pre / 'dataset.json'}" in out.out
    assert f"warning: the labels in {raw / 'dataset.json'} differ from {pre / 'dataset.json'}" in out.err
    trainer = build_trainer("nnUNetTrainerLLMSeg", name, pre, dataset_json=planned)
    assert trainer.priors.class_names == ["background", "hippocampus_anterior", "hippocampus_posterior"]
    assert not trainer.priors.random_weights and "random weights" not in Path(trainer.log_file).read_text()

    # priors from an untrained text tower are refused unless the weights are named, then flagged where they are used
    assert priors_main(["-d", "933", "--encoder", "open_clip:ViT-B-32", "--no-progress"]) == 1
    assert "error: encoder 'open_clip:ViT-B-32' names no weights" in capsys.readouterr().err
    assert priors_main(["-d", "933", "--encoder", "open_clip:ViT-B-32:none", "--no-progress"]) == 0
    assert "has random weights; these priors carry no anatomical knowledge" in capsys.readouterr().err
    trainer = build_trainer("nnUNetTrainerLLMSeg", name, pre, dataset_json=planned)
    assert trainer.priors.random_weights
    assert "WARNING: the text priors were encoded with random weights" in Path(trainer.log_file).read_text()


# ---- 4. evaluate: unknown label values, and where the reports go ---------------------------------------------------

def test_evaluate_warns_about_undefined_values_and_never_writes_into_a_dataset(nnunet_env, monkeypatch, capsys):
    name = "Dataset934_EvalBad"
    ds = nnunet_env.raw / name
    (ds / "labelsTs").mkdir(parents=True, exist_ok=True)
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {
        "background": 0, "body": 1, "head": 2}, "numTraining": 2, "file_ending": ".nii.gz"}))
    pred_dir = ds / "predictions"  # a prediction folder inside the raw dataset, as one user had it
    pred_dir.mkdir(exist_ok=True)
    ref = np.zeros((12, 12, 12), np.uint8)
    ref[2:8, 2:8, 2:8] = 1
    ref[8:10, 2:8, 2:8] = 2
    for case, ref_extra, pred_extra in (("case_a", 3, None), ("case_b", None, 7), ("case_c", 3, 7)):
        r, p = ref.copy(), ref.copy()
        if ref_extra:
            r[0, 0, 0] = ref_extra
        if pred_extra:
            p[11, 11, 11] = pred_extra
        write_nifti(r, ds / "labelsTs" / f"{case}.nii.gz")
        write_nifti(p, pred_dir / f"{case}.nii.gz")
    before = sorted(p.relative_to(ds) for p in ds.rglob("*"))
    assert cli_main(["evaluate", "-ref", str(ds / "labelsTs"), "-pred", str(pred_dir), "-d", "934", "-np", "1"]) == 0
    out = capsys.readouterr()
    assert out.err.strip() == (f"warning: label value(s) not defined in {ds / 'dataset.json'} were found and not "
                               "evaluated: 3 (reference: case_a, case_c), 7 (prediction: case_b, case_c)")
    written = [Path(line[len("wrote "):]) for line in out.out.splitlines() if line.startswith("wrote ")]
    assert len(written) == 2 and all(p.is_file() for p in written)
    assert all(p.is_relative_to(nnunet_env.results / "llmseg_evaluation") for p in written)
    assert sorted(p.relative_to(ds) for p in ds.rglob("*")) == before, "nothing written into the dataset"
    report = json.loads(written[0].read_text())
    assert report["unexpected_label_values"] == [
        {"value": 3, "reference_cases": ["case_a", "case_c"], "prediction_cases": []},
        {"value": 7, "reference_cases": [], "prediction_cases": ["case_b", "case_c"]}]
    assert report["summary"]["per_class"]["body"]["dice"]["mean"] == 1.0

    # without nnUNet_results the default is ./llmseg_evaluation - refused when that is inside a dataset
    monkeypatch.delenv("nnUNet_results")
    monkeypatch.chdir(ds)
    assert cli_main(["evaluate", "-ref", str(ds / "labelsTs"), "-pred", str(pred_dir), "-d", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lies inside $nnUNet_raw" in err[0] and "-o OUT_PREFIX" in err[0]
    assert sorted(p.relative_to(ds) for p in ds.rglob("*")) == before


# ---- 5. one error line, exit code 2 ---------------------------------------------------------------------------------

def test_cli_usage_errors_are_one_line_with_exit_code_2(tiny_dataset, monkeypatch, capsys, tmp_path):
    unknown = [
        ["subset", "-d", "999", "-f", "0", "--count", "1"],
        ["preprocess-unlabeled", "-d", "999"],
        ["evaluate", "-ref", str(tmp_path), "-pred", str(tmp_path), "-d", "999"],
        ["generate-priors", "-d", "999"],
    ]
    for args in unknown:
        assert cli_main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: dataset 999 not found: no Dataset999_* folder"), err
    assert priors_main(["-d", "999"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

    monkeypatch.delenv("nnUNet_preprocessed")
    for args in (["subset", "-d", "901", "-f", "0", "--count", "1"], ["preprocess-unlabeled", "-d", "901"]):
        assert cli_main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["error: $nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/"
                       "nnUNet_preprocessed (nnU-Net's documentation/setting_up_paths.md)"], err
    # the installed console script: no traceback either
    env = tiny_dataset.env.environ()
    del env["nnUNet_preprocessed"]
    proc = subprocess.run([_bin("nnunet-llmseg"), "subset", "-d", "901", "-f", "0", "--count", "1"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: $nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/nnUNet_preprocessed "
        "(nnU-Net's documentation/setting_up_paths.md)"], proc.stderr

    for bad in (["--retries", "-1"], ["--timeout", "0"], ["--timeout", "-5"], ["--backoff", "-1"]):
        with pytest.raises(SystemExit) as e:
            priors_main(["-d", "901", "--llm", "openai", *bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert len(error_lines(err)) == 1 and f"argument {bad[0]}: expected" in err, err
    for kw in ({"retries": -1}, {"timeout": 0}):
        with pytest.raises(ValueError, match="timeout must be > 0 s, retries >= 0"):
            OpenAIChatBackend("m", base_url="http://127.0.0.1:9/v1", cache_dir=tmp_path, **kw)


# ---- 6. kill -9 and resume ---------------------------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    """ppid -> pids of all processes (Linux /proc)."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            out.setdefault(ppid, []).append(int(entry))
    return out


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited orphan waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


class _Run:
    """A real nnUNetv2_train process whose output lines are read as they come."""

    def __init__(self, args: list[str], env: dict) -> None:
        self.proc = subprocess.Popen([_bin("nnUNetv2_train"), *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if line.rstrip().endswith(text):
                return
        raise AssertionError(f"{text!r} never appeared; output:\n" + "\n".join(self.lines[-60:]))

    def kill9(self) -> set[int]:
        """SIGKILL the trainer only (not its workers); returns the descendants it had just before."""
        workers = _descendants(self.proc.pid)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        return workers


def _clean_up(pids: set[int]) -> None:
    for pid in pids:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc (Linux)")
def test_kill_9_loses_at_most_one_epoch_and_leaves_no_worker(tiny_dataset):
    name, _raw, pre = copy_dataset(tiny_dataset, 935, "LLMSegKill")
    write_test_priors(pre, json.loads((pre / "dataset.json").read_text()))
    trainer = "nnUNetTrainerLLMSeg_2epochs_3it"
    fold = tiny_dataset.env.results / name / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    env = tiny_dataset.env.environ()
    leftovers: set[int] = set()
    try:
        run = _Run(["935", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env)
        run.wait_for("Epoch 1")  # epoch 0 is finished (and checkpointed) when epoch 1 starts
        workers = run.kill9()
        leftovers |= workers
        # nnU-Net's two augmenters and ours each have a worker (nnUNet_n_proc_DA=1): all must exit by themselves
        assert len(workers) >= 3, f"expected the augmentation workers among {workers}"
        deadline = time.time() + 20
        while time.time() < deadline and any(_running(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if _running(p)], "augmentation workers outlived the killed trainer"

        assert not (fold / "checkpoint_final.pth").exists()
        latest = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
        assert latest["current_epoch"] == 1 and len(latest["logging"]["train_losses"]) == 1
        assert any(k.startswith("net_b.") for k in latest["network_weights"]), "both networks"

        resumed = _Run(["935", "3d_fullres", "0", "-tr", trainer, "-device", "cpu", "--c"], env)
        resumed.wait_for("Training done.")  # checkpoint_final is written; the final validation is not under test
        leftovers |= resumed.kill9()
        epochs = [m.group(1) for m in map(re.compile(r": (Epoch \d+)$").search, resumed.lines) if m]
        assert epochs == ["Epoch 1"], "resumed with the epoch after the last finished one"
        final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        assert final["current_epoch"] == 2
        for key in ("train_losses", "val_losses", "unsup_losses", "mean_fg_dice", "ema_fg_dice"):
            assert final["logging"][key][0] == latest["logging"][key][0], key  # epoch 0 carried over exactly
            assert len(final["logging"][key]) == 2, key
    finally:
        _clean_up(leftovers)


def test_checkpoint_is_written_every_epoch_and_atomically(tiny_dataset, monkeypatch):
    name, _raw, pre = copy_dataset(tiny_dataset, 936, "LLMSegCkpt")
    t = build_trainer("nnUNetTrainerLabelledOnly_5epochs_10it", name, pre)
    t.initialize()
    t.logger.log("train_losses", 1.0, 0)  # the end-of-epoch values nnU-Net's on_epoch_end prints and reads
    t.logger.log("val_losses", 1.0, 0)
    t.logger.log("dice_per_class_or_region", [0.5, 0.25], 0)
    t.logger.log("mean_fg_dice", 0.375, 0)
    t.logger.log("epoch_start_timestamps", time.time(), 0)
    t.on_epoch_end()
    latest = Path(t.output_folder) / "checkpoint_latest.pth"
    saved = torch.load(latest, map_location="cpu", weights_only=False)
    assert saved["current_epoch"] == t.current_epoch == 1
    assert saved["_best_ema"] == t._best_ema is not None, "written after nnU-Net updated the best EMA"

    def dies_halfway(obj, f, *a, **kw):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        t.save_checkpoint(str(latest))
    monkeypatch.undo()
    again = torch.load(latest, map_location="cpu", weights_only=False)  # the previous checkpoint is intact
    assert again["current_epoch"] == 1
