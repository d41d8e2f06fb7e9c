#!/usr/bin/env bash
# This session's last device call (2x H200, about 3 minutes): the repeated ws call's host time after its
# per-call check shrank to what the call key does not fix and its descriptors are found by address triple, alone
# on the machine (ws_host_profile.py, block_map_bench.py); then the Gluon file and the block-sparse/dense GPU tests.
# usage: bash benchmarks/device/session25d.sh COMMIT
set -u
COMMIT=${1:?commit}
source benchmarks/device/setup.sh
export CUDA_VISIBLE_DEVICES=1
timeout 90 python3 benchmarks/ws_host_profile.py --commit $COMMIT --out $OUT/ws_host_profile_h200_${D}_$COMMIT.csv \
  --profile-out $OUT/ws_host_cprofile_$COMMIT.txt 2>&1 | grep "^variant"
timeout 120 python3 benchmarks/block_map_bench.py --mode gpu --commit $COMMIT --label ws-by-address-triple \
  --out $OUT/block_map_bench_ws_h200_${D}_$COMMIT.csv 2>&1 | grep -v "^wrote"
t 240 test_gluon_fwd_cuda "" gluon & t 240 test_kernels_cuda "dense or block_sparse or repeated or graph" fwd_a &
t 240 test_block_backward_cuda "" blk & wait
for f in $OUT/gpu_*_$COMMIT.log; do echo "== $(basename $f): $(grep -E 'passed|failed' $f | tail -1) $(tail -1 $f)"
  grep -E "^(FAILED|ERROR)" $f | head -5; done
(cd $OUT && tar -czf gpu_logs_$COMMIT.tgz gpu_*_$COMMIT.log && rm -f gpu_*_$COMMIT.log)
