#!/usr/bin/env bash
# Session 26's third device call (2x H200): the ws campaign (h200_ws.toml, 119 cases) on two GPUs and on one, from
# cold Triton caches, with the phase timings of each run (SPARSESIM_PHASES; multi_gpu_validate.sh prints the
# breakdown); the one-GPU CSV is also an out-of-session check of the refitted triton-ws. Then every GPU test file
# in parallel chunks on GPU 0. usage: bash benchmarks/device/session26c.sh COMMIT
set -u
COMMIT=${1:?commit}
T2=120 T1=150 bash benchmarks/device/multi_gpu_validate.sh $COMMIT benchmarks/validation/h200_ws.toml \
  gna,block_sparse,dense,cudnn 2>&1 | tail -60
CUDA_VISIBLE_DEVICES=0 bash benchmarks/device/gpu_tests_parallel.sh $COMMIT 240 2>&1 | tail -20
