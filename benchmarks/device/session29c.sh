#!/usr/bin/env bash
# Session 29c, one device call (H200): HunyuanVideo s16x8x8 and FLUX-4K s16x16 (ours, tiles of backward_bench) and
# dense cuDNN timed as simulate validate times them (do_bench) and under 3 s of sustained load, the SM clock sampled
# in both windows (benchmarks/clock_bench.py --sustain); plus the dense clock sweep again.
# usage: bash benchmarks/device/session29c.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,driver_version,clocks.max.sm,power.limit --format=csv,noheader
python3 benchmarks/clock_bench.py --out $OUT --commit $COMMIT --tokens 4096,32768,115200 --sustain 3 2>&1 | tail -40
