#!/usr/bin/env bash
# Session 26's last device minutes (one H200): the 64K-token random block map on the kernels as they ship
# (keys masked only where they end): host time per repeated call, back to back vs CUDA graph, FlexAttention.
# usage: bash benchmarks/device/session26h.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
timeout 170 python3 benchmarks/block_map_bench.py --mode gpu --commit $COMMIT --label stop26 \
  --out $OUT/block_map_bench_ws_h200_${D}_$COMMIT.csv 2>&1 | grep -v "^wrote"
