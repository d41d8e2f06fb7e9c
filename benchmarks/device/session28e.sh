#!/usr/bin/env bash
# Session 28's fifth device call (2x H200): issue 16's forward+backward figures again on another machine start
# (timing moved up to 13% between rounds this stop). GPU 0: the issue's two layers against cuDNN and FlexAttention
# in both forms; GPU 1: HunyuanVideo and FLUX, the tile bound over our dense forward+backward.
# usage: bash benchmarks/device/session28e.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
(export CUDA_VISIBLE_DEVICES=0
 timeout 300 python3 benchmarks/backward_bench.py --cases issue_ --budget-s 280 --commit $COMMIT \
   --out $OUT/backward_bench_flex_r2_h200_${D}_$COMMIT.csv > $OUT/bb_flex.log 2>&1) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 300 python3 benchmarks/backward_bench.py --cases hunyuan,flux --no-flex --budget-s 280 --commit $COMMIT \
  --out $OUT/backward_bench_tilebound_r2_h200_${D}_$COMMIT.csv > $OUT/bb_tile.log 2>&1
wait $BG
grep -E "ours_gna|flex|cudnn|ours_dense" $OUT/bb_flex.log | tail -14
grep -E "ours_gna|cudnn|ours_dense" $OUT/bb_tile.log | tail -10
