#!/usr/bin/env bash
# Session 28's second device call (2x H200): the ws forward's HANDOFF (a persistent program's last P V of an item
# issued with its next item's first score GEMM; kernels/gluon_fwd.py). GPU 0: the Gluon GPU tests in parallel
# chunks (incl. the persistent block-sparse handoff test: bit-equal to no handoff and to a program per item) and
# the fused-dQ backward tests. GPU 1: the GNA layers (gna_ws_bench: ours_default vs ours_nohandoff, persistent vs
# persistent_nohandoff) and dense (gluon_dense_bench: persistent vs persistent nohandoff beside cuDNN), twice.
# usage: bash benchmarks/device/session28b.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
g() { timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu/$3.py -k "$2" > $OUT/gpu_$1_$COMMIT.log 2>&1
      echo "rc=$?" >> $OUT/gpu_$1_$COMMIT.log; }
(export CUDA_VISIBLE_DEVICES=0
 g gluon_a "gluon_dense" test_gluon_fwd_cuda & g gluon_b "not gluon_dense and not gna and not persistent" test_gluon_fwd_cuda &
 g gluon_c "gna_block_sparse" test_gluon_fwd_cuda & g gluon_d "gna_training or gna_gradients" test_gluon_fwd_cuda &
 g gluon_e "persistent" test_gluon_fwd_cuda & g fused "fused" test_gna_backward_permuted_cuda &
 g pers "" test_gna_persistent_cuda &
 wait) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
for r in 1 2; do
  timeout 170 python3 benchmarks/gna_ws_bench.py --commit $COMMIT --out $OUT/gna_ws_r${r}_h200_${D}_$COMMIT.csv 2>&1 | tail -44 > $OUT/gna_ws_r$r.log
  timeout 110 python3 benchmarks/gluon_dense_bench.py --commit $COMMIT --sizes 8192,16384,65536 \
    --jobs "cudnn,attention,ws+overlap+pingpong st3 persistent,ws+overlap+pingpong st3 persistent nohandoff" \
    --budget-s 100 --out $OUT/gluon_dense_r${r}_h200_${D}_$COMMIT.csv 2>&1 | grep -v "check=" | tail -14 > $OUT/dense_r$r.log
done
cat $OUT/gna_ws_r1.log $OUT/dense_r1.log
wait $BG
for f in $OUT/gpu_*_$COMMIT.log; do marks=$(grep -aE '^[.sFExX]+ +\[' $f | tr -d ' [%]0-9\n')
  echo "== $(basename $f): passed=$(echo -n "$marks" | tr -cd . | wc -c) failed=$(echo -n "$marks" | tr -cd FE | wc -c) $(tail -1 $f)"
  grep -E "^(FAILED|ERROR)" $f | head -5; done
(cd $OUT && tar -czf session28b_$COMMIT.tgz --exclude=session28b_$COMMIT.tgz . && find . -type f ! -name session28b_$COMMIT.tgz -delete)
