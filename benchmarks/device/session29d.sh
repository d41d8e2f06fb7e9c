#!/usr/bin/env bash
# Session 29d, one device call (2x H200): the 244-case h200_set.toml campaign (GNA 1D/2D/3D, block maps, dense,
# cuDNN) on one GPU and on two, with the check stage (--jobs auto) and without (--jobs 1), each from a cold cache.
# usage: bash benchmarks/device/session29d.sh COMMIT
set -u
COMMIT=${1:?commit}
T2=160 T1=240 JOBS="auto 1" bash benchmarks/device/multi_gpu_validate.sh $COMMIT benchmarks/validation/h200_set.toml \
  gna,block_sparse,dense,cudnn
