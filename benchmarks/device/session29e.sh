#!/usr/bin/env bash
# Session 29e, one device call (H200): small Triton-route GNA calls timed in this process, in forked workers (with
# and without one CPU thread) and in a spawned one (benchmarks/worker_timing.py).
# usage: bash benchmarks/device/session29e.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
python3 benchmarks/worker_timing.py --out $OUT --commit $COMMIT --rounds 3 2>&1 | tail -20
