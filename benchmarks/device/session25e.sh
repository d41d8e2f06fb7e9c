#!/usr/bin/env bash
# This session's closing device call (2x H200, about 7 minutes). First, alone on the machine: the 64K block
# map's host time per repeated call with the map variants' loops interleaved (block_map_bench.py). Then issue 17
# item 5 on a larger campaign: the 119 cases of h200_ws.toml on two GPUs and on one, each from a cold Triton cache
# (multi_gpu_validate.sh).  usage: bash benchmarks/device/session25e.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
CUDA_VISIBLE_DEVICES=0 timeout 120 python3 benchmarks/block_map_bench.py --mode gpu --commit $COMMIT \
  --label ws-interleaved-host --out $OUT/block_map_bench_ws_h200_${D}_$COMMIT.csv 2>&1 | grep -v "^wrote"
T2=170 T1=280 bash benchmarks/device/multi_gpu_validate.sh $COMMIT benchmarks/validation/h200_ws.toml \
  gna,block_sparse,dense,cudnn
