#!/bin/bash
# copy LLM-SegNet _organRegion (64 x 64) into the repo and compare
set -e
cd /work/main; source .venv/bin/activate; source /work/exp/acdc_ws/env.sh
D=benchmarks/results; T=$D/acdc_2d_7patients_sp2_w4_e100_region/llmseg_region
TR=nnUNetTrainerLLMSeg_organRegion_100epochs_100it
mkdir -p $T/training_logs/$TR
cp /work/exp/out_region53/results.json /work/exp/out_region53/results.md /work/exp/out_region53/curves.png /work/exp/out_region53/metrics.png $T/
R=/work/exp/acdc_ws/results_sp2_e100_region/Dataset027_ACDC/${TR}__nnUNetPlans_sp2_bs8_ps64x64_w4__2d/fold_0
cp $R/training_log_*.txt $T/training_logs/$TR/
for sc in raw largest_component; do
  echo "== $sc"
  python benchmarks/pair_runs.py --score $sc \
    $T/results.json $D/acdc_2d_7patients_sp2_w4_e100/results.json $D/acdc_2d_7patients_sp2_w4_e100_llmseg_run2/results.json \
    $D/acdc_2d_7patients_sp2_w4_e100_run2/results.json $D/acdc_2d_7patients_sp2_w4_e100_run3/results.json \
    $D/acdc_2d_7patients_sp2_w4_e100_ablations/llmseg_nousl/results.json $D/acdc_2d_7patients_sp2_w4_e100_lmix/llmseg_lmix/results.json \
    --pairs llmseg_region:llmseg+llmseg@3 llmseg_region:llmseg llmseg_region:llmseg@3 \
    llmseg_region:labelled_only llmseg_region:labelled_only@4 llmseg_region:labelled_only@5 \
    llmseg_region:labelled_only+labelled_only@4+labelled_only@5 all_labels:llmseg_region llmseg_region:llmseg_nousl llmseg_region:llmseg_lmix
done
python benchmarks/error_location.py --labels /work/exp/acdc_ws/nnUNet_raw/Dataset027_ACDC/labelsTr region=$R/validation
python benchmarks/stray_components.py --labels /work/exp/acdc_ws/nnUNet_raw/Dataset027_ACDC/labelsTr region=$R/validation
python benchmarks/crop_cleaning_reach.py --labels /work/exp/acdc_ws/nnUNet_raw/Dataset027_ACDC/labelsTr region=$R/validation
grep -E "refreshed" $R/training_log_*.txt
grep -E "organ regions:" $R/training_log_*.txt | awk 'NR%10==1'
grep -E "Epoch time" $R/training_log_*.txt | awk '{print $(NF-1)}' | sort -n | awk '{a[NR]=$1} END {print "median epoch time", a[int((NR+1)/2)]}'
