#!/bin/bash
# Copies all labels repeat 2 from the session's workspace (/work/exp) into this folder, then pairs it.
set -e
cd /work/main; source .venv/bin/activate
D=benchmarks/results; T=$D/acdc_2d_7patients_sp2_w4_e100_alllabels_run2; TR=nnUNetTrainer_100epochs_100it
V=/work/exp/acdc_ws; P=nnUNetPlans_sp2_bs8_ps64x64_w4__2d/fold_0
R=$V/nnUNet_results/Dataset027_ACDC/${TR}__$P   # the benchmark trains all labels in the workspace's shared results
mkdir -p $T/training_logs/$TR
cp /work/exp/out_al2_54/results.json /work/exp/out_al2_54/results.md /work/exp/out_al2_54/curves.png /work/exp/out_al2_54/metrics.png $T/
cp $R/training_log_*.txt $T/training_logs/$TR/
L5="labelled_only+labelled_only@2+labelled_only@3+labelled_only@4+labelled_only@5"
A2="all_labels+all_labels@6"
for sc in raw largest_component; do
  echo "== $sc"
  python benchmarks/pair_runs.py --score $sc \
    $D/acdc_2d_7patients_sp2_w4_e100/results.json $D/acdc_2d_7patients_sp2_w4_e100_run2/results.json \
    $D/acdc_2d_7patients_sp2_w4_e100_run3/results.json $D/acdc_2d_7patients_sp2_w4_e100_run4/results.json \
    $D/acdc_2d_7patients_sp2_w4_e100_run4/run5/results.json $T/results.json \
    $D/acdc_2d_7patients_sp2_w4_e100_llmseg_run2/results.json $D/acdc_2d_7patients_sp2_w4_e100_region/llmseg_region/results.json \
    $D/acdc_2d_7patients_sp2_w4_e100_tak/results.json $D/acdc_2d_7patients_sp2_w4_e100_tak_run2/results.json \
    --pairs all_labels@6:all_labels all_labels@6:labelled_only@4 all_labels@6:labelled_only@5 all_labels@6:$L5 $A2:$L5 \
    llmseg+llmseg@7:$L5 llmseg_region:$L5 tak+tak@10:$L5 $A2:llmseg+llmseg@7
done
V4=$V/results_sp2_e100_run4/Dataset027_ACDC/nnUNetTrainerLabelledOnly_100epochs_100it__$P/validation
V5=$V/results_sp2_e100_run5/Dataset027_ACDC/nnUNetTrainerLabelledOnly_100epochs_100it__$P/validation
VR=$V/results_sp2_e100_region/Dataset027_ACDC/nnUNetTrainerLLMSeg_organRegion_100epochs_100it__$P/validation
VT=$V/results_sp2_e100_tak_run2/Dataset027_ACDC/nnUNetTrainerTAK_100epochs_100it__$P/validation
L=$V/nnUNet_raw/Dataset027_ACDC/labelsTr
python benchmarks/error_location.py --labels $L all2=$R/validation lo4=$V4 lo5=$V5 region=$VR tak2=$VT
python benchmarks/stray_components.py --labels $L all2=$R/validation lo4=$V4 lo5=$V5 region=$VR
python benchmarks/crop_cleaning_reach.py --labels $L region=$VR tak2=$VT lo4=$V4 all2=$R/validation
