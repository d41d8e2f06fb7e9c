"""Are small calls timed slow when the GPU starts from idle? do_bench with short and long warm-ups, after idling.

    python benchmarks/warmup_bench.py --out DIR [--rounds 8] [--idle 1.0] [--timers validate,one_run]

Small layers (24 heads, d128: cuDNN and our dense kernel at 1,024 tokens, our GNA 64x64 w16 s16) are timed round
after round, each round after ``--idle`` seconds with the GPU idle, by each timer of ``--timers``: ``validate`` as
``simulate validate`` times them (:func:`sparsesim.kernels.timing.time_ms`; since a11c078 the median of three
do_bench runs under 0.5 ms), ``warmup_300ms`` (one run, 300 ms warm-up), ``one_run`` (one run, validate's
warm-up); ``nvidia-smi`` samples the SM clock every 20 ms (benchmarks/clock_bench.py). Writes
``warmup_bench_<date>_<commit>.csv`` and prints per layer and timer the median, min and max over the rounds and
the mean clock in the first 50 ms of the timing. Why: the same small configurations measured 1.5-2.7x apart
between runs (worker_timing.py, 375405a; the 244-case campaign, a954ba2).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import statistics
import sys
import threading
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import torch
    import triton
    from clock_bench import sampler

    from sparsesim.kernels import validate
    from sparsesim.kernels.timing import time_ms

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--idle", type=float, default=1.0)
    ap.add_argument("--commit", default=None)
    ap.add_argument("--timers", default="validate,warmup_300ms",
                    help="validate (time_ms: since a11c078 the median of three runs under 0.5 ms), warmup_300ms, "
                         "one_run (one do_bench run with validate's warm-up)")
    args = ap.parse_args(argv)
    commit = args.commit or validate.git_commit()
    layers = validate.make_cases([{"input_size": [1024], "window": [1024], "heads": 24, "head_dim": 128}],
                                 ["cudnn", "dense"])
    layers += validate.make_cases([{"input_size": [64, 64], "window": [16, 16], "stride": [16, 16], "heads": 24,
                                    "head_dim": 128}], ["gna"])
    calls = []
    for case in layers:
        call, q, *_ = validate.build_call(case, seed=0)
        out = torch.empty_like(q)
        fn = getattr(call, "timed", None)
        run = (lambda fn=fn, out=out: fn(out)) if fn is not None else (lambda call=call, out=out: call(out))
        run()
        calls.append((case, run))
    torch.cuda.synchronize()
    samples: list[tuple[float, float, float, float]] = []
    stop = threading.Event()
    thread = sampler(torch.cuda.current_device(), samples, stop)
    rows = []

    def long_warmup(run):  # noqa: ANN001, ANN202
        return float(triton.testing.do_bench(run, warmup=300, rep=100, return_mode="median"))

    def one_run(run):  # noqa: ANN001, ANN202
        return float(triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median"))

    timers = {"validate": time_ms, "warmup_300ms": long_warmup, "one_run": one_run}
    for rnd in range(args.rounds):
        for case, run in calls:
            for name in args.timers.split(","):
                timer = timers[name]
                time.sleep(args.idle)
                t0 = time.time()
                ms = timer(run)
                t1 = time.time()
                first = [s[1] for s in samples if t0 <= s[0] <= t0 + 0.05]
                whole = [s[1] for s in samples if t0 <= s[0] <= t1]
                rows.append({"round": rnd, "kernel": case.kernel, "tokens": case.kw["input_size"], "timer": name,
                             "measured_ms": ms, "window_s": t1 - t0,
                             "mhz_first_50ms": sum(first) / len(first) if first else float("nan"),
                             "mhz_window": sum(whole) / len(whole) if whole else float("nan"),
                             "gpu": torch.cuda.get_device_name(), "commit": commit})
    stop.set()
    thread.join(2.0)
    path = Path(args.out) / f"warmup_bench_{dt.date.today().isoformat()}_{commit}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{'kernel':>6} {'tokens':>10} {'timer':>13} {'median':>8} {'min':>8} {'max':>8} {'MHz 0-50ms':>10} "
          f"{'MHz':>6}")
    for key in dict.fromkeys((r["kernel"], str(r["tokens"]), r["timer"]) for r in rows):
        sel = [r for r in rows if (r["kernel"], str(r["tokens"]), r["timer"]) == key]
        ms = [r["measured_ms"] for r in sel]
        f50 = [r["mhz_first_50ms"] for r in sel if r["mhz_first_50ms"] == r["mhz_first_50ms"]]
        fw = [r["mhz_window"] for r in sel if r["mhz_window"] == r["mhz_window"]]
        c50 = statistics.mean(f50) if f50 else float("nan")
        cw = statistics.mean(fw) if fw else float("nan")
        print(f"{key[0]:>6} {key[1]:>10} {key[2]:>13} {statistics.median(ms):>8.4f} {min(ms):>8.4f} {max(ms):>8.4f} "
              f"{c50:>10.0f} {cw:>6.0f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
