#!/usr/bin/env bash
# This session's fourth device call (issues 16 and 17; 2x H200, under the 10-minute limit; CSVs and logs under $OUT).
# GPU 0: the GPU tests touched this session (the Gluon forward and its routes, dense/block-sparse backward incl. the
# fused default), then the dense fidelity held-out sweep measured with the new kernels (simulate validate; the
# shipped profiles never saw these rows). GPU 1, alone: the GNA forward bench again (with which kernel attention()
# ran), then the dense backward tune. usage: bash benchmarks/device/session24d.sh COMMIT
set -u
COMMIT=${1:?commit}
source benchmarks/device/setup.sh
(t 300 test_gluon_fwd_cuda "" gluon & t 300 test_block_backward_cuda "" blk &
 t 300 test_kernels_cuda "dense or block_sparse or repeated or graph" fwd & wait
 CUDA_VISIBLE_DEVICES=0 timeout 200 python3 -m sparsesim.cli.main validate \
   --sweep benchmarks/validation/h200_dense_fidelity_heldout.toml --kernels dense,cudnn --no-progress \
   --out $OUT/validate_h200_dense_fidelity_heldout_${D}_$COMMIT.csv --commit $COMMIT > $OUT/validate_$COMMIT.log 2>&1
 echo "validate rc=$?" >> $OUT/validate_$COMMIT.log) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 150 python3 benchmarks/gna_ws_bench.py --commit $COMMIT --out $OUT/gna_ws_h200_${D}_$COMMIT.csv \
  > $OUT/gna_ws_$COMMIT.log 2>&1; tail -n 12 $OUT/gna_ws_$COMMIT.log
timeout 150 python3 benchmarks/bwd_tune.py --parts dense --budget-s 130 --commit $COMMIT \
  --out $OUT/bwd_dense_h200_${D}_$COMMIT.csv > $OUT/bwd_dense_$COMMIT.log 2>&1; tail -n 9 $OUT/bwd_dense_$COMMIT.log
wait $BG
tail -n 8 $OUT/validate_$COMMIT.log
for f in $OUT/gpu_*_$COMMIT.log; do echo "== $(basename $f): $(head -n 1 $f | tr -cd '.F' | wc -c) dots/F; $(tail -n 1 $f)"
  grep -E "^(FAILED|ERROR)|Error" $f | head -8; done
(cd $OUT && tar -czf logs_$COMMIT.tgz gpu_*_$COMMIT.log *_$COMMIT.log && rm -f gpu_*_$COMMIT.log)
