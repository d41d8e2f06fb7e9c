#!/usr/bin/env bash
# Device call (a 2-GPU machine): one validation campaign on one GPU and on two (`simulate validate --devices`),
# each from a cold Triton cache; both CSVs, the wall times and their ratio (target: close to 0.5); after each run,
# where its wall time went per device (SPARSESIM_PHASES: <csv>.phases.json; benchmarks/validate_phases.py).
# usage: bash benchmarks/device/multi_gpu_validate.sh COMMIT [SWEEP [KERNELS]]   (writes under $OUT; about 2-3 min
#   with the default sweep, benchmarks/validation/h200_multi_gpu.toml; about 4-5 min with
#   benchmarks/validation/h200_dense_fidelity_heldout.toml and dense,cudnn)
set -u
COMMIT=${1:?commit}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,driver_version --format=csv,noheader
N=$(python3 -c "import torch; print(torch.cuda.device_count())")
[ "$N" -ge 2 ] || { echo "multi_gpu_validate: $N CUDA device(s) visible; needs 2"; exit 1; }
D=$(date -u +%F)
SWEEP=${2:-benchmarks/validation/h200_multi_gpu.toml}
KERNELS=${3:-gna,dense,cudnn}
T2=${T2:-100}; T1=${T1:-130}  # per-run time limits (seconds), two devices and one
SUMMARY=$OUT/multi_gpu_validate_${D}_${COMMIT}.txt
for devices in 2 1; do  # two first: any first-run warm-up falls on the parallel run
  csv=$OUT/validate_h200_multi_gpu_devices${devices}_${D}_${COMMIT}.csv
  export TRITON_CACHE_DIR=$(mktemp -d)
  t0=$(date +%s.%N)
  SPARSESIM_PHASES=$csv.phases.json timeout $((devices == 2 ? T2 : T1)) python3 -m sparsesim.cli.main validate \
    --sweep $SWEEP --kernels $KERNELS --devices $devices --no-progress --out $csv --commit $COMMIT 2>&1 | tail -6
  rc=${PIPESTATUS[0]}
  t1=$(date +%s.%N)
  echo "devices=$devices wall_s=$(python3 -c "print(round($t1 - $t0, 1))") rc=$rc csv=$(basename $csv)" | tee -a $SUMMARY
  if [ -f $csv.phases.json ]; then
    python3 benchmarks/validate_phases.py $csv.phases.json --start $t0 --end $t1 2>&1 | tee -a $SUMMARY
  else
    echo "devices=$devices: no phases file (the run did not end normally)" | tee -a $SUMMARY
  fi
done
python3 - "$OUT" "$D" "$COMMIT" <<'PY' | tee -a $SUMMARY
import csv, re, statistics, sys
out, d, commit = sys.argv[1:]
text = open(f"{out}/multi_gpu_validate_{d}_{commit}.txt").read()
wall = {int(k): float(v) for k, v in re.findall(r"devices=(\d) wall_s=([\d.]+)", text)}
rows = {n: list(csv.DictReader(open(f"{out}/validate_h200_multi_gpu_devices{n}_{d}_{commit}.csv"))) for n in wall}
for n, rs in sorted(rows.items()):
    per = {g: sum(r["gpu"] == g for r in rs) for g in sorted({r["gpu"] for r in rs})}
    print(f"devices={n}: {len(rs)} rows, {sum(r['ok'] == 'True' for r in rs)} ok, per gpu {per}")
one = {r["case_id"]: float(r["measured_ms"]) for r in rows.get(1, []) if r["measured_ms"]}
two = {r["case_id"]: float(r["measured_ms"]) for r in rows.get(2, []) if r["measured_ms"]}
both = sorted(one.keys() & two.keys())
if both:
    diff = [abs(two[c] / one[c] - 1) for c in both]
    print(f"measured_ms, 2 devices vs 1 on {len(both)} cases: median |diff| {statistics.median(diff):.1%}, "
          f"max {max(diff):.1%}")
if len(wall) == 2 and len(rows[1]) == len(rows[2]):
    print(f"wall ratio devices 2 / 1: {wall[2] / wall[1]:.3f} ({wall[2]:.1f} s / {wall[1]:.1f} s; target ~0.5)")
else:
    print("wall ratio: not comparable (a run did not finish every case)")
PY
