#!/usr/bin/env bash
# This session's first device call (issue 17 item 1; one H200, under the 10-minute limit; CSVs and logs under $OUT):
# the warp-specialized Gluon dense forward checked against float64 and timed beside our Triton dense kernel and
# cuDNN (benchmarks/gluon_dense_bench.py), its GPU test file, then the 64K block-sparse map vs FlexAttention.
# usage: bash benchmarks/device/session24.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
timeout 330 python3 benchmarks/gluon_dense_bench.py --budget-s 310 --commit $COMMIT \
  --out $OUT/gluon_dense_h200_${D}_$COMMIT.csv 2>&1 | tee $OUT/gluon_dense_$COMMIT.log | tail -60
timeout 120 python3 -m pytest -q -p no:cacheprovider -x tests/gpu/test_gluon_dense_cuda.py > $OUT/gluon_tests_$COMMIT.log 2>&1
tail -5 $OUT/gluon_tests_$COMMIT.log
timeout 100 python3 benchmarks/block_map_bench.py --mode gpu --commit $COMMIT \
  --out $OUT/block_map_h200_${D}_$COMMIT.csv > $OUT/block_map_$COMMIT.log 2>&1; tail -14 $OUT/block_map_$COMMIT.log
