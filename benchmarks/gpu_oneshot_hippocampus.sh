#!/usr/bin/env bash
# One-shot GPU benchmark through the workplace's device tool (H200, 15 minutes of device time in all):
# MSD Hippocampus 2d, fold 0, 10 labelled cases (seed 0), batch 16, 20 epochs x 100 iterations.
# The device image has Python 3.12 and torch but not nnU-Net, and nothing can be downloaded there, so
# everything travels in .gpu/ (git-ignored, at most 64 MiB):
#   .gpu/whl/   cp312 wheels: blosc2, ndindex, numexpr, connected-components-3d
#   .gpu/pure/  pure wheels: nnunetv2, acvl_utils, batchgenerators(v2), dynamic_network_architectures, nibabel,
#               medpy, graphviz, yacs
#   .gpu/sitk.tar.xz   the SimpleITK cp311-abi3 wheel unpacked and xz-compressed (the wheel alone is 53 MB)
#   .gpu/gdata.tar.xz  raw/Dataset004_Hippocampus as uncompressed .nii (xz: 15 MB) and the small files of
#               nnUNet_preprocessed/Dataset004_Hippocampus (plans, splits, labelled subset, text priors,
#               preprocessed unlabelled images) from benchmarks/prepare_hippocampus.py
# The script re-gzips the images, runs nnUNetv2_preprocess (identical arrays to the CPU workspace, checked),
# then the same `nnunet-llmseg benchmark` command as the CPU tables with -device cuda.
# Results: benchmarks/results/hippocampus_2d_10labelled_gpu/.
set -u
T0=$(date +%s)
BUDGET=${BUDGET:-530}          # seconds from start until the benchmark is stopped (SIGTERM, clean)
EPOCHS=${EPOCHS:-20}
ITERS=${ITERS:-100}
METHODS=${METHODS:-"labelled_only llmseg tak all_labels llmseg_notext cotraining"}
PAR=${PAR:-6}
G=$PWD/.gpu
OUTD=${OUT:-/tmp/out}; mkdir -p "$OUTD"
exec > >(tee "$OUTD/run.log") 2>&1
t() { echo "[t=$(( $(date +%s) - T0 ))s] $*"; }

t "install"
mkdir -p /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$G"/whl/*.whl "$G"/pure/*.whl || { t "pip failed"; exit 1; }
tar xJf "$G/sitk.tar.xz" -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
export nnUNet_extTrainer=$PWD/nnunet_llmseg/nnunet_ext nnUNet_compile=f nnUNet_n_proc_DA=${NPROC_DA:-4} nnUNet_def_n_proc=4
WS=/tmp/ws
export nnUNet_raw=$WS/nnUNet_raw nnUNet_preprocessed=$WS/nnUNet_preprocessed nnUNet_results=$WS/nnUNet_results
mkdir -p $nnUNet_raw $nnUNet_preprocessed $nnUNet_results /tmp/gdata

t "data"
tar xJf "$G/gdata.tar.xz" -C /tmp/gdata || exit 1
mv /tmp/gdata/raw/Dataset004_Hippocampus $nnUNet_raw/
mv /tmp/gdata/pre/Dataset004_Hippocampus $nnUNet_preprocessed/
mkdir -p $nnUNet_raw/Dataset004_Hippocampus/imagesTs
find $nnUNet_raw/Dataset004_Hippocampus -name '*.nii' -print0 | xargs -0 -P 16 -n 20 gzip -1

t "versions"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 - <<'EOF' || { t "import check failed"; exit 1; }
import torch, SimpleITK, blosc2, cc3d, nnunetv2, dynamic_network_architectures, batchgeneratorsv2, medpy
import nnunet_llmseg.cli, nnunet_llmseg.benchmark.cli
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
print("torch", torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0), "sitk", SimpleITK.Version())
EOF

t "preprocess"
nnUNetv2_preprocess -d 4 -plans_name nnUNetPlans -c 2d -np 16 > "$OUTD/preprocess.log" 2>&1 || { tail -20 "$OUTD/preprocess.log"; exit 1; }
ls $nnUNet_preprocessed/Dataset004_Hippocampus/nnUNetPlans_2d | wc -l

left=$(( BUDGET - ($(date +%s) - T0) ))
t "benchmark (stops after ${left}s)"
CMD="python3 -m nnunet_llmseg.cli benchmark -d 4 -c 2d -f 0 --batch-size 16 --epochs $EPOCHS --iters $ITERS --methods $METHODS -device cuda --parallel $PAR -np 16 --out $WS/bench"
echo "$CMD"
( while sleep 30; do echo "--- t=$(( $(date +%s) - T0 ))s"; for f in $nnUNet_results/Dataset004_Hippocampus/*/fold_0/training_log_*.txt; do
    echo "$(basename $(dirname $(dirname $f))): $(grep -c 'Epoch time' $f) epochs, last: $(grep 'Epoch time' $f | tail -1)"; done;
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; uptime; done ) &
MON=$!
timeout -s TERM -k 20 "$left" $CMD
rc=$?
kill $MON 2>/dev/null
t "benchmark rc=$rc"
if [ $rc -ne 0 ]; then $CMD --report-only > "$OUTD/report_only.log" 2>&1; fi

t "collect"
cp $WS/bench/results.json $WS/bench/results.md $WS/bench/metrics.png $WS/bench/curves.png "$OUTD/" 2>/dev/null
( cd $WS && tar czf "$OUTD/logs.tar.gz" bench \
    $(cd $WS && ls -d nnUNet_results/Dataset004_Hippocampus/*/fold_0/{training_log_*.txt,progress.png,validation/summary.json,fold_0_benchmark.json,debug.json} 2>/dev/null) \
    $(cd $WS && ls -d nnUNet_results/Dataset004_Hippocampus/*/fold_0_benchmark.json 2>/dev/null) )
t "done"
