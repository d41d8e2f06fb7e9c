#!/usr/bin/env bash
# This session's third device call (issues 16 and 17; one H200, under the 10-minute limit; logs and CSVs under
# $OUT): every GPU test in parallel chunks (the 1D backward pick back to gathered candidates), the backward's host
# time on the GPU host, then small layers at every tile class next to cuDNN (benchmarks/small_tiles.py).
# usage: bash benchmarks/device/session23b.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
bash benchmarks/device/gpu_tests_parallel.sh $COMMIT 170
timeout 100 python3 benchmarks/backward_host.py --mode gpu --commit $COMMIT \
  --out $OUT/backward_host_h200_${D}_$COMMIT.csv > $OUT/backward_host_$COMMIT.log 2>&1; tail -9 $OUT/backward_host_$COMMIT.log
timeout 230 python3 benchmarks/small_tiles.py --budget-s 200 --commit $COMMIT \
  --out $OUT/small_tiles_h200_${D}_$COMMIT.csv > $OUT/small_tiles_$COMMIT.log 2>&1; tail -5 $OUT/small_tiles_$COMMIT.log
