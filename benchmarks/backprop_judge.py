"""The model against measured forward and forward+backward times it was never fitted to (CPU).

    python benchmarks/backprop_judge.py [--measurements FILE.csv ...] [--route triton|model] [--format markdown]

Reads ``benchmarks/backward_bench.py`` CSVs (H200, bf16, batch 1, 24 heads, head dim 128; default: the newest run,
:data:`DEFAULT`) and predicts each measured row with the shipped profiles: ``ours_gna`` with
``triton`` at the row's tiles, ``ours_dense`` with ``triton``'s dense kernel, ``cudnn_dense`` with the GPU's
cuDNN profile; ``fwd`` rows as forward calls, ``fwdbwd`` rows with ``--backprop``. No row of these files is in
any fit (the ``--backprop`` terms are fitted to ``simulate validate --backprop`` rows only), so the errors are
out-of-sample. FlexAttention rows have no model and are skipped. These files record no ``fwd_kernel``: the default
one (4441f9d) predates the warp-specialized forward, so ``triton`` prices every forward itself (``--route
triton``: :func:`~sparsesim.simulator.route.without_ws`); for files of the kernels as they ship now (282b27b on)
``--route model`` lets the model's route rule (the kernels' own) say which forward ran.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backward_bench import BATCH, CASES, HEAD_DIM, HEADS  # noqa: E402

from sparsesim.cli.output import FORMATS, render  # noqa: E402
from sparsesim.simulator import simulate  # noqa: E402
from sparsesim.simulator.errors import ConfigError  # noqa: E402
from sparsesim.simulator.route import without_ws  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: The model of each measured implementation: (kernel profile, the column of the result that is its time).
MODELLED = {"ours_gna": ("triton", "call_ms"), "ours_dense": ("triton", "dense_ms"),
            "cudnn_dense": ("cudnn", "dense_ms")}


def _tiles(text: Any) -> tuple[int, ...] | None:
    return tuple(int(x) for x in str(text).split("x")) if isinstance(text, str) and text else None


def judge(df: pd.DataFrame, gpu: str = "H200", route: str = "triton") -> pd.DataFrame:
    """One row per modelled measurement: measured and predicted ms and the error (predicted / measured - 1);
    ``route``: ``triton`` (every forward on the Triton kernels) or ``model`` (the model's route rule)."""
    from sparsesim.hwmodels import load_gpu
    from sparsesim.hwmodels.profiles import load_profile

    shapes = {name: (size, window, stride) for name, size, window, stride, _ in CASES}
    spec = load_gpu(gpu)
    ours = load_profile("triton", spec)
    ours = without_ws(ours) if route == "triton" else ours
    rows = []
    for rec in df.to_dict(orient="records"):
        impl, ms = rec.get("impl"), pd.to_numeric(rec.get("ms"), errors="coerce")
        if impl not in MODELLED or rec.get("case") not in shapes or not np.isfinite(ms):
            continue
        size, window, stride = shapes[rec["case"]]
        _, column = MODELLED[impl]
        q, kv = _tiles(rec.get("q_tile")), _tiles(rec.get("kv_tile"))
        tiles = {"q_tile": q, "kv_tile": kv} if q and kv else {}
        r = simulate(input_size=size, window=window, stride=stride, heads=HEADS, head_dim=HEAD_DIM, batch=BATCH,
                     dtype="bf16", gpu=gpu, backprop=rec["pass"] == "fwdbwd",
                     kernel_profile=ours, dense_profile=ours if impl == "ours_dense" else "cudnn", **tiles)
        predicted = float(getattr(r, column))
        rows.append({"case": rec["case"], "impl": impl, "pass": rec["pass"], "commit": rec.get("commit", ""),
                     "measured_ms": float(ms), "predicted_ms": predicted, "error": predicted / float(ms) - 1})
    return pd.DataFrame(rows)


#: The default file: the newest backward_bench run (the kernels as they ship; older runs timed older kernels).
DEFAULT = ROOT / "hwmodels" / "measurements" / "backward_bench_h200_2026-11-30_4441f9d.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/backprop_judge.py", description=__doc__.splitlines()[0])
    parser.add_argument("--measurements", nargs="+", type=Path, default=None, help="backward_bench.py CSVs")
    parser.add_argument("--route", choices=("triton", "model"), default="triton",
                        help="which forward ran: the Triton kernels (files before the ws forward) or the model's rule")
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    args = parser.parse_args(argv)
    try:
        paths = args.measurements or [DEFAULT]
        table = judge(pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in paths]), route=args.route)
        if table.empty:
            raise ConfigError(f"no modelled rows ({', '.join(MODELLED)}) in {', '.join(map(str, paths))}")
    except (OSError, KeyError, ValueError, ConfigError) as exc:
        print(f"backprop_judge: error: {exc}", file=sys.stderr)
        return 2
    summary = pd.DataFrame([{"impl": impl, "pass": p, "rows": len(g), "mape": g["error"].abs().mean(),
                             "mean_error": g["error"].mean(), "worst": g["error"].abs().max()}
                            for (impl, p), g in table.groupby(["impl", "pass"], sort=False)])
    print(render(table, args.format), end="")
    print()
    print(render(summary, args.format), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
