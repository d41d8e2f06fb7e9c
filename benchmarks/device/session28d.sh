#!/usr/bin/env bash
# Session 28's fourth device call (2x H200), after the backward's box stream layout: the forward+backward
# campaigns again (the kernels changed, so the backward model is checked on new rows). GPU 0: h200_backprop.toml
# (the file the backward terms are fitted to), then every GPU test file in parallel chunks. GPU 1: the never-fitted
# h200_backprop_heldout.toml. usage: bash benchmarks/device/session28d.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
(export CUDA_VISIBLE_DEVICES=0
 timeout 230 python3 -m sparsesim.cli.main validate --devices 1 --no-progress --commit $COMMIT --backprop \
   --sweep benchmarks/validation/h200_backprop.toml --kernels gna,block_sparse,dense,cudnn \
   --out $OUT/validate_h200_backprop_${D}_$COMMIT.csv > $OUT/v_train.log 2>&1
 bash benchmarks/device/gpu_tests_parallel.sh $COMMIT 300 > $OUT/gpu_tests_$COMMIT.txt 2>&1) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 240 python3 -m sparsesim.cli.main validate --devices 1 --no-progress --commit $COMMIT --backprop \
  --sweep benchmarks/validation/h200_backprop_heldout.toml --kernels gna,dense,cudnn \
  --out $OUT/validate_h200_backprop_heldout_${D}_$COMMIT.csv 2>&1 | tail -8
wait $BG
tail -8 $OUT/v_train.log
tail -34 $OUT/gpu_tests_$COMMIT.txt
