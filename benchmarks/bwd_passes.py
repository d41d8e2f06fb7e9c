"""The GNA backward's passes timed one by one beside the model's prediction of each (issue 16 item 4).

    python benchmarks/bwd_passes.py [--out FILE.csv] [--commit SHA] [--cases SUBSTRINGS]

GPU only (bf16, batch 1, 24 heads, head dim 128). Per layer: the backward as it ships (its first call's pick), then
each of its launches timed alone with :func:`sparsesim.kernels.timing.time_ms` on the same tensors: Delta (with
the LSE/Delta rows the streams may need), dQ (with its streamed operands' permutation where it has one) and dK/dV
(likewise), and the whole backward. The model's passes (``simulator.cost.backward_passes``) are priced at the tiles
each kernel ran (``GNABackward.dq_plan`` / ``dkv_plan``), so a miss of the whole backward can be traced to a pass.
Layers: the issue's 3D and 2D ones, a never-fitted 3D layer the model predicts 18% fast
(``h200_backprop_heldout.toml``: 20x30x40, window 12x16x16), HunyuanVideo and FLUX.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backward_bench import git_commit  # noqa: E402
from kernel_cases import rewrite_csv  # noqa: E402

HEADS, HEAD_DIM = 24, 128
CASES = [  # name, layout, window, stride, (q_tile, kv_tile) of the forward
    ("issue_3d_16x32x48_w8x16x16", (16, 32, 48), (8, 16, 16), (1, 1, 1), ((4, 8, 4), (4, 8, 4))),
    ("issue_2d_128x128_w32x32", (128, 128), (32, 32), (1, 1), ((16, 8), (16, 8))),
    ("heldout_3d_20x30x40_w12x16x16", (20, 30, 40), (12, 16, 16), (1, 1, 1), ((2, 8, 8), (2, 8, 8))),
    ("hunyuan_w18x24x24_s16x8x8", (30, 48, 80), (18, 24, 24), (16, 8, 8), ((2, 8, 8), (2, 8, 8))),
    ("flux_w80x80_s16x16", (256, 256), (80, 80), (16, 16), ((16, 8), (16, 8))),
]
COLUMNS = ["gpu", "date", "commit", "torch", "triton", "case", "pass", "tiles", "layout", "measured_ms",
           "predicted_ms", "error"]


def model_passes(size: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...], dq_tiles: tuple,
                 dkv_tiles: tuple) -> dict[str, float]:
    """The shipped ``triton`` profile's Delta, dQ and dK/dV passes at the tiles the kernels ran."""
    from sparsesim.hwmodels import load_gpu
    from sparsesim.hwmodels.profiles import load_profile
    from sparsesim.simulator.cost import Problem, backward_passes
    from sparsesim.simulator.patterns import GNAPattern
    from sparsesim.simulator.tiling import tilemap

    gpu = load_gpu("H200")
    prof = load_profile("triton", gpu)
    pattern = GNAPattern(input_size=size, window=window, stride=stride)
    problem = Problem(heads=HEADS, head_dim=HEAD_DIM)
    tokens, pairs = math.prod(size), float(pattern.visible_pairs())
    dq = backward_passes(gpu, prof, problem, tilemap(pattern, *dq_tiles, "box"), tokens, pairs)
    dkv = backward_passes(gpu, prof, problem, tilemap(pattern, *dkv_tiles, "box"), tokens, pairs)
    permute = {"dq": 0.0, "dkdv": 0.0}
    for name, bp in (("dq", dq), ("dkdv", dkv)):
        if bp.permute is not None:  # the model's one pass moves both kernels' operands: half each
            permute[name] = bp.permute.ms / 2
    return {"delta": dq.delta.ms, "dq": dq.dq.ms + permute["dq"], "dkdv": dkv.dkdv.ms + permute["dkdv"],
            "all": dq.delta.ms + dq.dq.ms + dkv.dkdv.ms + permute["dq"] + permute["dkdv"]}


def run_case(env: dict[str, str], name: str, size: tuple[int, ...], window: tuple[int, ...],
             stride: tuple[int, ...], tiles: tuple) -> list[dict[str, Any]]:
    import torch

    from sparsesim.kernels import gna_bwd
    from sparsesim.kernels.gna import gna_forward
    from sparsesim.kernels.timing import time_ms

    g = torch.Generator(device="cuda").manual_seed(math.prod(size))
    q, k, v, do = (torch.randn(1, *size, HEADS, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16)
                   for _ in range(4))
    kw = {"window": window, "stride": stride, "q_tile": tiles[0], "kv_tile": tiles[1]}
    out, lse = gna_forward(q, k, v, **kw)
    before = set(gna_bwd._BACKWARDS.items)
    gna_bwd.gna_backward(do, q, k, v, out, lse, **kw)  # the first call's pick
    (key,) = set(gna_bwd._BACKWARDS.items) - before
    bwd = gna_bwd._BACKWARDS.items[key]
    lv = (q, k, v, do, torch.empty_like(q), torch.empty_like(k), torch.empty_like(v))
    permuted_rows = bwd.dkv_stream_layout != "gather"
    delta, pair = gna_bwd._delta(out, do, gna_bwd._rows_config()[0], permuted_rows)
    measured = {
        "delta": time_ms(lambda: gna_bwd._delta(out, do, gna_bwd._rows_config()[0], permuted_rows)),
        "dq": time_ms(lambda: gna_bwd._launch_dq(bwd, lv, lse, delta, None)),
        "dkdv": time_ms(lambda: gna_bwd._launch_dkdv(bwd, lv, lse, delta, None, None, None, pair)),
        "all": time_ms(lambda: gna_bwd.gna_backward(do, q, k, v, out, lse, **kw)),
    }
    dq_tiles = (bwd.dq_plan.schedule.q_tile, bwd.dq_plan.schedule.kv_tile)
    dkv_tiles = (bwd.dkv_plan.schedule.q_tile, bwd.dkv_plan.schedule.kv_tile)
    predicted = model_passes(size, window, stride, dq_tiles, dkv_tiles)
    tiles_of = {"delta": "", "dq": f"q{dq_tiles[0]} kv{dq_tiles[1]}", "dkdv": f"q{dkv_tiles[0]} kv{dkv_tiles[1]}",
                "all": ""}
    layout_of = {"delta": "", "dq": bwd.dq_stream_layout, "dkdv": bwd.dkv_stream_layout, "all": ""}
    return [{**env, "case": name, "pass": p, "tiles": tiles_of[p], "layout": layout_of[p], "measured_ms": ms,
             "predicted_ms": predicted[p], "error": predicted[p] / ms - 1} for p, ms in measured.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bwd_passes.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--commit", default=None)
    parser.add_argument("--cases", default="", help="comma-separated substrings of the case names")
    args = parser.parse_args(argv)
    import torch
    import triton

    if not torch.cuda.is_available():
        print("bwd_passes: no CUDA device; this benchmark runs on a GPU only", file=sys.stderr)
        return 2
    env = {"gpu": torch.cuda.get_device_name(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
           "commit": args.commit or git_commit(), "torch": torch.__version__, "triton": triton.__version__}
    wanted = [w for w in args.cases.split(",") if w]
    rows: list[dict[str, Any]] = []
    for name, size, window, stride, tiles in CASES:
        if wanted and not any(w in name for w in wanted):
            continue
        rows += run_case(env, name, size, window, stride, tiles)
        for r in rows[-4:]:
            print(f"{name:32s} {r['pass']:5s} {r['tiles']:32s} {r['layout']:8s} measured {r['measured_ms']:9.3f} ms"
                  f"  predicted {r['predicted_ms']:9.3f}  error {r['error']:+.1%}", flush=True)
        if args.out is not None:
            rewrite_csv(args.out, COLUMNS, rows)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
