#!/usr/bin/env bash
# Session 29, one device call (2x H200): the validation campaign of h200_ws.toml (119 cases: GNA, block maps, dense,
# cuDNN) on one GPU and on two, with the check stage (--jobs auto) and without (--jobs 1), each from a cold cache.
# usage: bash benchmarks/device/session29.sh COMMIT
set -u
COMMIT=${1:?commit}
T2=110 T1=150 JOBS="auto 1" bash benchmarks/device/multi_gpu_validate.sh $COMMIT benchmarks/validation/h200_ws.toml \
  gna,block_sparse,dense,cudnn
