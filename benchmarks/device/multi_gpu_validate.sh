#!/usr/bin/env bash
# Device call (a 2-GPU machine): one validation campaign on one GPU and on two (`simulate validate --devices`), for
# each `--jobs` value in $JOBS (default "auto 1": the check stage on half the cores, at most 8 workers per GPU; and
# no check stage), each run from a cold Triton cache; the CSVs, the wall times, the ratio two GPUs / one per --jobs
# (target: close to 0.5) and what the check stage saved; after each run, where its wall time went
# (SPARSESIM_PHASES: <csv>.phases.json; benchmarks/validate_phases.py).
# usage: JOBS="auto 1" bash benchmarks/device/multi_gpu_validate.sh COMMIT [SWEEP [KERNELS]]   (writes under $OUT;
#   about 4 min with benchmarks/validation/h200_ws.toml and gna,block_sparse,dense,cudnn)
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader
N=$(python3 -c "import torch; print(torch.cuda.device_count())")
[ "$N" -ge 2 ] || { echo "multi_gpu_validate: $N CUDA device(s) visible; needs 2"; exit 1; }
echo "cpus: $(nproc)"
D=$(date -u +%F)
SWEEP=${2:-benchmarks/validation/h200_multi_gpu.toml}
KERNELS=${3:-gna,dense,cudnn}
JOBS=${JOBS:-auto 1}
T2=${T2:-100}; T1=${T1:-130}  # per-run time limits (seconds), two devices and one
SUMMARY=$OUT/multi_gpu_validate_${D}_${COMMIT}.txt
for jobs in $JOBS; do
  for devices in 2 1; do  # two first: any first-run warm-up falls on the parallel run
    csv=$OUT/validate_h200_multi_gpu_devices${devices}_jobs${jobs}_${D}_${COMMIT}.csv
    export TRITON_CACHE_DIR=$(mktemp -d)
    t0=$(date +%s.%N)
    SPARSESIM_PHASES=$csv.phases.json timeout $((devices == 2 ? T2 : T1)) python3 -m sparsesim.cli.main validate \
      --sweep $SWEEP --kernels $KERNELS --devices $devices --jobs $jobs --no-progress --out $csv \
      --commit $COMMIT 2>&1 | tail -6
    rc=${PIPESTATUS[0]}
    t1=$(date +%s.%N)
    echo "devices=$devices jobs=$jobs wall_s=$(python3 -c "print(round($t1 - $t0, 1))") rc=$rc csv=$(basename $csv)" \
      | tee -a $SUMMARY
    if [ -f $csv.phases.json ]; then
      python3 benchmarks/validate_phases.py $csv.phases.json --start $t0 --end $t1 2>&1 | tee -a $SUMMARY
    else
      echo "devices=$devices jobs=$jobs: no phases file (the run did not end normally)" | tee -a $SUMMARY
    fi
  done
done
python3 - "$OUT" "$D" "$COMMIT" <<'PY' | tee -a $SUMMARY
import csv, re, statistics, sys
out, d, commit = sys.argv[1:]
text = open(f"{out}/multi_gpu_validate_{d}_{commit}.txt").read()
wall = {(int(n), j): float(w) for n, j, w in re.findall(r"devices=(\d) jobs=(\S+) wall_s=([\d.]+)", text)}
rows = {k: list(csv.DictReader(open(f"{out}/validate_h200_multi_gpu_devices{k[0]}_jobs{k[1]}_{d}_{commit}.csv")))
        for k in wall}
for k, rs in sorted(rows.items()):
    per = {g: sum(r["gpu"] == g for r in rs) for g in sorted({r["gpu"] for r in rs})}
    print(f"devices={k[0]} jobs={k[1]}: {len(rs)} rows, {sum(r['ok'] == 'True' for r in rs)} ok, per gpu {per}")
ms = {k: {r["case_id"]: float(r["measured_ms"]) for r in rs if r["measured_ms"]} for k, rs in rows.items()}
base = (1, "1") if (1, "1") in ms else min(ms)
for k in sorted(ms):
    both = sorted(ms[k].keys() & ms[base].keys())
    if k != base and both:
        diff = [abs(ms[k][c] / ms[base][c] - 1) for c in both]
        print(f"measured_ms, devices={k[0]} jobs={k[1]} vs devices={base[0]} jobs={base[1]} on {len(both)} cases: "
              f"median |diff| {statistics.median(diff):.1%}, max {max(diff):.1%}")
for j in sorted({j for _, j in wall}):
    if (1, j) in wall and (2, j) in wall and len(rows[(1, j)]) == len(rows[(2, j)]):
        print(f"jobs={j}: wall ratio devices 2 / 1: {wall[(2, j)] / wall[(1, j)]:.3f} ({wall[(2, j)]:.1f} s / "
              f"{wall[(1, j)]:.1f} s; target ~0.5)")
for n in (1, 2):
    if (n, "auto") in wall and (n, "1") in wall:
        print(f"devices={n}: --jobs auto {wall[(n, 'auto')]:.1f} s against --jobs 1 {wall[(n, '1')]:.1f} s "
              f"({wall[(n, 'auto')] / wall[(n, '1')]:.3f})")
if (2, "auto") in wall and (1, "1") in wall:
    print(f"two GPUs with --jobs auto against one GPU with --jobs 1: {wall[(2, 'auto')] / wall[(1, '1')]:.3f}")
PY
