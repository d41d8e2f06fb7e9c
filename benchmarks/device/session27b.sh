#!/usr/bin/env bash
# Session 27's second device call (2x H200): repeated launches through Triton's C launcher (kernels/_launch.py
# DirectLaunch: ws descriptors encoded once, no launch metadata while the hooks are empty). GPU 0: every GPU test
# file in parallel chunks (the repeated and CUDA-graph paths of every kernel now launch this way; the new
# test_direct_launch_cuda.py too). GPU 1: the 64K block map's host time per repeated call (block_map_bench),
# forward+backward on the issue's two shapes against cuDNN and FlexAttention in both forms (permuted and natural
# token order), then the never-fitted forward+backward sweep (h200_backprop_heldout.toml).
# usage: bash benchmarks/device/session27b.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
(export CUDA_VISIBLE_DEVICES=0
 bash benchmarks/device/gpu_tests_parallel.sh $COMMIT 300 > $OUT/gpu_tests_$COMMIT.txt 2>&1) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 120 python3 benchmarks/block_map_bench.py --mode gpu --commit $COMMIT --label direct-launch \
  --out $OUT/block_map_h200_${D}_$COMMIT.csv 2>&1 | tail -16
timeout 250 python3 benchmarks/backward_bench.py --cases issue_ --budget-s 230 --commit $COMMIT \
  --out $OUT/backward_bench_flex_h200_${D}_$COMMIT.csv > $OUT/backward_bench_$COMMIT.log 2>&1
grep -E "^\[|flex" $OUT/backward_bench_$COMMIT.log | tail -14
timeout 200 python3 -m sparsesim.cli.main validate --devices 1 --no-progress --commit $COMMIT --backprop \
  --sweep benchmarks/validation/h200_backprop_heldout.toml --kernels gna,dense,cudnn \
  --out $OUT/validate_h200_backprop_heldout_${D}_$COMMIT.csv 2>&1 | tail -8
wait $BG
cat $OUT/gpu_tests_$COMMIT.txt | tail -32
