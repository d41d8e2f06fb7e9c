#!/usr/bin/env bash
# Session 28's seventh device call (2x H200): the GNA backward's passes timed one by one on three 1D layers
# (gathered streams; not in the per-pass fit), beside the model's. usage: bash benchmarks/device/session28g.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
(export CUDA_VISIBLE_DEVICES=0
 timeout 200 python3 benchmarks/bwd_passes.py --cases 1d_32k,1d_16k --commit $COMMIT \
   --out $OUT/bwd_passes_1d_a_h200_${D}_$COMMIT.csv > $OUT/a.log 2>&1) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 200 python3 benchmarks/bwd_passes.py --cases 1d_64k --commit $COMMIT \
  --out $OUT/bwd_passes_1d_b_h200_${D}_$COMMIT.csv > $OUT/b.log 2>&1
wait $BG
cat $OUT/a.log $OUT/b.log | tail -16
