#!/usr/bin/env bash
# This session's sixth device call (2x H200, about 3 minutes): issue 17 item 5 again on the 119 cases of
# h200_ws.toml, two GPUs and one from a cold Triton cache, now with compile-affinity scheduling (a worker prefers
# cases whose kernels it compiled).  usage: bash benchmarks/device/session25f.sh COMMIT
set -u
COMMIT=${1:?commit}
T2=120 T1=170 bash benchmarks/device/multi_gpu_validate.sh $COMMIT benchmarks/validation/h200_ws.toml \
  gna,block_sparse,dense,cudnn
