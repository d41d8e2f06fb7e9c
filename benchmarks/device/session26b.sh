#!/usr/bin/env bash
# Session 26's second device call (2x H200, under the 10-minute limit): the ws kernel masking keys only where they
# end inside a KV tile (KV_MASK). GPU 0: the Gluon GPU tests in three parallel chunks, then the dense sizes of the
# ws campaign. GPU 1: dense ws with and without the per-tile key mask beside cuDNN (gluon_dense_bench), the GNA
# layers (gna_ws_bench: default vs kvmask in one run), then the ws campaign (h200_ws.toml) for the refit.
# usage: bash benchmarks/device/session26b.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
V="python3 -m sparsesim.cli.main validate --devices 1 --no-progress --commit $COMMIT"
g() { timeout 260 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gluon_fwd_cuda.py -k "$2" \
        > $OUT/gpu_gluon_$1_$COMMIT.log 2>&1; echo "rc=$?" >> $OUT/gpu_gluon_$1_$COMMIT.log; }
(export CUDA_VISIBLE_DEVICES=0
 g dense "gluon_dense" & g sparse "not gluon_dense and not gna" & g gna "gna_block_sparse" &
 g train "gna_training or gna_gradients" & wait
 timeout 200 $V --sweep benchmarks/validation/h200_ws_dense.toml --kernels dense,cudnn \
   --out $OUT/validate_h200_ws_dense_${D}_$COMMIT.csv > $OUT/validate_ws_dense_$COMMIT.log 2>&1
 echo "dense sweep rc=$?" >> $OUT/validate_ws_dense_$COMMIT.log) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 150 python3 benchmarks/gluon_dense_bench.py --commit $COMMIT --sizes 16384,32768,65536,115200 \
  --jobs "cudnn,ws+overlap+pingpong st3,ws+overlap+pingpong st3 kvmask" --budget-s 140 \
  --out $OUT/gluon_dense_h200_${D}_$COMMIT.csv 2>&1 | grep -v "check=" | tail -14
timeout 130 python3 benchmarks/gna_ws_bench.py --commit $COMMIT --out $OUT/gna_ws_h200_${D}_$COMMIT.csv 2>&1 | tail -20
timeout 200 $V --sweep benchmarks/validation/h200_ws.toml --kernels gna,block_sparse,dense,cudnn \
  --out $OUT/validate_h200_ws_${D}_$COMMIT.csv 2>&1 | tail -8; echo "ws sweep rc=${PIPESTATUS[0]}"
wait $BG
for f in $OUT/gpu_gluon_*_$COMMIT.log; do echo "== $(basename $f): $(tail -c 300 $f | tr '\n' ' ')"; done
tail -6 $OUT/validate_ws_dense_$COMMIT.log
