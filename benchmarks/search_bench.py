"""How fast the search is on this machine: one trial's simulator evaluation, a HunyuanVideo-size synthetic
search (60 layers x 24 heads), and MiniLM capture + search; where the time goes.

    python benchmarks/search_bench.py --out benchmarks/results/search_bench_<date>.csv [--trials 8] [--n-jobs 2]

Writes one CSV row per measurement (machine, CPU count, date, commit beside it) and prints them.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from sparsesim.kernels.validate import git_commit
from sparsesim.search.latency import LatencyModel, LayerShape
from sparsesim.search.space import build_space
from sparsesim.simulator.workloads import load_workload

PARTS = re.compile(r"(\d+) heads, (\d+) trials in ([\d.]+) s \(simulator ([\d.]+) s, quality ([\d.]+) s, "
                   r"Optuna storage and sampler ([\d.]+) s\)")


def simulator_trial_ms(gpu: str = "H100", n: int = 40) -> dict[str, float]:
    """Median ms of one candidate's simulated latency on the HunyuanVideo layout: fresh, and memoized."""
    w = load_workload("hunyuan-video")
    space = build_space(w.layout, gpu=gpu, head_dim=w.head_dim)
    lat = LatencyModel(shape=LayerShape(layout=w.layout, heads=w.heads, heads_kv=w.heads_kv, head_dim=w.head_dim),
                       gpu=gpu, q_tile=space.q_tile, kv_tile=space.kv_tile)
    cands = list(space.all_candidates())
    random.Random(0).shuffle(cands)
    fresh, hit = [], []
    for c in cands[:n]:
        t0 = time.perf_counter()
        lat.head_ms(c)
        fresh.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        lat.head_ms(c)
        hit.append((time.perf_counter() - t0) * 1e3)
    return {"fresh_ms": statistics.median(fresh), "fresh_max_ms": max(fresh), "memo_ms": statistics.median(hit)}


def timed_cli(args: list[str], cwd: str) -> dict[str, float]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "sparsesim.cli.main", *args], capture_output=True, text=True,
                         cwd=cwd)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(res.stderr)
    m = PARTS.search(res.stderr)
    assert m, res.stderr
    heads, trials, secs, sim, qual, other = m.groups()
    return {"wall_s": wall, "heads": int(heads), "trials": int(trials), "search_s": float(secs),
            "simulator_s": float(sim), "quality_s": float(qual), "optuna_s": float(other)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--trials", type=int, default=8, help="trials per head of the HunyuanVideo search")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--skip-hunyuan", action="store_true")
    args = ap.parse_args(argv)
    env = {"machine": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
           "commit": git_commit()}
    rows = [{"what": "simulator, one trial (HunyuanVideo layout, H100)", **simulator_trial_ms(), **env}]
    with tempfile.TemporaryDirectory() as tmp:
        rows.append({"what": "MiniLM capture + search (72 heads, 16 trials each)",
                     **timed_cli(["search", "--minilm", "--sampler", "tpe", "--trials", "16", "--storage", f"sqlite:///{tmp}/m.db",
                                  "--out", f"{tmp}/m.json"], tmp), **env})
        if not args.skip_hunyuan:
            rows.append({"what": f"HunyuanVideo synthetic search (60 x 24 heads, {args.trials} trials each, "
                                 f"{args.n_jobs} workers)",
                         **timed_cli(["search", "--preset", "hunyuan-video", "--synthetic", "--sampler", "tpe",
                                      "--gpu", "H100",
                                      "--trials", str(args.trials), "--n-jobs", str(args.n_jobs), "--rows", "16",
                                      "--storage", f"sqlite:///{tmp}/h.db", "--out", f"{tmp}/h.json"], tmp),
                         **env})
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    print(df.drop(columns=["machine", "date", "commit"]).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
