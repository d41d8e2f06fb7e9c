"""Summarize a committed benchmark CSV (no GPU): the README's kernel tables, with the simulator beside.

    python -m sparsesim.kernels.summary [CSV]     # default: the newest kernels/results/bench_*.csv

Every number comes from the CSV's measured times, except the simulator's columns (``tile_x``, the
tile-level bound with the case's tiles; ``model_x``, the cost model's predicted speedup on the
H200 with the reference profile). Speedups of our kernels are taken over our own dense kernel
(``ours_x``, the issue's "fraction of tile_speedup") and over dense cuDNN at the same N.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from sparsesim.kernels.bench_cases import GNA_CASES
from sparsesim.simulator.output import FORMATS, render

RESULTS = Path(__file__).parent / "results"


def latest_csv() -> Path:
    """The newest full-run benchmark CSV under ``kernels/results``."""
    found = sorted(p for p in RESULTS.glob("bench_*.csv") if "_quick" not in p.name)
    if not found:
        raise FileNotFoundError(f"no bench_*.csv under {RESULTS}")
    return found[-1]


def _ms(df: pd.DataFrame, case: str, impl: str) -> float:
    sel = df[(df["case"] == case) & (df["impl"] == impl)]["ms"].dropna()
    return float(sel.iloc[0]) if len(sel) else float("nan")


def dense_table(df: pd.DataFrame) -> pd.DataFrame:
    """Dense kernels per N: ms and effective TFLOP/s, ours over cuDNN's throughput."""
    rows = []
    for case in sorted({c for c in df["case"] if str(c).startswith("dense_N")}, key=lambda c: int(c[7:])):
        ours, cudnn, flash = (_ms(df, case, f"{i}_dense") for i in ("ours", "cudnn", "flash"))
        n = int(case[7:])
        flops = 4.0 * 24 * n * n * 128
        rows.append({"N": n, "ours_ms": ours, "cudnn_ms": cudnn, "flash_ms": flash,
                     "ours_TFLOPs": flops / ours / 1e9, "cudnn_TFLOPs": flops / cudnn / 1e9,
                     "ours_vs_cudnn": cudnn / ours})
    return pd.DataFrame(rows)


def _shape(tile: tuple[int, ...]) -> str:
    return "x".join(map(str, tile))


def gna_table(df: pd.DataFrame, gpu: str = "H200") -> pd.DataFrame:
    """GNA cases: our kernel vs the simulator's bounds, dense cuDNN and FlexAttention."""
    rows = []
    for case in GNA_CASES:
        kernel = _ms(df, case.name, "ours_gna_kernel")
        if kernel != kernel:  # case not in this CSV
            continue
        n = case.tokens
        sim = case.simulate(gpu)
        ours_dense, cudnn = _ms(df, f"dense_N{n}", "ours_dense"), _ms(df, f"dense_N{n}", "cudnn_dense")
        total, flex = _ms(df, case.name, "ours_gna_total"), _ms(df, case.name, "flex_gna")
        rows.append({
            "case": case.name, "tiles": f"{_shape(case.q_tile)}/{_shape(case.kv_tile)}",
            "block_sparse": bool(sim["block_sparse"]),
            "tile_x": sim["tile_speedup"], "model_x": sim["predicted_speedup"],
            "kernel_ms": kernel, "permute_ms": _ms(df, case.name, "ours_permute_qkv_o"), "total_ms": total,
            "ours_x": ours_dense / kernel, "of_tile_x": ours_dense / kernel / sim["tile_speedup"],
            "vs_cudnn_kernel": cudnn / kernel, "vs_cudnn_total": cudnn / total,
            "flex_ms": flex, "flex_over_ours": flex / kernel,
        })
    return pd.DataFrame(rows)


def block_sparse_table(df: pd.DataFrame) -> pd.DataFrame:
    """Explicit block maps: our kernel vs our dense kernel (and the simulator's bound) and FlexAttention."""
    rows = []
    for case in sorted({c for c in df["case"] if str(c).startswith("block_sparse_N")}):
        n = int(str(case)[len("block_sparse_N"):].split("_")[0])
        ours, flex = _ms(df, case, "ours_block_sparse"), _ms(df, case, "flex_block_sparse")
        note = df[(df["case"] == case) & (df["impl"] == "ours_block_sparse")]["note"].astype(str)
        found = re.search(r"sim_tile_speedup=([0-9.]+)", note.iloc[0]) if len(note) else None
        tile_x = float(found.group(1)) if found else float("nan")
        ours_x = _ms(df, f"dense_N{n}", "ours_dense") / ours
        rows.append({"case": case, "tile_x": tile_x, "kernel_ms": ours, "ours_x": ours_x, "of_tile_x": ours_x / tile_x,
                     "flex_ms": flex, "flex_over_ours": flex / ours})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsesim.kernels.summary", description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=Path, help="benchmark CSV (default: newest under kernels/results)")
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    args = parser.parse_args(argv)
    try:
        path = args.csv or latest_csv()
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError) as exc:
        print(f"error: cannot read the benchmark CSV: {exc}", file=sys.stderr)
        return 2
    missing = {"case", "impl", "ms", "gpu", "commit"} - set(df.columns)
    if missing:
        print(f"error: {path} lacks columns {sorted(missing)}; allowed: a CSV written by kernels.bench",
              file=sys.stderr)
        return 2
    head = df.iloc[0]
    print(f"{path.name}: {head['gpu']}, {head['date']}, commit {head['commit']}, torch {head['torch']}, "
          f"triton {head['triton']}\n")
    print(render(dense_table(df), args.format))
    print(render(gna_table(df), args.format))
    print(render(block_sparse_table(df), args.format), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
