#!/usr/bin/env bash
# Session 28's third device call (2x H200): the GNA backward's ``box`` stream layout (dQ reads K/V, dK/dV reads
# Q/dO in place by 5D TMA boxes: no permutation pass), now the first call's pick. GPU 0: the backward GPU tests
# (permuted, box, fused, gradients, CUDA graph and compile) in parallel chunks, then forward+backward on
# HunyuanVideo and FLUX (backward_bench --no-flex: the tile bound over our dense forward+backward). GPU 1:
# bwd_tune on the four layers, permute against box candidates side by side, then the issue's two layers against
# cuDNN and FlexAttention in both forms (backward_bench --cases issue_).
# usage: bash benchmarks/device/session28c.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
g() { timeout 280 python3 -m pytest -q -p no:cacheprovider tests/gpu/$3.py -k "$2" > $OUT/gpu_$1_$COMMIT.log 2>&1
      echo "rc=$?" >> $OUT/gpu_$1_$COMMIT.log; }
(export CUDA_VISIBLE_DEVICES=0
 g perm_a "test_permuted_gradients and (1000 or 40x36)" test_gna_backward_permuted_cuda &
 g perm_b "test_permuted_gradients and (64x64 or 10x20x24)" test_gna_backward_permuted_cuda &
 g perm_c "test_permuted_gradients and (16x16 or 8x12x12)" test_gna_backward_permuted_cuda &
 g box "test_box or test_fused" test_gna_backward_permuted_cuda &
 g bwd_a "test_gradients_cuda and (1000 or 40x36 or 64x64 or 10x20x24)" test_gna_backward_cuda &
 g bwd_b "test_gradients_cuda and extra" test_gna_backward_cuda &
 g bwd_c "graph or compile" test_gna_backward_cuda &
 g gluon_d "gna_training or gna_gradients" test_gluon_fwd_cuda &
 wait
 timeout 280 python3 benchmarks/backward_bench.py --cases hunyuan,flux --no-flex --budget-s 260 --commit $COMMIT \
   --out $OUT/backward_bench_tilebound_h200_${D}_$COMMIT.csv > $OUT/bb_tile.log 2>&1) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 330 python3 benchmarks/bwd_tune.py --parts gna --quick --stream-layout permute,box \
  --cases issue_3d,issue_2d,flux,hunyuan --budget-s 310 --commit $COMMIT \
  --out $OUT/bwd_tune_box_h200_${D}_$COMMIT.csv > $OUT/bwd_tune.log 2>&1
grep -v "^  part" $OUT/bwd_tune.log | tail -14
timeout 250 python3 benchmarks/backward_bench.py --cases issue_ --budget-s 235 --commit $COMMIT \
  --out $OUT/backward_bench_flex_h200_${D}_$COMMIT.csv > $OUT/bb_flex.log 2>&1
grep -E "^\[|flex|ours|cudnn" $OUT/bb_flex.log | tail -16
wait $BG
grep -E "ours|cudnn|tile" $OUT/bb_tile.log | tail -12
for f in $OUT/gpu_*_$COMMIT.log; do marks=$(grep -aE '^[.sFExX]+ +\[' $f | tr -d ' [%]0-9\n')
  echo "== $(basename $f): passed=$(echo -n "$marks" | tr -cd . | wc -c) failed=$(echo -n "$marks" | tr -cd FE | wc -c) $(tail -1 $f)"
  grep -E "^(FAILED|ERROR)" $f | head -5; done
(cd $OUT && tar -czf logs_$COMMIT.tgz gpu_*_$COMMIT.log *.log && rm -f gpu_*_$COMMIT.log bwd_tune.log bb_*.log)
