#!/usr/bin/env bash
# Device call: the backward GPU tests, the tuned defaults against the old ones (bwd_tune --quick), then
# benchmarks/backward_bench.py (ours vs cuDNN vs FlexAttention, forward and forward+backward).
# usage: bash benchmarks/device/bwd_check.sh COMMIT   (writes under $OUT)
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_block_backward_cuda.py tests/gpu/test_gna_backward_cuda.py -x 2>&1 | tail -4
timeout 200 python3 benchmarks/bwd_tune.py --quick --out $OUT/bwd_tune_quick_h200_$COMMIT.csv --commit $COMMIT --budget-s 170 2>&1 | grep -v "^  part" | tail -14
timeout 260 python3 benchmarks/backward_bench.py --out $OUT/backward_bench_h200_$COMMIT.csv --commit $COMMIT --budget-s 230 2>&1 | tail -32
