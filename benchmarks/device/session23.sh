#!/usr/bin/env bash
# This session's first device call (issues 16 and 17) on a 2x H200 machine (under the 10-minute limit; logs and
# CSVs under $OUT): forward+backward side by side on GPU 1 (ours with the permuted-only backward pick, cuDNN,
# FlexAttention: benchmarks/backward_bench.py) while GPU 0 runs every GPU test in parallel chunks, then the
# backward's host time (backward_host.py --mode gpu) and small layers' whole call next to cuDNN
# (host_overhead.py --small-only) on GPU 0. The second call: benchmarks/device/multi_gpu_validate.sh.
# usage: bash benchmarks/device/session23.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
CUDA_VISIBLE_DEVICES=1 timeout 540 python3 benchmarks/backward_bench.py --budget-s 500 --commit $COMMIT \
  --out $OUT/backward_bench_h200_${D}_$COMMIT.csv > $OUT/backward_bench_$COMMIT.log 2>&1 &
BENCH=$!
export CUDA_VISIBLE_DEVICES=0
bash benchmarks/device/gpu_tests_parallel.sh $COMMIT 175
timeout 120 python3 benchmarks/backward_host.py --mode gpu --commit $COMMIT \
  --out $OUT/backward_host_h200_${D}_$COMMIT.csv > $OUT/backward_host_$COMMIT.log 2>&1; tail -12 $OUT/backward_host_$COMMIT.log
timeout 90 python3 benchmarks/host_overhead.py --small-only --out $OUT --label $COMMIT > $OUT/host_overhead_$COMMIT.log 2>&1
tail -8 $OUT/host_overhead_$COMMIT.log
wait $BENCH
tail -30 $OUT/backward_bench_$COMMIT.log
