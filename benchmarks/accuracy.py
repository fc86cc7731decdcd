"""Accuracy benchmark on our two datasets: a thin wrapper around ``nnunet-llmseg benchmark``.

Prepares the dataset in the benchmark workspace if needed (``prepare_hippocampus.py`` / ``prepare_acdc.py``),
points nnU-Net at the workspace and runs ``nnunet-llmseg benchmark -d ID -c CONFIG -f 0`` with every other option
passed through (methods, schedule, CPU batch/patch overrides, device, --parallel; see
``nnunet-llmseg benchmark -h``). Defaults: configuration ``3d_fullres`` for Hippocampus and ``2d`` for ACDC,
output ``benchmarks/results/accuracy_<name>``.

    python benchmarks/accuracy.py hippocampus -c 2d --epochs 8 --iters 75 --batch-size 16 -device cpu
    python benchmarks/accuracy.py acdc --labelled-patients 3 --epochs 8 --iters 75 --batch-size 8 --patch-size 128 128
    python benchmarks/accuracy.py hippocampus -c 3d_fullres --epochs 1000 --iters 250 -device cuda --parallel 2

ACDC's two labelled sets (3 and 7 SSL4MIS patients) train their subset-dependent runs into separate results
folders (``<workspace>/results_acdc{3,7}p``); the all-labels run is shared. Re-running the same command reuses
finished runs and continues interrupted ones.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prepare_acdc
import prepare_hippocampus
from prepare_hippocampus import REPO


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True,
                                epilog="Any other option goes to nnunet-llmseg benchmark.")
    p.add_argument("dataset", nargs="?", choices=("hippocampus", "acdc"), default="hippocampus")
    p.add_argument("--workspace", type=Path, default=REPO / "benchmarks" / "results" / "workspace")
    p.add_argument("--labelled", type=int, default=10, help="hippocampus: labelled training cases (default 10)")
    p.add_argument("--labelled-patients", type=int, choices=(3, 7), default=7,
                   help="acdc: SSL4MIS labelled patients (default 7)")
    p.add_argument("-c", "--configuration", default=None,
                   help="default: 3d_fullres for hippocampus (as before; 2d is the practical CPU choice), 2d for acdc")
    args, rest = p.parse_known_args(argv)

    if args.dataset == "hippocampus":
        env = prepare_hippocampus.prepare(args.workspace, prepare_hippocampus.DEFAULT_MSD, args.labelled, 0, 0,
                                          "minilm-l6-v2", 2)
        dataset_id, name = prepare_hippocampus.DATASET_ID, "hippocampus"
        defaults = ["--labelled", str(args.labelled)]  # an existing subset with another count is an error
    else:
        env = prepare_acdc.prepare(args.workspace, prepare_acdc.DEFAULT_ACDC, args.labelled_patients,
                                   "minilm-l6-v2", 2)
        dataset_id, name = prepare_acdc.DATASET_ID, f"acdc{args.labelled_patients}p"
        defaults = [] if "--results" in rest else ["--results", str(args.workspace.resolve() / f"results_{name}")]
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[key] = env[key]
    if "--out" not in rest:
        defaults += ["--out", str(REPO / "benchmarks" / "results" / f"accuracy_{name}")]

    from nnunet_llmseg.cli import build_parser

    configuration = args.configuration or ("3d_fullres" if args.dataset == "hippocampus" else "2d")
    bench_argv = ["benchmark", "-d", str(dataset_id), "-c", configuration, "-f", "0", *defaults, *rest]
    bench = build_parser().parse_args(bench_argv)
    bench.command_line = "python benchmarks/accuracy.py " + shlex.join(argv)
    return int(bench.func(bench) or 0)


if __name__ == "__main__":
    sys.exit(main())
