#!/usr/bin/env bash
# This session's last device call (issues 16 and 17; 2x H200, under the 10-minute limit; logs and CSVs under $OUT).
# GPU 0: every GPU test file in parallel chunks. GPU 1, alone: forward+backward on the four layers of issue 16
# (ours, cuDNN, our dense: the tile bound now over the warp-specialized dense forward and the fused dense
# backward; no FlexAttention).  usage: bash benchmarks/device/session24e.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
(CUDA_VISIBLE_DEVICES=0 bash benchmarks/device/gpu_tests_parallel.sh $COMMIT 200 > $OUT/gpu_tests_$COMMIT.txt 2>&1) &
BG=$!
CUDA_VISIBLE_DEVICES=1 timeout 230 python3 benchmarks/backward_bench.py --no-flex --budget-s 210 --commit $COMMIT \
  --out $OUT/backward_bench_h200_${D}_$COMMIT.csv > $OUT/backward_bench_$COMMIT.log 2>&1; tail -n 30 $OUT/backward_bench_$COMMIT.log
wait $BG
cat $OUT/gpu_tests_$COMMIT.txt
