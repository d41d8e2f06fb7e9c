"""GNA forward on the two perfectly block-sparse layers of issue 17, each of our kernels beside dense cuDNN, one run.

    python benchmarks/gna_ws_bench.py --out FILE.csv [--commit SHA]

GPU only (bf16, batch 1, 24 heads, head dim 128): HunyuanVideo 30x48x80 window 18x24x24 stride 16x8x8 and
FLUX-4K 256x256 window 80x80 stride 16x16, tiles (2, 8, 8) / (16, 8) as kernels/NOTES.md times them; and a 1D
layer (32K tokens, window and stride 2048, 128-token tiles). Rows (whole
calls, median of :func:`sparsesim.kernels.timing.time_ms`):

- ``cudnn_dense``: SDPA's cuDNN backend, no mask (the issue's dense baseline, ``[B, H, N, D]``);
- ``ours_default``: :func:`~sparsesim.kernels.gna_attention` as it runs by default (on Hopper these layers take
  the warp-specialized Gluon kernel on permuted Q/K/V: ``GNALaunch.ws_route``);
- ``ours_triton``: the same call with ``SPARSESIM_FWD_KERNEL=triton`` (the Triton GNA kernel);
- ``ours_kvmask``: the default call with the ws kernel masking the keys in every tile (``mask_kv=True``, as it
  did before 2026-11-30; the default masks only where the keys end inside a tile);
- ``ours_persistent`` / ``ours_per_item``: the default call with the ws kernel run persistent / with a program
  per work item (the default picks by ``gluon_fwd.persistent_for``);
- ``ours_late``: the default call with ``early=False`` (the Q buffer handed back after an item's last softmax,
  and the next item's K/V loads after the Q load, as before session 27);
- ``ours_dense``: :func:`~sparsesim.kernels.attention` on the same tokens (the tile bound's denominator; the
  note says which kernel it ran); ``ours_dense_ws``: the warp-specialized kernel called directly.

``vs_cudnn`` = cuDNN's time / the row's; ``tile_bound`` = (our dense / the row) / the simulator's
``tile_speedup``; ``rel_err``: ``||out - triton|| / ||triton||`` of the default call's output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import math
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backward_bench import git_commit  # noqa: E402
from kernel_cases import rewrite_csv  # noqa: E402

HEADS, HEAD_DIM = 24, 128
CASES = [
    ("hunyuan_w18x24x24_s16x8x8", (30, 48, 80), (18, 24, 24), (16, 8, 8), ((2, 8, 8), (2, 8, 8))),
    ("flux_w80x80_s16x16", (256, 256), (80, 80), (16, 16), ((16, 8), (16, 8))),
    ("1d_32k_w2048_s2048", (32768,), (2048,), (2048,), ((128,), (128,))),
    ("2d_128x128_w16x16_s16x16", (128, 128), (16, 16), (16, 16), ((16, 8), (16, 8))),
]
COLUMNS = ["gpu", "date", "commit", "torch", "triton", "case", "impl", "ms", "vs_cudnn", "tile_speedup",
           "tile_bound", "rel_err", "note"]


def _forced(real: Any, knob: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    """``real(*args, **kwargs)`` with ``knob`` overriding the caller's keywords."""
    return real(*args, **{**kwargs, **knob})


def run_case(env: dict[str, str], name: str, size: tuple[int, ...], window: tuple[int, ...],
             stride: tuple[int, ...], q_tile: tuple[int, ...], kv_tile: tuple[int, ...]) -> list[dict[str, Any]]:
    """One layer's rows."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sparsesim.kernels import attention, dense, gluon_fwd, gna_attention
    from sparsesim.kernels.gluon_fwd import gluon_dense_forward
    from sparsesim.kernels.timing import time_ms
    from sparsesim.simulator import simulate

    n = math.prod(size)
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(1, *size, HEADS, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    kw = {"window": window, "stride": stride, "q_tile": q_tile, "kv_tile": kv_tile}
    sim = simulate(input_size=size, window=window, stride=stride, q_tile=q_tile, kv_tile=kv_tile, gpu="H200",
                   heads=HEADS, head_dim=HEAD_DIM, batch=1, dtype="bf16")
    qd, kd, vd = (x.reshape(1, n, HEADS, HEAD_DIM) for x in (q, k, v))
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (qd, kd, vd))
    times: dict[str, float] = {}
    with torch.no_grad():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            times["cudnn_dense"] = time_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt))
        times["ours_dense"] = time_ms(lambda: attention(qd, kd, vd))
        launch = next(reversed(dense._LAUNCHES.items.values()))
        dense_note = "ws kernel" if launch.ws else "Triton kernel"
        times["ours_dense_ws"] = time_ms(lambda: gluon_dense_forward(qd, kd, vd))
        os.environ["SPARSESIM_FWD_KERNEL"] = "triton"
        try:
            ref = gna_attention(q, k, v, **kw)
            times["ours_triton"] = time_ms(lambda: gna_attention(q, k, v, **kw))
        finally:
            del os.environ["SPARSESIM_FWD_KERNEL"]
        out = gna_attention(q, k, v, **kw)
        err = float((out.float() - ref.float()).norm() / ref.float().norm())
        times["ours_default"] = time_ms(lambda: gna_attention(q, k, v, **kw))
        real = gluon_fwd.ws_forward  # the same call with knobs of the ws kernel forced
        for impl, knob in (("ours_persistent", {"persistent": True}), ("ours_per_item", {"persistent": False}),
                           ("ours_kvmask", {"mask_kv": True}), ("ours_late", {"early": False})):
            gluon_fwd.ws_forward = functools.partial(_forced, real, knob)
            try:
                times[impl] = time_ms(lambda: gna_attention(q, k, v, **kw))
            finally:
                gluon_fwd.ws_forward = real
    rows = []
    for impl, ms in times.items():
        sparse = impl.startswith("ours_") and impl not in ("ours_dense", "ours_dense_ws")
        rows.append({**env, "case": name, "impl": impl, "ms": ms, "vs_cudnn": times["cudnn_dense"] / ms,
                     "tile_speedup": sim.tile_speedup,
                     "tile_bound": times["ours_dense"] / ms / sim.tile_speedup if sparse else None,
                     "rel_err": err if impl == "ours_default" else None,
                     "note": f"attention() ran the {dense_note}" if impl == "ours_dense" else ""})
        r = rows[-1]
        print(f"{name:28s} {impl:13s} {ms:9.3f} ms  vs cuDNN {r['vs_cudnn']:6.2f}x"
              + (f"  tile bound {r['tile_bound']:.3f}" if sparse else "")
              + (f"  rel_err {err:.2e}" if impl == "ours_default" else ""), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--commit", default=None)
    args = ap.parse_args(argv)
    import torch
    import triton

    env = {"gpu": torch.cuda.get_device_name(), "date": dt.date.today().isoformat(),
           "commit": args.commit or git_commit(), "torch": torch.__version__, "triton": triton.__version__}
    rows: list[dict[str, Any]] = []
    for name, size, window, stride, (q_tile, kv_tile) in CASES:
        rows += run_case(env, name, size, window, stride, q_tile, kv_tile)
        if args.out is not None:
            rewrite_csv(args.out, COLUMNS, rows)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
