#!/usr/bin/env bash
# Session 28's sixth device call (2x H200): the GNA backward's passes timed one by one beside the model's
# (benchmarks/bwd_passes.py), to find which pass carries the 3D layers' misses. usage: bash ... COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
(export CUDA_VISIBLE_DEVICES=0
 timeout 270 python3 benchmarks/bwd_passes.py --cases issue_,heldout --commit $COMMIT \
   --out $OUT/bwd_passes_a_h200_${D}_$COMMIT.csv > $OUT/a.log 2>&1) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 270 python3 benchmarks/bwd_passes.py --cases hunyuan,flux --commit $COMMIT \
  --out $OUT/bwd_passes_b_h200_${D}_$COMMIT.csv > $OUT/b.log 2>&1
wait $BG
cat $OUT/a.log $OUT/b.log | tail -24
