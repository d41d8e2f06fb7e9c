#!/usr/bin/env bash
# This session's third device call (2x H200, under the 10-minute limit). First, alone on the machine (no test
# compiling beside it): where a repeated ws call's host time goes now (ws_host_profile.py) and the 64K block map's
# host and kernel times (block_map_bench.py). Then GPU 0: every GPU test file in parallel chunks (the ws launch's
# descriptors by address); GPU 1: forward+backward on issue 16's four layers (the GNA training forward now on the
# warp-specialized route where it qualifies; no FlexAttention).  usage: bash benchmarks/device/session25c.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
export CUDA_VISIBLE_DEVICES=0
timeout 90 python3 benchmarks/ws_host_profile.py --commit $COMMIT --out $OUT/ws_host_profile_h200_${D}_$COMMIT.csv \
  --profile-out $OUT/ws_host_cprofile_$COMMIT.txt 2>&1 | grep "^variant" 
timeout 120 python3 benchmarks/block_map_bench.py --mode gpu --commit $COMMIT --label ws-by-address \
  --out $OUT/block_map_bench_ws_h200_${D}_$COMMIT.csv 2>&1 | grep -v "^wrote"
(bash benchmarks/device/gpu_tests_parallel.sh $COMMIT 230 > $OUT/gpu_tests_$COMMIT.txt 2>&1) &
BG=$!
CUDA_VISIBLE_DEVICES=1 timeout 250 python3 benchmarks/backward_bench.py --no-flex --budget-s 230 --commit $COMMIT \
  --out $OUT/backward_bench_h200_${D}_$COMMIT.csv > $OUT/backward_bench_$COMMIT.log 2>&1; tail -n 30 $OUT/backward_bench_$COMMIT.log
wait $BG
cat $OUT/gpu_tests_$COMMIT.txt
