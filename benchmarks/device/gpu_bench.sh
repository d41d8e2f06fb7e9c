#!/usr/bin/env bash
# Device call: the training benchmarks (GNA backward against cuDNN and FlexAttention; block maps).
# usage: bash benchmarks/device/gpu_bench.sh COMMIT   (writes under $OUT)
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%F)
timeout 230 python3 benchmarks/backward_bench.py --out $OUT/backward_bench_h200_${D}_${COMMIT}.csv --commit $COMMIT --budget-s 190 2>&1 | tail -40
timeout 130 python3 benchmarks/block_map_bench.py --mode gpu --commit $COMMIT --out $OUT/block_map_bench_h200_${D}_${COMMIT}.csv 2>&1 | tail -25
