#!/bin/bash
set -e
cd /work/main; source .venv/bin/activate
D=benchmarks/results; T=$D/acdc_2d_7patients_sp2_w4_e100_run4/run5; A=$D/acdc_2d_7patients_sp2_w4_e100_ablations
TR=nnUNetTrainerLabelledOnly_100epochs_100it
mkdir -p $T/training_logs/$TR
cp /work/exp/out_run5_53/results.json /work/exp/out_run5_53/results.md /work/exp/out_run5_53/curves.png /work/exp/out_run5_53/metrics.png $T/
R=/work/exp/acdc_ws/results_sp2_e100_run5/Dataset027_ACDC/${TR}__nnUNetPlans_sp2_bs8_ps64x64_w4__2d/fold_0
cp $R/training_log_*.txt $T/training_logs/$TR/
L5="labelled_only+labelled_only@2+labelled_only@3+labelled_only@4+labelled_only@5"
for sc in raw largest_component; do
  echo "== $sc"
  python benchmarks/pair_runs.py --score $sc \
    $T/results.json $D/acdc_2d_7patients_sp2_w4_e100/results.json $D/acdc_2d_7patients_sp2_w4_e100_run2/results.json \
    $D/acdc_2d_7patients_sp2_w4_e100_run3/results.json $D/acdc_2d_7patients_sp2_w4_e100_run4/results.json \
    $D/acdc_2d_7patients_sp2_w4_e100_region/llmseg_region/results.json \
    $A/llmseg_nousl/results.json $A/tak_nobalance/results.json $D/acdc_2d_7patients_sp2_w4_e100_tak_run2/results.json \
    $D/acdc_2d_7patients_sp2_w4_e100_tak/results.json $D/acdc_2d_7patients_sp2_w4_e100_llmseg_run2/results.json \
    --pairs labelled_only:labelled_only@2 labelled_only:labelled_only@3 labelled_only:labelled_only@4 labelled_only:labelled_only@5 \
    llmseg_region:labelled_only llmseg_nousl:labelled_only tak_nobalance:labelled_only tak:labelled_only \
    all_labels:$L5 llmseg_region:$L5 llmseg+llmseg@11:$L5 tak+tak@10:$L5
done
python benchmarks/error_location.py --labels /work/exp/acdc_ws/nnUNet_raw/Dataset027_ACDC/labelsTr run5=$R/validation
