"""The `simulate` command: parses, dispatches, prints. Heavy packages are imported lazily."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from sparsesim.hwmodels.gpus import list_gpus, load_gpu, read_toml
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.output import FORMATS, render, write_text

PRESETS = Path(__file__).parent / "presets" / "main.toml"

#: Columns of the text table (JSON output keeps every key of the record).
TABLE_COLUMNS = [
    "preset", "gpu", "input_size", "window", "stride", "dilation", "causal", "q_tile", "kv_tile", "tiling",
    "density", "flop_speedup", "tile_speedup", "tile_speedup_mean", "block_sparse", "predicted_speedup",
    "predicted_ms", "dense_ms", "bound",
]
E2E_COLUMNS = [
    "preset", "gpu", "window", "stride", "q_tile", "kv_tile", "dense_steps", "attention_share", "flop_speedup",
    "tile_speedup", "predicted_speedup", "e2e_flop_speedup", "e2e_tile_speedup", "e2e_predicted_speedup",
    "dense_run_s", "sparse_run_s",
]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: error: {message} (see {self.prog} --help)")


def fail(message: str) -> NoReturn:
    print(message if message.startswith("simulate") else f"simulate: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _flag(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes"):
        return True
    if low in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a causal flag; allowed: 0 or 1 per axis")


def add_pattern_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The pattern, tile and problem flags shared by the subcommands that simulate one pattern."""
    g = p.add_argument_group("pattern")
    g.add_argument("--input-size", nargs="+", type=_int, required=required, metavar="L",
                   help="token layout, outermost axis first (1 to 3 axes); the sequence length with --block-map")
    g.add_argument("--window", nargs="+", type=_int, metavar="W", help="window per axis (or one for all)")
    g.add_argument("--stride", nargs="+", type=_int, default=[1], metavar="S")
    g.add_argument("--dilation", nargs="+", type=_int, default=[1], metavar="D")
    g.add_argument("--causal", nargs="+", type=_flag, default=[False], metavar="0|1")
    g.add_argument("--block-map", metavar="FILE", help="explicit block map (.npy/.npz, [heads,] q_blocks x kv_blocks)")
    t = p.add_argument_group("tiles")
    t.add_argument("--q-tile", nargs="+", type=_int, metavar="T", help="Q tile (default: the GPU's fused-kernel tile)")
    t.add_argument("--kv-tile", nargs="+", type=_int, metavar="T")
    t.add_argument("--tiling", default="box", help="box (token permutation) or flat (consecutive tokens)")
    h = p.add_argument_group("problem")
    h.add_argument("--gpu", nargs="+", default=["H100"], metavar="GPU", help="GPU names or GPU .toml files")
    h.add_argument("--heads", type=_int, default=24)
    h.add_argument("--heads-kv", type=_int, default=None, help="KV heads (GQA); default: --heads")
    h.add_argument("--head-dim", type=_int, default=128)
    h.add_argument("--batch", type=_int, default=1)
    h.add_argument("--dtype", default="bf16", help="fp16, bf16 or fp8")
    h.add_argument("--backprop", action="store_true", help="forward + backward (dQ and dK/dV passes)")
    h.add_argument("--kernel-profile", default="reference",
                   help="modelled kernel: 'reference' (best published for the GPU) or a profile name/.toml")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="table", help=f"one of {', '.join(FORMATS)} (csv and json: every column)")
    p.add_argument("--wide", action="store_true", help="every column in table and markdown output too")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")


def pattern_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One :func:`simulate` keyword dict per GPU from the pattern flags."""
    if args.window is None and args.block_map is None:
        fail("simulate: --window is required (or --block-map FILE)")
    base: dict[str, Any] = {
        "input_size": args.input_size, "window": args.window, "stride": args.stride, "dilation": args.dilation,
        "causal": args.causal, "q_tile": args.q_tile, "kv_tile": args.kv_tile, "tiling": args.tiling,
        "heads": args.heads, "heads_kv": args.heads_kv, "head_dim": args.head_dim, "batch": args.batch,
        "dtype": args.dtype, "backprop": args.backprop, "kernel_profile": args.kernel_profile,
    }
    if args.block_map is not None:
        base["block_map"] = args.block_map
    return [{**base, "gpu": gpu} for gpu in args.gpu]


def _emit(df: Any, args: argparse.Namespace, columns: Sequence[str]) -> None:
    if args.format not in FORMATS:
        fail(f"simulate: --format {args.format!r} is unknown; allowed: {', '.join(FORMATS)}")
    if args.format in ("csv", "json") or getattr(args, "wide", False):
        columns = list(df.columns)
    else:
        columns = [c for c in columns if c in df.columns and not _all_default(df, c)]
    write_text(render(df, args.format, columns), args.out)


def _all_default(df: Any, column: str) -> bool:
    """Hide dilation/causal columns that say nothing (all 1 / all 0) in text tables."""
    if column not in ("dilation", "causal", "preset", "tiling"):
        return False
    values = [v for v in df[column] if v is not None]
    if column == "tiling":
        return all(v == "box" for v in values)
    if column == "preset":
        return not values
    return all(all(int(x) == (1 if column == "dilation" else 0) for x in v) for v in values)


def cmd_table(args: argparse.Namespace) -> None:
    from sparsesim.simulator.simulate import simulate_many
    _emit(simulate_many(pattern_configs(args)), args, TABLE_COLUMNS)


def main_table_configs() -> list[dict[str, Any]]:
    """The built-in presets behind `simulate` with no arguments."""
    data = read_toml(PRESETS, "presets")
    return [{**row, "gpu": gpu} for row in data["rows"] for gpu in data["gpus"]]


def cmd_main(args: argparse.Namespace) -> None:
    from sparsesim.simulator.simulate import simulate_many
    configs = main_table_configs()
    presets = [c.pop("preset") for c in configs]
    df = simulate_many(configs)
    df.insert(0, "preset", presets)
    _emit(df, args, TABLE_COLUMNS)


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
    from sparsesim.simulator.simulate import simulate_many
    from sparsesim.simulator.sweep import load_sweep
    configs, skipped = load_sweep(args.file)
    show = args.progress if args.progress is not None else (len(configs) >= 200 and sys.stderr.isatty())
    df = simulate_many(configs, progress=_progress_bar(len(configs)) if show else None)
    if skipped:
        print(f"sweep: skipped {skipped} invalid configuration(s)", file=sys.stderr)
    _emit(df, args, TABLE_COLUMNS)


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
    _emit(pd.DataFrame(rows), args, list(rows[0]))


def cmd_e2e(args: argparse.Namespace) -> None:
    import pandas as pd

    from sparsesim.simulator.workloads import simulate_e2e
    rows = []
    for gpu in args.gpu:
        rows += simulate_e2e(preset=args.preset, gpu=gpu, window=args.window, stride=args.stride,
                             dilation=args.dilation, q_tile=args.q_tile, kv_tile=args.kv_tile, tiling=args.tiling,
                             dense_steps=args.dense_steps, attention_share=args.attention_share,
                             kernel_profile=args.kernel_profile)
    _emit(pd.DataFrame(rows), args, E2E_COLUMNS)


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
    _emit(pd.DataFrame(rows), args, list(rows[0]))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="simulate", description="Speedup bounds and predictions for sparse attention on GPUs. "
                     "With no subcommand: the built-in presets on A100, H100 and B200.")
    add_output_args(parser)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    p = sub.add_parser("table", help="one pattern on one or more GPUs")
    add_pattern_args(p)
    add_output_args(p)
    p.set_defaults(func=cmd_table)
    p = sub.add_parser("sweep", help="the cartesian product of a TOML sweep file")
    p.add_argument("file", metavar="FILE.toml")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when long and stderr is a terminal)")
    add_output_args(p)
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("gpus", help="the known GPUs and their default tiles")
    p.add_argument("--gpu", nargs="+", metavar="GPU", help="only these (names or .toml files)")
    add_output_args(p)
    p.set_defaults(func=cmd_gpus)
    p = sub.add_parser("e2e", help="end-to-end speedup of a workload with a sparse pattern")
    p.add_argument("--preset", required=True, help="a workload name (see `simulate workloads`) or .toml file")
    p.add_argument("--window", nargs="+", type=_int, metavar="W", help="default: the workload's own patterns")
    p.add_argument("--stride", nargs="+", type=_int, default=None, metavar="S")
    p.add_argument("--dilation", nargs="+", type=_int, default=[1], metavar="D")
    p.add_argument("--q-tile", nargs="+", type=_int, metavar="T")
    p.add_argument("--kv-tile", nargs="+", type=_int, metavar="T")
    p.add_argument("--tiling", default="box")
    p.add_argument("--gpu", nargs="+", default=["H100"], metavar="GPU")
    p.add_argument("--dense-steps", type=_int, default=0, help="first K diffusion steps keep dense attention")
    p.add_argument("--attention-share", type=float, default=None,
                   help="attention's share of the whole dense run, as profiled (replaces the modelled share)")
    p.add_argument("--kernel-profile", default="reference")
    add_output_args(p)
    p.set_defaults(func=cmd_e2e)
    p = sub.add_parser("workloads", help="the built-in workloads")
    add_output_args(p)
    p.set_defaults(func=cmd_workloads)
    parser.set_defaults(func=cmd_main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `simulate` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
