#!/usr/bin/env bash
# Session 26's fifth device call (2x H200): the ws kernel's persistent schedule (a program per SM, round-robin
# over the work items, the Q load of the next item overlapping the last one's final GEMM and store). GPU 0: the
# Gluon GPU tests in parallel chunks (the new persistent tests too; 0d45d39's repeated launches failed on a 1D
# grid). GPU 1: the GNA layers (gna_ws_bench: default, persistent, kvmask in one run; dense was timed at 0d45d39).
# usage: bash benchmarks/device/session26e.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
g() { timeout 280 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gluon_fwd_cuda.py -k "$2" \
        > $OUT/gpu_gluon_$1_$COMMIT.log 2>&1; echo "rc=$?" >> $OUT/gpu_gluon_$1_$COMMIT.log; }
(export CUDA_VISIBLE_DEVICES=0
 g dense "gluon_dense" & g sparse "not gluon_dense and not gna and not persistent" & g gna "gna_block_sparse" &
 g train "gna_training or gna_gradients" & g pers "persistent" & wait) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 150 python3 benchmarks/gna_ws_bench.py --commit $COMMIT --out $OUT/gna_ws_h200_${D}_$COMMIT.csv 2>&1 | tail -32
wait $BG
for f in $OUT/gpu_gluon_*_$COMMIT.log; do echo "== $(basename $f): $(tail -c 400 $f | tr '\n' ' ')"; done
