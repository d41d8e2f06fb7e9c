#!/usr/bin/env bash
# One device call: GPU tests, then every plan in benchmarks/plans (and the example) measured against its prediction.
# usage: bash benchmarks/device/gpu_check.sh COMMIT   (writes under $OUT)
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 330 python3 -m pytest -q -p no:cacheprovider -x tests/gpu 2>&1 | tail -25
D=$(date -u +%F)
for p in benchmarks/plans/cosmos-7b_h200_1layer_*.json benchmarks/plans/wan2.1-14b_h200_1layer_plan.json; do
  name=$(basename $p .json)
  timeout 60 python3 -m sparsesim.cli.main validate --plan $p --out $OUT/validate_plan_${name}_${D}_${COMMIT}.csv --commit $COMMIT 2>&1 | tail -3
done
timeout 120 python3 benchmarks/stats_bench.py --device cuda --layers 4 --rows 64 --repeats 3 --out $OUT --commit $COMMIT 2>&1 | tail -12
