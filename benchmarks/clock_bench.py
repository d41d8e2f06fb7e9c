"""Does the GPU's clock fall during long timed calls? SM clock and power sampled while dense attention is timed.

    python benchmarks/clock_bench.py --out DIR [--tokens 4096,16384,65536,115200] [--kernels cudnn,dense]

Each (kernel, tokens) call (24 heads, head dim 128, bf16, batch 1) is timed as ``simulate validate`` times it
(:func:`sparsesim.kernels.timing.time_ms`: do_bench median, L2 flushed) twice, sizes ascending then descending,
while ``nvidia-smi`` samples the timed GPU's SM clock, power draw and temperature every 20 ms. Writes
``clock_bench_<gpu>_<date>_<commit>.csv``: per timed call its median ms, the samples inside its window (count, mean
and minimum SM clock in MHz, mean power in W, temperature) and the idle clock before the run; prints the table.
Question it answers: whether the cost model's error that grows with a call's length (cuDNN predicted ~7% slow at
0.1-1 ms and ~5% fast from 60 ms, stop 29) follows the clock.

``--sustain SECONDS`` also times whole layers two ways, each case with its own fresh inputs: as ``simulate
validate`` does (do_bench), and under sustained load (the call back to back for SECONDS, then each of the next
calls timed by CUDA events with no gap and no L2 flush, the median), with the clock sampled in both windows; the
layers (``--layers``): ``name:size:window:stride[:q_tile:kv_tile]`` GNA configurations, 24 heads, head dim 128,
our kernel (without tiles: as it picks them) and dense cuDNN on the same tokens. Writes
``clock_sustain_<gpu>_<date>_<commit>.csv`` and prints each layer's speedup over cuDNN both ways.
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


def _window(samples: list[tuple[float, float, float, float]], t0: float, t1: float) -> float:
    clocks = [s[1] for s in samples if t0 <= s[0] <= t1]
    return sum(clocks) / len(clocks) if clocks else float("nan")


def sustain_layers(spec: str, seconds: float, samples: list[tuple[float, float, float, float]], gpu: str,
                   commit: str) -> list[dict[str, object]]:
    """Each layer of ``spec`` (ours and cuDNN) timed by do_bench and under ``seconds`` of sustained load."""
    import statistics

    import torch

    from sparsesim.kernels import validate
    from sparsesim.kernels.timing import time_ms

    def shape(text: str) -> list[int]:
        return [int(x) for x in text.split("x")]

    rows: list[dict[str, object]] = []
    for item in spec.split(","):
        layer, size, window, stride, *tiles = item.split(":")
        cfg = {"input_size": shape(size), "window": shape(window), "stride": shape(stride), "heads": 24,
               "head_dim": 128}
        if tiles:
            cfg["q_tile"], cfg["kv_tile"] = shape(tiles[0]), shape(tiles[1])
        for case in validate.make_cases([cfg], ["gna", "cudnn"]):
            call, q, *_ = validate.build_call(case, seed=0)
            out = torch.empty_like(q)
            fn = getattr(call, "timed", None)
            run = (lambda fn=fn, out=out: fn(out)) if fn is not None else (lambda call=call, out=out: call(out))
            run()
            torch.cuda.synchronize()
            t0 = time.time()
            bench = time_ms(run)
            t1 = time.time()
            end = time.time() + seconds
            while time.time() < end:
                run()
                torch.cuda.synchronize()
            n = max(10, min(200, int(seconds * 1e3 / max(bench, 1e-3))))
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
            t2 = time.time()
            for a, b in zip(starts, ends, strict=True):
                a.record()
                run()
                b.record()
            torch.cuda.synchronize()
            t3 = time.time()
            times = [a.elapsed_time(b) for a, b in zip(starts, ends, strict=True)]
            rows.append({"gpu": gpu, "commit": commit, "layer": layer, "kernel": case.kernel,
                         "tokens": case.kw["input_size"], "do_bench_ms": bench,
                         "do_bench_mhz": _window(samples, t0, t1), "sustained_s": seconds, "calls": n,
                         "sustained_ms": statistics.median(times), "sustained_mhz": _window(samples, t2, t3)})
            del call, q, out
            torch.cuda.empty_cache()
    return rows


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
    ap.add_argument("--sustain", type=float, default=0.0, help="seconds of back-to-back calls before the sustained "
                    "timing (0: no sustained timing)")
    ap.add_argument("--layers", default="hunyuan:30x48x80:18x24x24:16x8x8:2x8x8:2x8x8,"
                    "flux:256x256:80x80:16x16:16x8:16x8")
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
    sustained = sustain_layers(args.layers, args.sustain, samples, name, commit) if args.sustain > 0 else []
    stop.set()
    thread.join(2.0)
    date = dt.date.today().isoformat()
    if sustained:
        spath = Path(args.out) / f"clock_sustain_{name.replace(' ', '_')}_{date}_{commit}.csv"
        with open(spath, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(sustained[0]))
            w.writeheader()
            w.writerows(sustained)
        print(f"{'layer':>8} {'kernel':>6} {'do_bench ms':>11} {'MHz':>5} {'sustained ms':>12} {'MHz':>5}")
        for r in sustained:
            print(f"{r['layer']:>8} {r['kernel']:>6} {r['do_bench_ms']:>11.3f} {r['do_bench_mhz']:>5.0f} "
                  f"{r['sustained_ms']:>12.3f} {r['sustained_mhz']:>5.0f}")
        by = {(r["layer"], r["kernel"]): r for r in sustained}
        for layer in dict.fromkeys(r["layer"] for r in sustained):
            g, c = by.get((layer, "gna")), by.get((layer, "cudnn"))
            if g and c:
                print(f"{layer}: over cuDNN {c['do_bench_ms'] / g['do_bench_ms']:.2f}x as do_bench times it, "
                      f"{c['sustained_ms'] / g['sustained_ms']:.2f}x under sustained load")
        print(f"wrote {spath}")
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
