#!/usr/bin/env bash
# Device call (issues 16 and 17): every GPU test (the code written without a GPU: permuted backward, eager
# autograd path, Delta's and the token permutation's compiled launches), the backward's host time, then the
# permuted stream layout against the gather one on the issue's 3D layer and HunyuanVideo.
# usage: bash benchmarks/device/next_check.sh COMMIT [CASES]   (CASES: bwd_tune --cases, default issue_3d,hunyuan)
set -u
COMMIT=${1:?commit}
CASES=${2:-issue_3d,hunyuan}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
timeout 230 python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -12
timeout 60 python3 benchmarks/backward_host.py --mode gpu --out $OUT/backward_host_h200_${D}_$COMMIT.csv 2>&1 | tail -12
timeout 270 python3 benchmarks/bwd_tune.py --parts gna --quick --stream-layout gather,permute --cases $CASES \
  --budget-s 240 --commit $COMMIT --out $OUT/bwd_tune_permuted_h200_${D}_$COMMIT.csv 2>&1 | grep -v "^  part" | tail -30
