"""Does the GPU's clock fall during long timed calls? SM clock and power sampled while dense attention is timed.

    python benchmarks/clock_bench.py --out DIR [--tokens 4096,16384,65536,115200] [--kernels cudnn,dense]

Each (kernel, tokens) call (24 heads, head dim 128, bf16, batch 1) is timed as ``simulate validate`` times it
(:func:`sparsesim.kernels.timing.time_ms`: do_bench median, L2 flushed) twice, sizes ascending then descending,
while ``nvidia-smi`` samples the timed GPU's SM clock, power draw and temperature every 20 ms. Writes
``clock_bench_<gpu>_<date>_<commit>.csv``: per timed call its median ms, the samples inside its window (count, mean
and minimum SM clock in MHz, mean power in W, temperature) and the idle clock before the run; prints the table.
Question it answers: whether the cost model's error that grows with a call's length (cuDNN predicted ~7% slow at
0.1-1 ms and ~5% fast from 60 ms, stop 29) follows the clock.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import subprocess
import sys
import threading
import time
from pathlib import Path

FIELDS = "timestamp,clocks.sm,power.draw,temperature.gpu"


def sampler(index: int, samples: list[tuple[float, float, float, float]], stop: threading.Event) -> threading.Thread:
    """A thread reading ``nvidia-smi`` every 20 ms: ``(wall time, SM MHz, W, C)`` appended to ``samples``."""
    proc = subprocess.Popen(["nvidia-smi", "-i", str(index), f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits",
                             "-lms", "20"], stdout=subprocess.PIPE, text=True)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if stop.is_set():
                break
            parts = [p.strip() for p in line.split(",")]
            try:
                samples.append((time.time(), float(parts[1]), float(parts[2]), float(parts[3])))
            except (IndexError, ValueError):
                continue
        proc.terminate()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def main(argv: list[str] | None = None) -> int:
    import torch

    from sparsesim.kernels import attention
    from sparsesim.kernels.timing import random_tensor, time_ms
    from sparsesim.kernels.validate import _sdpa_call, git_commit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--tokens", default="4096,16384,65536,115200")
    ap.add_argument("--kernels", default="cudnn,dense")
    ap.add_argument("--commit", default=None)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    index = torch.cuda.current_device()
    name = torch.cuda.get_device_name(dev)
    commit = args.commit or git_commit()
    sizes = [int(t) for t in args.tokens.split(",")]
    kernels = [k.strip() for k in args.kernels.split(",")]
    samples: list[tuple[float, float, float, float]] = []
    stop = threading.Event()
    thread = sampler(index, samples, stop)
    time.sleep(1.0)
    idle = [s[1] for s in samples]
    rows = []
    for rnd, order in enumerate((sizes, sizes[::-1])):
        for tokens in order:
            for kernel in kernels:
                shape = (1, tokens, 24, 128)
                q, k, v = (random_tensor(shape, torch.bfloat16, dev, seed=i) for i in range(3))
                if kernel == "cudnn":
                    fn = _sdpa_call("cudnn", q, k, v).timed  # type: ignore[attr-defined]
                else:
                    out = torch.empty_like(q)

                    def fn(out=out, q=q, k=k, v=v):  # noqa: ANN001, ANN202
                        return attention(q, k, v, out=out)
                fn()
                torch.cuda.synchronize()
                t0 = time.time()
                ms = time_ms(fn)
                t1 = time.time()
                inside = [s for s in samples if t0 <= s[0] <= t1]
                clocks = [s[1] for s in inside] or [float("nan")]
                rows.append({"gpu": name, "commit": commit, "round": rnd, "kernel": kernel, "tokens": tokens,
                             "measured_ms": ms, "window_s": t1 - t0, "samples": len(inside),
                             "sm_mhz_mean": sum(clocks) / len(clocks), "sm_mhz_min": min(clocks),
                             "power_w_mean": sum(s[2] for s in inside) / max(len(inside), 1),
                             "temp_c_max": max((s[3] for s in inside), default=float("nan")),
                             "idle_mhz": max(idle) if idle else float("nan")})
                del q, k, v
                time.sleep(0.5)
    stop.set()
    thread.join(2.0)
    date = dt.date.today().isoformat()
    path = Path(args.out) / f"clock_bench_{name.replace(' ', '_')}_{date}_{commit}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{'round':>5} {'kernel':>6} {'tokens':>7} {'ms':>9} {'samples':>7} {'MHz mean':>8} {'MHz min':>7} "
          f"{'W mean':>6} {'C max':>5}")
    for r in rows:
        print(f"{r['round']:>5} {r['kernel']:>6} {r['tokens']:>7} {r['measured_ms']:>9.3f} {r['samples']:>7} "
              f"{r['sm_mhz_mean']:>8.0f} {r['sm_mhz_min']:>7.0f} {r['power_w_mean']:>6.0f} {r['temp_c_max']:>5.0f}")
    print(f"idle SM clock before the run: {rows[0]['idle_mhz']:.0f} MHz; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
