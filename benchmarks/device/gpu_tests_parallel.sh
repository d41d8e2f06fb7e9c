#!/usr/bin/env bash
# Device call: the GPU tests in parallel chunks on one GPU (compiling is the cost on a cold Triton cache; the
# chunks compile on separate cores; at f56eeef, 175 s per chunk: two chunks of 8 ran out, now split). usage: bash benchmarks/device/gpu_tests_parallel.sh COMMIT [TIMEOUT_S]
set -u
COMMIT=${1:?commit}
T=${2:-180}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
chunk() {  # name, file, -k expression
  timeout $T python3 -m pytest -q -p no:cacheprovider tests/gpu/$2.py -k "$3" > $OUT/gpu_$1_$COMMIT.log 2>&1
  echo "rc=$?" >> $OUT/gpu_$1_$COMMIT.log
}
chunk perm_a test_gna_backward_permuted_cuda "1000 or 40x36 or test_box" &
chunk perm_b test_gna_backward_permuted_cuda "64x64 or 10x20x24" &
chunk perm_c test_gna_backward_permuted_cuda "16x16" &
chunk perm_d test_gna_backward_permuted_cuda "8x12x12" &
chunk fwd_a test_kernels_cuda "dense or block_sparse or repeated or graph" &
chunk fwd_b test_kernels_cuda "test_gna_cuda and (1000 or 40x36 or 64x64)" &
chunk fwd_c test_kernels_cuda "test_gna_cuda and not graph and not (1000 or 40x36 or 64x64)" &
chunk fwd_d test_kernels_cuda "extra_tokens" &
chunk fwd_e test_kernels_cuda "small_layer" &
chunk bwd_a test_gna_backward_cuda "test_gradients_cuda and (1000 or 40x36 or 64x64 or 10x20x24)" &
chunk bwd_b test_gna_backward_cuda "test_gradients_cuda and extra" &
chunk bwd_c test_gna_backward_cuda "graph or compile" &
chunk blk test_block_backward_cuda "" &
chunk pers test_gna_persistent_cuda "" &
chunk apply test_apply_cuda "" &
chunk gluon_a test_gluon_fwd_cuda "gluon_dense" &
chunk gluon_b test_gluon_fwd_cuda "not gluon_dense and not gna and not persistent" &
chunk gluon_c test_gluon_fwd_cuda "gna_block_sparse" &
chunk gluon_d test_gluon_fwd_cuda "gna_training or gna_gradients" &
chunk gluon_e test_gluon_fwd_cuda "persistent" &
chunk direct test_direct_launch_cuda "" &
wait
for f in $OUT/gpu_*_$COMMIT.log; do  # the progress lines' marks: . passed, s skipped, F failed, E error
  marks=$(grep -aE '^[.sFExX]+ +\[' $f | tr -d ' [%]0-9\n')
  echo "== $(basename $f): passed=$(echo -n "$marks" | tr -cd . | wc -c) failed=$(echo -n "$marks" | tr -cd FE | wc -c) skipped=$(echo -n "$marks" | tr -cd s | wc -c) $(tail -1 $f)"
  grep -E "^(FAILED|ERROR)" $f | head -5; done
# at most 8 files come back from a device call: the chunk logs travel as one archive
(cd $OUT && tar -czf gpu_logs_$COMMIT.tgz gpu_*_$COMMIT.log && rm -f gpu_*_$COMMIT.log)
