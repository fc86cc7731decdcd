#!/bin/bash
# Copies LLM-SegNet repeat 3 from the session's workspace (/work/exp) into this folder, then pairs it.
set -e
cd /work/main; source .venv/bin/activate
D=benchmarks/results; T=$D/acdc_2d_7patients_sp2_w4_e100_llmseg_run3; TR=nnUNetTrainerLLMSeg_100epochs_100it
V=/work/exp/acdc_ws; P=nnUNetPlans_sp2_bs8_ps64x64_w4__2d/fold_0
R=$V/results_sp2_e100_llmseg3/Dataset027_ACDC/${TR}__$P
mkdir -p $T/training_logs/$TR
cp /work/exp/out_llm3_54/results.json /work/exp/out_llm3_54/results.md /work/exp/out_llm3_54/curves.png /work/exp/out_llm3_54/metrics.png $T/
cp $R/training_log_*.txt $T/training_logs/$TR/
F="$T/results.json $D/acdc_2d_7patients_sp2_w4_e100/results.json $D/acdc_2d_7patients_sp2_w4_e100_run2/results.json
   $D/acdc_2d_7patients_sp2_w4_e100_run3/results.json $D/acdc_2d_7patients_sp2_w4_e100_run4/results.json
   $D/acdc_2d_7patients_sp2_w4_e100_run4/run5/results.json $D/acdc_2d_7patients_sp2_w4_e100_alllabels_run2/results.json
   $D/acdc_2d_7patients_sp2_w4_e100_llmseg_run2/results.json $D/acdc_2d_7patients_sp2_w4_e100_region/llmseg_region/results.json"
# rows: llmseg (this run), labelled_only@2..@6 (runs 1-5), all_labels (run 1, file 2), all_labels@7, llmseg@2 (run 1,
# file 2), llmseg@8 (run 2), llmseg_region
L5="labelled_only+labelled_only@3+labelled_only@4+labelled_only@5+labelled_only@6"
A2="all_labels+all_labels@7"; M3="llmseg+llmseg@2+llmseg@8"
for sc in raw largest_component; do
  echo "== $sc"
  python benchmarks/pair_runs.py --score $sc $F \
    --pairs llmseg:llmseg@2 llmseg:llmseg@8 llmseg:$L5 $M3:$L5 $A2:$L5 $A2:$M3 \
    llmseg:labelled_only llmseg:labelled_only@3 llmseg:labelled_only@4 llmseg:labelled_only@5 llmseg:labelled_only@6 \
    llmseg_region:$M3
done
for sc in raw largest_component; do
  echo "== run level (repeats.py: runs as the unit), $sc"
  python benchmarks/repeats.py --score $sc $F
done
L=$V/nnUNet_raw/Dataset027_ACDC/labelsTr
V4=$V/results_sp2_e100_run4/Dataset027_ACDC/nnUNetTrainerLabelledOnly_100epochs_100it__$P/validation
V5=$V/results_sp2_e100_run5/Dataset027_ACDC/nnUNetTrainerLabelledOnly_100epochs_100it__$P/validation
VR=$V/results_sp2_e100_region/Dataset027_ACDC/nnUNetTrainerLLMSeg_organRegion_100epochs_100it__$P/validation
VA=$V/nnUNet_results/Dataset027_ACDC/nnUNetTrainer_100epochs_100it__$P/validation
python benchmarks/error_location.py --labels $L llmseg3=$R/validation region=$VR lo4=$V4 lo5=$V5 all2=$VA
python benchmarks/stray_components.py --labels $L llmseg3=$R/validation region=$VR
