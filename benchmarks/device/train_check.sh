#!/usr/bin/env bash
# Device call (issues 16 and 17): the training smoke run, `simulate validate --backprop` over
# benchmarks/validation/h200_backprop.toml, the persistent GNA forward's GPU tests and benchmark, then the dense
# fidelity campaign while time is left. Every step has its own time limit; CSVs land under $OUT as they go.
# usage: bash benchmarks/device/train_check.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
timeout 100 python3 benchmarks/training_smoke.py --device cuda --dtype bf16 --steps 150 --layout 8x16x16 --window 4x8x8 \
  --heads 24 --head-dim 128 --commit $COMMIT --out $OUT/training_smoke_h200_${D}_$COMMIT.csv 2>&1 | tail -9
timeout 240 python3 -m sparsesim.cli.main validate --backprop --sweep benchmarks/validation/h200_backprop.toml \
  --kernels gna,block_sparse,dense,cudnn --out $OUT/validate_h200_backprop_${D}_$COMMIT.csv 2>&1 | tail -4
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gna_persistent_cuda.py -x 2>&1 | tail -3
timeout 100 python3 benchmarks/persistent_bench.py --out $OUT/persistent_bench_h200_${D}_$COMMIT.csv --commit $COMMIT 2>&1 | tail -14
timeout 60 python3 -m sparsesim.cli.main validate --sweep benchmarks/validation/h200_dense_fidelity_heldout.toml \
  --kernels dense,cudnn --out $OUT/validate_h200_dense_fidelity_heldout_${D}_$COMMIT.csv 2>&1 | tail -2
