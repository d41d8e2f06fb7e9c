#!/usr/bin/env bash
# This session's third device call (issues 16 and 17; 2x H200, under the 10-minute limit; CSVs and logs under $OUT).
# GPU 0: the Gluon forward's GPU tests (now with the GNA route on permuted Q/K/V) and the small GNA tests.
# GPU 1, alone: GNA forward on the HunyuanVideo / FLUX layers (default route vs the Triton GNA kernel vs cuDNN),
# the fused dense backward (bwd_tune.py --parts dense), a second sample of the dense variants at 16K-115K.
# usage: bash benchmarks/device/session24c.sh COMMIT
set -u
COMMIT=${1:?commit}
source benchmarks/device/setup.sh
(t 330 test_gluon_fwd_cuda "" gluon & t 330 test_kernels_cuda "test_gna_cuda and (1000 or 40x36 or 64x64)" gna & wait) &
TESTS=$!
export CUDA_VISIBLE_DEVICES=1
timeout 120 python3 benchmarks/gna_ws_bench.py --commit $COMMIT --out $OUT/gna_ws_h200_${D}_$COMMIT.csv \
  > $OUT/gna_ws_$COMMIT.log 2>&1; cat $OUT/gna_ws_$COMMIT.log | tail -12
timeout 200 python3 benchmarks/bwd_tune.py --parts dense --budget-s 180 --commit $COMMIT \
  --out $OUT/bwd_dense_fused_h200_${D}_$COMMIT.csv > $OUT/bwd_dense_$COMMIT.log 2>&1; tail -30 $OUT/bwd_dense_$COMMIT.log
timeout 120 python3 benchmarks/gluon_dense_bench.py --budget-s 110 --commit $COMMIT --sizes 16384,32768,65536,115200 \
  --jobs "cudnn,attention,ws+overlap+pingpong st3,ws+overlap st3" \
  --out $OUT/gluon_dense_b_h200_${D}_$COMMIT.csv > $OUT/gluon_dense_b_$COMMIT.log 2>&1; grep -v check= $OUT/gluon_dense_b_$COMMIT.log | tail -16
wait $TESTS
for f in $OUT/gpu_*_$COMMIT.log; do echo "== $(basename $f): $(grep -E 'passed|failed' $f | tail -1) $(tail -1 $f)"
  grep -E "^(FAILED|ERROR)|Error" $f | head -8; done
(cd $OUT && tar -czf logs_$COMMIT.tgz gpu_*_$COMMIT.log *_$COMMIT.log && rm -f gpu_*_$COMMIT.log)
