#!/usr/bin/env bash
# Session 29f, one device call (H200): small layers timed after 1 s idle with validate's warm-up and a 300 ms one,
# the SM clock sampled (benchmarks/warmup_bench.py).
# usage: bash benchmarks/device/session29f.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
python3 benchmarks/warmup_bench.py --out $OUT --commit $COMMIT --rounds ${ROUNDS:-8} --idle 1.0 --timers ${TIMERS:-validate,warmup_300ms} 2>&1 | tail -20
