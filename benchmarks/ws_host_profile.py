"""Where the host time of a repeated warp-specialized call goes (GPU only; issue 16's 50 us per call).

    python benchmarks/ws_host_profile.py [--out FILE.csv] [--profile-out FILE.txt] [--commit SHA]

A block-sparse call that takes the warp-specialized Hopper forward (8192 tokens, 24 heads, d128, a prepared
128x128 map): host microseconds per call (median of 5 loops of 300 calls, the GPU kept busy by a sleep kernel so
the host never waits) of the whole call and of its parts, each timed alone the same way:

- ``call``: ``block_sparse_attention`` on the prepared map; ``launch_run``: the cached launch's ``run``;
- ``ws_forward``: :func:`~sparsesim.kernels.gluon_fwd.ws_forward` with the launch's cache;
- ``supported``: the per-call check of the tensors; ``descriptors``: the three TMA descriptors from templates;
- ``compiled_launch``: the compiled kernel launched with prebuilt arguments (Triton's launcher: the tensor
  descriptors filled on the host, the launch itself);
- ``fill_descriptors``: the launcher's three host TMA descriptor fills alone;
- ``triton_route``: the same call on the Triton kernel (``SPARSESIM_FWD_KERNEL=triton``, a new map object so the
  launch is rebuilt).

Then cProfile over 300 whole calls (top functions by own time) into ``--profile-out``. One CSV row per part,
with GPU, torch, triton and commit.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from block_map_bench import Rows, git_commit, random_map  # noqa: E402

TOKENS, HEADS, HEAD_DIM, TILE, CALLS = 8192, 24, 128, 128, 300


def host_us(fn: Any, calls: int = CALLS) -> float:
    """Median over 5 loops of host microseconds per call, queued behind a sleep kernel."""
    import torch

    out = []
    for _ in range(5):
        torch.cuda.synchronize()
        torch.cuda._sleep(int(1e9))
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
    return statistics.median(out) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--profile-out", type=Path)
    ap.add_argument("--commit", default=None)
    args = ap.parse_args()

    import torch
    import triton

    from sparsesim.kernels import block_sparse_attention, prepare_block_map
    from sparsesim.kernels import gluon_fwd as ws

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn((1, TOKENS, HEADS, HEAD_DIM), generator=g, device=dev).to(torch.bfloat16)
               for _ in range(3))
    out = torch.empty_like(q)
    bm_np = random_map(HEADS, TOKENS // TILE, 0.08)
    rows = Rows({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                 "commit": args.commit or git_commit(), "date": time.strftime("%Y-%m-%d"), "tokens": TOKENS,
                 "heads": HEADS})
    bm = prepare_block_map(bm_np, seq_len=TOKENS, q_tile=TILE, kv_tile=TILE, device=dev)

    def call() -> Any:
        return block_sparse_attention(q, k, v, bm, out=out)

    call()
    torch.cuda.synchronize()
    from sparsesim.kernels.block_sparse import _LAUNCHES  # the launch the call cached

    launch = next(iter(_LAUNCHES.items.values()))
    lists = bm.fwd_lists()
    rows.add("route", note=f"ws_scale={launch.ws_scale} (None: the Triton kernel)")
    rows.guard("call", lambda: rows.add("call", host_us=host_us(call)))
    rows.guard("launch_run", lambda: rows.add("launch_run", host_us=host_us(
        lambda: launch.run(q, k, v, out, lists))))
    if launch.ws_scale is not None:
        cache = launch.compiled
        rows.guard("ws_forward", lambda: rows.add("ws_forward", host_us=host_us(
            lambda: ws.ws_forward(q, k, v, out, None, launch.ws_scale, lists=lists, map_heads=launch.args[4],
                                  block_n=launch.kv_tile, cache=cache))))
        rows.guard("supported", lambda: rows.add("supported", host_us=host_us(lambda: ws.supported(q, k, v, out))))
        static = next(val for key, val in cache.items() if isinstance(key, tuple) and key[:1] == ("ws-static",))
        layouts, views, ints, grid, constexprs = static
        descs = tuple(ws._descriptor(x.view(-1, cols), block, layout, cache)
                      for x, (cols, block), layout in zip((q, k, v), views, layouts, strict=True))
        rows.guard("descriptors", lambda: rows.add("descriptors", host_us=host_us(lambda: tuple(
            ws._descriptor(x.view(-1, cols), block, layout, cache)
            for x, (cols, block), layout in zip((q, k, v), views, layouts, strict=True)))))
        hit = next(val for key, val in cache.items() if isinstance(key, tuple) and key[:1] == ("ws",))
        kv_num, kv_idx, tail = lists
        kargs = (*descs, out, out, kv_num, kv_idx, tail, *ints)
        cvals = tuple(constexprs.values())
        rows.guard("compiled_launch", lambda: rows.add("compiled_launch", host_us=host_us(
            lambda: hit[grid](*kargs, *cvals))))

        def fills() -> None:
            from triton.backends.nvidia.driver import make_tensordesc_arg

            metas = getattr(hit.metadata, "tensordesc_meta", None) or [None] * 3
            for d, meta in zip(descs, metas, strict=False):
                make_tensordesc_arg(d, meta)

        rows.guard("fill_descriptors", lambda: rows.add("fill_descriptors", host_us=host_us(fills)))
        rows.add("scratch", note=f"global_scratch_size={getattr(hit.metadata, 'global_scratch_size', '?')} "
                                 f"profile_scratch_size={getattr(hit.metadata, 'profile_scratch_size', '?')}")

    def triton_route() -> None:
        os.environ["SPARSESIM_FWD_KERNEL"] = "triton"
        try:
            bm2 = prepare_block_map(bm_np, seq_len=TOKENS, q_tile=TILE, kv_tile=TILE, device=dev)
            block_sparse_attention(q, k, v, bm2, out=out)
            rows.add("triton_route", host_us=host_us(lambda: block_sparse_attention(q, k, v, bm2, out=out)))
        finally:
            os.environ.pop("SPARSESIM_FWD_KERNEL", None)

    rows.guard("triton_route", triton_route)

    prof = cProfile.Profile()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(1e9))
    prof.enable()
    for _ in range(CALLS):
        call()
    prof.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    text = buf.getvalue()
    print(text[:6000])
    if args.profile_out:
        args.profile_out.write_text(text)
    if args.out:
        args.out.write_text(rows.csv())
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
