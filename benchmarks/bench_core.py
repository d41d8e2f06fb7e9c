"""Benchmark of the simulator core (not a timed test): prints medians of in-process timings.

    python benchmarks/bench_core.py

Targets: one HunyuanVideo-size box-tiled configuration well under 10 ms, flat tiling of it under
3 s, a 1,000-configuration sweep under 10 s, a whole workload end to end on four GPUs under 1 s, on
a 2-core CPU machine. Every figure includes the cost model (sparse and dense kernels).
"""

from __future__ import annotations

import itertools
import platform
import statistics
import time

from sparsesim.simulator import simulate, simulate_many
from sparsesim.simulator.workloads import simulate_e2e

HUNYUAN = {"input_size": (30, 48, 80), "window": (18, 24, 24), "q_tile": (4, 8, 8), "kv_tile": (2, 8, 8)}


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sweep_configs() -> list[dict]:
    windows = [(w0, w1, w2) for w0 in (6, 12, 18, 30) for w1 in (8, 16, 24, 32, 48) for w2 in (8, 16, 24, 40, 80)]
    strides = [(1, 1, 1), (2, 4, 4), (4, 8, 8), (6, 8, 8), (1, 8, 8)]
    gpus = ["H100", "B200"]
    configs = []
    for (w, s), gpu in itertools.product(itertools.product(windows, strides), gpus):
        if all(si <= wi for si, wi in zip(s, w, strict=True)):
            configs.append({"input_size": (30, 48, 80), "window": w, "stride": s, "gpu": gpu})
    return configs[:1000]


def main() -> None:
    simulate(**HUNYUAN)  # warm up imports and caches
    box = median_seconds(lambda: simulate(**HUNYUAN), 50)
    flat = median_seconds(lambda: simulate(input_size=(30, 48, 80), window=(18, 24, 24), tiling="flat",
                                           q_tile=128, kv_tile=128), 3)
    configs = sweep_configs()
    sweep = median_seconds(lambda: simulate_many(configs), 1)
    gpus = ("A100", "H100", "H200", "B200")
    e2e = median_seconds(lambda: [simulate_e2e(preset="hunyuan-video", gpu=g) for g in gpus], 3)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| case | median | target |")
    print("|---|---|---|")
    print(f"| HunyuanVideo 30x48x80 box (4,8,8)/(2,8,8), one config | {box * 1e3:.2f} ms | < 10 ms |")
    print(f"| HunyuanVideo 30x48x80 flat 128/128, one config | {flat:.3f} s | < 3 s |")
    print(f"| sweep of {len(configs)} configs (30x48x80, 2 GPUs) | {sweep:.2f} s | < 10 s |")
    print(f"| e2e of HunyuanVideo (its 2 patterns) on A100, H100, H200, B200 | {e2e:.2f} s | < 1 s |")


if __name__ == "__main__":
    main()
