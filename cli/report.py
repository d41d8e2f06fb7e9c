"""``simulate report`` and ``simulate table --plot``: the CLI face of :mod:`sparsesim.reports` (matplotlib
imported only when they run)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sparsesim.simulator.errors import ConfigError


def _configs(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """The patterns of the report and the workloads named (for the end-to-end section)."""
    from sparsesim.simulator.workloads import list_workloads, load_workload

    given = [f"--{k}" for k in ("window", "stride", "dilation", "causal") if getattr(args, k) is not None]
    if given and not args.input_size:
        raise ConfigError(f"{', '.join(given)} needs --input-size (one pattern); with --preset or --sweep the "
                          f"patterns come from the workloads or the file")
    if args.sweep:
        from sparsesim.cli.sweep import load_sweep

        configs, _ = load_sweep(args.sweep)
        return [{k: v for k, v in c.items() if k not in ("gpu",)} for c in configs], []
    if args.input_size:
        if not args.window:
            raise ConfigError("--input-size needs --window (or give --preset / --sweep)")
        cfg = {"input_size": args.input_size, "window": args.window, "stride": args.stride,
               "dilation": args.dilation, "causal": args.causal}
        return [{k: v for k, v in cfg.items() if v is not None}], []
    presets = args.preset or [w.name for w in list_workloads() if w.name != "minilm-l6"]
    configs = []
    for name in presets:
        w = load_workload(name)
        for pat in w.patterns:
            configs.append({"preset": w.name, "input_size": w.layout, "causal": w.causal, "heads": w.heads,
                            "heads_kv": w.heads_kv, "head_dim": w.head_dim, "batch": w.batch, "dtype": w.dtype,
                            **pat})
    return configs, presets


def cmd_report(args: argparse.Namespace) -> None:
    import time

    try:
        from sparsesim.reports import ReportInputs, build_sections, write_report
    except ModuleNotFoundError as exc:
        raise ConfigError(f"simulate report needs {exc.name}: pip install 'sparsesim[reports]'") from None
    from sparsesim.hwmodels import load_gpu

    t0 = time.perf_counter()
    for g in args.gpu:
        load_gpu(g)
    configs, presets = _configs(args)
    if not configs:
        raise ConfigError("no patterns to report (the sweep file is empty?)")
    plan = None
    if args.plan:
        from sparsesim.simulator.plan import load_plan

        plan = load_plan(args.plan)
    measurements = args.measurements if args.measurements is not None else _committed_measurements()
    if measurements:
        from sparsesim.simulator.calibrate import read_measurements

        for m in measurements:
            read_measurements(m)
    if (args.study is None) != (args.storage is None):
        raise ConfigError("--study and --storage go together")
    study = _study(args.study, args.storage) if args.study else None
    inp = ReportInputs(configs=tuple(configs), gpus=tuple(args.gpu), kernel_profile=args.kernel_profile,
                       dense_profile=args.dense_profile, presets=tuple(presets), plan=plan, plan_path=args.plan or "",
                       measurements=tuple(measurements), study=study)
    sections = build_sections(inp)
    index = write_report(sections, args.out, title="sparsesim report",
                         subtitle=f"GPUs {', '.join(args.gpu)}; sparse kernel profile {args.kernel_profile}, "
                                  f"dense baseline {args.dense_profile}; {len(configs)} pattern(s)")
    print(f"report: wrote {index} ({len(sections)} sections) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if args.open:
        print(index.resolve().as_uri())


def _committed_measurements() -> list[str]:
    """The H200 measurements the fitted ``triton`` profile came from, and the held-out tile set, where this
    checkout has them (a source tree; an installed wheel carries none)."""
    from sparsesim.hwmodels.gpus import read_toml
    from sparsesim.hwmodels.profiles import CALIBRATION_DIR

    root = CALIBRATION_DIR.parent.parent
    try:
        fit = read_toml(CALIBRATION_DIR / "triton.toml", "kernel profile").get("fit", {})
    except ConfigError:
        return []
    paths = [root / m for m in fit.get("measurements", [])]
    paths += sorted((root / "hwmodels" / "measurements").glob("validate_h200_tiles_2*.csv"))
    return [str(p) for p in dict.fromkeys(paths) if p.is_file()]


def _study(name: str, storage: str, layer: int = 0, heads: int = 6) -> Any:
    """The first heads of a search study's first layer, as the report shows them."""
    import optuna

    from sparsesim.reports.build import StudyData
    from sparsesim.search.study import head_study_name, open_storage, pareto, points, redact_url

    st = open_storage(storage)
    known = set(optuna.get_all_study_names(st))
    pts: dict[str, list[tuple[float, float, bool]]] = {}
    errors = []
    for h in range(heads):
        if head_study_name(name, layer, h) not in known:
            break
        head = points(st, name, layer, h)
        front = set(pareto(head))
        pts[f"layer {layer} head {h}"] = [(p.ms, p.error, p in front) for p in head]
        errors.append([p.error for p in head if p.error > 0] or [1.0])
    if not pts:
        raise ConfigError(f"--study {name!r}: no head studies in {redact_url(storage)} (names "
                          f"<study>:L<layer>:H<head>)")
    return StudyData(name=name, points=pts, errors=errors)


def plot_table(records: list[dict[str, Any]], path: str) -> None:
    """``simulate table --plot FILE.png``: the speedup bars of the rows just printed."""
    import io

    import matplotlib.pyplot as plt

    from sparsesim.reports import figures
    from sparsesim.simulator.files import write_bytes

    fig = figures.speedup_bars(records)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(buf.getvalue(), path, "--plot")
    print(f"table: wrote {path}", file=sys.stderr)
