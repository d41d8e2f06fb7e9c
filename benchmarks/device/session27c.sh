#!/usr/bin/env bash
# Session 27's third device call (2x H200). Phase 1, GPU 0: the Gluon GPU tests in five parallel chunks (the ws
# forward with EARLY, now the default) and the direct-launch tests; GPU 1: the 64K block map's host time with the
# direct launch off and on in one run (SPARSESIM_DIRECT_LAUNCH=0/1, block_map_bench --skip-device), the GNA layers
# with early vs late Q hand-back (gna_ws_bench: ours_default vs ours_late), dense beside cuDNN (attention() and
# the persistent late variant). Phase 2 (both GPUs): multi_gpu_validate.sh (the validation campaign on one GPU and
# on two, forked workers where safe). usage: bash benchmarks/device/session27c.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
g() { timeout 280 python3 -m pytest -q -p no:cacheprovider tests/gpu/$3.py -k "$2" > $OUT/gpu_$1_$COMMIT.log 2>&1
      echo "rc=$?" >> $OUT/gpu_$1_$COMMIT.log; }
(export CUDA_VISIBLE_DEVICES=0
 g gluon_a "gluon_dense" test_gluon_fwd_cuda & g gluon_b "not gluon_dense and not gna and not persistent" test_gluon_fwd_cuda &
 g gluon_c "gna_block_sparse" test_gluon_fwd_cuda & g gluon_d "gna_training or gna_gradients" test_gluon_fwd_cuda &
 g gluon_e "persistent" test_gluon_fwd_cuda & g direct "" test_direct_launch_cuda & g pers "" test_gna_persistent_cuda &
 wait) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
for dl in 0 1 0 1; do
  SPARSESIM_DIRECT_LAUNCH=$dl timeout 100 python3 benchmarks/block_map_bench.py --mode gpu --skip-device \
    --commit $COMMIT --label direct_launch=$dl --out $OUT/block_map_direct${dl}_h200_${D}_$COMMIT.csv 2>&1 \
    | grep -E "raw_|prepared" | sed "s/^/direct_launch=$dl /"
done
timeout 140 python3 benchmarks/gna_ws_bench.py --commit $COMMIT --out $OUT/gna_ws_h200_${D}_$COMMIT.csv 2>&1 | tail -36
timeout 100 python3 benchmarks/gluon_dense_bench.py --commit $COMMIT --sizes 8192,16384,65536 \
  --jobs "cudnn,attention,ws+overlap+pingpong st3 persistent,ws+overlap+pingpong st3 persistent late" --budget-s 90 \
  --out $OUT/gluon_dense_h200_${D}_$COMMIT.csv 2>&1 | grep -v "check=" | tail -14
wait $BG
for f in $OUT/gpu_*_$COMMIT.log; do marks=$(grep -aE '^[.sFExX]+ +\[' $f | tr -d ' [%]0-9\n')
  echo "== $(basename $f): passed=$(echo -n "$marks" | tr -cd . | wc -c) failed=$(echo -n "$marks" | tr -cd FE | wc -c) $(tail -1 $f)"
  grep -E "^(FAILED|ERROR)" $f | head -5; done
(cd $OUT && tar -czf gpu_logs_$COMMIT.tgz gpu_*_$COMMIT.log && rm -f gpu_*_$COMMIT.log)
unset CUDA_VISIBLE_DEVICES
python3 -c "import torch,functools; from sparsesim.kernels import validate, workers; print('fork check:', torch.cuda.device_count(), workers._driver_library_loaded(), workers.fork_safe(), workers.choose_start(functools.partial(validate.warm_up, cuda=False)))"
T2=110 T1=140 bash benchmarks/device/multi_gpu_validate.sh $COMMIT 2>&1 | tail -20
# at most 8 files come back from a device call: everything travels as one archive
(cd $OUT && tar -czf session27c_$COMMIT.tgz --exclude=session27c_$COMMIT.tgz . && find . -type f ! -name session27c_$COMMIT.tgz -delete)
