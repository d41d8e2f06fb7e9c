#!/usr/bin/env bash
# The next session's device calls (issues 16 and 17), each under the 10-minute limit; logs and CSVs under $OUT.
#   bash benchmarks/device/next_check.sh COMMIT a : every GPU test in parallel chunks (gpu_tests_parallel.sh), then
#       `simulate validate --backprop` (the backward changed: permuted stream in the pick) for the backward refit
#       (`python benchmarks/backprop_fit.py --write`, then error_bands.py and readme_outputs.py).
#   bash benchmarks/device/next_check.sh COMMIT b : the dense fidelity train set (cuDNN refit with long, odd
#       sequences), the backward's GPU host time (its warm-up is the pick's compiles: 150 s), the permuted stream on
#       the 2D and FLUX layers (not measured at 185dd22).
set -u
COMMIT=${1:?commit}
PART=${2:?part a or b}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
if [ "$PART" = a ]; then
  bash benchmarks/device/gpu_tests_parallel.sh $COMMIT 175
  timeout 330 python3 -m sparsesim.cli.main validate --backprop --sweep benchmarks/validation/h200_backprop.toml \
    --kernels gna,block_sparse,dense,cudnn --no-progress --commit $COMMIT --out $OUT/validate_h200_backprop_${D}_$COMMIT.csv \
    > $OUT/validate_backprop_$COMMIT.log 2>&1; tail -8 $OUT/validate_backprop_$COMMIT.log
else
  timeout 200 python3 -m sparsesim.cli.main validate --sweep benchmarks/validation/h200_dense_fidelity_train.toml \
    --kernels dense,cudnn --no-progress --commit $COMMIT --out $OUT/validate_h200_dense_fidelity_train_${D}_$COMMIT.csv \
    > $OUT/validate_dense_train_$COMMIT.log 2>&1; tail -6 $OUT/validate_dense_train_$COMMIT.log
  timeout 150 python3 benchmarks/backward_host.py --mode gpu --out $OUT/backward_host_h200_${D}_$COMMIT.csv \
    > $OUT/backward_host_$COMMIT.log 2>&1; tail -12 $OUT/backward_host_$COMMIT.log
  timeout 200 python3 benchmarks/bwd_tune.py --parts gna --quick --stream-layout gather,permute --cases issue_2d,flux \
    --budget-s 180 --commit $COMMIT --out $OUT/bwd_tune_permuted_b_h200_${D}_$COMMIT.csv \
    > $OUT/bwd_tune_b_$COMMIT.log 2>&1; grep -A12 "^fastest" $OUT/bwd_tune_b_$COMMIT.log
fi
