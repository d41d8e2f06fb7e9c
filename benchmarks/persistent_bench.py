"""The persistent GNA forward against the launch order on uneven cases (issue 17, build item 2).

    python benchmarks/persistent_bench.py [--out FILE.csv] [--commit SHA] [--cases a,b] [--dry-run]

GPU only (bf16, batch 1, 24 heads, head dim 128), except ``--dry-run`` (the model's side alone, any machine).
Per case, the forward kernel alone on prepared K/V (``kernel``: :meth:`GNALaunch.launch`, so the K/V
permutation pass both share is left out) and the whole call (``call``: ``gna_attention``), each with
``persistent=False`` (one program per work item, launch order) and ``persistent=True`` (one program per
resident slot, each running its static list, the longest first). Printed side by side: the times, the
measured ratio (launch order / persistent) and the model's ratio (its launch-order makespan over the
persistent schedule's, :func:`sparsesim.simulator.makespan.schedule_choice`), whether the default
(``persistent=None``) runs persistent, and whether the two outputs are bit-identical. Forward FLOPs, for
reference: ``4 * B * H * visited pairs * Q tile * KV tile * D`` (the tile work both variants do).

The CSV (``--out``, rewritten after every case) has one row per case and variant, with the GPU, date,
commit, torch and Triton versions. About a minute on an H200 (two compiles per case).
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BATCH, HEADS, HEAD_DIM = 1, 24, 128
COLUMNS = ["gpu", "date", "commit", "torch", "triton", "case", "scope", "variant", "ms", "ratio", "predicted_ratio",
           "default_persistent", "programs", "work_items", "identical", "q_tile", "kv_tile", "note"]


@dataclass(frozen=True)
class Case:
    name: str
    size: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    causal: tuple[bool, ...]
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]

    @property
    def pattern(self) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "dilation": 1, "causal": self.causal}


CASES = [
    Case("causal1d_32k", (32768,), (32768,), (1,), (True,), (128,), (128,)),
    Case("causal2d_128x128", (128, 128), (128, 128), (1, 1), (True, True), (16, 8), (16, 8)),
    Case("hunyuan_w18x24x24_s16x8x8", (30, 48, 80), (18, 24, 24), (16, 8, 8), (False,) * 3, (2, 8, 8), (2, 8, 8)),
    Case("flux_w80x80_s16x16", (256, 256), (80, 80), (16, 16), (False, False), (16, 8), (16, 8)),
    Case("causal3d_16x32x48_w8x16x16", (16, 32, 48), (8, 16, 16), (1, 1, 1), (True, False, False), (2, 8, 8),
         (2, 8, 8)),
]


def model_choice(case: Case, gpu_name: str = "H200") -> Any:
    """The model's schedule choice for a case (no tensors): :func:`sparsesim.kernels.gna.persistent_table`."""
    from sparsesim.hwmodels import load_gpu
    from sparsesim.kernels.gna import choose_kv_layout, persistent_table
    from sparsesim.kernels.gna_plan import plan_gna

    gpu = load_gpu(gpu_name)
    plan = plan_gna(case.size, q_tile=case.q_tile, kv_tile=case.kv_tile, gpu=gpu, **case.pattern)
    layout = choose_kv_layout(plan, BATCH, HEADS)
    choice, table = persistent_table(plan, gpu, BATCH, HEADS, HEADS, HEAD_DIM, "bf16", layout, persistent=True)
    items = 0 if table is None else int(table.size) - int(table[0])
    return choice, items, plan


def dry_run(cases: list[Case]) -> int:
    print(f"{'case':28s} {'items':>7s} {'programs':>8s} {'launch_ms':>9s} {'persist_ms':>10s} {'ratio':>6s} default")
    for case in cases:
        choice, items, _ = model_choice(case)
        print(f"{case.name:28s} {items:7d} {choice.programs:8d} {choice.launch_s * 1e3:9.3f} "
              f"{choice.persistent_s * 1e3:10.3f} {choice.launch_s / choice.persistent_s:6.3f} "
              f"{'persistent' if choice.persistent else 'launch order'}")
    print("times: the model's kernel makespan (no launch latency, no permutation pass), H200, bf16, "
          f"batch {BATCH}, {HEADS} heads, head dim {HEAD_DIM}")
    return 0


class Rows:
    def __init__(self, env: dict[str, str], out: Path | None) -> None:
        self.env, self.out = env, out
        self.rows: list[dict[str, Any]] = []

    def add(self, **row: Any) -> None:
        row = {k: ("x".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in row.items()}
        self.rows.append({**self.env, **row})
        if self.out is not None:
            import csv
            import io

            from sparsesim.simulator.files import write_text

            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=COLUMNS, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
            write_text(buf.getvalue(), self.out)


def run_case(rows: Rows, case: Case) -> None:
    import torch

    from sparsesim.kernels.gna import cached_launch, gna_attention
    from sparsesim.kernels.timing import random_tensor, time_ms

    choice, items, _ = model_choice(case, "H200")
    predicted = choice.launch_s / choice.persistent_s
    n = math.prod(case.size)
    q, k, v = (random_tensor((BATCH, *case.size, HEADS, HEAD_DIM), torch.bfloat16, "cuda", n + i) for i in range(3))
    call = (case.window, case.stride, 1, case.causal, case.q_tile, case.kv_tile, None, None)
    launches = {mode: cached_launch(q, k, v, call, 0, mode) for mode in (False, True)}
    default = cached_launch(q, k, v, call, 0, None)
    device_choice = launches[True].choice  # the model on the device's GPU file
    if device_choice is not None:
        predicted = device_choice.launch_s / device_choice.persistent_s
    outs = {}
    for mode in (False, True):
        out = torch.full_like(q, float("nan"))
        gna_attention(q, k, v, q_tile=case.q_tile, kv_tile=case.kv_tile, out=out, persistent=mode, **case.pattern)
        outs[mode] = out
    identical = bool(torch.equal(outs[False], outs[True]))
    rel = float((outs[True].float() - outs[False].float()).norm() / outs[False].float().norm())
    times: dict[tuple[str, bool], float] = {}
    for mode in (False, True):
        la = launches[mode]
        kv = la.prepare_kv(k, v)
        out = torch.empty_like(q)
        times["kernel", mode] = time_ms(lambda la=la, kv=kv, out=out: la.launch(q, kv, out))
        times["call", mode] = time_ms(lambda mode=mode: gna_attention(q, k, v, q_tile=case.q_tile,
                                                                     kv_tile=case.kv_tile, persistent=mode,
                                                                     **case.pattern))
    for scope in ("kernel", "call"):
        ratio = times[scope, False] / times[scope, True]
        for mode in (False, True):
            rows.add(case=case.name, scope=scope, variant="persistent" if mode else "launch_order",
                     ms=round(times[scope, mode], 5), ratio=round(ratio, 4) if mode else "",
                     predicted_ratio=round(predicted, 4) if mode else "",
                     default_persistent=default.sched is not None, programs=launches[True].programs if mode else "",
                     work_items=items, identical=identical, q_tile=case.q_tile, kv_tile=case.kv_tile,
                     note="" if identical else f"rel diff {rel:.2e}")
        print(f"{case.name:28s} {scope:6s} launch order {times[scope, False]:8.3f} ms  persistent "
              f"{times[scope, True]:8.3f} ms  measured x{ratio:.3f}  predicted x{predicted:.3f}  "
              f"default={'persistent' if default.sched is not None else 'launch order'}  identical={identical}",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="CSV file (rewritten after every case)")
    ap.add_argument("--commit", default=None, help="the commit measured (default: git rev-parse here)")
    ap.add_argument("--cases", default=None, help=f"comma-separated subset of: {', '.join(c.name for c in CASES)}")
    ap.add_argument("--dry-run", action="store_true", help="the model's predictions only (no GPU)")
    args = ap.parse_args(argv)
    cases = CASES
    if args.cases:
        names = args.cases.split(",")
        unknown = [x for x in names if x not in {c.name for c in CASES}]
        if unknown:
            print(f"--cases: unknown {', '.join(unknown)}; allowed: {', '.join(c.name for c in CASES)}",
                  file=sys.stderr)
            return 2
        cases = [c for c in CASES if c.name in names]
    if args.dry_run:
        return dry_run(cases)
    import torch

    if not torch.cuda.is_available():
        print("persistent_bench: no CUDA device; --dry-run shows the model's side", file=sys.stderr)
        return 2
    from sparsesim.kernels.validate import environment
    from sparsesim.simulator.files import check_output

    if args.out is not None:
        check_output(args.out)
    env = environment(args.commit)
    env = {k: env[k] for k in ("gpu", "date", "commit", "torch", "triton")}
    print(f"{env}", flush=True)
    rows = Rows(env, args.out)
    failed = 0
    for case in cases:
        try:
            run_case(rows, case)
        except Exception as exc:  # noqa: BLE001 - one failure must not stop the run
            failed += 1
            traceback.print_exc(limit=3)
            rows.add(case=case.name, note=f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
