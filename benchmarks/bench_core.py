"""Benchmark of the simulator core (not a timed test): time and peak memory per case, in fresh processes.

    python benchmarks/bench_core.py [--before DIR] [--csv FILE]

Each case runs in its own Python process (so imports, caches and memory start clean): the median of
a few timed runs after one warm-up, then one run under ``tracemalloc`` for the peak of Python and NumPy
allocations. ``--before DIR`` runs the same cases against another copy of the package (``DIR`` holds a
``sparsesim/`` folder of the old code, e.g. symlinks into a ``git worktree`` of an older commit), with
a 6 GiB address-space limit and a 120 s timeout, and prints both side by side.

Targets, on this project's 2-core CPU machine: one HunyuanVideo-size box-tiled configuration well
under 10 ms, a 1,000-configuration sweep under 10 s, a 10M-token 1D layout well under a second with
memory that does not grow with Q tiles x KV tiles, flat tiling of 115,200 tokens under 1 s.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
HUNYUAN = {"input_size": (30, 48, 80), "window": (18, 24, 24), "q_tile": (4, 8, 8), "kv_tile": (2, 8, 8)}


def sweep_configs() -> list[dict]:
    windows = [(w0, w1, w2) for w0 in (6, 12, 18, 30) for w1 in (8, 16, 24, 32, 48) for w2 in (8, 16, 24, 40, 80)]
    strides = [(1, 1, 1), (2, 4, 4), (4, 8, 8), (6, 8, 8), (1, 8, 8)]
    gpus = ["H100", "B200"]
    configs = []
    for (w, s), gpu in itertools.product(itertools.product(windows, strides), gpus):
        if all(si <= wi for si, wi in zip(s, w, strict=True)):
            configs.append({"input_size": (30, 48, 80), "window": w, "stride": s, "gpu": gpu})
    return configs[:1000]


#: name: (what it runs, repeats, target)
CASES = {
    "hunyuan_box_one_config": ("HunyuanVideo 30x48x80 box (4,8,8)/(2,8,8), one config", 30, "< 10 ms"),
    "sweep_1000_configs": ("sweep of 1000 configs (30x48x80, 2 GPUs)", 1, "< 10 s"),
    "1d_10M_w4096": ("1D 10M tokens, window 4096", 3, "well under 1 s"),
    "1d_10M_w4096_s4096": ("1D 10M tokens, window 4096, stride 4096", 3, "well under 1 s"),
    "1d_10M_w4096_causal": ("1D 10M tokens, window 4096, causal", 3, "well under 1 s"),
    "1d_100M_w4096": ("1D 100M tokens, window 4096 (memory grows with Q tiles only)", 3, "-"),
    "flat_115200_q128": ("HunyuanVideo 30x48x80 flat tiles 128/128", 3, "< 1 s"),
    "e2e_hunyuan_4_gpus": ("e2e of HunyuanVideo (2 patterns) on A100, H100, H200, B200", 3, "< 1 s"),
}


def run_case(name: str) -> None:
    from sparsesim.simulator import simulate, simulate_many
    from sparsesim.simulator.workloads import simulate_e2e

    jobs = {
        "hunyuan_box_one_config": lambda: simulate(**HUNYUAN),
        "sweep_1000_configs": lambda: simulate_many(sweep_configs()),
        "1d_10M_w4096": lambda: simulate(input_size=10_000_000, window=4096),
        "1d_10M_w4096_s4096": lambda: simulate(input_size=10_000_000, window=4096, stride=4096),
        "1d_10M_w4096_causal": lambda: simulate(input_size=10_000_000, window=4096, causal=True),
        "1d_100M_w4096": lambda: simulate(input_size=100_000_000, window=4096),
        "flat_115200_q128": lambda: simulate(input_size=(30, 48, 80), window=(18, 24, 24), tiling="flat",
                                             q_tile=128, kv_tile=128),
        "e2e_hunyuan_4_gpus": lambda: [simulate_e2e(preset="hunyuan-video", gpu=g) for g in
                                       ("A100", "H100", "H200", "B200")],
    }
    fn = jobs[name]
    simulate(input_size=64, window=8)  # imports and file caches
    repeat = CASES[name][1]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"case": name, "median_s": statistics.median(times), "peak_MiB": peak / 2**20}))


def _child(name: str, pythonpath: str | None, limit_bytes: int | None, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    pre = None
    if limit_bytes:
        def pre() -> None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    try:
        proc = subprocess.run([sys.executable, str(HERE), "--case", name], env=env, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=pre)
    except subprocess.TimeoutExpired:
        return {"case": name, "error": f"did not finish in {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        found = re.search(r"Unable to allocate ([\d.]+ \w+) for an array with shape \(([\d, ]+)\)", last)
        if found:
            last = f"MemoryError: one {found.group(1)} array of shape ({found.group(2)})"
        return {"case": name, "error": last[:120]}
    return json.loads(lines[-1])


def _fmt(r: dict[str, Any]) -> tuple[str, str]:
    if "error" in r:
        return r["error"], "-"
    t = r["median_s"]
    return (f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s"), f"{r['peak_MiB']:.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_core.py", description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--before", type=Path, help="folder holding an older sparsesim/ to compare with")
    parser.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    args = parser.parse_args(argv)
    if args.case:
        run_case(args.case)
        return 0
    rows = []
    for name, (what, _, target) in CASES.items():
        after = _child(name, None, None, 300)
        before = _child(name, str(args.before), 6 << 30, 120) if args.before else None
        rows.append((name, what, target, before, after))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    before_cols = "before: time | before: peak memory | " if args.before else ""
    head = "| case | " + before_cols + "time | peak memory | target |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for _, what, target, before, after in rows:
        cells = ([*_fmt(before)] if before else []) + [*_fmt(after)]
        print(f"| {what} | " + " | ".join(cells) + f" | {target} |")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["case", "code", "median_s", "peak_MiB", "error"])
            for name, _, _, before, after in rows:
                for code, r in (("before", before), ("after", after)):
                    if r is not None:
                        w.writerow([name, code, r.get("median_s", ""), r.get("peak_MiB", ""), r.get("error", "")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
