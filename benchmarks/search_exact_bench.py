"""Exhaustive per-head search against Optuna's TPE path on FLUX-4K synthetic samples (one layer, 24 heads,
the real per-head space): time of each, and how much of the exact front's hypervolume TPE's front reaches.

    python benchmarks/search_exact_bench.py --out benchmarks/results/search_exact_bench_<date>.csv [--trials 8]

Hypervolume per head: the area of (ms, error) dominated by a front, up to the reference point (the slowest
candidate's ms, the largest candidate error), both axes scaled to [0, 1] by that point; the ratio is TPE's
over the exact front's (1.0: TPE found the whole front). "fastest within 0.05": the ms of the fastest point
of error <= 0.05 on TPE's front over the exact one's, per head. Writes one CSV row per head plus a summary
row (machine, CPU count, date, commit) and prints the summary.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date

import numpy as np
import pandas as pd

from sparsesim.search.exact import front_indices, run_exhaustive
from sparsesim.search.latency import LatencyModel, LayerShape
from sparsesim.search.samples import synthetic
from sparsesim.search.space import build_space
from sparsesim.search.study import SearchSettings, open_storage, pareto, points, run_search
from sparsesim.simulator.files import check_output, write_text
from sparsesim.simulator.workloads import load_workload


def hypervolume(front: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by the points (minimize both) up to ``ref``, each axis scaled by ``ref``."""
    pts, best = [], np.inf
    for m, e in sorted((m / ref[0], e / ref[1]) for m, e in front if m <= ref[0] and e <= ref[1]):
        if e < best:  # the non-dominated staircase, by ascending ms
            pts.append((m, e))
            best = e
    ends = [m for m, _ in pts[1:]] + [1.0]
    return float(sum((end - m) * (1.0 - e) for (m, e), end in zip(pts, ends, strict=True)))


def fastest_within(front: list[tuple[float, float]], budget: float) -> float:
    return min((m for m, e in front if e <= budget), default=float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="H100")
    ap.add_argument("--trials", type=int, default=8, help="TPE trials per head")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--commit", default=None, help="commit to record (default: uncommitted)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    check_output(args.out, "--out")
    w = load_workload("flux-4k")
    space = build_space(w.layout, gpu=args.gpu, head_dim=w.head_dim, dtype=w.dtype)
    shape = LayerShape(layout=w.layout, heads=w.heads, heads_kv=w.heads_kv, head_dim=w.head_dim, batch=w.batch,
                       dtype=w.dtype, causal=w.causal)
    src = synthetic(layout=w.layout, layers=1, heads=w.heads, head_dim=w.head_dim, rows=args.rows, seed=0)

    def model() -> LatencyModel:  # a fresh one per run: no latency memoized across the two
        return LatencyModel(shape=shape, gpu=args.gpu, q_tile=space.q_tile, kv_tile=space.kv_tile)

    t0 = time.perf_counter()
    exact = run_exhaustive(src, [0], space, model())
    exact_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/tpe.db"
        settings = SearchSettings(study="bench", storage=url, trials=args.trials)
        t0 = time.perf_counter()
        storage = open_storage(url)
        rep = run_search(src, [0], space, model(), settings, storage=storage)
        tpe_s = time.perf_counter() - t0
        tpe = [[(p.ms, p.error) for p in pareto(points(storage, "bench", 0, h))] for h in range(w.heads)]
    rows = []
    for h in range(w.heads):
        ref = (float(exact.ms.max()), float(np.nanmax(exact.error[0, h])) or 1.0)
        ex = [(float(exact.ms[i]), float(exact.error[0, h, i])) for i in front_indices(exact.ms, exact.error[0, h])]
        hv_exact, hv_tpe = hypervolume(ex, ref), hypervolume(tpe[h], ref)
        rows.append({"what": f"head {h} ({src.kind(0, h)})", "candidates": len(exact.candidates),
                     "exact_front_points": len(ex), "tpe_front_points": len(tpe[h]),
                     "hv_ratio": hv_tpe / hv_exact if hv_exact > 0 else float("nan"),
                     "fastest_within_budget_ratio": fastest_within(tpe[h], args.budget) /
                     fastest_within(ex, args.budget)})
    df = pd.DataFrame(rows)
    summary = {"what": f"flux-4k, 1 layer x {w.heads} heads, {args.rows} rows, {args.gpu}: exhaustive vs TPE "
                       f"{args.trials} trials/head", "candidates": len(exact.candidates),
               "exact_front_points": float(df.exact_front_points.mean()), "tpe_front_points":
               float(df.tpe_front_points.mean()), "hv_ratio": float(df.hv_ratio.mean()),
               "fastest_within_budget_ratio": float(df.fastest_within_budget_ratio.median()),
               "exact_s": exact_s, "exact_simulator_s": exact.report.simulator_s,
               "exact_quality_s": exact.report.quality_s, "tpe_s": tpe_s, "tpe_trials": rep.ran,
               "tpe_simulator_s": rep.simulator_s, "tpe_quality_s": rep.quality_s, "tpe_optuna_s": rep.other_s}
    df = pd.concat([pd.DataFrame([summary]), df], ignore_index=True)
    commit = args.commit or "uncommitted"  # a dirty work tree; pass --commit HASH for a committed one
    df["machine"], df["cpus"], df["date"], df["commit"] = platform.node(), os.cpu_count(), str(date.today()), commit
    write_text(df.to_csv(index=False), args.out, "--out")
    for key, value in summary.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
