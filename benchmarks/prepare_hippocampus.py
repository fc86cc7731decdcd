"""Prepare MSD Task04 Hippocampus for the benchmarks: convert, add unlabelled images, plan, preprocess, priors.

Every step is a real command a user would run (nnU-Net's MSD converter, our ``convert-msd-unlabeled``,
``nnUNetv2_plan_and_preprocess``, ``python -m prior_generation`` with the offline knowledge base and the offline
MiniLM encoder, ``nnunet-llmseg subset``), in a workspace with its own nnU-Net folders (shared with
``prepare_acdc.py``: dataset ids 4 and 27). Preprocesses ``3d_fullres`` and ``2d``.

    python benchmarks/prepare_hippocampus.py --workspace benchmarks/results/workspace --labelled 10

Writes ``<workspace>/env.sh`` with the three nnU-Net variables for later commands. Steps already done are skipped.
nnU-Net's MSD converter wants an ``imagesTs`` folder, which the shipped copy lacks; the script converts from a
folder of links to the read-only original plus an empty ``imagesTs``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MSD = REPO.parent / "shared" / "data" / "Task04_Hippocampus"
DATASET_ID = 4
DATASET_NAME = "Dataset004_Hippocampus"
#: 3d_fullres (the GPU benchmark) and 2d (practical on a CPU)
CONFIGURATIONS: tuple[str, ...] = ("3d_fullres", "2d")


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run(cmd: list[str], env: dict) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run([_bin(cmd[0]), *cmd[1:]], env=env, check=True)


def workspace_env(workspace: Path) -> dict:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(workspace / "nnUNet_raw"), nnUNet_preprocessed=str(workspace / "nnUNet_preprocessed"),
               nnUNet_results=str(workspace / "nnUNet_results"))
    return env


def prepare(workspace: Path, msd: Path, labelled: int, fold: int, seed: int, encoder: str, np_: int,
            configurations: tuple[str, ...] = CONFIGURATIONS) -> dict:
    workspace = workspace.resolve()
    env = workspace_env(workspace)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    raw = Path(env["nnUNet_raw"]) / DATASET_NAME
    pre = Path(env["nnUNet_preprocessed"]) / DATASET_NAME
    if not (raw / "dataset.json").is_file():
        links = workspace / "msd_links" / msd.name
        links.mkdir(parents=True, exist_ok=True)
        for sub in ("imagesTr", "labelsTr", "dataset.json"):
            if not (links / sub).exists():
                (links / sub).symlink_to((msd / sub).resolve())
        (links / "imagesTs").mkdir(exist_ok=True)
        run(["nnUNetv2_convert_MSD_dataset", "-i", str(links), "-overwrite_id", str(DATASET_ID), "-np", str(np_)], env)
    if (msd / "imagesUnlabeled").is_dir() and not (raw / "imagesUnlabeled").is_dir():
        run(["nnunet-llmseg", "convert-msd-unlabeled", "-i", str(msd), "-d", str(DATASET_ID)], env)
    if not (pre / "nnUNetPlans.json").is_file():
        run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", *configurations, "-np", str(np_)], env)
    missing = [c for c in configurations if not (pre / f"nnUNetPlans_{c}").is_dir()]
    if missing:  # planned earlier for fewer configurations: preprocess only what is missing
        run(["nnUNetv2_preprocess", "-d", str(DATASET_ID), "-c", *missing, "-np", *[str(np_)] * len(missing)], env)
    if not (pre / "text_priors.safetensors").is_file():
        label_map = REPO / "prior_generation" / "knowledge" / "label_maps" / "msd_hippocampus.json"
        run([sys.executable, "-m", "prior_generation", "-d", str(DATASET_ID), "--llm", "offline", "--encoder", encoder,
             "--label-map", str(label_map)], env)
    if not (pre / f"labelled_subset_fold{fold}.json").is_file():
        run(["nnunet-llmseg", "subset", "-d", str(DATASET_ID), "-f", str(fold), "--count", str(labelled),
             "--seed", str(seed), "-c", configurations[0]], env)  # the first configuration prepared
    (workspace / "env.sh").write_text("".join(f"export {k}={env[k]}\n"
                                              for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")))
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", type=Path, default=REPO / "benchmarks" / "results" / "workspace")
    p.add_argument("--msd", type=Path, default=DEFAULT_MSD)
    p.add_argument("--labelled", type=int, default=10)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder", default="minilm-l6-v2", help="text encoder for the priors (offline default)")
    p.add_argument("-np", type=int, default=2)
    p.add_argument("-c", "--configurations", nargs="+", default=list(CONFIGURATIONS),
                   help="configurations to preprocess (default: 3d_fullres 2d)")
    args = p.parse_args(argv)
    if not (args.msd / "dataset.json").is_file():
        print(f"MSD Hippocampus not found at {args.msd}", file=sys.stderr)
        return 2
    prepare(args.workspace, args.msd, args.labelled, args.fold, args.seed, args.encoder, args.np,
            tuple(args.configurations))
    print(f"ready: source {args.workspace.resolve() / 'env.sh'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
