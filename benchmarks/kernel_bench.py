"""GPU benchmark: correctness at full size, then side-by-side timings, one CSV per run.

Run on the GPU machine (bf16, batch 1, 24 heads, head dim 128)::

    python benchmarks/kernel_bench.py [--out DIR] [--quick] [--dry-run] [--cases a,b]

FLOPs: dense attention forward = 4 * B * H * N^2 * D (the core's rule, sparsesim.simulator.flops); every
row's effective TFLOP/s is that dense count divided by the row's time (sparse kernels included), as in the
GNA paper. Timing: ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs), median, at least
three timed repetitions. Correctness: fresh ``torch.randn`` bf16 inputs, outputs poisoned with NaN before
the call and checked all written, then ``||out - ref|| / ||ref||`` against an fp32 reference on 256 random
query rows with their exact masks (from ``axis_bounds``) must be < 1e-2.

GNA rows: ``ours_gna_total`` is a whole ``gna_attention`` call (its automatic K/V layout, named in
``kv_layout``), ``ours_gna_kernel`` the fused kernel alone on K/V already prepared (permuted or not);
``ours_gna_gather_total``/``ours_gna_permute_total``/``ours_gna_direct_total`` are whole calls with the
layout forced, side by side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import re
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernel_cases import (
    ALT_TILES,
    BATCH,
    DENSE_NS,
    GNA_CASES,
    HEAD_DIM,
    HEADS,
    QUICK_DENSE_NS,
    case_flops,
    dry_run_rows,
    floors,
    rewrite_csv,
    topk_block_map,
)

from sparsesim.kernels.timing import time_ms

COLUMNS = ["gpu", "date", "commit", "torch", "triton", "case", "impl", "kv_layout", "q_tile", "kv_tile", "ms",
           "eff_tflops", "rel_err", "tile_speedup", "flop_speedup", "block_sparse", "note"]
TOLERANCE = 1e-2
CHECK_ROWS = 256
RESULTS = Path(__file__).resolve().parent.parent / "kernels" / "results"


def git_commit(where: Path | None = None) -> str:
    """The checked-out commit's hash, or 'unknown' (a failing ``git rev-parse`` may print 'HEAD' itself)."""
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where or Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = res.stdout.strip()
    return sha if res.returncode == 0 and re.fullmatch(r"[0-9a-f]{7,64}", sha) else "unknown"


class Bench:
    """Collects rows; every measurement is wrapped so one failure records an error row."""

    def __init__(self, env: dict[str, str], path: Path | None = None) -> None:
        self.env = env
        self.rows: list[dict[str, Any]] = []
        self.path = path

    def save(self) -> None:
        """Rewrite the CSV with every row so far (a run cut off at its time limit keeps its rows)."""
        if self.path is not None:
            rewrite_csv(self.path, COLUMNS, self.rows)

    def add(self, case: str, impl: str, ms: float | None = None, flops: float | None = None,
            rel_err: float | None = None, note: str = "", **fields: Any) -> None:
        eff = flops / (ms * 1e-3) / 1e12 if ms and flops else None
        row = {**self.env, "case": case, "impl": impl, "ms": ms, "eff_tflops": eff, "rel_err": rel_err, "note": note,
               **{k: ("x".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in fields.items()}}
        self.rows.append(row)
        self.save()
        print(f"  {case:32s} {impl:22s} ms={_fmt(ms, 3)} TFLOP/s={_fmt(eff, 1)} rel_err={_fmt(rel_err, 5)} {note}",
              flush=True)

    def guard(self, case: str, impl: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # one failure must not stop the run
            msg = f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            traceback.print_exc(limit=3)
            self.add(case, impl, note=msg)
            return None


def _fmt(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


# ----------------------------------------------------------------------------- helpers on GPU

def rand_qkv(shape: tuple[int, ...], seed: int) -> tuple[Any, Any, Any]:
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    return tuple(torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(3))


def check_rows(out: Any, q: Any, k: Any, v: Any, mask_fn: Callable[[Any], Any], seed: int) -> float:
    """Relative error on random query rows against the fp32 reference with exact masks."""
    import torch

    from sparsesim.kernels.reference import rel_error, row_reference

    n = math.prod(q.shape[1:-2])
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n, generator=g)[:CHECK_ROWS].sort().values
    qf, kf, vf = (x.reshape(x.shape[0], n, x.shape[-2], x.shape[-1]) for x in (q, k, v))
    mask = torch.as_tensor(mask_fn(rows.numpy()), device=q.device)
    ref = row_reference(qf[:, rows.to(q.device)], kf, vf, mask)
    got = out.reshape(out.shape[0], n, out.shape[-2], out.shape[-1])[:, rows.to(q.device)]
    return rel_error(got, ref)


def poisoned_call(fn: Callable[[Any], Any], like: Any) -> tuple[Any, str]:
    """Call ``fn(out)`` on a NaN-filled buffer; note if any element stayed unwritten."""
    import torch

    out = torch.full_like(like, float("nan"))
    fn(out)
    torch.cuda.synchronize()
    unwritten = int(torch.isnan(out).sum())
    return out, ("" if unwritten == 0 else f"UNWRITTEN {unwritten} elements")


# ----------------------------------------------------------------------------- dense

def sdpa_fn(backend_name: str, qd: Any, kd: Any, vd: Any) -> Callable[[], Any]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend_name]

    def run() -> Any:
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(qd, kd, vd)

    return run


class DenseCache:
    """Dense timings per N (our kernel and cuDNN), reused by the GNA cases."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.ours: dict[int, float] = {}
        self.cudnn: dict[int, float] = {}

    def run(self, n: int, case: str | None = None, full: bool = True) -> None:
        import numpy as np

        from sparsesim.kernels.dense import attention

        case = case or f"dense_N{n}"
        b = self.bench
        flops = case_flops(n)
        q, k, v = rand_qkv((BATCH, n, HEADS, HEAD_DIM), seed=n)

        def ours() -> None:
            out, note = poisoned_call(lambda o: attention(q, k, v, out=o), q)
            err = check_rows(out, q, k, v, lambda r: np.ones((len(r), n), dtype=bool), seed=n)
            ms = time_ms(lambda: attention(q, k, v, out=out))
            self.ours[n] = ms
            b.add(case, "ours_dense", ms, flops, err, note + _status(err))

        b.guard(case, "ours_dense", ours)
        qd, kd, vd = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        for name in ("cudnn", "flash") if full else ("cudnn",):
            def sdpa(name: str = name) -> None:
                fn = sdpa_fn(name, qd, kd, vd)
                err = check_rows(fn().transpose(1, 2), q, k, v, lambda r: np.ones((len(r), n), dtype=bool), seed=n)
                ms = time_ms(fn)
                if name == "cudnn":
                    self.cudnn[n] = ms
                b.add(case, f"{name}_dense", ms, flops, err, _status(err))

            b.guard(case, f"{name}_dense", sdpa)


def _status(err: float) -> str:
    return "" if err < TOLERANCE else f" FAIL rel_err >= {TOLERANCE}"


# ----------------------------------------------------------------------------- GNA

def run_gna(bench: Bench, dense: DenseCache, case: Any, flex: Any, alt: list[tuple] | None = None) -> None:

    from sparsesim.kernels.gna import build_launch, gna_attention, unpermute_out
    from sparsesim.kernels.permute import tile_permute
    from sparsesim.simulator.patterns import GNAPattern, visible_mask

    n, name = case.tokens, case.name
    flops = case_flops(n)
    if n not in dense.ours or n not in dense.cudnn:
        dense.run(n, case=f"dense_N{n}", full=False)
    sim = case.simulate()
    facts = {"tile_speedup": sim.tile_speedup, "flop_speedup": sim.flop_speedup, "block_sparse": sim.block_sparse}
    q, k, v = rand_qkv((BATCH, *case.input_size, HEADS, HEAD_DIM), seed=n + 1)
    kw = case.pattern
    pattern = GNAPattern(input_size=case.input_size, window=case.window, stride=case.stride,
                         dilation=case.dilation or 1)

    def mask_fn(rows: Any) -> Any:
        return visible_mask(pattern, rows)

    layouts = ["gather", "permute"] + (["direct"] if len(case.input_size) == 1 and case.dilation is None else [])
    tiles = [(case.q_tile, case.kv_tile, "ours_gna")] + [(qt, kt, "ours_gna_alt") for qt, kt in (alt or [])]
    for q_tile, kv_tile, impl in tiles:
        def ours(q_tile: tuple = q_tile, kv_tile: tuple = kv_tile, impl: str = impl) -> None:
            launch = build_launch(q, k, v, q_tile=q_tile, kv_tile=kv_tile, scale=None, kv_layout=None, **kw,
                                  causal=False)
            auto = launch.kv_layout
            out, note = poisoned_call(lambda o: gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, out=o, **kw), q)
            err = check_rows(out, q, k, v, mask_fn, seed=n + 2)
            tags = {"q_tile": q_tile, "kv_tile": kv_tile, "kv_layout": auto, **facts}
            prepared = launch.prepare_kv(k, v)
            ms_k = time_ms(lambda: launch.launch(q, prepared, out))
            speed = dense.ours.get(n, float("nan")) / ms_k
            vs_cudnn = dense.cudnn.get(n, float("nan")) / ms_k
            ratios = f" measured_vs_ours_dense={speed:.2f} vs_cudnn_dense={vs_cudnn:.2f}"
            bench.add(name, f"{impl}_kernel", ms_k, flops, err, note + _status(err) + ratios, **tags)
            ms_t = time_ms(lambda: gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, out=out, **kw))
            bench.add(name, f"{impl}_total", ms_t, flops, err, "whole call", **tags)
            if impl != "ours_gna":
                return
            for layout in layouts:
                def forced(layout: str = layout) -> None:
                    o, note2 = poisoned_call(lambda o: gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, out=o,
                                                                     kv_layout=layout, **kw), q)
                    e = check_rows(o, q, k, v, mask_fn, seed=n + 3)
                    ms = time_ms(lambda: gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, out=o,
                                                       kv_layout=layout, **kw))
                    ltags = {**tags, "kv_layout": layout}
                    bench.add(name, f"ours_gna_{layout}_total", ms, flops, e, note2 + _status(e), **ltags)
                    forced_launch = build_launch(q, k, v, q_tile=q_tile, kv_tile=kv_tile, scale=None, kv_layout=layout,
                                                 causal=False, **kw)
                    ready = forced_launch.prepare_kv(k, v)
                    ms_k = time_ms(lambda: forced_launch.launch(q, ready, o))
                    bench.add(name, f"ours_gna_{layout}_kernel", ms_k, flops, e, "fused kernel alone", **ltags)

                bench.guard(name, f"ours_gna_{layout}_total", forced)
            if flex is not None and launch.plan.groups == 1:
                bench.guard(name, "flex_gna", lambda: run_flex(bench, case, launch.plan, flex, q, k, v, mask_fn, flops,
                                                              tile_permute, unpermute_out, tags))

        bench.guard(name, f"{impl}_kernel", ours)


def run_flex(bench: Bench, case: Any, plan: Any, flex: Any, q: Any, k: Any, v: Any, mask_fn: Callable, flops: float,
             tile_permute: Any, unpermute_out: Any, tags: dict[str, Any]) -> None:
    import torch
    from kernel_cases import flex_block_mask

    qp = tile_permute(q, plan.schedule.q_tile)
    kp, vp = tile_permute(k, plan.schedule.kv_tile), tile_permute(v, plan.schedule.kv_tile)
    block_mask = flex_block_mask(plan, qp.device)
    scale = HEAD_DIM ** -0.5

    def fn() -> Any:
        return flex(qp, kp, vp, block_mask=block_mask, scale=scale)

    out = unpermute_out(plan, fn(), torch.full_like(q, float("nan")))
    err = check_rows(out, q, k, v, mask_fn, seed=case.tokens + 2)
    ms = time_ms(fn)
    bench.add(case.name, "flex_gna", ms, flops, err,
              f"torch.compile(flex_attention), BlockMask from the core's tile classes, BLOCK_SIZE="
              f"({plan.q_volume},{plan.kv_volume}), on permuted q, k, v" + _status(err),
              **{**tags, "kv_layout": "permute"})


def run_block_sparse(bench: Bench, dense: DenseCache, flex: Any, n: int = 32768, tile: int = 128,
                     keep: int = 32) -> None:
    """Top-k-style block map (each Q block keeps its diagonal and ``keep - 1`` random KV blocks,
    shared by all heads): our kernel vs our dense kernel, and FlexAttention with the same map."""
    import numpy as np
    import torch

    from sparsesim.kernels.block_sparse import block_sparse_attention
    from sparsesim.simulator import simulate

    case = f"block_sparse_N{n}_top{keep}"
    bm = topk_block_map(n, tile, keep)
    flops = case_flops(n)
    if n not in dense.ours:
        dense.run(n, full=False)
    q, k, v = rand_qkv((BATCH, n, HEADS, HEAD_DIM), seed=n + 3)
    rec = simulate(input_size=n, block_map=bm, q_tile=tile, kv_tile=tile, gpu="H200", heads=HEADS)
    tags = {"q_tile": (tile,), "kv_tile": (tile,), "tile_speedup": rec.tile_speedup,
            "flop_speedup": rec.flop_speedup, "block_sparse": rec.block_sparse}

    def mask_fn(rows: Any) -> Any:
        return np.repeat(bm[rows // tile], tile, axis=1)[:, :n]

    def ours() -> None:
        out, note = poisoned_call(lambda o: block_sparse_attention(q, k, v, bm, q_tile=tile, kv_tile=tile, out=o), q)
        err = check_rows(out, q, k, v, mask_fn, seed=n + 4)
        ms = time_ms(lambda: block_sparse_attention(q, k, v, bm, q_tile=tile, kv_tile=tile, out=out))
        bench.add(case, "ours_block_sparse", ms, flops, err, note + _status(err), **tags)

    bench.guard(case, "ours_block_sparse", ours)
    if flex is None:
        return

    def flex_run() -> None:
        from torch.nn.attention.flex_attention import BlockMask

        num = torch.from_numpy(bm.sum(1).astype(np.int32))[None, None].cuda()
        idx = torch.from_numpy(np.argsort(~bm, axis=1, kind="stable").astype(np.int32))[None, None].cuda()
        block_mask = BlockMask.from_kv_blocks(torch.zeros_like(num), idx, num, idx, BLOCK_SIZE=(tile, tile))
        qd, kd, vd = (x.transpose(1, 2).contiguous() for x in (q, k, v))

        def fn() -> Any:
            return flex(qd, kd, vd, block_mask=block_mask)

        err = check_rows(fn().transpose(1, 2), q, k, v, mask_fn, seed=n + 4)
        ms = time_ms(fn)
        bench.add(case, "flex_block_sparse", ms, flops, err, "torch.compile(flex_attention), full blocks only"
                  + _status(err), **tags)

    bench.guard(case, "flex_block_sparse", flex_run)


def make_flex() -> Any:
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    for key in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 256)
    return torch.compile(flex_attention, dynamic=False)


def ceilings(bench: Bench) -> None:
    """The two ceilings the notes use: bf16 GEMM on random data and a device-to-device copy."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = time_ms(lambda: a @ b)
    bench.add("ceiling", "bf16_gemm_8192", ms, 2 * 8192.0**3, None, "random data")
    x = torch.empty(2**31 // 2, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x))
    bench.add("ceiling", "d2d_copy_4GiB", ms, None, None, f"{2 * x.numel() * 2 / (ms * 1e-3) / 1e12:.2f} TB/s")


# ----------------------------------------------------------------------------- main

def print_table(rows: list[dict[str, Any]]) -> None:
    print("\ncase                             impl                          ms   eff TFLOP/s  rel_err  note")
    for r in rows:
        print(f"{r['case'][:32]:32s} {r['impl'][:24]:24s} {_fmt(r['ms'], 3):>9s} {_fmt(r['eff_tflops'], 1):>9s} "
              f"{_fmt(r['rel_err'], 5):>9s}  {r['note'][:110]}")


def dry_run(quick: bool) -> None:
    from sparsesim.hwmodels.measurements import load_ceilings

    c = load_ceilings("H200")
    print(f"FLOPs: dense forward 4*B*H*N^2*D (B={BATCH}, H={HEADS}, D={HEAD_DIM}); floors on the H200 at the "
          f"measured {c.gemm_bf16_TFLOPs:.0f} TFLOP/s and {c.hbm_copy_TBps:.2f} TB/s ({c.date}, {Path(c.path).name})")
    print(f"{'case':28s} {'tiles':26s} {'tile_x':>7s} {'flop_x':>7s} {'bsparse':>7s} {'TFLOP':>7s} "
          f"{'dense_ms':>9s} {'tile_ms':>8s} {'flop_ms':>8s} {'byte_ms':>8s} {'perm_ms':>8s}")
    for r in dry_run_rows(quick):
        print(f"{r['case']:28s} {r['tiles']:26s} {r['tile_speedup']:7.2f} {r['flop_speedup']:7.2f} "
              f"{str(r['block_sparse']):>7s} {r['dense_tflop']:7.1f} {r['dense_flop_ms']:9.2f} "
              f"{_fmt(r.get('tile_ms'), 2):>8s} {_fmt(r.get('sparse_flop_ms'), 2):>8s} {r['byte_ms']:8.3f} "
              f"{_fmt(r.get('permute_ms'), 3):>8s}")
    print("impls per dense case: ours_dense, cudnn_dense, flash_dense; per GNA case: ours_gna_kernel, "
          "ours_gna_total, ours_gna_{gather,permute,direct}_total, flex_gna, dense (ours, cudnn) at the same N")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/kernel_bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="CSV folder")
    parser.add_argument("--quick", action="store_true", help="reduced set for a first smoke test")
    parser.add_argument("--dry-run", action="store_true", help="list the cases with the simulator's numbers (CPU)")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (no torch.compile)")
    parser.add_argument("--cases", default="", help="comma-separated substrings: run only GNA cases whose "
                        "name contains one (dense N only for those cases)")
    parser.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    parser.add_argument("--tag", default="", help="suffix of the CSV file name")
    args = parser.parse_args(argv)
    if args.dry_run:
        dry_run(args.quick)
        return 0
    import torch
    import triton

    if not torch.cuda.is_available():
        print("no CUDA device: use --dry-run on a machine without a GPU", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    env = {"gpu": gpu, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
           "commit": args.commit or git_commit(), "torch": torch.__version__, "triton": triton.__version__}
    print(f"{env}\nFLOPs: dense forward 4*B*H*N^2*D, B={BATCH} H={HEADS} D={HEAD_DIM} bf16; "
          f"eff TFLOP/s = dense FLOPs / time; correctness: rel_err < {TOLERANCE} on {CHECK_ROWS} rows", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in gpu).strip("-")
    suffix = ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    path = args.out / f"bench_{slug}_{env['date']}{suffix}.csv"
    bench = Bench(env, path)
    wanted = [w for w in args.cases.split(",") if w]
    cases = [c for c in GNA_CASES if (not args.quick or c.quick) and (not wanted or any(w in c.name for w in wanted))]
    if not wanted:
        bench.guard("ceiling", "ceilings", lambda: ceilings(bench))
    dense = DenseCache(bench)
    for n in (QUICK_DENSE_NS if args.quick else DENSE_NS):
        if not wanted or any(c.tokens == n for c in cases):
            dense.run(n)
    flex = None if args.no_flex else bench.guard("flex", "compile", make_flex)
    alt: dict[str, list[tuple]] = {}
    for name, qt, kt in ALT_TILES:
        alt.setdefault(name, []).append((qt, kt))
    for case in cases:
        print(f"[{case.name}] floors: {floors(case, case.tokens, case.simulate())}", flush=True)
        run_gna(bench, dense, case, flex, None if args.quick else alt.get(case.name))
        torch.cuda.empty_cache()
    if not wanted or any(w in "block_sparse" for w in wanted):
        run_block_sparse(bench, dense, flex)
    print_table(bench.rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
