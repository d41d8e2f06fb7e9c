#!/usr/bin/env bash
# This session's last device call (issue 17 item 3; one H200; logs and CSVs under $OUT): every GPU test in
# parallel chunks (the small-layer measured tile pick among them), then small layers' default call next to cuDNN
# (benchmarks/host_overhead.py --small-only: the call with no tiles given runs the measured pick).
# usage: bash benchmarks/device/session23c.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
bash benchmarks/device/gpu_tests_parallel.sh $COMMIT 170
timeout 120 python3 benchmarks/host_overhead.py --small-only --out $OUT --label $COMMIT > $OUT/host_overhead_$COMMIT.log 2>&1
tail -8 $OUT/host_overhead_$COMMIT.log
