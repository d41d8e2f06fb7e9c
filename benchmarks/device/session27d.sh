#!/usr/bin/env bash
# Session 27's last device call (2x H200): the two-GPU campaign with forked workers (the driver probe of
# kernels/workers.py: libcuda mapped by the imports but not initialised), then the ws campaigns on the EARLY ws
# forward for triton-ws (GPU 0: h200_ws.toml GNA and block maps; GPU 1: h200_ws_dense.toml).
# usage: bash benchmarks/device/session27d.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
python3 -c "import torch,functools; from sparsesim.kernels import validate, workers; print('fork check:', torch.cuda.device_count(), workers._driver_library_loaded(), workers._driver_initialized(), workers.fork_safe(), workers.choose_start(functools.partial(validate.warm_up, cuda=False)))"
T2=110 T1=140 bash benchmarks/device/multi_gpu_validate.sh $COMMIT 2>&1 | tail -22
V="python3 -m sparsesim.cli.main validate --devices 1 --no-progress --commit $COMMIT"
(CUDA_VISIBLE_DEVICES=0 timeout 150 $V --sweep benchmarks/validation/h200_ws.toml --kernels gna,block_sparse \
   --out $OUT/validate_h200_ws_${D}_$COMMIT.csv > $OUT/ws_$COMMIT.log 2>&1; echo "ws rc=$?" >> $OUT/ws_$COMMIT.log) &
CUDA_VISIBLE_DEVICES=1 timeout 150 $V --sweep benchmarks/validation/h200_ws_dense.toml --kernels dense \
  --out $OUT/validate_h200_ws_dense_${D}_$COMMIT.csv 2>&1 | tail -6
wait
tail -8 $OUT/ws_$COMMIT.log; rm -f $OUT/ws_$COMMIT.log
