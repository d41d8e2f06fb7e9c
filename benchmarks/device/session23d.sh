#!/usr/bin/env bash
# Re-run after a02014a's small-layer pick failed to build its cache key (TypeError): the GPU test files that call
# small layers with no tiles (in parallel, 120 s each), then small layers' default call next to cuDNN.
# usage: bash benchmarks/device/session23d.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
run() { timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/$2.py -k "$3" > $OUT/gpu_$1_$COMMIT.log 2>&1
  echo "rc=$?" >> $OUT/gpu_$1_$COMMIT.log; }
run small test_kernels_cuda "small_layer or repeated or graph_capture" &
run extra test_kernels_cuda "extra_tokens and 1000" &
run bwd test_gna_backward_cuda "(test_gradients_cuda and 1000) or graph" &
run perm test_gna_backward_permuted_cuda "1000" &
run pers test_gna_persistent_cuda "extra_tokens" &
wait
for f in $OUT/gpu_*_$COMMIT.log; do echo "== $(basename $f): $(tail -1 $f)"; grep -E "^(FAILED|ERROR)|passed|failed" $f | tail -4; done
timeout 75 python3 benchmarks/host_overhead.py --small-only --out $OUT --label $COMMIT > $OUT/host_overhead_$COMMIT.log 2>&1
tail -4 $OUT/host_overhead_$COMMIT.log
