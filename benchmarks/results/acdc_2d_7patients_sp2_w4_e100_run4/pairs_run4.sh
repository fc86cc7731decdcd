#!/bin/bash
set -e
cd /work/main; source .venv/bin/activate; source /work/exp/acdc_ws/env.sh
D=benchmarks/results; T=$D/acdc_2d_7patients_sp2_w4_e100_run4; A=$D/acdc_2d_7patients_sp2_w4_e100_ablations
TR=nnUNetTrainerLabelledOnly_100epochs_100it
mkdir -p $T/training_logs/$TR
cp /work/exp/out_run4_53/results.json /work/exp/out_run4_53/results.md /work/exp/out_run4_53/curves.png /work/exp/out_run4_53/metrics.png $T/
R=/work/exp/acdc_ws/results_sp2_e100_run4/Dataset027_ACDC/${TR}__nnUNetPlans_sp2_bs8_ps64x64_w4__2d/fold_0
cp $R/training_log_*.txt $T/training_logs/$TR/
L4="labelled_only+labelled_only@2+labelled_only@3+labelled_only@4"
for sc in raw largest_component; do
  echo "== $sc"
  python benchmarks/pair_runs.py --score $sc \
    $T/results.json $D/acdc_2d_7patients_sp2_w4_e100/results.json $D/acdc_2d_7patients_sp2_w4_e100_run2/results.json \
    $D/acdc_2d_7patients_sp2_w4_e100_run3/results.json $D/acdc_2d_7patients_sp2_w4_e100_region/llmseg_region/results.json \
    $A/llmseg_nousl/results.json $A/tak_nobalance/results.json $A/tak_nocontrast/results.json $A/tak_notext/results.json \
    $D/acdc_2d_7patients_sp2_w4_e100_tak_run2/results.json $D/acdc_2d_7patients_sp2_w4_e100_tak/results.json \
    $D/acdc_2d_7patients_sp2_w4_e100_llmseg_run2/results.json $D/acdc_2d_7patients_sp2_w4_e100_cotraining/results.json \
    --pairs labelled_only:labelled_only@2 labelled_only:labelled_only@3 labelled_only:labelled_only@4 all_labels:labelled_only \
    llmseg_region:labelled_only llmseg_nousl:labelled_only tak_nobalance:labelled_only tak_nocontrast:labelled_only \
    tak_notext:labelled_only tak:labelled_only llmseg+llmseg@12:labelled_only tak+tak@11:labelled_only cotraining:labelled_only \
    all_labels:$L4 llmseg_region:$L4 llmseg+llmseg@12:$L4 tak+tak@11:$L4 llmseg_nousl:$L4 tak_nobalance:$L4
done
python benchmarks/error_location.py --labels /work/exp/acdc_ws/nnUNet_raw/Dataset027_ACDC/labelsTr run4=$R/validation
python benchmarks/stray_components.py --labels /work/exp/acdc_ws/nnUNet_raw/Dataset027_ACDC/labelsTr run4=$R/validation | tail -1
grep -E "Epoch time" $R/training_log_*.txt | awk '{print $(NF-1)}' | sort -n | awk '{a[NR]=$1} END {print "median epoch time", a[int((NR+1)/2)]}'
