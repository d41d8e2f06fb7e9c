#!/usr/bin/env bash
# Device call for the next session (issues 16 and 17): GPU tests of the code written without a GPU (permuted
# backward, eager autograd path, Delta's compiled launch), the backward's host time, the permuted stream layout
# against the gather one, then the dense fidelity train set. usage: bash benchmarks/device/next_check.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gna_backward_permuted_cuda.py tests/gpu/test_gna_backward_cuda.py -x 2>&1 | tail -3
timeout 60 python3 benchmarks/backward_host.py --mode gpu --out $OUT/backward_host_h200_${D}_$COMMIT.csv 2>&1 | tail -12
timeout 300 python3 benchmarks/bwd_tune.py --parts gna --quick --stream-layout gather,permute --budget-s 270 \
  --commit $COMMIT --out $OUT/bwd_tune_permuted_h200_${D}_$COMMIT.csv 2>&1 | grep -v "^  part" | tail -30
