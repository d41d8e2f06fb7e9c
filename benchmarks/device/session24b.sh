#!/usr/bin/env bash
# This session's second device call (issue 17 item 1; 2x H200, under the 10-minute limit; CSVs and logs under $OUT):
# GPU 0: the GPU tests of the dense and block-sparse calls now that large calls take the warp-specialized Gluon
# kernel (tests/gpu/test_gluon_fwd_cuda.py forces it at every size). GPU 1, alone: the dense bench (Gluon
# variants, our Triton kernel, the default dispatch, cuDNN; 4K-115K tokens), then the 64K block-sparse map with
# each of our kernels next to FlexAttention.  usage: bash benchmarks/device/session24b.sh COMMIT
set -u
COMMIT=${1:?commit}
source benchmarks/device/setup.sh
(t 300 test_gluon_fwd_cuda "" gluon & t 300 test_kernels_cuda "dense or block_sparse or repeated or graph" fwd &
 t 300 test_block_backward_cuda "" blk & wait) &
TESTS=$!
export CUDA_VISIBLE_DEVICES=1
timeout 300 python3 benchmarks/gluon_dense_bench.py --budget-s 285 --commit $COMMIT \
  --out $OUT/gluon_dense_h200_${D}_$COMMIT.csv > $OUT/gluon_dense_$COMMIT.log 2>&1
grep -v check= $OUT/gluon_dense_$COMMIT.log | tail -45; grep -c "FAILED" $OUT/gluon_dense_$COMMIT.log
timeout 80 python3 benchmarks/block_map_bench.py --mode gpu --commit $COMMIT --label ws \
  --out $OUT/block_map_ws_h200_${D}_$COMMIT.csv > $OUT/block_map_$COMMIT.log 2>&1
SPARSESIM_FWD_KERNEL=triton timeout 80 python3 benchmarks/block_map_bench.py --mode gpu --commit $COMMIT \
  --label triton --out $OUT/block_map_triton_h200_${D}_$COMMIT.csv >> $OUT/block_map_$COMMIT.log 2>&1
grep -E "ours_call|ours_graph|flex|fwd_bwd" $OUT/block_map_$COMMIT.log
wait $TESTS
for f in $OUT/gpu_*_$COMMIT.log; do echo "== $(basename $f): $(grep -E 'passed|failed' $f | tail -1) $(tail -1 $f)"
  grep -E "^(FAILED|ERROR)|Error" $f | head -8; done
(cd $OUT && tar -czf gpu_logs_$COMMIT.tgz gpu_*_$COMMIT.log && rm -f gpu_*_$COMMIT.log)
