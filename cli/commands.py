"""What each `simulate` subcommand does: build configurations, simulate, print (see :mod:`cli`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sparsesim.cli.output import check_output, emit, write_text
from sparsesim.hwmodels.gpus import list_gpus, load_gpu, read_toml
from sparsesim.simulator.errors import ConfigError

#: Text-table columns, in display order; the table keeps as many as fit 120 characters, dropping
#: the lowest in :data:`PRIORITY` first (``--wide``, CSV and JSON keep every column).
TABLE_COLUMNS = [
    "preset", "gpu", "input_size", "window", "stride", "dilation", "causal", "q_tile", "kv_tile", "tiling",
    "flop_speedup", "tile_speedup", "predicted_speedup", "note", "predicted_ms", "dense_ms", "bound",
]
PRIORITY = [
    "preset", "gpu", "window", "stride", "flop_speedup", "tile_speedup", "predicted_speedup", "note", "q_tile",
    "kv_tile",
    "predicted_ms", "causal", "dilation", "tiling", "input_size", "bound", "dense_ms",
]
E2E_COLUMNS = [
    "preset", "gpu", "window", "stride", "q_tile", "kv_tile", "dense_steps", "attention_share", "share_source",
    "tile_speedup", "kernel_speedup", "predicted_speedup", "e2e_tile_speedup", "e2e_predicted_speedup",
    "attention_s", "other_s", "outside_s", "memory_ops_s", "memory_ops_source", "dense_run_s",
    "sparse_run_s",
]
E2E_PRIORITY = [
    "preset", "gpu", "window", "stride", "attention_share", "predicted_speedup", "e2e_predicted_speedup",
    "attention_s", "other_s", "outside_s", "share_source", "kernel_speedup", "memory_ops_s",
    "memory_ops_source", "e2e_tile_speedup", "tile_speedup", "dense_run_s", "sparse_run_s", "q_tile", "kv_tile",
    "dense_steps",
]


#: Skipped sweep configurations named on stderr (the rest are counted).
SKIPPED_SHOWN = 10


def version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("sparsesim")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def pattern_configs(args: argparse.Namespace) -> list[Any]:
    """One :class:`~sparsesim.simulator.config.SimConfig` per GPU from the pattern, tile and problem flags."""
    from sparsesim.simulator.config import SimConfig, field_names

    if args.block_map is None and args.window is None:
        raise ConfigError("--window is required (or --block-map FILE)")
    settings = {name: getattr(args, name) for name in field_names() if name != "gpu"}
    return [SimConfig(**settings, gpu=gpu) for gpu in args.gpu]


def _note_infeasible(df: Any) -> None:
    if "feasible" not in df.columns:
        return
    bad = df[~df["feasible"].astype(bool)]
    if len(bad):
        print(f"simulate: note: {len(bad)} of {len(df)} row(s) use tiles sparsesim's kernels cannot run "
              f"(column feasible): {bad['infeasible_because'].iloc[0]}", file=sys.stderr)


def _note_dense(df: Any) -> None:
    if "note" not in df.columns:
        return
    noted = df[df["note"].astype(str) != ""]
    if len(noted):
        print(f"simulate: note: {len(noted)} of {len(df)} row(s) are dense or near-dense patterns (column note): "
              f"their predicted_speedup compares the modelled kernel with the dense baseline "
              f"({noted['dense_profile'].iloc[0]}), not a sparse pattern with its own kernel's dense path",
              file=sys.stderr)


def _simulate_rows(configs: Sequence[Any], progress: Callable[[int], None] | None = None) -> Any:
    from sparsesim.simulator.engine import simulate_many

    return simulate_many(configs, progress=progress)


def cmd_table(args: argparse.Namespace) -> None:
    df = _simulate_rows(pattern_configs(args))
    _note_infeasible(df)
    _note_dense(df)
    emit(df, args, TABLE_COLUMNS, PRIORITY)
    if getattr(args, "plot", None):
        from sparsesim.cli.report import plot_table

        plot_table(df.to_dict("records"), args.plot)


def main_table_configs() -> list[dict[str, Any]]:
    """The built-in presets behind `simulate` with no arguments."""
    from sparsesim.simulator.workloads import PRESETS_FILE

    data = read_toml(PRESETS_FILE, "presets")
    return [{**row, "gpu": gpu} for row in data["rows"] for gpu in data["gpus"]]


def cmd_main(args: argparse.Namespace) -> None:
    configs = main_table_configs()
    presets = [c.pop("preset") for c in configs]
    df = _simulate_rows(configs)
    df.insert(0, "preset", presets)
    emit(df, args, TABLE_COLUMNS, PRIORITY)


def _progress_bar(total: int) -> Callable[[int], None]:
    def show(done: int) -> None:
        if done == total or done % max(1, total // 100) == 0:
            width = 30
            filled = width * done // total
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
    return show


def cmd_sweep(args: argparse.Namespace) -> None:
    from sparsesim.cli.sweep import load_sweep
    from sparsesim.simulator.engine import simulate_many

    configs, skipped = load_sweep(args.file)
    show = args.progress if args.progress is not None else (len(configs) >= 200 and sys.stderr.isatty())
    bar = _progress_bar(len(configs)) if show else None
    done: list[int] = []

    def count(i: int) -> None:
        done.append(i)
        if bar is not None:
            bar(i)

    try:
        df = simulate_many(configs, progress=count)
    except ConfigError as exc:
        bad = configs[len(done)]
        raise ConfigError(f"sweep: configuration {len(done) + 1} {bad}: {exc}") from None
    if skipped:
        shown = SKIPPED_SHOWN
        print(f"sweep: skipped {len(skipped)} invalid configuration(s) (skip_invalid = true):", file=sys.stderr)
        for line in skipped[:shown]:
            print(f"  {line}", file=sys.stderr)
        if len(skipped) > shown:
            print(f"  ... and {len(skipped) - shown} more", file=sys.stderr)
    _note_infeasible(df)
    _note_dense(df)
    emit(df, args, TABLE_COLUMNS, PRIORITY)


def cmd_gpus(args: argparse.Namespace) -> None:
    import pandas as pd

    gpus = [load_gpu(g) for g in args.gpu] if args.gpu else list_gpus()
    rows = []
    for g in gpus:
        row: dict[str, Any] = {
            "gpu": g.name, "full_name": g.full_name, "arch": g.architecture, "sms": g.sm_count,
            "bf16_TFLOPs": g.tensor_TFLOPs.get("bf16"), "fp8_TFLOPs": g.tensor_TFLOPs.get("fp8"),
            "hbm_TBps": g.hbm_TBps, "exp_TOPs": g.exp_per_s / 1e12,
        }
        for rank in (1, 2, 3):
            if rank in g.default_tiles:
                q, kv = g.default_tiles[rank]
                row[f"tiles_{rank}d"] = "/".join("x".join(map(str, t)) for t in (q, kv))
        row["tile_kernel"] = g.tiles_kernel
        rows.append(row)
    cols = list(rows[0])
    emit(pd.DataFrame(rows), args, cols, cols)


def cmd_tiles(args: argparse.Namespace) -> None:
    import math

    import pandas as pd

    from sparsesim.hwmodels.gpus import DTYPE_BYTES
    from sparsesim.simulator.feasibility import candidate_tiles, check_tile_volume, max_stages, registers_per_thread
    from sparsesim.simulator.patterns import layout_tuple

    size = layout_tuple(args.input_size) if args.input_size else None
    rank = args.rank if args.rank is not None else (len(size) if size else None)
    if rank is None:
        raise ConfigError("give --rank or --input-size")
    if size is not None and len(size) != rank:
        raise ConfigError(f"--rank {rank} but --input-size has {len(size)} axes; allowed: the same rank")
    for name, vols in (("--q-volume", args.q_volume), ("--kv-volume", args.kv_volume)):
        for v in vols:
            check_tile_volume(v, name)
    gpu = load_gpu(args.gpu)
    if args.window is not None:
        _rank_tiles(args, size, gpu)
        return
    pairs = candidate_tiles(rank, gpu=gpu, head_dim=args.head_dim, dtype=args.dtype, input_size=size,
                            q_volumes=args.q_volume, kv_volumes=args.kv_volume)
    elt = DTYPE_BYTES[args.dtype]
    rows = [{"gpu": gpu.name, "q_tile": q, "kv_tile": kv, "q_volume": math.prod(q), "kv_volume": math.prod(kv),
             "stages": max_stages(math.prod(q), math.prod(kv), args.head_dim, elt, gpu.smem_per_block_bytes),
             "registers_per_thread": registers_per_thread(math.prod(q), math.prod(kv), args.head_dim, elt)}
            for q, kv in pairs]
    if not rows:
        raise ConfigError(f"no tile pair of volumes {args.q_volume}/{args.kv_volume} runs at head_dim={args.head_dim} "
                          f"on {gpu.name}")
    cols = list(rows[0])
    emit(pd.DataFrame(rows), args, cols, cols)


def _rank_tiles(args: argparse.Namespace, size: Any, gpu: Any) -> None:
    import pandas as pd

    from sparsesim.simulator.patterns import GNAPattern
    from sparsesim.simulator.tile_choice import rank_tiles

    if size is None:
        raise ConfigError("--window needs --input-size")
    if args.top < 1:
        raise ConfigError(f"--top {args.top}; allowed: 1 or more")
    pattern = GNAPattern(input_size=size, window=args.window, stride=args.stride or (),
                         dilation=args.dilation or (), causal=args.causal or ())
    ranked = rank_tiles(pattern, gpu=gpu, kernel_profile=args.kernel_profile, dense_profile=args.dense_profile,
                        heads=args.heads, heads_kv=args.heads_kv, head_dim=args.head_dim, batch=args.batch,
                        dtype=args.dtype, top=args.top, q_volumes=tuple(args.q_volume),
                        kv_volumes=tuple(args.kv_volume))
    if not ranked:
        raise ConfigError(f"no tile pair of volumes {args.q_volume}/{args.kv_volume} fits {list(size)} at "
                          f"head_dim={args.head_dim} on {gpu.name}")
    rows = [{"rank": i + 1, "gpu": gpu.name, "q_tile": c.q_tile, "kv_tile": c.kv_tile, "call_ms": c.call_ms,
             "predicted_ms": c.predicted_ms, "tile_speedup": c.tile_speedup, "kv_layout": c.kv_layout,
             "estimate_ms": c.estimate_ms, "pick_ms": c.pick_ms} for i, c in enumerate(ranked)]
    cols = list(rows[0])
    emit(pd.DataFrame(rows), args, cols, cols)


def validate_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The configurations of ``simulate validate``: a sweep file's, or the built-in workloads' patterns."""
    if args.sweep:
        from sparsesim.cli.sweep import load_sweep

        configs, _ = load_sweep(args.sweep)
        return configs
    from sparsesim.simulator.workloads import load_workload

    out = []
    for name in args.preset:
        w = load_workload(name)
        for pat in w.patterns:
            out.append({"input_size": w.layout, "causal": w.causal, "heads": w.heads, "heads_kv": w.heads_kv,
                        "head_dim": w.head_dim, "dtype": w.dtype, **pat})
    return out


def cmd_validate(args: argparse.Namespace) -> None:
    import os

    try:
        import torch

        from sparsesim.kernels import validate
    except ModuleNotFoundError as exc:
        raise ConfigError(f"simulate validate needs {exc.name}: pip install 'sparsesim[kernels]'") from None
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    no_gpu = ConfigError(validate.NO_GPU)
    # Counted through NVML where it works, starting no CUDA here: the device workers can then be forked
    # (sparsesim.kernels.workers.fork_safe); torch.cuda.is_available() would start the driver.
    visible = 0 if interpreted else torch.cuda.device_count()
    if not visible and not interpreted:
        raise no_gpu
    from sparsesim.kernels.workers import WorkersLost, parse_devices

    devices = parse_devices(args.devices, visible)
    if args.plan:  # measured here (a sweep measured here is checked by validate.run, after its check stage)
        validate.require_cuda()
    if devices and args.devices.strip().lower() != "all" and args.plan:
        raise ConfigError(f"--devices {args.devices} with --plan; allowed: --devices with --sweep or --preset")
    if args.plan:
        if args.backprop:
            raise ConfigError("--backprop with --plan; allowed: --backprop with --sweep or --preset")
        _validate_plan(args)
        return
    cases = validate.make_cases(validate_configs(args), [k.strip() for k in args.kernels.split(",") if k.strip()],
                                backprop=args.backprop)
    show = args.progress if args.progress is not None else sys.stderr.isatty()

    def bar(done: int, total: int) -> None:
        _progress_bar(total)(done)

    try:
        jobs = 1 if interpreted else validate.default_jobs(devices) if args.jobs == "auto" else int(args.jobs)
        rows = validate.run(cases, Path(args.out), resume=args.resume, jobs=jobs,
                            seed=args.seed, commit=args.commit, progress=bar if show else None, devices=devices)
    except WorkersLost as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    failed = [r for r in rows if not r["ok"]]
    on = f" on {len(devices)} devices" if devices else ""
    print(f"validate: {len(rows)} case(s) measured into {args.out}{on}" +
          (f", {len(failed)} failed their check (see the note column)" if failed else ""), file=sys.stderr)
    import pandas as pd

    table = validate.error_table(rows)
    if table:
        sys.stdout.write(pd.DataFrame(table).to_string(index=False) + "\n")


def _validate_plan(args: argparse.Namespace) -> None:
    import pandas as pd

    from sparsesim.kernels.plan_run import validate_plan_layers
    from sparsesim.simulator.plan import load_plan

    rows = validate_plan_layers(load_plan(args.plan), Path(args.out), seed=args.seed, commit=args.commit)
    print(f"validate: {len(rows)} plan layer(s) measured into {args.out}", file=sys.stderr)
    cols = ["layer", "launches", "sparse_heads", "ok", "measured_ms", "predicted_ms", "error", "dense_measured_ms",
            "measured_speedup", "predicted_speedup"]
    sys.stdout.write(pd.DataFrame(rows)[cols].to_string(index=False) + "\n")


def cmd_calibrate(args: argparse.Namespace) -> None:
    import pandas as pd

    from sparsesim.simulator.calibrate import calibrate, profile_toml

    if args.published is not None:
        if args.judge:
            raise ConfigError("--judge goes with --measurements (with --published the judge rows are the set's "
                              "use=judge rows)")
        _calibrate_published(args)
        return
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()] if args.kernels else None
    gpu = args.gpu or _measured_gpu(args.measurements)
    target = None
    if not args.dry_run:
        target = (args.profile_out if args.profile_out is not None
                  else f"{_profile_name(args.kernel_profile, gpu)}.toml")
        check_output(target, "--profile-out", stdout_ok=False)
    result = calibrate(args.measurements, gpu=gpu, kernel_profile=args.kernel_profile, holdout=args.holdout,
                       seed=args.seed, kernels=kernels)
    if target is not None:
        write_text(profile_toml(result, [str(m) for m in args.measurements], args.holdout, args.seed), target)
        print(f"calibrate: wrote {target} (use it with --kernel-profile {target})", file=sys.stderr)
    summary = {"profile": result.profile.name, "train_mape": result.train_mape, "heldout_mape": result.heldout_mape,
               "n_train": result.n_train, "n_heldout": result.n_heldout,
               "prior_heldout_mape": result.prior_heldout_mape, **{f"fit_{k}": v for k, v in result.params.items()}}
    from sparsesim.simulator.fidelity import as_records, heldout_errors, judge_errors

    by_band = as_records(heldout_errors(args.measurements, result, holdout=args.holdout, seed=args.seed))
    judged = as_records(judge_errors(args.judge, result)) if args.judge else []
    if args.format == "json":
        import json

        extra = {"judge_by_band": judged} if args.judge else {}
        write_text(json.dumps({**summary, "worst": result.worst, "heldout_by_band": by_band, **extra}, indent=1)
                   + "\n", args.out)
        return
    emit(pd.DataFrame([summary]), args, list(summary), list(summary))
    print(pd.DataFrame(result.worst).to_string(index=False), file=sys.stderr)
    for title, records in (("held-out error", by_band), (f"error on {len(args.judge or [])} file(s) never fitted",
                                                         judged)):
        if records:
            print(f"{title} by kernel and size band (tokens; error = predicted / measured - 1):", file=sys.stderr)
            print(pd.DataFrame(records).to_string(index=False, float_format=lambda v: f"{v:.3f}"), file=sys.stderr)


def _calibrate_published(args: argparse.Namespace) -> None:
    """``calibrate --published``: fit ``reference-<arch>`` to published figures, report train/held-out/judge error."""
    import pandas as pd

    from sparsesim.simulator.calibrate import calibrate_published, published_profile_toml

    target = None
    if not args.dry_run:
        target = args.profile_out if args.profile_out is not None else f"reference-{args.arch}.toml"
        check_output(target, "--profile-out", stdout_ok=False)
    result = calibrate_published(args.published or None, arch=args.arch, holdout=args.holdout, seed=args.seed)
    if target is not None:
        write_text(published_profile_toml(result), target)
        print(f"calibrate: wrote {target} (use it with --kernel-profile {target})", file=sys.stderr)
    summary = {"profile": result.profile.name, "arch": result.arch, "kernels": ",".join(result.kernels),
               "n_train": len(result.train), "n_heldout": len(result.heldout), "n_judge": len(result.judge),
               "prior_train_mape": result.prior_train_mape, "train_mape": result.train_mape,
               "prior_heldout_mape": result.prior_heldout_mape, "heldout_mape": result.heldout_mape,
               "prior_judge_mape": result.prior_judge_mape, "judge_mape": result.judge_mape,
               **{f"fit_{k}": v for k, v in result.params.items()}}
    worst = sorted(result.residuals("heldout") or result.residuals("train"), key=lambda r: -abs(r["error"]))[:5]
    if args.format == "json":
        import json

        write_text(json.dumps({**summary, "worst": worst}, indent=1) + "\n", args.out)
        return
    emit(pd.DataFrame([summary]), args, list(summary), list(summary))
    print(pd.DataFrame(worst).to_string(index=False), file=sys.stderr)


def _profile_name(kernel_profile: str, gpu: str) -> str:
    """The name of the profile ``calibrate`` fits (its default file name), known before the fit."""
    from sparsesim.hwmodels.profiles import resolve_name

    return resolve_name(kernel_profile, load_gpu(gpu))


def _measured_gpu(paths: Sequence[str]) -> str:
    """The GPU named in the ``gpu`` column of measurement CSVs (one GPU for all)."""
    from sparsesim.simulator.calibrate import read_measurements

    names: set[str] = set()
    for path in paths:
        df = read_measurements(path)
        if "gpu" in df.columns:
            names |= set(df["gpu"])
    names.discard("")
    if len(names) != 1:
        shown = [n[:40] for n in sorted(names)[:5]]
        raise ConfigError(f"--measurements name {len(names)} GPUs {shown} in their gpu column; allowed: one GPU, "
                          f"or pass --gpu NAME")
    return names.pop()


def cmd_e2e(args: argparse.Namespace) -> None:
    import pandas as pd

    from sparsesim.simulator.workloads import simulate_e2e

    rows = []
    for gpu in args.gpu:
        rows += simulate_e2e(preset=args.preset, gpu=gpu, window=args.window, stride=args.stride,
                             dilation=args.dilation, q_tile=args.q_tile, kv_tile=args.kv_tile, tiling=args.tiling,
                             dense_steps=args.dense_steps, attention_share=args.attention_share,
                             share_from=args.share_from, breakdowns=args.breakdowns,
                             kernel_profile=args.kernel_profile, dense_profile=args.dense_profile)
    df = pd.DataFrame([r.to_dict() for r in rows])
    # The table names each source once below it; CSV and JSON keep the full text per row.
    sources = list(dict.fromkeys([*(("attention share", s) for s in df["share_source"]),
                                  *(("sparse-call memory passes", s) for s in df["memory_ops_source"])]))
    if args.format in ("table", "markdown"):
        df["share_source"] = [f"[{sources.index(('attention share', s)) + 1}]" for s in df["share_source"]]
        df["memory_ops_source"] = [f"[{sources.index(('sparse-call memory passes', s)) + 1}]"
                                   for s in df["memory_ops_source"]]
    emit(df, args, E2E_COLUMNS, E2E_PRIORITY)
    if args.format in ("table", "markdown"):
        print("\n".join(f"[{i}] {part}: {s}" for i, (part, s) in enumerate(sources, 1)), file=sys.stderr)


def _pattern_label(p: dict[str, Any]) -> str:
    return "w" + "x".join(map(str, p["window"])) + " s" + "x".join(map(str, p.get("stride", [1])))


def cmd_workloads(args: argparse.Namespace) -> None:
    import pandas as pd

    from sparsesim.simulator.workloads import list_workloads

    rows = [{"preset": w.name, "layout": w.layout, "tokens": w.tokens, "text_tokens": w.text_tokens,
             "layers": w.layers, "hidden": w.hidden, "heads": w.heads, "heads_kv": w.heads_kv,
             "head_dim": w.head_dim, "mlp": w.mlp, "steps": w.steps, "batch": w.batch,
             "patterns": "; ".join(_pattern_label(p) for p in w.patterns), "description": w.description}
            for w in list_workloads()]
    cols = list(rows[0])
    priority = ["preset", "layout", "tokens", "layers", "heads", "head_dim", "steps", "patterns", "hidden", "mlp",
                "heads_kv", "batch", "text_tokens", "description"]
    emit(pd.DataFrame(rows), args, cols, priority)
