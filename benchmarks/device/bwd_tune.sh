#!/usr/bin/env bash
# Device call: the backward GPU tests, then the backward tuning sweep (benchmarks/bwd_tune.py).
# usage: bash benchmarks/device/bwd_tune.sh COMMIT [BUDGET_S]   (writes under $OUT)
set -u
COMMIT=${1:?commit}
BUDGET=${2:-380}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_block_backward_cuda.py tests/gpu/test_gna_backward_cuda.py -x 2>&1 | tail -5
timeout $((BUDGET + 60)) python3 benchmarks/bwd_tune.py --out $OUT/bwd_tune_h200_$COMMIT.csv --commit $COMMIT --budget-s $BUDGET 2>&1 | grep -v "^  part" | tail -60
