"""``simulate search`` and ``simulate plan show``: the CLI face of :mod:`sparsesim.search` (optuna imported
only when they run)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sparsesim.cli.output import emit
from sparsesim.simulator.errors import ConfigError

SEARCH_COLUMNS = ["name", "mean_error", "max_error", "attention_speedup", "e2e_predicted_speedup", "attention_ms",
                  "dense_attention_ms"]
PLAN_COLUMNS = ["layer", "heads", "pattern", "dense", "predicted_ms", "dense_ms", "mean_error"]


def _source(args: argparse.Namespace, workload: Any) -> tuple[Any, str, str]:
    """The samples, their label (in the study's fingerprint) and the workload to search."""
    from sparsesim.search.samples import load_samples, synthetic

    if args.samples:
        return load_samples(args.samples), f"file {args.samples}", workload
    if args.minilm:
        from sparsesim.search.minilm import minilm_samples

        return minilm_samples(seed=args.seed), "minilm", "minilm-l6"
    from sparsesim.simulator.workloads import load_workload

    w = load_workload(workload)
    from sparsesim.search.run import layer_range

    layers = args.synthetic_layers
    if layers is None:
        layers = len(layer_range(args.layers, w, w.layers))
    if layers < 1 or args.rows < 1:
        raise ConfigError(f"--synthetic-layers {layers}, --rows {args.rows}; allowed: 1 or more")
    src = synthetic(layout=w.layout, layers=layers, heads=w.heads, head_dim=w.head_dim, rows=args.rows,
                    seed=args.seed)
    return src, f"synthetic seed={args.seed} rows={args.rows} layers={layers}", workload


def cmd_search(args: argparse.Namespace) -> None:
    import pandas as pd

    from sparsesim.search.plan import save_plan
    from sparsesim.search.run import search_plan
    from sparsesim.search.study import SearchSettings, open_storage

    for name in ("trials", "n_jobs"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}; allowed: 1 or more")
    for name in ("error_budget", "max_error", "target_speedup"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} {value}; allowed: a number > 0")
    budget = args.error_budget if args.error_budget is not None or args.target_speedup is not None else 0.05
    workload = args.preset or args.workload or ("minilm-l6" if args.minilm else None)
    if workload is None:
        raise ConfigError("give --preset NAME or --workload FILE.toml (see simulate workloads)")
    src, label, workload = _source(args, workload)
    study = args.study or f"{workload}-{args.gpu}-{label.split()[0]}"
    optuna_storage = open_storage(args.storage)  # a bad URL fails here, before any work
    del optuna_storage
    settings = SearchSettings(study=study, storage=args.storage, trials=args.trials, seed=args.seed,
                              n_jobs=args.n_jobs)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    if args.n_jobs > 1 and args.storage.startswith("sqlite"):
        print("search: note: SQLite lets one worker write at a time; several workers run faster on a PostgreSQL "
              "URL", file=sys.stderr)
    try:
        result = search_plan(src=src, workload=workload, gpu=args.gpu, settings=settings, layers=args.layers,
                             error_budget=budget, max_error=args.max_error, target_speedup=args.target_speedup,
                             kernel_profile=args.kernel_profile, dense_profile=args.dense_profile,
                             samples_label=label, progress=show)
    except KeyboardInterrupt:
        print(f"simulate search: interrupted; every finished trial is kept in {args.storage} (study {study!r}): "
              "run the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    r = result.report
    if r.found:
        print(f"search: resumed study {study!r} in {args.storage}: found {r.found} finished trials, ran {r.ran} "
              "more", file=sys.stderr)
    print(f"search: {r.heads} heads, {r.ran} trials in {r.seconds:.1f} s (simulator {r.simulator_s:.1f} s, "
          f"quality {r.quality_s:.1f} s, Optuna storage and sampler {r.other_s:.1f} s)", file=sys.stderr)
    save_plan(result.plan, args.out)
    print(f"search: wrote {args.out}", file=sys.stderr)
    df = pd.DataFrame([o.__dict__ for o in result.outcomes])
    if args.format == "json":
        import json

        sys.stdout.write(json.dumps([{k: row[k] for k in SEARCH_COLUMNS} for row in df.to_dict("records")],
                                    indent=1) + "\n")
        return
    emit(df, argparse.Namespace(**{**vars(args), "out": None}), SEARCH_COLUMNS, SEARCH_COLUMNS)


def plan_rows(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per launch of each layer of a plan."""
    rows = []
    for layer in plan["layers"]:
        for la in layer["launches"]:
            errs = [layer["heads"][h]["error"] for h in la["heads"]]
            pattern = "dense" if la["dense"] else (
                f"w{'x'.join(map(str, la['window']))} s{'x'.join(map(str, la['stride']))}"
                + (f" d{'x'.join(map(str, la['dilation']))}" if any(d > 1 for d in la["dilation"]) else ""))
            rows.append({"layer": layer["layer"], "heads": len(la["heads"]), "pattern": pattern, "dense": la["dense"],
                         "predicted_ms": la["predicted_ms"], "dense_ms": layer["dense_ms"] * len(la["heads"]) /
                         len(layer["heads"]), "mean_error": sum(errs) / len(errs)})
    return rows


def cmd_plan_show(args: argparse.Namespace) -> None:
    import pandas as pd

    from sparsesim.search.plan import load_plan

    plan = load_plan(args.plan)
    print(f"plan: {plan['workload']} on {plan['gpu']}, {len(plan['layers'])} layers searched, mean error "
          f"{plan['mean_error']:.4f}, attention {plan['attention_speedup']:.2f}x, end to end "
          f"{plan['e2e_predicted_speedup']:.3f}x; on " +
          ", ".join(f"{g} {v['e2e_predicted_speedup']:.3f}x" for g, v in plan["predicted"].items()), file=sys.stderr)
    emit(pd.DataFrame(plan_rows(plan)), args, PLAN_COLUMNS, PLAN_COLUMNS)
