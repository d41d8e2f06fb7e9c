#!/usr/bin/env bash
# Session 26's last device call (2x H200): the ws forward with persistent launches by rule
# (hwmodels/launch.py WS_PERSISTENT_MAX_TILES). GPU 0: the dense sizes of the ws campaign, then every GPU test file
# in parallel chunks. GPU 1: the GNA layers (gna_ws_bench), dense through attention() beside cuDNN, the ws campaign
# (h200_ws.toml) for the refit, forward+backward (backward_bench --no-flex). usage: bash .../session26f.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
V="python3 -m sparsesim.cli.main validate --devices 1 --no-progress --commit $COMMIT"
(export CUDA_VISIBLE_DEVICES=0
 timeout 150 $V --sweep benchmarks/validation/h200_ws_dense.toml --kernels dense,cudnn \
   --out $OUT/validate_h200_ws_dense_${D}_$COMMIT.csv > $OUT/validate_ws_dense_$COMMIT.log 2>&1
 echo "dense sweep rc=$?" >> $OUT/validate_ws_dense_$COMMIT.log
 bash benchmarks/device/gpu_tests_parallel.sh $COMMIT 240 > $OUT/gpu_tests_$COMMIT.txt 2>&1) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 120 python3 benchmarks/gna_ws_bench.py --commit $COMMIT --out $OUT/gna_ws_h200_${D}_$COMMIT.csv 2>&1 | tail -36
timeout 100 python3 benchmarks/gluon_dense_bench.py --commit $COMMIT --sizes 8192,16384,32768,65536,115200 \
  --jobs "cudnn,attention" --budget-s 95 --out $OUT/gluon_dense_h200_${D}_$COMMIT.csv 2>&1 | grep -v "check=" | tail -10
timeout 150 $V --sweep benchmarks/validation/h200_ws.toml --kernels gna,block_sparse,dense,cudnn \
  --out $OUT/validate_h200_ws_${D}_$COMMIT.csv 2>&1 | tail -8; echo "ws sweep rc=${PIPESTATUS[0]}"
timeout 170 python3 benchmarks/backward_bench.py --no-flex --budget-s 150 --commit $COMMIT \
  --out $OUT/backward_bench_h200_${D}_$COMMIT.csv > $OUT/backward_bench_$COMMIT.log 2>&1; tail -n 24 $OUT/backward_bench_$COMMIT.log
wait $BG
tail -8 $OUT/validate_ws_dense_$COMMIT.log; cat $OUT/gpu_tests_$COMMIT.txt | tail -20
