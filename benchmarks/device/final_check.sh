#!/usr/bin/env bash
# Device call (issue 16): the training smoke run, the backward GPU tests, `simulate validate --backprop` (as far
# as its time limit goes: the small cases first). usage: bash benchmarks/device/final_check.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
timeout 100 python3 benchmarks/training_smoke.py --device cuda --dtype bf16 --steps 150 --layout 8x16x16 --window 4x8x8 \
  --heads 24 --head-dim 128 --commit $COMMIT --out $OUT/training_smoke_h200_${D}_$COMMIT.csv 2>&1 | tail -9
timeout 80 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gna_backward_cuda.py tests/gpu/test_block_backward_cuda.py -x 2>&1 | tail -3
timeout 110 python3 -m sparsesim.cli.main validate --backprop --sweep benchmarks/validation/h200_backprop.toml \
  --kernels gna,block_sparse,dense,cudnn --out $OUT/validate_h200_backprop_${D}_$COMMIT.csv 2>&1 | tail -3
