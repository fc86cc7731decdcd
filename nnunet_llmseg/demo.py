"""``nnunet-llmseg demo``: the whole path on an embedded default, offline, in a few minutes on a laptop CPU.

1. generate a small synthetic dataset (labelled, unlabelled and held-out test cases) in nnU-Net's raw format
2. ``nnUNetv2_plan_and_preprocess`` (3d_fullres), then the planned network 4x narrower (``narrow_planned_networks``)
3. ``python -m prior_generation`` with the offline knowledge base and the offline MiniLM text encoder
4. ``nnunet-llmseg subset``: keep the labels of a few training cases only
5. ``nnUNetv2_train`` with ``nnUNetTrainerTAK`` (``--method llmseg``: ``nnUNetTrainerLLMSeg``) on a short schedule
   (unlabelled preprocessing happens on first use)
6. ``nnUNetv2_predict`` on the held-out test images, sequentially (``-npp 0 -nps 0``: for a few small images
   nnU-Net's spawned worker processes, each importing torch and nnU-Net anew, cost more than they save)
7. ``nnunet-llmseg evaluate``: Dice, Jaccard, HD95, ASD - printed as a table

Why TAK and 10 x 10 iterations by default: the synthetic data has a large bright structure and a small, fainter
one next to it. The small one is learnt abruptly, after some 20-40 iterations, at a point that varies from run to
run: with 5 x 10 iterations it was still unlearnt (Dice ~0.0) at the end of 2 of 6 TAK runs, one of them in CI;
with 10 x 10 it was learnt in every run measured (5 of 5 on 32^3 volumes, 4 of 4 on 24 x 24 x 32 volumes, 3 of 3 on
the present 20 x 20 x 28 volumes; final Dice 0.96-1.00 where the end was recorded; with the network 4x narrower than
planned, 3 of 3 runs, by epoch 3-4, test Dice 0.95-0.99). The demo is a check that the
whole path works, not a comparison of methods: ``--method llmseg`` runs LLM-SegNet on the same schedule, and
``nnunet-llmseg benchmark`` is the command that compares methods.

Everything is written under one output folder, named at the start. Each step is a real command run in a
subprocess with the output folder's own nnU-Net paths, exactly as a user would type it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from nnunet_llmseg.benchmark.plans import MIN_FEATURES, narrowed_features

DATASET_ID = 990
DATASET_NAME = "Dataset990_LLMSegDemo"
#: volume size of the generated cases (z, y, x): 20 x 20 x 28 (11 200 voxels, a third of 32^3) is the smallest
#: the two structures fit in - the ellipsoid (radii 5-7, centre jitter 2) and, beside it along x, the small 6 x 6 x 5
#: box - and a 3D training step costs about in proportion to the voxels of the patch (= the volume here)
DEMO_SHAPE: tuple[int, int, int] = (20, 20, 28)
#: the demo network's features per stage are nnU-Net's planned ones divided by this (32-64-128 -> 8-16-32): nnU-Net
#: sizes its networks for real images, and on these volumes the narrower one learns both structures as reliably
#: (docs/methods.md) while a training step costs several times less
DEMO_WIDTH_DIVISOR = 4


def narrow_planned_networks(plans_file: Path, divisor: int = DEMO_WIDTH_DIVISOR, minimum: int = MIN_FEATURES) -> None:
    """Divide every configuration's ``features_per_stage`` in an nnU-Net plans file (in place).

    Everything else nnU-Net planned (stages, kernels, strides, blocks, patch and batch size) stays, and the
    preprocessed data does not depend on the width. A convolution's cost grows with the square of its width.
    nnU-Net's documentation on plans files describes this kind of edit for changing the architecture.
    """
    plans = json.loads(plans_file.read_text())
    for cfg in plans["configurations"].values():
        kwargs = cfg.get("architecture", {}).get("arch_kwargs", {})
        if "features_per_stage" in kwargs:  # configurations that inherit their architecture have none
            kwargs["features_per_stage"] = narrowed_features(kwargs["features_per_stage"], divisor, minimum)
    plans_file.write_text(json.dumps(plans, indent=2))


def _bin(name: str) -> list[str]:
    candidate = Path(sys.executable).parent / name
    return [str(candidate)] if candidate.exists() else [name]


class _Steps:
    def __init__(self, total: int, log_file: Path) -> None:
        self.total, self.n, self.t0, self.log_file = total, 0, time.time(), log_file

    def run(self, title: str, cmd: list[str], env: dict) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {title}  (t={time.time() - self.t0:.0f}s)", flush=True)
        print("      $ " + " ".join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd)), flush=True)
        with open(self.log_file, "a") as log:
            log.write(f"\n===== {title}: {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = self.log_file.read_text().splitlines()[-25:]
            raise SystemExit(f"step '{title}' failed (exit {proc.returncode}); last lines of {self.log_file}:\n"
                             + "\n".join(tail))

    def note(self, title: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total}] {title}  (t={time.time() - self.t0:.0f}s)", flush=True)


def run_demo(out: Path, n_labelled_pool: int = 8, n_labels: int = 3, n_unlabelled: int = 4, n_test: int = 3,
             trainer: str = "nnUNetTrainerTAK_10epochs_10it", encoder: str = "minilm-l6-v2",
             device: str = "cpu") -> dict:
    from nnunet_llmseg.demo_data import write_synthetic_dataset

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"nnunet-llmseg demo: everything goes under {out}", flush=True)
    env = dict(os.environ)
    env.update(nnUNet_raw=str(out / "nnUNet_raw"), nnUNet_preprocessed=str(out / "nnUNet_preprocessed"),
               nnUNet_results=str(out / "nnUNet_results"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.setdefault("nnUNet_n_proc_DA", "1")
    env.setdefault("nnUNet_def_n_proc", "1")
    env.setdefault("nnUNet_compile", "false")
    steps = _Steps(7, out / "demo_log.txt")
    steps.note(f"generating {n_labelled_pool} training, {n_unlabelled} unlabelled and {n_test} test volumes")
    raw = write_synthetic_dataset(out / "nnUNet_raw", DATASET_NAME, n_labelled_pool, n_unlabelled, n_test,
                                  shape=DEMO_SHAPE)
    d = str(DATASET_ID)
    steps.run("planning and preprocessing (nnU-Net)",
              [*_bin("nnUNetv2_plan_and_preprocess"), "-d", d, "-c", "3d_fullres", "-np", "1"], env)
    plans_file = out / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans.json"
    narrow_planned_networks(plans_file)
    print(f"      network {DEMO_WIDTH_DIVISOR}x narrower than planned, for these tiny volumes ({plans_file})",
          flush=True)
    steps.run("writing text priors (offline knowledge base, offline encoder)",
              [sys.executable, "-m", "prior_generation", "-d", d, "--llm", "offline", "--encoder", encoder,
               "--no-progress"], env)
    steps.run(f"keeping the labels of {n_labels} training cases of fold 0",
              [*_bin("nnunet-llmseg"), "subset", "-d", d, "-f", "0", "--count", str(n_labels), "--seed", "0"], env)
    steps.run(f"semi-supervised training ({trainer}, {device})",
              [*_bin("nnUNetv2_train"), d, "3d_fullres", "0", "-tr", trainer, "-device", device], env)
    pred = out / "predictions"
    steps.run("predicting the held-out test images",
              [*_bin("nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", d, "-c", "3d_fullres",
               "-f", "0", "-tr", trainer, "-device", device, "--disable_tta", "-npp", "0", "-nps", "0"], env)
    steps.note("evaluating (Dice, Jaccard, HD95, ASD)")
    from nnunet_llmseg.evaluation.report import evaluate_folders, format_table, write_reports

    labels = {"hippocampus_anterior": 1, "hippocampus_posterior": 2}
    result = evaluate_folders(raw / "labelsTs", pred, labels=labels, num_processes=1)
    json_path, csv_path = write_reports(result, out / "evaluation")
    print(format_table(result))
    print(f"\nreports: {json_path}, {csv_path}\nmodel: {out / 'nnUNet_results' / DATASET_NAME}\n"
          f"log of every command: {out / 'demo_log.txt'}")
    return result


def _run(args: argparse.Namespace) -> int:
    out = args.out or Path.cwd() / f"nnunet_llmseg_demo_{datetime.now():%Y%m%d_%H%M%S}"
    base = {"tak": "nnUNetTrainerTAK", "llmseg": "nnUNetTrainerLLMSeg"}[args.method]
    trainer = f"{base}_{args.epochs}epochs_{args.iters}it"
    from nnunet_llmseg.trainers.schedules import SHORT_SCHEDULES

    if (args.epochs, args.iters) not in SHORT_SCHEDULES:
        raise SystemExit(f"--epochs/--iters must be one of the registered short schedules {SHORT_SCHEDULES}")
    run_demo(out, n_labelled_pool=args.cases, n_labels=args.labels, n_unlabelled=args.unlabelled,
             n_test=args.test, trainer=trainer, encoder=args.encoder, device=args.device)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole path offline on a generated dataset and print metrics")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: ./nnunet_llmseg_demo_<time>)")
    p.add_argument("--cases", type=int, default=8, help="labelled-pool training cases to generate")
    p.add_argument("--labels", type=int, default=3, help="how many of fold 0's training cases keep labels")
    p.add_argument("--unlabelled", type=int, default=4)
    p.add_argument("--test", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--encoder", default="minilm-l6-v2")
    p.add_argument("--method", default="tak", choices=("tak", "llmseg"),
                   help="tak (default) or llmseg")
    p.add_argument("-device", "--device", default="cpu", choices=("cpu", "cuda"))
    p.set_defaults(func=_run)
