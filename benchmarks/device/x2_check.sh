#!/usr/bin/env bash
# Device call on a 2-GPU machine (issues 16 and 17): every GPU test (file by file, the code written without a GPU
# first), the backward's host time, then one validation campaign on one GPU and on two (multi_gpu_validate.sh).
# usage: bash benchmarks/device/x2_check.sh COMMIT   (logs and CSVs under $OUT)
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
LOG=$OUT/gpu_tests_$COMMIT.log
for f in test_gna_backward_permuted_cuda test_kernels_cuda test_gna_backward_cuda test_block_backward_cuda \
         test_gna_persistent_cuda test_apply_cuda; do
  echo "== $f" >> $LOG
  timeout 110 python3 -m pytest -q -p no:cacheprovider --durations=3 tests/gpu/$f.py >> $LOG 2>&1; echo "rc=$?" >> $LOG
done
grep -E "^== |passed|failed|^FAILED|^ERROR|^rc=" $LOG
timeout 90 python3 benchmarks/backward_host.py --mode gpu --out $OUT/backward_host_h200_${D}_$COMMIT.csv \
  > $OUT/backward_host_$COMMIT.log 2>&1; tail -12 $OUT/backward_host_$COMMIT.log
bash benchmarks/device/multi_gpu_validate.sh $COMMIT 2>&1 | tail -12
