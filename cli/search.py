"""``simulate search`` and ``simulate plan show``: the CLI face of :mod:`sparsesim.search` (optuna imported
only when they run). Every flag and the output path are checked, and the storage opened, before the search
runs; the plan's text is written here through :mod:`sparsesim.simulator.files`."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

from sparsesim.cli.output import choose_columns, emit, render
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.files import check_output, check_output_dir, write_text

SEARCH_COLUMNS = ["name", "mean_error", "max_error", "attention_speedup", "e2e_predicted_speedup", "attention_ms",
                  "dense_attention_ms"]
PLAN_COLUMNS = ["layer", "heads", "pattern", "dense", "predicted_ms", "dense_ms", "mean_error"]
#: The environment variable a storage URL can come from (keeps a password out of shell history and ps).
STORAGE_ENV = "SPARSESIM_STORAGE"
DEFAULT_STORAGE = "sqlite:///sparsesim_search.db"
#: Optuna trials per head when --trials is not given (--sampler tpe).
DEFAULT_TRIALS = 24
#: Flags that only the TPE sampler reads (a note names those given with the exhaustive one).
TPE_ONLY = ("trials", "storage", "study", "n_jobs")
#: Integer flags: (lowest, highest) allowed.
INT_BOUNDS = {"trials": (1, 100_000), "n_jobs": (1, 512), "rows": (1, 65_536), "synthetic_layers": (1, 10_000),
              "seed": (0, 2**32 - 1)}


def check_search_args(args: argparse.Namespace) -> str:
    """Every flag of ``simulate search`` checked before any work; returns the storage URL to use
    (``--storage``, else ``$SPARSESIM_STORAGE``, else the default SQLite file)."""
    for name, (lo, hi) in INT_BOUNDS.items():
        value = getattr(args, name)
        if value is not None and not lo <= value <= hi:
            raise ConfigError(f"--{name.replace('_', '-')} {value}; allowed: an integer from {lo} to {hi}")
    for name in ("error_budget", "max_error", "target_speedup"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--{name.replace('_', '-')} {value}; allowed: a finite number > 0")
    if args.error_budget is not None and args.target_speedup is not None:
        raise ConfigError("--error-budget and --target-speedup: give one of them")
    if args.minilm and (args.preset or args.workload):
        from sparsesim.simulator.workloads import load_workload

        named = args.preset or args.workload
        if load_workload(named).name != "minilm-l6":
            raise ConfigError(f"--minilm searches the minilm-l6 workload, not {named!r}: drop --minilm or "
                              f"{'--preset' if args.preset else '--workload'}")
    if args.columns is not None:
        unknown = [c.strip() for c in args.columns.split(",") if c.strip() and c.strip() not in SEARCH_COLUMNS]
        if unknown or not args.columns.strip(",").strip():
            raise ConfigError(f"--columns {args.columns!r}: unknown column(s) {unknown}; allowed: "
                              f"{', '.join(SEARCH_COLUMNS)}")
    check_output(args.out, "--out")
    if args.baselines_out is not None:
        check_output_dir(args.baselines_out, "--baselines-out")
    if args.storage is not None:
        return str(args.storage)
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def _source(args: argparse.Namespace, workload: Any) -> tuple[Any, str, str]:
    """The samples, their label (in the study's fingerprint) and the workload to search."""
    from sparsesim.search.samples import load_samples, synthetic

    if args.samples:
        return load_samples(args.samples), f"file {args.samples}", workload
    if args.minilm:
        from sparsesim.search.minilm import minilm_samples

        return minilm_samples(seed=args.seed), "minilm", "minilm-l6"
    from sparsesim.search.run import layer_range
    from sparsesim.simulator.workloads import load_workload

    w = load_workload(workload)
    layers = args.synthetic_layers
    if layers is None:
        layers = len(layer_range(args.layers, w, w.layers))
    src = synthetic(layout=w.layout, layers=layers, heads=w.heads, head_dim=w.head_dim, rows=args.rows,
                    seed=args.seed, mix=args.mix)
    return src, f"synthetic mix={args.mix} seed={args.seed} rows={args.rows} layers={layers}", workload


class _Bar:
    """The progress callback the search calls as trials (or heads) finish: a one-line bar on stderr (or nothing)."""

    def __init__(self, enabled: bool, unit: str = "trials") -> None:
        self.enabled, self.open, self.t0, self.unit = enabled, False, time.perf_counter(), unit

    def __call__(self, done: int, total: int) -> None:
        if self.enabled and (done % 5 == 0 or done == total):
            frac = done / max(1, total)
            sys.stderr.write(f"\rsearch [{'#' * int(30 * frac):<30}] {done}/{total} {self.unit} "
                             f"{time.perf_counter() - self.t0:6.1f} s")
            sys.stderr.flush()
            self.open = True

    def close(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            self.open = False


def cmd_search(args: argparse.Namespace) -> None:

    from sparsesim.search.run import search_plan
    from sparsesim.search.study import SearchSettings, open_storage, redact_url

    url = check_search_args(args)
    shown = redact_url(url)
    budget = args.error_budget if args.error_budget is not None or args.target_speedup is not None else 0.05
    workload = args.preset or args.workload or ("minilm-l6" if args.minilm else None)
    if workload is None:
        raise ConfigError("give --preset NAME or --workload FILE.toml (see simulate workloads)")
    given = [flag for flag, on in (("--samples", args.samples), ("--minilm", args.minilm),
                                   ("--stats", getattr(args, "stats", None))) if on]
    if args.mix is not None and given:
        raise ConfigError(f"--mix {args.mix} with {given[0]}: --mix chooses synthetic samples; allowed: --mix "
                          "with --synthetic (or no samples option)")
    args.mix = args.mix or "dit"
    if getattr(args, "stats", None) is not None:
        _search_stats(args, workload, budget)
        return
    src, label, workload = _source(args, workload)  # a bad samples file fails before a database is made
    tpe = args.sampler == "tpe"
    trials = args.trials if args.trials is not None else DEFAULT_TRIALS
    n_jobs = args.n_jobs if args.n_jobs is not None else 1
    study = args.study or f"{workload}-{args.gpu}-{label.split()[0]}"
    settings = SearchSettings(study=study, storage=url, trials=trials, seed=args.seed, n_jobs=n_jobs)
    if tpe:
        storage = open_storage(url)  # opened once: a bad URL or an unreachable server fails here, before the search
    else:
        storage = None
        unused = [f"--{n.replace('_', '-')}" for n in TPE_ONLY if getattr(args, n) is not None]
        if unused:
            print(f"search: note: {', '.join(unused)} only apply to --sampler tpe; ignored (the exhaustive search "
                  "evaluates every candidate and stores nothing)", file=sys.stderr)
    bar = _Bar(args.progress if args.progress is not None else sys.stderr.isatty(), "trials" if tpe else "heads")
    if tpe and n_jobs > 1 and url.startswith("sqlite"):
        print("search: note: SQLite lets one worker write at a time; several workers run faster on a PostgreSQL "
              "URL", file=sys.stderr)
    try:
        result = search_plan(src=src, workload=workload, gpu=args.gpu, settings=settings, sampler=args.sampler,
                             layers=args.layers, error_budget=budget, max_error=args.max_error,
                             target_speedup=args.target_speedup, kernel_profile=args.kernel_profile,
                             dense_profile=args.dense_profile, samples_label=label,
                             progress=bar if bar.enabled else None, storage=storage)
    except KeyboardInterrupt:
        bar.close()
        if tpe:
            print(f"simulate search: interrupted; every finished trial is kept in {shown} (study {study!r}): "
                  "run the same command to resume", file=sys.stderr)
        else:
            print("simulate search: interrupted; the exhaustive search stores nothing: run the same command again",
                  file=sys.stderr)
        raise SystemExit(130) from None
    bar.close()
    r = result.report
    if r.found:
        print(f"search: resumed study {study!r} in {shown}: found {r.found} finished trials, ran {r.ran} "
              "more", file=sys.stderr)
    if tpe:
        print(f"search: {r.heads} heads, {r.ran} trials in {r.seconds:.1f} s (simulator {r.simulator_s:.1f} s, "
              f"quality {r.quality_s:.1f} s, Optuna storage and sampler {r.other_s:.1f} s)", file=sys.stderr)
    else:
        print(f"search: {r.heads} heads x {r.ran // max(1, r.heads)} candidates (exhaustive) in {r.seconds:.1f} s "
              f"(simulator {r.simulator_s:.1f} s, quality {r.quality_s:.1f} s)", file=sys.stderr)
    _write_result(args, result)


def _search_stats(args: argparse.Namespace, workload: str, budget: float | None) -> None:
    """``simulate search --stats FILE``: the exhaustive search on saved statistics (no samples, no model)."""

    from sparsesim.search.stats import load_statistics, plan_from_stats

    if args.sampler == "tpe":
        raise ConfigError("--stats holds every candidate's quality already: it plans with the exhaustive sampler; "
                          "drop --sampler tpe")
    t0 = time.perf_counter()
    stats = load_statistics(args.stats, "--stats")
    result = plan_from_stats(stats, workload=workload, gpu=args.gpu, layers=args.layers, error_budget=budget,
                             max_error=args.max_error, target_speedup=args.target_speedup,
                             kernel_profile=args.kernel_profile, dense_profile=args.dense_profile,
                             samples_label=f"statistics {args.stats}")
    r = result.report
    print(f"search: {r.heads} heads x {len(stats.candidates)} candidates from statistics ({stats.calls} calls, "
          f"{stats.source or 'source not recorded'}) in {time.perf_counter() - t0:.1f} s (simulator "
          f"{r.simulator_s:.1f} s)", file=sys.stderr)
    _write_result(args, result)


def _write_result(args: argparse.Namespace, result: Any) -> None:
    """The plan to ``--out``, the baselines to ``--baselines-out``, the outcomes table to stdout (stderr when the
    plan goes to stdout: ``--out -`` leaves the plan alone there)."""
    import pandas as pd

    to_stdout = args.out == "-"
    write_text(result.plan.to_json(), args.out, "--out")
    if not to_stdout:
        print(f"search: wrote {args.out}", file=sys.stderr)
    if args.baselines_out is not None:
        from sparsesim.search.plan import save_plans

        save_plans(result.baselines, args.baselines_out, "--baselines-out")
        print(f"search: wrote {len(result.baselines)} baseline plans to {args.baselines_out}", file=sys.stderr)
    df = pd.DataFrame([o.__dict__ for o in result.outcomes])
    cols = choose_columns(df, args.format, args.columns, args.wide, SEARCH_COLUMNS, SEARCH_COLUMNS)
    if args.format == "json":
        df = df[cols]
    text = render(df, args.format, cols)
    (sys.stderr if to_stdout else sys.stdout).write(text)  # with --out -, stdout holds the plan alone


def plan_rows(plan: Any) -> list[dict[str, Any]]:
    """One row per launch of each layer of a plan (a :class:`~sparsesim.simulator.plan.Plan`)."""
    from sparsesim.search.space import Candidate

    rows = []
    for layer in plan.layers:
        for la in layer.launches:
            errs = [layer.heads[h].error for h in la.heads]
            pattern = "dense" if la.dense else Candidate(la.window, la.stride, la.dilation).label()
            rows.append({"layer": layer.layer, "heads": len(la.heads), "pattern": pattern, "dense": la.dense,
                         "predicted_ms": la.predicted_ms,
                         "dense_ms": layer.dense_ms * len(la.heads) / len(layer.heads),
                         "mean_error": sum(errs) / len(errs)})
    return rows


def cmd_plan_show(args: argparse.Namespace) -> None:
    import pandas as pd

    from sparsesim.simulator.plan import load_plan

    if args.out is not None:
        check_output(args.out, "--out")
    plan = load_plan(args.plan)
    print(f"plan: {plan.workload} on {plan.gpu}, {len(plan.layers)} layers searched, mean error "
          f"{plan.mean_error:.4f}, attention {plan.attention_speedup:.2f}x, end to end "
          f"{plan.e2e_predicted_speedup:.3f}x" + ("; on " if plan.predicted else "") +
          ", ".join(f"{p.gpu} {p.e2e_predicted_speedup:.3f}x" for p in plan.predicted), file=sys.stderr)
    if plan.extra_tokens:
        print(f"extra tokens: {plan.extra_tokens} at the {plan.extra_at} of each call (every query sees them, "
              "they see every key)", file=sys.stderr)
    for r in plan.steps:
        span = f"steps {r.start}-{'end' if r.stop is None else r.stop - 1}"
        what = "dense" if r.dense else ("its own layers" if r.layers else "the layers below")
        print(f"{span}: {what}", file=sys.stderr)
    emit(pd.DataFrame(plan_rows(plan)), args, PLAN_COLUMNS, PLAN_COLUMNS)
