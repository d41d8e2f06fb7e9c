"""Statistics online at HunyuanVideo size: the search from a saved statistics file (CPU), and what collecting
the statistics adds to a model's forward pass (GPU).

    python benchmarks/stats_bench.py --out benchmarks/results [--commit SHA]                 # CPU: the search
    python benchmarks/stats_bench.py --device cuda --out benchmarks/results --commit SHA     # GPU: the overhead

CPU mode: the hunyuan-video preset (60 layers x 24 heads, layout 30x48x80 = 115,200 tokens) and its per-head space
on the H200 (5,600 candidates, plus the uniform baselines' patterns). The statistics file is built from a few
synthetic heads (:func:`sparsesim.search.samples.synthetic`, ``--rows`` query rows each) whose sums are computed
for real, then replicated to 60 x 24 heads (said in the output: the search's cost does not depend on the values).
Timed: load + latency table + fronts + plan and tuned baselines (:func:`sparsesim.search.stats.plan_from_stats`).

GPU mode: a DiT-like stack built here at HunyuanVideo size (hidden 3,072 = 24 heads x 128, QK RMSNorm, 3D RoPE,
SDPA, MLP 4x, random weights, bf16, ``--layers`` blocks, batch 1): the forward pass alone against the forward pass
inside :func:`~sparsesim.search.stats.collect_statistics` (``--rows`` 64), medians over ``--repeats``; prints the
overhead ratio. Both modes write ``stats_bench_<mode>.csv`` and ``.json`` under ``--out`` (GPU name, torch
version, commit, date).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics as st
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from sparsesim.search.run import uniform_candidates
from sparsesim.search.samples import synthetic
from sparsesim.search.space import build_space
from sparsesim.search.stats import (
    StatsAccumulator,
    collect_statistics,
    load_statistics,
    plan_from_stats,
    save_statistics,
)
from sparsesim.simulator.files import check_output_dir, write_text
from sparsesim.simulator.workloads import load_workload

WORKLOAD = "hunyuan-video"


def _write(out: Path, mode: str, row: dict[str, Any]) -> None:
    import pandas as pd

    write_text(pd.DataFrame([row]).to_csv(index=False), out / f"stats_bench_{mode}.csv", "--out")
    write_text(json.dumps(row, indent=1) + "\n", out / f"stats_bench_{mode}.json", "--out")


def cpu_mode(args: argparse.Namespace) -> dict[str, Any]:
    w = load_workload(WORKLOAD)
    layers, heads = (args.layers or w.layers), w.heads
    space = build_space(w.layout, gpu=args.gpu, head_dim=w.head_dim, dtype=w.dtype)
    cands = list(dict.fromkeys([*space.all_candidates(), *uniform_candidates(space, w)]))
    src = synthetic(layout=w.layout, layers=1, heads=args.real_heads, head_dim=w.head_dim, rows=args.rows, seed=0)
    acc = StatsAccumulator(w.layout, cands, w.causal, source=f"synthetic {args.real_heads} heads rows={args.rows}")
    t0 = time.perf_counter()
    parts = [src.head(0, h) for h in range(args.real_heads)]
    acc.add(0, np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]), np.stack([p[2] for p in parts]),
            src.rows_of(0))
    collect_s = time.perf_counter() - t0
    stats = acc.statistics().replicate(layers, heads)
    print(f"statistics: {args.real_heads} synthetic heads x {len(cands)} candidates computed in {collect_s:.1f} s "
          f"({args.rows} rows each, CPU), replicated to {layers} x {heads} heads (computing all "
          f"{layers * heads} on this CPU would take about {collect_s / args.real_heads * layers * heads / 60:.0f} "
          "min; the search's cost does not depend on the values)")
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        path = save_statistics(stats, Path(tmp) / "hunyuan.stats.npz")
        size = path.stat().st_size
        t0 = time.perf_counter()
        loaded = load_statistics(path)
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        res = plan_from_stats(loaded, workload=WORKLOAD, gpu=args.gpu, error_budget=args.budget)
        plan_s = time.perf_counter() - t1
    total = load_s + plan_s
    r = res.report
    plan = res.outcomes[0]
    print(f"search from statistics: load {load_s:.2f} s + latency table {r.simulator_s:.2f} s + fronts and plan "
          f"{plan_s - r.simulator_s:.2f} s = {total:.1f} s wall ({layers} x {heads} heads x {len(cands)} candidates, "
          f"file {size / 2**20:.1f} MiB); plan: mean error {plan.mean_error:.4f}, attention "
          f"{plan.attention_speedup:.2f}x, end to end {plan.e2e_predicted_speedup:.3f}x")
    return {"mode": "cpu", "workload": WORKLOAD, "gpu_model": args.gpu, "layers": layers, "heads": heads,
            "candidates": len(cands), "real_heads": args.real_heads, "rows": args.rows, "replicated": True,
            "collect_s": round(collect_s, 3), "file_mib": round(size / 2**20, 2), "load_s": round(load_s, 3),
            "latency_table_s": round(r.simulator_s, 3), "fronts_plan_s": round(plan_s - r.simulator_s, 3),
            "total_s": round(total, 3), "plan_mean_error": plan.mean_error,
            "plan_attention_speedup": plan.attention_speedup, "machine": platform.processor() or platform.machine(),
            "cpus": __import__("os").cpu_count(), "date": date.today().isoformat(), "commit": args.commit}


def _dit(layers: int, layout: tuple[int, ...], heads: int, d: int, device: str) -> Any:
    """A DiT-like stack: pre-norm blocks of QK-RMSNorm attention with 3D RoPE, and a GELU MLP."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    hidden = heads * d
    # 3D RoPE: the head dim split over the axes, each part rotated by its axis coordinate
    split = [d // 4 * 2 if a < 2 else d - 2 * (d // 4 * 2) for a in range(3)]
    grids = torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float32) for n in layout], indexing="ij")
    angles = []
    for g, part in zip(grids, split, strict=True):
        freq = 1.0 / (10000 ** (torch.arange(0, part, 2, device=device, dtype=torch.float32) / part))
        angles.append(g.reshape(-1, 1) * freq)
    ang = torch.cat(angles, dim=1)  # (tokens, d / 2)
    cos, sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)

    def rope(x: Any) -> Any:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
            self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
            self.qn, self.kn = nn.RMSNorm(d), nn.RMSNorm(d)
            self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(approximate="tanh"),
                                     nn.Linear(4 * hidden, hidden))

        def forward(self, x: Any) -> Any:
            b, n, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
            q, k = rope(self.qn(q)), rope(self.kn(k))
            a = F.scaled_dot_product_attention(q, k, v)
            x = x + self.proj(a.transpose(1, 2).reshape(b, n, hidden))
            return x + self.mlp(self.norm2(x))

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([Block() for _ in range(layers)])

        def forward(self, x: Any) -> Any:
            for blk in self.blocks:
                x = blk(x)
            return x

    return Stack().to(device=device, dtype=torch.bfloat16).eval()


def gpu_mode(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("stats_bench: --device cuda needs a CUDA GPU")
    w = load_workload(WORKLOAD)
    layout, heads, d = tuple(w.layout), w.heads, w.head_dim
    tokens = math.prod(layout)
    torch.manual_seed(0)
    model = _dit(args.layers or 4, layout, heads, d, "cuda")
    x = torch.randn(1, tokens, heads * d, device="cuda", dtype=torch.bfloat16)
    space = build_space(layout, gpu=args.gpu, head_dim=d, dtype=w.dtype)
    cands = list(dict.fromkeys([*space.all_candidates(), *uniform_candidates(space, w)]))

    def timed(fn: Any) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    with torch.no_grad():
        model(x)  # warm-up (kernels, allocator)
        plain = [timed(lambda: model(x)) for _ in range(args.repeats)]
        with collect_statistics(model, layout=layout, space=cands, rows=args.rows, source="stats_bench DiT") as col:
            col.step = -1
            model(x)  # warm-up: mask tables on the GPU
            times = []
            for t in range(args.repeats):
                col.step = t
                times.append(timed(lambda: model(x)))
        stats = col.statistics()
    fwd, coll = st.median(plain), st.median(times)
    ratio = coll / fwd
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"forward {fwd * 1e3:.1f} ms, with statistics ({len(cands)} candidates, {args.rows} rows, "
          f"{stats.num_layers} layers x {stats.heads} heads) {coll * 1e3:.1f} ms: overhead {100 * (ratio - 1):.1f}% "
          f"(ratio {ratio:.3f}); peak memory {peak:.1f} GiB; {torch.cuda.get_device_name()}")
    return {"mode": "gpu", "workload": WORKLOAD, "layers": args.layers or 4, "tokens": tokens, "heads": heads,
            "head_dim": d, "candidates": len(cands), "rows": args.rows, "repeats": args.repeats,
            "forward_ms": round(fwd * 1e3, 3), "forward_with_stats_ms": round(coll * 1e3, 3),
            "overhead_ratio": round(ratio, 4), "forward_ms_all": [round(t * 1e3, 3) for t in plain],
            "with_stats_ms_all": [round(t * 1e3, 3) for t in times], "peak_gib": round(peak, 2),
            "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": date.today().isoformat(), "commit": args.commit}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--gpu", default="H200", help="the GPU model of the search space (default H200)")
    ap.add_argument("--layers", type=int, default=None, help="CPU: layers searched (default 60); GPU: blocks (4)")
    ap.add_argument("--rows", type=int, default=None, help="query rows per head (CPU default 8, GPU default 64)")
    ap.add_argument("--real-heads", type=int, default=3, help="CPU: synthetic heads computed for real")
    ap.add_argument("--repeats", type=int, default=5, help="GPU: timed forward passes of each kind")
    ap.add_argument("--budget", type=float, default=0.05, help="CPU: the plan's error budget")
    ap.add_argument("--commit", default="uncommitted")
    ap.add_argument("--out", required=True, help="folder for stats_bench_<mode>.csv/.json (must exist)")
    args = ap.parse_args()
    out = Path(args.out)
    check_output_dir(args.out, "--out")
    out.mkdir(exist_ok=True)
    if args.rows is None:
        args.rows = 8 if args.device == "cpu" else 64
    row = cpu_mode(args) if args.device == "cpu" else gpu_mode(args)
    _write(out, row["mode"], row)
    print(f"wrote {out / ('stats_bench_' + row['mode'] + '.csv')}", file=sys.stderr)


if __name__ == "__main__":
    main()
