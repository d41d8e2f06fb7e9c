"""Do small calls time the same in a campaign's worker processes as in the CLI's own process?

    python benchmarks/worker_timing.py --out DIR [--rounds 3]

Four small GNA layers (1K-4K tokens, 24 heads, d128: the Triton route, host-bound) and one larger one are timed as
``simulate validate`` times them (:func:`sparsesim.kernels.validate.time_case`) in four places, round after round:
this process; a forked worker (:func:`sparsesim.kernels.workers.spread`, which runs torch's CPU operations on one
thread); a forked worker that sets torch's threads back to this process's count first; a spawned worker. Writes
``worker_timing_<date>_<commit>.csv`` (one row per layer, place and round) and prints the median per layer and place.
Why: the 244-case campaign (a954ba2) measured some sub-0.25 ms Triton-route calls 1.5-2.7x slower on two GPUs
(forked workers) than on one (this process).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import statistics
import sys
from pathlib import Path

CONFIGS = [
    {"input_size": [32, 32], "window": [16, 16], "stride": [16, 16]},
    {"input_size": [32, 32], "window": [32, 32], "stride": [8, 8]},
    {"input_size": [64, 64], "window": [16, 16], "stride": [16, 16]},
    {"input_size": [8, 16, 16], "window": [4, 8, 8], "stride": [4, 8, 8]},
    {"input_size": [128, 128], "window": [32, 32]},
]


def measure(task: tuple) -> list[float]:
    """Time each case in this process (``threads``: torch's CPU threads first, when given)."""
    cases, threads = task
    import torch

    from sparsesim.kernels.validate import time_case

    if threads:
        torch.set_num_threads(threads)
    out = []
    for case in cases:
        out.append(time_case(case, 0))
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from sparsesim.kernels import validate
    from sparsesim.kernels.workers import spread

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--commit", default=None)
    args = ap.parse_args(argv)
    commit = args.commit or validate.git_commit()
    cases = validate.make_cases([{**c, "heads": 24, "head_dim": 128} for c in CONFIGS], ["gna"])
    threads = torch.get_num_threads()
    rows = []
    timed: list[tuple[int, dict[str, list[float]]]] = []
    for rnd in range(args.rounds):
        places = {}
        for name, method, reset in (("forked", "fork", 0), ("forked_threads", "fork", threads),
                                    ("spawned", "spawn", 0)):
            (o,) = list(spread(measure, [(cases, reset)], (0,), start_method=method))
            if o.result is None:
                print(f"{name}: {o.error}", file=sys.stderr)
                continue
            places[name] = o.result
        timed.append((rnd, places))
    validate.warm_up()  # this process starts CUDA only now: forks before it could use CUDA
    for rnd in range(args.rounds):
        timed[rnd][1]["here"] = measure((cases, 0))
    for rnd, places in timed:
        for place, times in places.items():
            for case, ms in zip(cases, times, strict=True):
                rows.append({"round": rnd, "place": place, "layer": f"{case.kw['input_size']} w{case.kw['window']} "
                             f"s{case.kw.get('stride', 1)}", "measured_ms": ms, "commit": commit,
                             "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                             "threads_here": threads})
    date = dt.date.today().isoformat()
    path = Path(args.out) / f"worker_timing_{date}_{commit}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    places = list(dict.fromkeys(r["place"] for r in rows))
    print(f"{'layer':>32} " + " ".join(f"{p:>15}" for p in places))
    for layer in dict.fromkeys(r["layer"] for r in rows):
        med = [statistics.median(r["measured_ms"] for r in rows if r["layer"] == layer and r["place"] == p)
               for p in places]
        print(f"{layer:>32} " + " ".join(f"{m:>15.4f}" for m in med))
    print(f"torch threads here: {threads}; pid {os.getpid()}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
