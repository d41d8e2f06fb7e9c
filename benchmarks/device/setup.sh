#!/usr/bin/env bash
# Sourced by the session scripts: install the checkout, unbuffered Python, today's date in $D, and
# t TIMEOUT FILE KEXPR NAME: one GPU test file (tests/gpu/FILE.py -k KEXPR) on GPU 0 into $OUT/gpu_NAME_$COMMIT.log.
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
t() { CUDA_VISIBLE_DEVICES=0 timeout $1 python3 -m pytest -q -p no:cacheprovider tests/gpu/$2.py -k "$3" \
        > $OUT/gpu_$4_$COMMIT.log 2>&1; echo "rc=$?" >> $OUT/gpu_$4_$COMMIT.log; }
