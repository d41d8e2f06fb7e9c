"""The GNA backward's passes timed one by one beside the model's prediction of each (issue 16 item 4).

    python benchmarks/bwd_passes.py [--out FILE.csv] [--commit SHA] [--cases SUBSTRINGS]
    python benchmarks/bwd_passes.py --fit FILE.csv ... [--judge VALIDATE.csv ...] [--write]

GPU only (bf16, batch 1, 24 heads, head dim 128). Per layer: the backward as it ships (its first call's pick), then
each of its launches timed alone with :func:`sparsesim.kernels.timing.time_ms` on the same tensors: Delta (with
the LSE/Delta rows the streams may need), dQ (with its streamed operands' permutation where it has one) and dK/dV
(likewise), and the whole backward. The model's passes (``simulator.cost.backward_passes``) are priced at the tiles
each kernel ran (``GNABackward.dq_plan`` / ``dkv_plan``), so a miss of the whole backward can be traced to a pass.
Layers: the issue's 3D and 2D ones, a never-fitted 3D layer the model predicts 18% fast
(``h200_backprop_heldout.toml``: 20x30x40, window 12x16x16), HunyuanVideo and FLUX, and three 1D layers (whose
backward streams gathered rows).

``--fit`` (CPU): fit the terms that set the passes apart (``backward.dq_mma_efficiency``, ``backward.mma_efficiency``
now dK/dV's, ``backward.mask_scale``) to these per-pass rows, the other backward terms as shipped; print each pass
before and after, and the forward+backward rows of ``--judge`` files (``simulate validate --backprop``, never fitted
to) before and after; ``--write`` puts the three values into hwmodels/calibration/triton.toml.
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
    # 1D (gathered streams), never in the per-pass fit of kernels/NOTES.md stop 28
    ("1d_32k_w2048", (32768,), (2048,), (1,), ((128,), (128,))),
    ("1d_16k_w2048_s256", (16384,), (2048,), (256,), ((128,), (128,))),
    ("1d_64k_w4096", (65536,), (4096,), (1,), ((128,), (128,))),
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


#: The terms ``--fit`` frees, with their bounds.
FREE = {"dq_mma_efficiency": (0.2, 1.0), "mma_efficiency": (0.2, 1.0), "mask_scale": (0.2, 20.0)}
PROFILE = Path(__file__).resolve().parent.parent / "hwmodels" / "calibration" / "triton.toml"


def _pass_rows(files: list[Path]) -> list[tuple[str, str, Any, int, float, float]]:
    """(case, pass, tile map at the tiles it ran, tokens, visible pairs per head, measured ms) of dQ/dK/dV rows."""
    import re

    import pandas as pd

    from sparsesim.simulator.patterns import GNAPattern
    from sparsesim.simulator.tiling import tilemap

    cases = {c[0]: c for c in CASES}
    rows = []
    for f in files:
        for _, r in pd.read_csv(f).iterrows():
            if r["pass"] not in ("dq", "dkdv") or r["case"] not in cases:
                continue
            _, size, window, stride, _ = cases[r["case"]]
            m = re.fullmatch(r"q\((.*)\) kv\((.*)\)", str(r["tiles"]))
            if m is None:
                raise SystemExit(f"bwd_passes: {f}: tiles {r['tiles']!r} not understood")
            q_tile, kv_tile = (tuple(int(x) for x in g.split(",")) for g in m.groups())
            pattern = GNAPattern(input_size=size, window=window, stride=stride)
            rows.append((r["case"], r["pass"], tilemap(pattern, q_tile, kv_tile, "box"), math.prod(size),
                         float(pattern.visible_pairs()), float(r["measured_ms"])))
    return rows


def _pass_ms(gpu: Any, prof: Any, row: tuple) -> float:
    from sparsesim.simulator.cost import Problem, backward_passes

    _, name, tm, tokens, pairs, _ = row
    bp = backward_passes(gpu, prof, Problem(heads=HEADS, head_dim=HEAD_DIM), tm, tokens, pairs)
    half = bp.permute.ms / 2 if bp.permute is not None else 0.0
    return (bp.dq.ms if name == "dq" else bp.dkdv.ms) + half


def fit(files: list[Path], judge: list[Path], write: bool) -> int:
    """``--fit``: see the module docstring."""
    import dataclasses

    import numpy as np
    from scipy.optimize import least_squares

    from sparsesim.hwmodels import load_gpu
    from sparsesim.hwmodels.profiles import load_profile
    from sparsesim.simulator.calibrate import load_rows, predicted_ms

    gpu = load_gpu("H200")
    shipped = load_profile("triton", gpu)
    rows = _pass_rows(files)
    measured = np.array([r[-1] for r in rows])

    def profile(x: Any) -> Any:
        terms = dict(zip(FREE, (float(v) for v in x), strict=True))
        return dataclasses.replace(shipped, backward=dataclasses.replace(shipped.backward, **terms))

    def errors(prof: Any) -> Any:
        return np.array([_pass_ms(gpu, prof, r) for r in rows]) / measured - 1

    lo, hi = zip(*FREE.values(), strict=True)
    x0 = [shipped.backward.dq_mma_efficiency or shipped.backward.mma_efficiency, shipped.backward.mma_efficiency,
          shipped.backward.mask_scale]
    res = least_squares(lambda x: np.log1p(errors(profile(x))), x0=np.clip(x0, lo, hi), bounds=(lo, hi))
    fitted = profile(res.x)
    before, after = errors(shipped), errors(fitted)
    print("fitted " + ", ".join(f"backward.{n} {v:.4g}" for n, v in zip(FREE, res.x, strict=True)))
    for r, e0, e1 in zip(rows, before, after, strict=True):
        print(f"  {r[0]:32s} {r[1]:5s} measured {r[-1]:9.3f} ms  error shipped {e0:+7.1%}  fitted {e1:+7.1%}")
    print(f"  per-pass MAPE: shipped {np.mean(np.abs(before)):.1%}, fitted {np.mean(np.abs(after)):.1%}")
    if judge:
        judged = [r for r in load_rows([str(f) for f in judge], gpu, ("gna", "block_sparse", "dense")) if r.backprop]
        for kernel in ("gna", "block_sparse", "dense", "all"):
            sel = [r for r in judged if kernel in ("all", r.kernel)]
            if sel:
                e0 = np.array([predicted_ms(r, gpu, shipped) / r.measured_ms - 1 for r in sel])
                e1 = np.array([predicted_ms(r, gpu, fitted) / r.measured_ms - 1 for r in sel])
                print(f"  never fitted, {kernel:12s} fwd+bwd rows {len(sel):3d}: MAPE shipped "
                      f"{np.mean(np.abs(e0)):.1%} (mean {np.mean(e0):+.1%}), fitted {np.mean(np.abs(e1)):.1%} "
                      f"(mean {np.mean(e1):+.1%})")
    if write:
        _write(dict(zip(FREE, (float(v) for v in res.x), strict=True)), files)
    return 0


def _write(values: dict[str, float], files: list[Path]) -> None:
    """The three values into the profile's [backward] section (added where absent) and its sources."""
    import re

    from sparsesim.simulator.files import check_output, write_text

    check_output(PROFILE, "--write")
    text = PROFILE.read_text()
    head, sep, rest = text.partition("[backward]\n")
    body, nxt, tail = rest.partition("\n[")
    body = body.rstrip("\n")
    for name, value in values.items():
        line = f"{name} = {value!r}"
        body, n = re.subn(rf"^{name} = .*$", line, body, flags=re.M)
        if not n:
            body += "\n" + line
    body += "\n"
    names = ", ".join(str(f) for f in files)
    source = (f'passes = "benchmarks/bwd_passes.py --fit: backward.dq_mma_efficiency, mma_efficiency (dK/dV) and '
              f'mask_scale fitted to the per-pass rows of {names}"')
    tail = re.sub(r"^passes = .*$\n?", "", tail, flags=re.M).replace("sources]\n", "sources]\n" + source + "\n", 1)
    write_text(head + sep + body + nxt + tail, PROFILE, "--write")
    print(f"wrote {PROFILE}")


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
    parser.add_argument("--fit", nargs="+", type=Path, default=[], help="CSVs of this script: fit the pass terms")
    parser.add_argument("--judge", nargs="+", type=Path, default=[],
                        help="with --fit: validate --backprop CSVs never fitted to, predicted before and after")
    parser.add_argument("--write", action="store_true", help="with --fit: write hwmodels/calibration/triton.toml")
    args = parser.parse_args(argv)
    if args.fit:
        return fit(args.fit, args.judge, args.write)
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
