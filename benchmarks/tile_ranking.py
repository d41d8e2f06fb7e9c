"""Does the model rank tiles like the GPU does? Rank correlation and the pick's loss, per shape (CPU).

    python benchmarks/tile_ranking.py --measurements FILE.csv [--kernel-profile triton] [--format markdown]

``FILE.csv`` is ``simulate validate`` output of one shape measured with many tile pairs (for example
``benchmarks/validation/h200_tiles.toml``, whose shapes are kept out of every fit). Per shape: the
Spearman correlation between predicted and measured call times over the measured pairs, the model's
pick among them and how much slower it measured than the fastest (``pick_loss``), and the same for the
GPU file's default tiles where they were measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

from sparsesim.cli.output import FORMATS, render
from sparsesim.hwmodels import load_gpu
from sparsesim.simulator import simulate
from sparsesim.simulator.errors import ConfigError

SHAPE_KEYS = ["input_size", "window", "stride", "dilation", "causal", "heads", "heads_kv", "head_dim", "batch", "dtype"]


def _ints(text: str) -> tuple[int, ...] | None:
    return tuple(int(x) for x in text.split("x")) if text else None


def rank_table(df: pd.DataFrame, gpu: str, profile: str) -> pd.DataFrame:
    """One row per measured shape: pairs, Spearman rho, the pick's loss, the default tiles' loss."""
    spec = load_gpu(gpu)
    rows = []
    ok = df[(df["kernel"] == "gna") & (df["ok"] == "True") & (df["measured_ms"] != "")]
    for key, group in ok.groupby(SHAPE_KEYS, sort=False):
        shape = dict(zip(SHAPE_KEYS, key, strict=True))
        size = _ints(shape["input_size"])
        kw = {"input_size": size, "window": _ints(shape["window"]), "stride": _ints(shape["stride"]) or (),
              "dilation": _ints(shape["dilation"]) or (),
              "causal": tuple(c == "1" for c in shape["causal"]) if shape["causal"] else (),
              "heads": int(shape["heads"]), "heads_kv": int(shape["heads_kv"]), "head_dim": int(shape["head_dim"]),
              "batch": int(shape["batch"]), "dtype": shape["dtype"]}
        measured, predicted, tiles = [], [], []
        for rec in group.to_dict(orient="records"):
            q, kv = _ints(rec["q_tile"]), _ints(rec["kv_tile"])
            r = simulate(q_tile=q, kv_tile=kv, gpu=spec, kernel_profile=profile, **kw)
            measured.append(float(rec["measured_ms"]))
            predicted.append(r.call_ms)
            tiles.append((q, kv))
        if len(tiles) < 3:
            continue
        rho = float(spearmanr(predicted, measured).statistic)
        best = min(measured)
        pick = min(range(len(tiles)), key=lambda i: (predicted[i], tiles[i]))
        default = spec.tiles_for(len(size))
        loss_default = next((measured[i] / best - 1 for i, t in enumerate(tiles) if t == default), float("nan"))
        rows.append({"shape": f"{shape['input_size']} w{shape['window']} s{shape['stride'] or 1}", "pairs": len(tiles),
                     "spearman": rho, "fastest": "/".join("x".join(map(str, t)) for t in tiles[measured.index(best)]),
                     "fastest_ms": best, "pick": "/".join("x".join(map(str, t)) for t in tiles[pick]),
                     "pick_ms": measured[pick], "pick_loss": measured[pick] / best - 1,
                     "default_loss": loss_default})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/tile_ranking.py", description=__doc__.splitlines()[0])
    parser.add_argument("--measurements", nargs="+", required=True, type=Path, help="simulate validate CSVs")
    parser.add_argument("--gpu", default="H200", help="the GPU the measurements were taken on")
    parser.add_argument("--kernel-profile", default="triton", help="the profile whose predictions rank the tiles")
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    args = parser.parse_args(argv)
    try:
        df = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in args.measurements])
        table = rank_table(df, args.gpu, args.kernel_profile)
    except (OSError, KeyError, ValueError, ConfigError) as exc:
        print(f"tile_ranking: error: {exc}", file=sys.stderr)
        return 2
    print(render(table, args.format), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
