#!/bin/bash
# Copies LLM-SegNet with ignore_pasted_foreground from the session's workspace (/work/exp) into this folder, then
# pairs it and splits its errors.
set -e
cd /work/main; source .venv/bin/activate
D=benchmarks/results; T=$D/acdc_2d_7patients_sp2_w4_e100_pasted; TR=nnUNetTrainerLLMSeg_pastedForegroundIgnored_100epochs_100it
V=/work/exp/acdc_ws; P=nnUNetPlans_sp2_bs8_ps64x64_w4__2d/fold_0
R=$V/results_sp2_e100_pasted/Dataset027_ACDC/${TR}__$P
mkdir -p $T/training_logs/$TR
cp /work/exp/out_pasted_54/results.json /work/exp/out_pasted_54/results.md /work/exp/out_pasted_54/curves.png /work/exp/out_pasted_54/metrics.png $T/
cp $R/training_log_*.txt $T/training_logs/$TR/
F="$T/results.json $D/acdc_2d_7patients_sp2_w4_e100/results.json $D/acdc_2d_7patients_sp2_w4_e100_run2/results.json
   $D/acdc_2d_7patients_sp2_w4_e100_run3/results.json $D/acdc_2d_7patients_sp2_w4_e100_run4/results.json
   $D/acdc_2d_7patients_sp2_w4_e100_run4/run5/results.json $D/acdc_2d_7patients_sp2_w4_e100_alllabels_run2/results.json
   $D/acdc_2d_7patients_sp2_w4_e100_llmseg_run2/results.json $D/acdc_2d_7patients_sp2_w4_e100_llmseg_run3/results.json"
# rows: llmseg_pasted, labelled_only (file 2) and @3..@6, all_labels (file 2) and @7, llmseg (file 2), @8, @9
L5="labelled_only+labelled_only@3+labelled_only@4+labelled_only@5+labelled_only@6"
A2="all_labels+all_labels@7"; M3="llmseg+llmseg@8+llmseg@9"
for sc in raw largest_component; do
  echo "== $sc"
  python benchmarks/pair_runs.py --score $sc $F \
    --pairs llmseg_pasted:$M3 llmseg_pasted:llmseg@9 llmseg_pasted:$L5 $A2:$L5 $A2:llmseg_pasted \
    llmseg_pasted:labelled_only llmseg_pasted:labelled_only@3 llmseg_pasted:labelled_only@4 \
    llmseg_pasted:labelled_only@5 llmseg_pasted:labelled_only@6
done
L=$V/nnUNet_raw/Dataset027_ACDC/labelsTr
V3=$V/results_sp2_e100_llmseg3/Dataset027_ACDC/nnUNetTrainerLLMSeg_100epochs_100it__$P/validation
V4=$V/results_sp2_e100_run4/Dataset027_ACDC/nnUNetTrainerLabelledOnly_100epochs_100it__$P/validation
V5=$V/results_sp2_e100_run5/Dataset027_ACDC/nnUNetTrainerLabelledOnly_100epochs_100it__$P/validation
python benchmarks/error_location.py --labels $L pasted=$R/validation llmseg3=$V3 lo4=$V4 lo5=$V5
python benchmarks/stray_components.py --labels $L pasted=$R/validation llmseg3=$V3
grep "pasted foreground:" $R/training_log_*.txt | sed -n '1p;10p;50p;$p'
