"""Where the wall time of a ``simulate validate`` campaign went, per device, from its phases file.

    SPARSESIM_PHASES=1 simulate validate ... --devices 2 --out m.csv      # writes m.csv.phases.json
    python benchmarks/validate_phases.py m.csv.phases.json [--start T0 --end T1]

One row per device (``here``: a run without ``--devices``, measured in the CLI's own process), seconds in the
order of a worker's time line; they add up to the wall time of ``validate.run`` (``sum`` = ``wall``):

    setup     run() start to this worker's start (the CLI process predicting and ordering the cases; the
              check stage of --jobs; with forked workers also its preload: the workers' imports made once
              before the fork)
    spawn     process start to the worker's first line (spawned: interpreter, re-import of the main module,
              unpickling; forked: the fork)
    import    import torch, triton and the kernels (validate.warm_up)
    cuda      first CUDA context on the worker's device
    prep+     rest of the start (``here``: check of --out, git, environment probe, the check stage)
    compile   first call of every case (Triton compiles and autotuning on a cold cache, one run)
    check     rest of the checks (inputs, reference rows)
    measure   timed calls (inputs again, do_bench)
    task+     rest of the cases' time (environment probe of the first case, unreported work)
    between   ready but on no case (waiting for the next; ``here``: predicting and writing rows)
    idle_end  from this worker's last result to the campaign's last (the tail)
    stop      from the campaign's last result to the end (last row, stopping the workers)

``--start``/``--end`` (wall-clock stamps of the whole command, e.g. ``date +%s.%N``) add what lies outside
``run()``: the process start, the CLI's imports and the sweep before it; the exit after it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from sparsesim.kernels.phases import COLUMNS, load

SHORT = {"setup_s": "setup", "spawn_s": "spawn", "import_s": "import", "cuda_init_s": "cuda",
         "prepare_other_s": "prep+", "compile_s": "compile", "check_s": "check", "measure_s": "measure",
         "task_other_s": "task+", "between_s": "between", "idle_end_s": "idle_end", "stop_s": "stop"}


def table(data: Mapping[str, Any], start: float | None = None, end: float | None = None, top: int = 5) -> str:
    """The breakdown of a phases file as text: the table, a summary per device, the slowest first calls, and
    (``start``/``end``: the command's wall-clock stamps) the time outside ``run()``."""
    b = data["breakdown"]
    heads = ["device", "cases", *(SHORT[c] for c in COLUMNS), "sum", "wall"]
    lines = [" ".join(f"{h:>8}" for h in heads)]
    for r in b["devices"]:
        name = "here" if r["device"] is None else f"cuda:{r['device']}"
        cells = [name, str(r["tasks"]), *(f"{r[c]:.2f}" for c in COLUMNS), f"{r['sum_s']:.2f}", f"{b['wall_s']:.2f}"]
        lines.append(" ".join(f"{c:>8}" for c in cells))
    for r in b["devices"]:
        name = "here" if r["device"] is None else f"cuda:{r['device']}"
        fixed = sum(r[c] for c in ("setup_s", "spawn_s", "import_s", "cuda_init_s", "prepare_other_s"))
        lines.append(f"{name}: start {fixed:.2f} s, on cases {r['busy_s']:.2f} s (compile {r['compile_s']:.2f}, "
                     f"measure {r['measure_s']:.2f}), between {r['between_s']:.2f} s (results waiting "
                     f"for the CLI process {r['lag_s']:.2f} s), tail {r['idle_end_s']:.2f} s; "
                     f"sum {r['sum_s']:.2f} s of wall {b['wall_s']:.2f} s")
    busy = [r["busy_s"] for r in b["devices"]]
    if len(busy) > 1:
        lines.append(f"on cases: {sum(busy):.2f} s in all, {sum(busy) / len(busy):.2f} s per device if even "
                     f"(max {max(busy):.2f}); wall {b['wall_s']:.2f} s")
    firsts = sorted(data.get("tasks", []), key=lambda t: -t["parts"].get("first_call_s", 0.0))[:top]
    if firsts and firsts[0]["parts"].get("first_call_s"):
        lines.append("slowest first calls: " + ", ".join(
            f"{t['label']} {t['parts']['first_call_s']:.2f} s" + ("" if t["device"] is None else
                                                                  f" (cuda:{t['device']})")
            for t in firsts if t["parts"].get("first_call_s")))
    stage = data.get("checks")
    if stage:
        per = stage["breakdown"]["devices"]
        compiles = sum(r["compile_s"] for r in per)
        checks = sum(r["compile_s"] + r["check_s"] for r in per)
        starts = [r["spawn_s"] + r["import_s"] + r["cuda_init_s"] + r["prepare_other_s"] for r in per]
        lines.append(f"check stage (--jobs {stage['jobs']}, workers on cuda {stage['workers_on']}): wall "
                     f"{stage['wall_s']:.2f} s, {stage['passed']} checks passed; first calls {compiles:.2f} s and "
                     f"checks {checks:.2f} s summed over the workers; worker start {min(starts, default=0):.2f}-"
                     f"{max(starts, default=0):.2f} s")
    if start is not None and end is not None:
        lines.append(f"command wall {end - start:.2f} s: before run() {b['start'] - start:.2f} s (process start, "
                     f"CLI imports, sweep), run() {b['wall_s']:.2f} s, after run() {end - b['end']:.2f} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phases", nargs="+", help="phases files (SPARSESIM_PHASES of simulate validate)")
    ap.add_argument("--start", type=float, help="wall-clock stamp of the command's start (one file only)")
    ap.add_argument("--end", type=float, help="wall-clock stamp of the command's end (one file only)")
    args = ap.parse_args(argv)
    if (args.start is not None or args.end is not None) and len(args.phases) != 1:
        ap.error("--start/--end with one phases file")
    for path in args.phases:
        try:
            data = load(path)
        except (OSError, ValueError) as exc:
            print(f"validate_phases: {path}: {exc}", file=sys.stderr)
            return 2
        print(f"== {path} (devices {data.get('devices') or 'here'}, {data.get('cases')} cases)")
        print(table(data, args.start, args.end))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
