#!/usr/bin/env bash
# Device call (issues 16 and 17): every GPU test, the backward's host time, small layers' whole-call time next to
# cuDNN, then forward+backward side by side (ours, cuDNN, FlexAttention). Logs under $OUT. At 020b148 it ran
# 546 s with backward_host killed at 60 s; the timeouts now add up to 580 s of the 600 s limit.
# usage: bash benchmarks/device/train_bench.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu > $OUT/gpu_tests_$COMMIT.log 2>&1
tail -4 $OUT/gpu_tests_$COMMIT.log; grep -E "^(FAILED|ERROR)" $OUT/gpu_tests_$COMMIT.log | head -20
timeout 120 python3 benchmarks/backward_host.py --mode gpu --out $OUT/backward_host_h200_${D}_$COMMIT.csv \
  > $OUT/backward_host_$COMMIT.log 2>&1; tail -12 $OUT/backward_host_$COMMIT.log
mkdir -p $OUT/host
timeout 60 python3 benchmarks/host_overhead.py --small-only --out $OUT/host --label $COMMIT > $OUT/host_overhead_$COMMIT.log 2>&1
tail -6 $OUT/host_overhead_$COMMIT.log
timeout 200 python3 benchmarks/backward_bench.py --budget-s 180 --commit $COMMIT \
  --out $OUT/backward_bench_h200_${D}_$COMMIT.csv > $OUT/backward_bench_$COMMIT.log 2>&1
tail -25 $OUT/backward_bench_$COMMIT.log
