#!/usr/bin/env bash
# Session 29b, one device call (H200): SM clock and power while dense attention (cuDNN, ours) is timed at 4K-115K
# tokens (benchmarks/clock_bench.py): does the clock fall on long calls, as the model's length trend suggests?
# usage: bash benchmarks/device/session29b.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,driver_version,clocks.max.sm,power.limit --format=csv,noheader
python3 benchmarks/clock_bench.py --out $OUT --commit $COMMIT --tokens 1024,4096,16384,32768,65536,115200 2>&1 | tail -40
