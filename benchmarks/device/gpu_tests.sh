#!/usr/bin/env bash
# Device call: every GPU test, then the statistics-collection overhead at two row counts.
# usage: bash benchmarks/device/gpu_tests.sh COMMIT   (writes under $OUT)
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
timeout 400 python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -30
for rows in 64 32; do
  mkdir -p $OUT/rows$rows
  timeout 90 python3 benchmarks/stats_bench.py --device cuda --layers 4 --rows $rows --repeats 3 --out $OUT/rows$rows --commit $COMMIT 2>&1 | tail -3
done
