"""Summarize a committed benchmark CSV (no GPU): the README's kernel tables, with the simulator beside.

    python benchmarks/kernel_summary.py [CSV]     # default: the newest kernels/results/bench_*.csv

Every number comes from the CSV's measured times, except the simulator's columns (``tile_x``, the
tile-level bound with the case's tiles; ``model_ms`` and ``model_x``, the cost model's kernel time and
kernel speedup over our dense kernel with the ``triton`` profile for both). Speedups of our kernels are
taken over our own dense kernel (``ours_x``, the issue's "fraction of tile_speedup") and over dense
cuDNN at the same N. The fitted ``triton`` profile was fitted to the validation set, which holds most
of these configurations too, so ``model_err`` is a fit check, not validation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from kernel_cases import GNA_CASES, HEADS, case_flops, topk_block_map

from sparsesim.cli.output import FORMATS, render
from sparsesim.hwmodels import load_gpu
from sparsesim.hwmodels.profiles import load_profile
from sparsesim.simulator import simulate
from sparsesim.simulator.route import without_ws

RESULTS = Path(__file__).resolve().parent.parent / "kernels" / "results"


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
        flops = case_flops(n)
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
        # run3 (182dc8c) predates the warp-specialized forward: the Triton kernels ran every call
        ours = without_ws(load_profile("triton", load_gpu(gpu)))
        model = case.simulate(gpu, kernel_profile=ours, dense_profile=ours)
        ours_dense, cudnn = _ms(df, f"dense_N{n}", "ours_dense"), _ms(df, f"dense_N{n}", "cudnn_dense")
        total, flex = _ms(df, case.name, "ours_gna_total"), _ms(df, case.name, "flex_gna")
        rows.append({
            "case": case.name, "tiles": f"{_shape(case.q_tile)}/{_shape(case.kv_tile)}",
            "block_sparse": bool(sim.block_sparse),
            "tile_x": sim.tile_speedup, "kernel_ms": kernel, "model_ms": model.predicted_ms,
            "model_err": model.predicted_ms / kernel - 1, "total_ms": total, "model_x": model.kernel_speedup,
            "ours_x": ours_dense / kernel, "of_tile_x": ours_dense / kernel / sim.tile_speedup,
            "vs_cudnn_kernel": cudnn / kernel, "vs_cudnn_total": cudnn / total,
            "flex_ms": flex, "flex_over_ours": flex / kernel,
        })
    return pd.DataFrame(rows)


def block_sparse_table(df: pd.DataFrame) -> pd.DataFrame:
    """Explicit block maps: our kernel vs our dense kernel (and the simulator's bound) and FlexAttention.

    The map is rebuilt from the case's name (``block_sparse_N<tokens>_top<keep>``, 128-token blocks,
    the benchmark's seeded generator) and simulated, so the bound never comes from a note.
    """
    rows = []
    for case in sorted({c for c in df["case"] if str(c).startswith("block_sparse_N")}):
        n_text, keep_text = str(case)[len("block_sparse_N"):].split("_top")
        n, keep, tile = int(n_text), int(keep_text), 128
        rec = simulate(input_size=n, block_map=topk_block_map(n, tile, keep), q_tile=tile, kv_tile=tile, heads=HEADS)
        ours, flex = _ms(df, case, "ours_block_sparse"), _ms(df, case, "flex_block_sparse")
        ours_x = _ms(df, f"dense_N{n}", "ours_dense") / ours
        rows.append({"case": case, "tile_x": rec.tile_speedup, "kernel_ms": ours, "ours_x": ours_x,
                     "of_tile_x": ours_x / rec.tile_speedup, "flex_ms": flex, "flex_over_ours": flex / ours})
    return pd.DataFrame(rows)


def layout_table(df: pd.DataFrame) -> pd.DataFrame:
    """Whole calls with each K/V layout forced, side by side (runs that recorded them)."""
    rows = []
    for case in GNA_CASES:
        row: dict[str, object] = {"case": case.name, "tokens": case.tokens}
        for layout in ("direct", "gather", "permute"):
            row[f"{layout}_ms"] = _ms(df, case.name, f"ours_gna_{layout}_total")
        sel = df[(df["case"] == case.name) & (df["impl"] == "ours_gna_total")]
        row["auto"] = str(sel["kv_layout"].iloc[0]) if "kv_layout" in df.columns and len(sel) else "-"
        if any(row[f"{x}_ms"] == row[f"{x}_ms"] for x in ("gather", "permute")):
            rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/kernel_summary.py", description=__doc__.splitlines()[0])
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
        print(f"error: {path} lacks columns {sorted(missing)}; allowed: a CSV written by benchmarks/kernel_bench.py",
              file=sys.stderr)
        return 2
    head = df.iloc[0]
    print(f"{path.name}: {head['gpu']}, {head['date']}, commit {head['commit']}, torch {head['torch']}, "
          f"triton {head['triton']}\n")
    for i, table in enumerate((dense_table(df), gna_table(df), block_sparse_table(df))):
        print(("\n" if i else "") + render(table.dropna(axis=1, how="all"), args.format), end="")
    layouts = layout_table(df)
    if len(layouts):
        print()
        print(render(layouts, args.format), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
