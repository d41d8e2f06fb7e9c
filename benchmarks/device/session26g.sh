#!/usr/bin/env bash
# Session 26's check of 282b27b's Gluon tests that its one-chunk run (gpu_tests_parallel.sh, 240 s) did not reach:
# the GNA training forward, its gradients and the persistent launches, in three parallel chunks on GPU 0.
# usage: bash benchmarks/device/session26g.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export CUDA_VISIBLE_DEVICES=0
g() { timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gluon_fwd_cuda.py -k "$2" \
        > $OUT/gpu_gluon_$1_$COMMIT.log 2>&1; echo "rc=$?" >> $OUT/gpu_gluon_$1_$COMMIT.log; }
g train "gna_training" & g grads "gna_gradients" & g pers "persistent" & wait
for f in $OUT/gpu_gluon_*_$COMMIT.log; do echo "== $(basename $f): $(tail -c 300 $f | tr '\n' ' ')"; done
