#!/usr/bin/env bash
# Session 27's first device call (2x H200): measurements of the kernels as they shipped at stop 26, no kernel
# change. GPU 0: the never-fitted head-dim-64 sweep (h200_d64_heldout.toml: judges the `triton` profile's d64 GNA
# bias) and the ws route above 64K tokens (h200_ws_large.toml: judges `triton-ws` on large calls). GPU 1: the 64K
# block map (block_map_bench --mode gpu: host time per repeated call, CUDA-graph time, FlexAttention with the same
# map), forward+backward against cuDNN and FlexAttention with the same mask in one run (backward_bench), dense
# through attention() beside cuDNN. usage: bash benchmarks/device/session27.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
V="python3 -m sparsesim.cli.main validate --devices 1 --no-progress --commit $COMMIT"
(export CUDA_VISIBLE_DEVICES=0
 timeout 330 $V --sweep benchmarks/validation/h200_d64_heldout.toml --kernels gna,cudnn \
   --out $OUT/validate_h200_d64_heldout_${D}_$COMMIT.csv > $OUT/validate_d64_$COMMIT.log 2>&1
 echo "d64 sweep rc=$?" >> $OUT/validate_d64_$COMMIT.log
 timeout 200 $V --sweep benchmarks/validation/h200_ws_large.toml --kernels gna,dense,cudnn \
   --out $OUT/validate_h200_ws_large_${D}_$COMMIT.csv > $OUT/validate_ws_large_$COMMIT.log 2>&1
 echo "ws large sweep rc=$?" >> $OUT/validate_ws_large_$COMMIT.log) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 130 python3 benchmarks/block_map_bench.py --mode gpu --commit $COMMIT --label stop26-kernels \
  --out $OUT/block_map_h200_${D}_$COMMIT.csv 2>&1 | tail -24
timeout 290 python3 benchmarks/backward_bench.py --budget-s 270 --commit $COMMIT \
  --out $OUT/backward_bench_flex_h200_${D}_$COMMIT.csv > $OUT/backward_bench_$COMMIT.log 2>&1
tail -n 30 $OUT/backward_bench_$COMMIT.log
timeout 90 python3 benchmarks/gluon_dense_bench.py --commit $COMMIT --sizes 16384,32768,65536,115200 \
  --jobs "cudnn,attention" --budget-s 80 --out $OUT/gluon_dense_h200_${D}_$COMMIT.csv 2>&1 | grep -v "check=" | tail -8
wait $BG
tail -12 $OUT/validate_d64_$COMMIT.log; tail -10 $OUT/validate_ws_large_$COMMIT.log
