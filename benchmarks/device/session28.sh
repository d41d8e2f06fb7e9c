#!/usr/bin/env bash
# Session 28's first device call (2x H200): the GNA backward with dQ fused into the dK/dV kernel (TMA reductions
# into a float32 buffer permuted as the Q stream; kernels/gna_bwd.py BwdTuning.fused_dq). GPU 0: the permuted and
# fused backward tests and the backward test chunks (their first-call pick now times the fused candidates too).
# GPU 1: bwd_tune on the issue's 3D and 2D layers, then HunyuanVideo and FLUX: the permuted split candidates, split
# dK/dV on 8 warps, and the fused settings, each whole backward side by side in one run.
# usage: bash benchmarks/device/session28.sh COMMIT
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
D=$(date -u +%Y-%m-%d)
chunk() {  # name, file, -k expression
  timeout 330 python3 -m pytest -q -p no:cacheprovider tests/gpu/$2.py -k "$3" > $OUT/gpu_$1_$COMMIT.log 2>&1
  echo "rc=$?" >> $OUT/gpu_$1_$COMMIT.log
}
(export CUDA_VISIBLE_DEVICES=0
 chunk perm_a test_gna_backward_permuted_cuda "1000 or 40x36" &
 chunk perm_b test_gna_backward_permuted_cuda "64x64 or 10x20x24" &
 chunk perm_c test_gna_backward_permuted_cuda "16x16 or pick" &
 chunk bwd_a test_gna_backward_cuda "test_gradients_cuda and (1000 or 40x36 or 64x64 or 10x20x24)" &
 chunk bwd_c test_gna_backward_cuda "graph or compile" &
 wait
 timeout 200 python3 benchmarks/bwd_tune.py --parts gna --quick --stream-layout permute --cases hunyuan \
   --budget-s 180 --commit $COMMIT --out $OUT/bwd_tune_fused_b_h200_${D}_$COMMIT.csv > $OUT/bwd_tune_b.log 2>&1) &
BG=$!
export CUDA_VISIBLE_DEVICES=1
timeout 560 python3 benchmarks/bwd_tune.py --parts gna --quick --stream-layout permute --cases issue_3d,issue_2d,flux \
  --budget-s 530 --commit $COMMIT --out $OUT/bwd_tune_fused_a_h200_${D}_$COMMIT.csv > $OUT/bwd_tune_a.log 2>&1
grep -v "^  part" $OUT/bwd_tune_a.log | tail -60
wait $BG
grep -v "^  part" $OUT/bwd_tune_b.log | tail -30
for f in $OUT/gpu_*_$COMMIT.log; do
  marks=$(grep -aE '^[.sFExX]+ +\[' $f | tr -d ' [%]0-9\n')
  echo "== $(basename $f): passed=$(echo -n "$marks" | tr -cd . | wc -c) failed=$(echo -n "$marks" | tr -cd FE | wc -c) skipped=$(echo -n "$marks" | tr -cd s | wc -c) $(tail -1 $f)"
  grep -E "^(FAILED|ERROR)|Error" $f | head -8; done
(cd $OUT && tar -czf logs_$COMMIT.tgz gpu_*_$COMMIT.log bwd_tune_*.log && rm -f gpu_*_$COMMIT.log bwd_tune_*.log)
