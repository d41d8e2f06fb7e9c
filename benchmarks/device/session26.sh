#!/usr/bin/env bash
# Session 26's first device call (2x H200, under the 10-minute limit): GNA on the ws kernel reading its box tiles in
# place (5D TMA boxes, no permutation). GPU 0: the Gluon GPU tests (the box path against the float64 reference and
# the Triton route), then the dense sizes of the ws profile's campaign. GPU 1: HunyuanVideo / FLUX / 1D whole calls
# beside cuDNN (gna_ws_bench), the ws campaign (h200_ws.toml: the GNA rows for the refit), forward+backward.
# usage: bash benchmarks/device/session26.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
V="python3 -m sparsesim.cli.main validate --devices 1 --no-progress --commit $COMMIT"
(export CUDA_VISIBLE_DEVICES=0
 timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gluon_fwd_cuda.py > $OUT/gpu_gluon_$COMMIT.log 2>&1
 echo "rc=$?" >> $OUT/gpu_gluon_$COMMIT.log
 timeout 250 $V --sweep benchmarks/validation/h200_ws_dense.toml --kernels dense,cudnn \
   --out $OUT/validate_h200_ws_dense_${D}_$COMMIT.csv > $OUT/validate_ws_dense_$COMMIT.log 2>&1
 echo "dense sweep rc=$?" >> $OUT/validate_ws_dense_$COMMIT.log) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 120 python3 benchmarks/gna_ws_bench.py --commit $COMMIT --out $OUT/gna_ws_h200_${D}_$COMMIT.csv 2>&1 | tail -20
timeout 200 $V --sweep benchmarks/validation/h200_ws.toml --kernels gna,block_sparse,dense,cudnn \
  --out $OUT/validate_h200_ws_${D}_$COMMIT.csv 2>&1 | tail -8; echo "ws sweep rc=${PIPESTATUS[0]}"
timeout 190 python3 benchmarks/backward_bench.py --no-flex --budget-s 170 --commit $COMMIT \
  --out $OUT/backward_bench_h200_${D}_$COMMIT.csv > $OUT/backward_bench_$COMMIT.log 2>&1; tail -n 24 $OUT/backward_bench_$COMMIT.log
wait $BG
tail -30 $OUT/gpu_gluon_$COMMIT.log; tail -8 $OUT/validate_ws_dense_$COMMIT.log
