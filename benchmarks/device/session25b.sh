#!/usr/bin/env bash
# This session's second device call (2x H200, under the 10-minute limit). GPU 0: every GPU test file in parallel
# chunks (the GNA training forward now on the warp-specialized route), then the dense sizes of the ws profile's
# campaign (h200_ws_dense.toml). GPU 1: where a ws call's host time goes (ws_host_profile.py), then the sparse and
# dense calls of h200_ws.toml. Every validate row records the forward kernel that ran.
# usage: bash benchmarks/device/session25b.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
V="python3 -m sparsesim.cli.main validate --devices 1 --no-progress --commit $COMMIT"
(export CUDA_VISIBLE_DEVICES=0
 bash benchmarks/device/gpu_tests_parallel.sh $COMMIT 230 > $OUT/gpu_tests_$COMMIT.txt 2>&1
 timeout 280 $V --sweep benchmarks/validation/h200_ws_dense.toml --kernels dense,cudnn \
   --out $OUT/validate_h200_ws_dense_${D}_$COMMIT.csv > $OUT/validate_ws_dense_$COMMIT.log 2>&1
 echo "dense sweep rc=$?" >> $OUT/validate_ws_dense_$COMMIT.log) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 90 python3 benchmarks/ws_host_profile.py --commit $COMMIT --out $OUT/ws_host_profile_h200_${D}_$COMMIT.csv \
  --profile-out $OUT/ws_host_cprofile_$COMMIT.txt 2>&1 | grep -v "^ *[0-9]" | head -30
timeout 420 $V --sweep benchmarks/validation/h200_ws.toml --kernels gna,block_sparse,dense,cudnn \
  --out $OUT/validate_h200_ws_${D}_$COMMIT.csv 2>&1 | tail -12; echo "ws sweep rc=${PIPESTATUS[0]}"
wait $BG
cat $OUT/gpu_tests_$COMMIT.txt; tail -8 $OUT/validate_ws_dense_$COMMIT.log
