#!/usr/bin/env bash
# Device call on a 2-GPU machine (issues 16 and 17): every GPU test, file by file, split over the two GPUs (the
# code written without a GPU first), the backward's host time, then one validation campaign on one GPU and on two
# (multi_gpu_validate.sh). usage: bash benchmarks/device/x2_check.sh COMMIT   (logs and CSVs under $OUT)
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
tests() {  # GPU, then "file:timeout" pairs
  local gpu=$1; shift
  for ft in "$@"; do
    f=${ft%%:*}; t=${ft##*:}; log=$OUT/gpu_tests_${f}_$COMMIT.log
    CUDA_VISIBLE_DEVICES=$gpu timeout $t python3 -m pytest -q -p no:cacheprovider --durations=3 tests/gpu/$f.py > $log 2>&1
    echo "rc=$?" >> $log
  done
}
( tests 0 test_gna_backward_permuted_cuda:190 test_apply_cuda:40
  CUDA_VISIBLE_DEVICES=0 timeout 70 python3 benchmarks/backward_host.py --mode gpu \
    --out $OUT/backward_host_h200_${D}_$COMMIT.csv > $OUT/backward_host_$COMMIT.log 2>&1 ) &
tests 1 test_kernels_cuda:90 test_gna_backward_cuda:110 test_block_backward_cuda:60 test_gna_persistent_cuda:40
wait
for f in $OUT/gpu_tests_*.log; do echo "== $(basename $f)"; grep -E "passed|failed|^FAILED|^ERROR|^rc=" $f | head -8; done
tail -12 $OUT/backward_host_$COMMIT.log
bash benchmarks/device/multi_gpu_validate.sh $COMMIT 2>&1 | tail -12
