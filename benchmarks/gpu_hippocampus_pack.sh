#!/usr/bin/env bash
# Build .gpu/ (git-ignored) for benchmarks/gpu_hippocampus.sh, on the CPU machine, from a prepared Hippocampus
# workspace (benchmarks/prepare_hippocampus.py --workspace WS -c 2d). Everything must fit the device tool's 64 MiB
# with the checkout: about 39 MB of packages and 15 MB of images.
#
#   bash benchmarks/gpu_hippocampus_pack.sh WS
#
# The device's python3 is 3.12 with torch; nnU-Net's stack travels as unpacked cp312 wheels (pip download +
# pip install --target), acvl_utils and medpy (no cp312 wheels, pure Python) copied from this environment.
set -euo pipefail
WS=$(cd "$1" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
G=$REPO/.gpu
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
PKGS=(nnunetv2==2.8.1 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6 blosc2==4.15.0
      dynamic-network-architectures==0.4.4 nibabel==5.4.2 yacs==0.1.8 graphviz==0.21 connected-components-3d==4.1.1
      ndindex pydantic pydantic-core annotated-types typing-inspection future unittest2 importlib-resources
      linecache2 traceback2 SimpleITK==2.5.7)
mkdir -p "$G/pre" "$TMP/whl" "$TMP/site312"
for p in "${PKGS[@]}"; do python3 -m pip download -q --no-deps "${PLAT[@]}" -d "$TMP/whl" "$p"; done
python3 -m pip install -q --no-deps --no-index --no-compile --target "$TMP/site312" "${PLAT[@]}" "$TMP"/whl/*.whl
SITE=$(python3 -c "import acvl_utils, os; print(os.path.dirname(os.path.dirname(acvl_utils.__file__)))")
cp -r "$SITE/acvl_utils" "$SITE/medpy" "$TMP/site312/"
# argparse 1.4 (a dependency of unittest2) would shadow the standard library on PYTHONPATH; bin/ points here
rm -rf "$TMP/site312/argparse.py" "$TMP"/site312/argparse-*.dist-info "$TMP/site312/bin"
find "$TMP/site312" -name __pycache__ -prune -exec rm -rf {} +
find "$TMP/site312/nibabel" -type d -name tests -prune -exec rm -rf {} +
tar cf - -C "$TMP" site312 | xz -9 -T0 > "$G/site312.tar.xz"

cp -r "$WS/nnUNet_raw/Dataset004_Hippocampus" "$TMP/raw"
find "$TMP/raw" -name '*.nii.gz' -exec gunzip {} +     # xz packs the uncompressed images to 15 MB, gzip's to 20
mv "$TMP/raw" "$TMP/Dataset004_Hippocampus"
tar cf - -C "$TMP" Dataset004_Hippocampus | xz -9 -T0 > "$G/hraw.tar.xz"

PRE=$WS/nnUNet_preprocessed/Dataset004_Hippocampus
cp "$PRE"/{dataset.json,dataset_fingerprint.json,nnUNetPlans.json,splits_final.json} "$PRE"/text_priors* "$G/pre/"
du -sh "$G"/*
