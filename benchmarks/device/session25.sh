#!/usr/bin/env bash
# This session's first device call (2x H200, about 5 minutes): the host-side changes since 8ecff59 (cached launch
# arguments, compact GNA block lists) on the GPU. GPU 0: every GPU test file in parallel chunks. GPU 1: the 64K
# block-sparse map's host time per repeated call on the warp-specialized route, then GNA over dense cuDNN.
# usage: bash benchmarks/device/session25.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
(CUDA_VISIBLE_DEVICES=0 bash benchmarks/device/gpu_tests_parallel.sh $COMMIT 220 > $OUT/gpu_tests_$COMMIT.txt 2>&1) &
BG=$!
CUDA_VISIBLE_DEVICES=1 timeout 120 python3 benchmarks/block_map_bench.py --mode gpu --commit $COMMIT --label ws-cached-args \
  --out $OUT/block_map_bench_ws_h200_${D}_$COMMIT.csv 2>&1 | grep -v "^wrote"
CUDA_VISIBLE_DEVICES=1 timeout 150 python3 benchmarks/gna_ws_bench.py --commit $COMMIT \
  --out $OUT/gna_ws_h200_${D}_$COMMIT.csv 2>&1 | tail -n 12
wait $BG
cat $OUT/gpu_tests_$COMMIT.txt
