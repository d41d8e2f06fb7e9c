#!/usr/bin/env bash
# This session's closing device call (2x H200, about 3 minutes): the Gluon forward's GPU tests now that repeated
# calls launch it through the compiled-launch cache (GPU 0), and the 64K block-sparse map's host time per repeated
# call and kernel times with it (GPU 1).  usage: bash benchmarks/device/session24f.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
(CUDA_VISIBLE_DEVICES=0 timeout 170 python3 -m pytest -q -p no:cacheprovider -x tests/gpu/test_gluon_fwd_cuda.py \
   > $OUT/gpu_gluon_$COMMIT.log 2>&1; echo "rc=$?" >> $OUT/gpu_gluon_$COMMIT.log) &
BG=$!
CUDA_VISIBLE_DEVICES=1 timeout 120 python3 benchmarks/block_map_bench.py --mode gpu --commit $COMMIT --label ws-compiled \
  --out $OUT/block_map_bench_ws_h200_${D}_$COMMIT.csv 2>&1 | grep -v "^wrote"
wait $BG
echo "gluon tests: $(head -n 1 $OUT/gpu_gluon_$COMMIT.log | tr -cd '.' | wc -c) passed dots; $(tail -n 1 $OUT/gpu_gluon_$COMMIT.log)"
grep -E "^(FAILED|ERROR)|Error" $OUT/gpu_gluon_$COMMIT.log | head -5
