#!/usr/bin/env bash
# A benchmark dataset (Hippocampus 2d, 10 labelled cases, seed 0; or ACDC 2d, 7 labelled patients) on a borrowed
# GPU machine, in time-boxed calls.
#
# The machine this was written for (the workplace's H200 lease) has python3 with torch but none of nnU-Net's
# stack and no network, and lends about 15 minutes in all, at most 64 MiB per call. So this script:
#   1. unpacks what travels in .gpu/ (built here by benchmarks/gpu_benchmark_pack.sh): the Python packages nnU-Net
#      needs (site312.tar.xz), the raw dataset, and the planning metadata, split, labelled subset and text priors
#      of the CPU workspace (pre/), so that these are identical to the CPU tables';
#   2. preprocesses 2d with the carried plans (nnUNetv2_preprocess);
#   3. calibrates: the benchmark itself, every method, 2 epochs x CAL_ITERS iterations, all runs in parallel
#      (also a smoke test of the CUDA path: training, AMP, final validation, scoring);
#   4. runs the benchmark at the longest schedule that fits the time left: ITERS iterations per epoch and the
#      same number of epochs for every method, from the slowest method's second calibration epoch (scaled
#      from CAL_ITERS to ITERS iterations; the start-up, validation and scoring time measured as the rest).
# torch.compile is off for all methods (nnUNet_compile=f): compiling two co-trained networks would eat the
# lease. Results come back as $OUT/gpu_bench.tar.gz (results.json/md, training logs) and $OUT/log.txt.
# EPOCHS=N skips the calibration (a second call on a warm machine, whose /tmp is kept, needs none).
#
# ACDC's images do not fit one call with the packages: the pack script writes them as lossless shards,
# .gpu/acdc_img.1.xz and .gpu_b/acdc_img.2.xz (benchmarks/gpu_image_pack.py). The first call stages (STAGE_ONLY=1,
# carry .gpu: packages, first shard, labels, metadata unpacked into /tmp); the second, issued while the machine
# is still warm (30 s), carries .gpu_b and runs.
#
#   bash benchmarks/gpu_benchmark_pack.sh hippocampus WS     # here, once: builds .gpu/ from a prepared workspace
#   device (carry .gpu):   DATASET=hippocampus BUDGET=530 bash benchmarks/gpu_benchmark.sh
#   ACDC: bash benchmarks/gpu_benchmark_pack.sh acdc WS
#   device (carry .gpu):   DATASET=acdc STAGE_ONLY=1 bash benchmarks/gpu_benchmark.sh
#   at once (carry .gpu_b): DATASET=acdc BUDGET=520 bash benchmarks/gpu_benchmark.sh
#
# Measured with it: benchmarks/results/hippocampus_2d_10labelled_gpu_present/ (as gpu_hippocampus.sh, e9a4a6c).
# A local rehearsal on the CPU (no tarball, this environment's packages): DEVICE=cpu SITE=DIR W=/tmp/ws_local
# CAL_ITERS=3 ITERS=3 MAX_EPOCHS=1 MIN_EPOCHS=1, DIR holding only a link to nnunetv2's .dist-info (for its
# console scripts).
set -u
START=$(date +%s)
BUDGET=${BUDGET:-470}          # seconds this script may take in all
ITERS=${ITERS:-100}
CAL_ITERS=${CAL_ITERS:-50}
MAX_EPOCHS=${MAX_EPOCHS:-100}
EPOCHS=${EPOCHS:-}             # set: skip the calibration, run this many epochs
MIN_EPOCHS=${MIN_EPOCHS:-5}     # below this the main run would say little: report the calibration only
METHODS=${METHODS:-"labelled_only llmseg tak all_labels"}
OUT=${OUT:-/tmp/gpu_out}
REPO=$PWD
W=${W:-/tmp/ws}
DEVICE=${DEVICE:-cuda}
SITE=${SITE:-/tmp/site312}   # a local test passes its own site-packages
DATASET=${DATASET:-hippocampus}
case $DATASET in
  hippocampus) DS=4; NAME=Dataset004_Hippocampus
               OPTS="--batch-size 16 --labelled 10 --seed 0 --overwrite-subset" ;;
  acdc)        DS=27; NAME=Dataset027_ACDC   # the subset (7 SSL4MIS patients) travels in pre/
               OPTS="--batch-size 8 --patch-size 128 128 --width-divisor 4 --largest-component" ;;
  *) echo "DATASET must be hippocampus or acdc"; exit 2 ;;
esac
RAW=$W/nnUNet_raw/$NAME
mkdir -p "$OUT" /tmp/bin "$RAW" "$W/nnUNet_preprocessed/$NAME" "$W/nnUNet_results"
LOG="$OUT/log.txt"
exec > >(tee -a "$LOG") 2>&1
elapsed() { echo $(( $(date +%s) - START )); }
pack() {   # the training logs of every run in the workspace, then one archive
  find "$W" -name 'training_log_*.txt' -exec cp --parents {} /tmp/gpu_bench/ \;
  tar czf "$OUT/gpu_bench.tar.gz" -C /tmp gpu_bench 2>/dev/null
  echo "packed at $(elapsed) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ "$SITE" = /tmp/site312 ] && [ ! -d /tmp/site312/nnunetv2 ]; then tar xJf .gpu/site312.tar.xz -C /tmp || exit 3; fi
export PYTHONPATH=$SITE:$REPO
export nnUNet_extTrainer=$REPO/nnunet_llmseg/nnunet_ext
export PATH=/tmp/bin:$PATH nnUNet_compile=f PYTHONUNBUFFERED=1
export nnUNet_raw=$W/nnUNet_raw nnUNet_preprocessed=$W/nnUNet_preprocessed nnUNet_results=$W/nnUNet_results
SITE=$SITE python3 - <<'EOF' || exit 4
import configparser, glob, os, sys
cp = configparser.ConfigParser(); cp.optionxform = str
cp.read(glob.glob(os.environ["SITE"] + "/nnunetv2-*.dist-info/entry_points.txt"))
scripts = dict(cp["console_scripts"]); scripts["nnunet-llmseg"] = "nnunet_llmseg.cli:main"
for name, target in scripts.items():
    mod, fn = target.split(":")
    with open(f"/tmp/bin/{name}", "w") as fh:
        fh.write(f"#!{sys.executable}\nimport sys\nfrom {mod} import {fn}\n"
                 f"if __name__ == '__main__':\n    sys.exit({fn}())\n")  # spawn re-imports __main__
import os; [os.chmod(f"/tmp/bin/{n}", 0o755) for n in scripts]
EOF
python3 -c "import torch, nnunetv2, SimpleITK, blosc2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 5
if [ "$DATASET" = hippocampus ]; then
  tar xJf .gpu/hraw.tar.xz -C "$W/nnUNet_raw" || exit 6
  find "$RAW" -name '*.nii' -print0 | xargs -0 -P 16 -n 20 gzip -1 -f
else   # whichever shards this call carries; labels, dataset.json and metadata come with the first
  SHARDS=$(ls .gpu/acdc_img.*.xz .gpu_b/acdc_img.*.xz 2>/dev/null)
  [ -n "$SHARDS" ] && { python3 benchmarks/gpu_image_pack.py unpack "$RAW/imagesTr" $SHARDS || exit 6; }
  [ -f .gpu/acdc_labels.tar.xz ] && { tar xJf .gpu/acdc_labels.tar.xz -C "$RAW" || exit 6; }
fi
[ -d .gpu/pre ] && cp .gpu/pre/* "$W/nnUNet_preprocessed/$NAME/"
if [ -n "${STAGE_ONLY:-}" ]; then echo "staged at $(elapsed) s: $(ls "$RAW/imagesTr" | wc -l) images"; exit 0; fi
python3 - "$RAW" <<'EOF' || exit 6
import json, sys
from pathlib import Path
raw = Path(sys.argv[1]); dj = json.loads((raw / "dataset.json").read_text())
n = len(list((raw / "imagesTr").glob("*" + dj["file_ending"])))
if n != dj["numTraining"]:
    sys.exit(f"{raw}/imagesTr holds {n} images, dataset.json says {dj['numTraining']}: a shard did not arrive")
EOF
nnUNetv2_preprocess -d $DS -c 2d -np 16 >/tmp/preprocess.log 2>&1 || { tail -20 /tmp/preprocess.log; exit 7; }
echo "setup done at $(elapsed) s"

COMMON="-d $DS -c 2d -f 0 $OPTS -device $DEVICE --parallel 4 -np 8"
rm -rf /tmp/gpu_bench; mkdir -p /tmp/gpu_bench
if [ -n "${EPOCHS:-}" ]; then
  echo "EPOCHS=$EPOCHS given: no calibration"
else
  T0=$(date +%s)
  nnunet-llmseg benchmark $COMMON --epochs 2 --iters "$CAL_ITERS" --results "$W/results_cal" \
    --out /tmp/gpu_bench/calibration --methods $METHODS > /tmp/gpu_bench/calibration.log 2>&1
  RC=$?
  CAL_WALL=$(( $(date +%s) - T0 ))
  tail -25 /tmp/gpu_bench/calibration.log
  echo "calibration rc=$RC wall ${CAL_WALL}s at $(elapsed) s"
  if [ $RC -ne 0 ]; then
    pack; exit 8
  fi
  # slowest method's second-epoch time, scaled from CAL_ITERS to ITERS training iterations
  EPOCHS=$(python3 - "$W" "$CAL_WALL" "$BUDGET" "$(elapsed)" "$ITERS" "$CAL_ITERS" "$MAX_EPOCHS" <<'EOF'
import glob, re, sys
w, cal_wall, budget, now, iters, cal_iters, max_epochs = sys.argv[1], *map(float, sys.argv[2:])
times = []
for f in glob.glob(f"{w}/**/training_log_*.txt", recursive=True):
    t = [float(x) for x in re.findall(r"Epoch time: ([0-9.]+) s", open(f).read())]
    if t:
        times.append(t[-1])
epoch = max(times) * iters / cal_iters
fixed = max(cal_wall - 2 * max(times), 20)    # start-up, final validation, scoring
left = budget - now - fixed - 25               # packing and a margin
print(f"cal epoch times {sorted(times)} -> {epoch:.1f} s per {iters:.0f}-iteration epoch; fixed {fixed:.0f} s; "
      f"left {left:.0f} s", file=sys.stderr)
print(int(max(0, min(max_epochs, left // epoch))))
EOF
  )
fi
echo "main schedule: $EPOCHS epochs x $ITERS iterations"
if [ "$EPOCHS" -lt "$MIN_EPOCHS" ]; then pack; exit 9; fi
LEFT=$(( BUDGET - $(elapsed) - 15 ))
timeout "$LEFT" nnunet-llmseg benchmark $COMMON --epochs "$EPOCHS" --iters "$ITERS" --results "$W/results_main" \
  --out /tmp/gpu_bench/main --methods $METHODS > /tmp/gpu_bench/main.log 2>&1
echo "main rc=$? at $(elapsed) s"
tail -30 /tmp/gpu_bench/main.log
pack
