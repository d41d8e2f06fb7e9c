"""GNA forward and forward+backward against dense cuDNN (SDPA) and FlexAttention with the same mask (issue 16).

    python benchmarks/backward_bench.py [--out FILE.csv] [--commit SHA] [--cases a,b] [--budget-s 220] [--no-flex]

GPU only (bf16, batch 1, 24 heads, head dim 128). Cases: the issue's two shapes (3D 16x32x48 with a 8x16x16
window, 2D 128x128 with a 32x32 window; tiles: the cost model's pick) and kernels/NOTES.md's HunyuanVideo
s16x8x8 and FLUX s16x16 cases (their benchmark tiles). Per case, forward (``fwd``) and forward+backward
(``fwdbwd``: ``torch.autograd.grad`` of the output against a fixed dO) of:

- ``ours_gna``: ``gna_attention`` (forward: the fast path; forward+backward: the custom ops);
- ``cudnn_dense``: ``F.scaled_dot_product_attention`` with the cuDNN backend, no mask (``[B, H, N, D]``);
- ``ours_dense``: our dense kernel, where it has a backward (a failed row with the reason otherwise);
- ``flex_gna``: ``torch.compile(flex_attention)`` with a BlockMask from the core's tile classes (full/partial
  split, the GNA predicate as ``mask_mod``) on the token-permuted q/k/v, as kernels/NOTES.md's forward runs
  (Flex's best form);
- ``flex_gna_natural``: the same compiled ``flex_attention`` on q/k/v in natural token order (row-major over the
  layout, ``[B, H, N, D]``), the GNA predicate as a ``mask_mod`` on token indices
  (``kernel_cases.flex_natural_mask_mod``: the core's per-axis bounds, stride/dilation/causal included) and
  ``create_block_mask(BLOCK_SIZE=128)`` built once outside the timing: the form of issue 16's Flex figures
  (above 2^30 mask elements the same call on row ranges of whole Q blocks, ``kernel_cases.flex_natural_block_mask``).

Both Flex variants are checked against ours (same mask, both bf16) at full size: ``rel_err`` of a Flex row is
``||o - o_flex|| / ||o_flex||`` (fwd) or the largest of ``||d - d_flex|| / ||d_flex||`` over dq, dk, dv (fwdbwd).
Ratios printed side by side and in the CSV (``vs_cudnn``, ``vs_flex``: their time / ours; ``tile_bound``: (our
dense fwdbwd / ours) over the simulator's ``tile_speedup``). Every variant runs in its own try/except (a failure
is a row with its reason); the CSV is rewritten after every row; ``--budget-s`` skips what is left once spent (rows
say "skipped").
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import math
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernel_cases import rewrite_csv

BATCH, HEADS, HEAD_DIM = 1, 24, 128
NATURAL_BLOCK = 128  # create_block_mask's BLOCK_SIZE for flex_gna_natural (issue 16's Flex figures)
COLUMNS = ["gpu", "date", "commit", "torch", "triton", "case", "impl", "pass", "ms", "q_tile", "kv_tile",
           "vs_cudnn", "vs_flex", "tile_speedup", "tile_bound", "rel_err", "note"]
#: name, layout, window, stride, tiles (None: the cost model's pick)
CASES = [
    ("issue_3d_16x32x48_w8x16x16", (16, 32, 48), (8, 16, 16), (1, 1, 1), None),
    ("issue_2d_128x128_w32x32", (128, 128), (32, 32), (1, 1), None),
    ("hunyuan_w18x24x24_s16x8x8", (30, 48, 80), (18, 24, 24), (16, 8, 8), ((2, 8, 8), (2, 8, 8))),
    ("flux_w80x80_s16x16", (256, 256), (80, 80), (16, 16), ((16, 8), (16, 8))),
]


def git_commit() -> str:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = res.stdout.strip()
    return sha if res.returncode == 0 and re.fullmatch(r"[0-9a-f]{7,64}", sha) else "unknown"


class Rows:
    """CSV rows, rewritten after every one (a run cut off keeps what it measured)."""

    def __init__(self, env: dict[str, str], path: Path | None, budget_s: float) -> None:
        self.env, self.path = env, path
        self.rows: list[dict[str, Any]] = []
        self.deadline = time.monotonic() + budget_s

    def add(self, case: str, impl: str, pass_: str, ms: float | None = None, note: str = "", **fields: Any) -> None:
        row = {**self.env, "case": case, "impl": impl, "pass": pass_, "ms": ms, "note": note,
               **{k: ("x".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in fields.items()}}
        self.rows.append(row)
        print(f"  {case:28s} {impl:16s} {pass_:7s} ms={'-' if ms is None else f'{ms:9.3f}'} "
              + " ".join(f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None) + f" {note}", flush=True)
        if self.path is not None:
            rewrite_csv(self.path, COLUMNS, self.rows)

    def guard(self, case: str, impl: str, pass_: str, fn: Callable[[], Any]) -> Any:
        """Run one variant; a failure (or the budget spent) is a row with the reason."""
        if time.monotonic() > self.deadline:
            self.add(case, impl, pass_, note="skipped: --budget-s spent")
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one failure must not stop the run
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            traceback.print_exc(limit=2)
            self.add(case, impl, pass_, note=f"FAILED {type(exc).__name__}: {first}")
            return None


def _fmt(v: Any) -> str:
    if v is None or v == "":
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _rel(a: Any, b: Any) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_case(rows: Rows, name: str, size: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...],
             tiles: Any, flex: Any, state: dict[str, Any]) -> None:
    """One case: ours, cuDNN and our dense (``flex`` None), or FlexAttention alone (``state``: the first call's
    inputs, tiles and times, so the Flex pass of every case runs after every case's own rows)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sparsesim.kernels import gna_attention
    from sparsesim.kernels.gna import build_launch
    from sparsesim.kernels.timing import time_ms
    from sparsesim.simulator import simulate

    n = math.prod(size)
    kw = {"window": window, "stride": stride}
    if flex is not None:
        if "tiles" not in state:
            raise RuntimeError("the case's own rows failed before its tiles were known")
        g = torch.Generator(device="cuda").manual_seed(n)
        q, k, v, do = (torch.randn(BATCH, *size, HEADS, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16)
                       for _ in range(4))
        for pass_ in ("fwd", "fwdbwd"):
            rows.guard(name, "flex_gna", pass_, functools.partial(run_flex, rows, name, size, kw, flex, pass_,
                                                                  q, k, v, do, state))
        for pass_ in ("fwd", "fwdbwd"):
            rows.guard(name, "flex_gna_natural", pass_, functools.partial(run_flex_natural, rows, name, size, kw,
                                                                          flex, pass_, q, k, v, do, state))
        _summary(name, state["times"], state["tile_speedup"])
        return
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v, do = (torch.randn(BATCH, *size, HEADS, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16)
                   for _ in range(4))
    if tiles is None:
        launch = build_launch(q, k, v, q_tile=None, kv_tile=None, scale=None, kv_layout=None, dilation=1,
                              causal=False, **kw)
        tiles = (launch.plan.schedule.q_tile, launch.plan.schedule.kv_tile)
    q_tile, kv_tile = tiles
    tags = {"q_tile": q_tile, "kv_tile": kv_tile}
    sim = simulate(input_size=size, q_tile=q_tile, kv_tile=kv_tile, gpu="H200", heads=HEADS, head_dim=HEAD_DIM,
                   batch=BATCH, dtype="bf16", **kw)
    times: dict[tuple[str, str], float] = {}
    state.update(tiles=tiles, times=times, tile_speedup=sim.tile_speedup, grads=[])
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]

    def ours_fwd() -> None:
        with torch.no_grad():
            state["out"] = gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, **kw)  # for the Flex checks
            times["ours", "fwd"] = time_ms(lambda: gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, **kw))
        rows.add(name, "ours_gna", "fwd", times["ours", "fwd"], **tags, tile_speedup=sim.tile_speedup)

    ours_grads: list[Any] = state["grads"]  # kept for the Flex pass's check (detached, bf16)

    def ours_fb() -> Any:
        out = gna_attention(*leaves, q_tile=q_tile, kv_tile=kv_tile, **kw)
        return torch.autograd.grad(out, leaves, do)

    def ours_fwdbwd() -> None:
        ours_grads.extend(x.detach() for x in ours_fb())
        times["ours", "fwdbwd"] = time_ms(ours_fb)
        rows.add(name, "ours_gna", "fwdbwd", times["ours", "fwdbwd"], **tags, tile_speedup=sim.tile_speedup,
                 note=f"backward alone ~{times['ours', 'fwdbwd'] - times.get(('ours', 'fwd'), 0.0):.3f} ms")

    rows.guard(name, "ours_gna", "fwd", ours_fwd)
    rows.guard(name, "ours_gna", "fwdbwd", ours_fwdbwd)

    # Dense cuDNN on [B, H, N, D] (no mask: the dense baseline of the table).
    qd, kd, vd, dod = (x.reshape(BATCH, n, HEADS, HEAD_DIM).transpose(1, 2).contiguous() for x in (q, k, v, do))
    dense_leaves = [x.clone().requires_grad_() for x in (qd, kd, vd)]

    def cudnn(pass_: str) -> None:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            if pass_ == "fwd":
                with torch.no_grad():
                    ms = time_ms(lambda: F.scaled_dot_product_attention(qd, kd, vd))
            else:
                def fb() -> Any:
                    dq_, dk_, dv_ = dense_leaves
                    return torch.autograd.grad(F.scaled_dot_product_attention(dq_, dk_, dv_), dense_leaves, dod)
                ms = time_ms(fb)
        times["cudnn", pass_] = ms
        ours = times.get(("ours", pass_))
        rows.add(name, "cudnn_dense", pass_, ms, vs_cudnn=None if ours is None else ms / ours)

    for pass_ in ("fwd", "fwdbwd"):
        rows.guard(name, "cudnn_dense", pass_, functools.partial(cudnn, pass_))

    def ours_dense(pass_: str) -> None:
        from sparsesim.kernels import attention

        flat = [x.reshape(BATCH, n, x.shape[-2], HEAD_DIM) for x in (q, k, v)]
        if pass_ == "fwd":
            with torch.no_grad():
                ms = time_ms(lambda: attention(*flat))
        else:
            fl = [x.clone().requires_grad_() for x in flat]
            if attention(*fl).grad_fn is None:
                raise RuntimeError("our dense attention returned no grad_fn (no backward)")
            dof = do.reshape(BATCH, n, HEADS, HEAD_DIM)
            ms = time_ms(lambda: torch.autograd.grad(attention(*fl), fl, dof))
        times["ours_dense", pass_] = ms
        ours = times.get(("ours", pass_))
        bound = None if ours is None else (ms / ours) / sim.tile_speedup
        rows.add(name, "ours_dense", pass_, ms, tile_speedup=sim.tile_speedup, tile_bound=bound,
                 note="" if bound is None else f"ours_gna reaches {bound:.2f} of the tile bound over ours_dense")

    for pass_ in ("fwd", "fwdbwd"):
        rows.guard(name, "ours_dense", pass_, functools.partial(ours_dense, pass_))

    _summary(name, times, sim.tile_speedup)


def _summary(name: str, times: dict[tuple[str, str], float], tile_speedup: float) -> None:
    summary = " ".join(f"{a}/{p}={times[a, p]:.3f}ms" for a, p in sorted(times))
    ratios = []
    for p in ("fwd", "fwdbwd"):
        o = times.get(("ours", p))
        if o:
            ratios.append(f"{p}: cudnn/ours={times.get(('cudnn', p), float('nan')) / o:.2f} "
                          f"flex/ours={times.get(('flex', p), float('nan')) / o:.2f} "
                          f"flex_natural/ours={times.get(('flex_natural', p), float('nan')) / o:.2f} "
                          f"ours_dense/ours={times.get(('ours_dense', p), float('nan')) / o:.2f} "
                          f"(tile_speedup {tile_speedup:.2f})")
    print(f"[{name}] {summary}\n[{name}] " + " | ".join(ratios), flush=True)


def _flex_row(rows: Rows, name: str, impl: str, key: str, flex: Any, pass_: str, qkv: tuple, do: Any,
              block_mask: Any, to_ours: tuple[Callable, Callable], state: dict[str, Any], note: str) -> None:
    """Time one Flex variant on its own layout; check its output (fwd) or gradients (fwdbwd) against ours in the
    caller's layout (``to_ours``: q-like and k/v-like tensors back to ``[B, *size, H, D]``)."""
    import torch

    from sparsesim.kernels.timing import time_ms

    scale = HEAD_DIM ** -0.5
    err = None
    if pass_ == "fwd":
        with torch.no_grad():
            out = flex(*qkv, block_mask=block_mask, scale=scale)
            ms = time_ms(lambda: flex(*qkv, block_mask=block_mask, scale=scale))
        if state.get("out") is not None:  # ours vs flex, both bf16, same mask
            err = _rel(state["out"], to_ours[0](out))
            note += f"; ours_gna out vs flex: rel diff {err:.2e}"
    else:
        leaves = [x.clone().requires_grad_() for x in qkv]

        def fb() -> Any:
            return torch.autograd.grad(flex(*leaves, block_mask=block_mask, scale=scale), leaves, do)

        grads = fb()
        ms = time_ms(fb)
        if state["grads"]:  # ours vs flex, both bf16, same mask, in the caller's layout
            back = (to_ours[0](grads[0]), to_ours[1](grads[1]), to_ours[1](grads[2]))
            err = max(_rel(a, b) for a, b in zip(state["grads"], back, strict=True))
            note += f"; ours_gna grads vs flex: max rel diff {err:.2e}"
    state["times"][key, pass_] = ms
    ours = state["times"].get(("ours", pass_))
    rows.add(name, impl, pass_, ms, vs_flex=None if ours is None else ms / ours, rel_err=err, note=note)


def run_flex(rows: Rows, name: str, size: tuple[int, ...], kw: dict[str, Any], flex: Any, pass_: str,
             q: Any, k: Any, v: Any, do: Any, state: dict[str, Any]) -> None:
    """``flex_gna``: token-permuted q/k/v, a BlockMask from the core's tile classes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kernel_cases import flex_block_mask

    from sparsesim.kernels.gna_plan import plan_gna
    from sparsesim.kernels.permute import tile_permute, tile_unpermute

    plan = plan_gna(size, q_tile=state["tiles"][0], kv_tile=state["tiles"][1], **kw)
    qt, kt = plan.schedule.q_tile, plan.schedule.kv_tile
    block_mask = flex_block_mask(plan, q.device)
    qkv = (tile_permute(q, qt), tile_permute(k, kt), tile_permute(v, kt))
    note = f"torch.compile(flex_attention), BlockMask BLOCK_SIZE=({plan.q_volume},{plan.kv_volume}), permuted qkv"
    _flex_row(rows, name, "flex_gna", "flex", flex, pass_, qkv, tile_permute(do, qt), block_mask,
              (lambda x: tile_unpermute(x, size, qt), lambda x: tile_unpermute(x, size, kt)), state, note)


def run_flex_natural(rows: Rows, name: str, size: tuple[int, ...], kw: dict[str, Any], flex: Any, pass_: str,
                     q: Any, k: Any, v: Any, do: Any, state: dict[str, Any]) -> None:
    """``flex_gna_natural``: q/k/v in natural token order ``[B, H, N, D]``, the GNA predicate as a ``mask_mod`` on
    token indices, ``create_block_mask(BLOCK_SIZE=128)`` (built once per case, outside the timing)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kernel_cases import flex_natural_block_mask, flex_natural_mask_mod

    n = math.prod(size)
    if state.get("natural_mask") is None:
        mask_mod = flex_natural_mask_mod(size, device=q.device, **kw)
        state["natural_mask"] = flex_natural_block_mask(mask_mod, n, q.device, block=NATURAL_BLOCK)

    def natural(x: Any) -> Any:
        return x.reshape(BATCH, n, HEADS, HEAD_DIM).transpose(1, 2).contiguous()

    def back(x: Any) -> Any:
        return x.transpose(1, 2).reshape(BATCH, *size, HEADS, HEAD_DIM)

    note = (f"torch.compile(flex_attention), natural token order, create_block_mask BLOCK_SIZE={NATURAL_BLOCK}, "
            f"mask_mod on token coordinates")
    _flex_row(rows, name, "flex_gna_natural", "flex_natural", flex, pass_, (natural(q), natural(k), natural(v)),
              natural(do), state["natural_mask"], (back, back), state, note)


def make_flex() -> Any:
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    for key in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 256)
    return torch.compile(flex_attention, dynamic=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/backward_bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="CSV file to write (rewritten after every row)")
    parser.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    parser.add_argument("--cases", default="", help="comma-separated substrings of the case names to run")
    parser.add_argument("--budget-s", type=float, default=220.0, help="skip the variants left after this long")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (no torch.compile)")
    args = parser.parse_args(argv)
    import torch
    import triton

    if not torch.cuda.is_available():
        print("backward_bench: no CUDA device; this benchmark runs on a GPU only", file=sys.stderr)
        return 2
    if args.out is not None and not args.out.parent.is_dir():
        print(f"backward_bench: --out {args.out}: folder {args.out.parent} does not exist", file=sys.stderr)
        return 2
    env = {"gpu": torch.cuda.get_device_name(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
           "commit": args.commit or git_commit(), "torch": torch.__version__, "triton": triton.__version__}
    print(env, flush=True)
    rows = Rows(env, args.out, args.budget_s)
    flex = None if args.no_flex else rows.guard("flex", "compile", "-", make_flex)
    wanted = [w for w in args.cases.split(",") if w]
    cases = [c for c in CASES if not wanted or any(w in c[0] for w in wanted)]
    states: dict[str, dict[str, Any]] = {c[0]: {} for c in cases}
    for engine in ([None] if flex is None else [None, flex]):  # every case's own rows first, Flex (compiles) last
        for name, size, window, stride, tiles in cases:
            print(f"[{name}] layout {size} window {window} stride {stride}"
                  f"{' (FlexAttention)' if engine is not None else ''}", flush=True)
            rows.guard(name, "case", "-", functools.partial(run_case, rows, name, size, window, stride, tiles, engine,
                                                            states[name]))
            torch.cuda.empty_cache()
    print("\ncase                         impl             pass        ms  vs_cudnn  vs_flex  tile_bound  note")
    for r in rows.rows:
        print(f"{r['case'][:28]:28s} {r['impl'][:16]:16s} {r['pass']:7s} {_fmt(r['ms']):>9s} "
              f"{_fmt(r.get('vs_cudnn', '')):>8s} {_fmt(r.get('vs_flex', '')):>8s} {_fmt(r.get('tile_bound', '')):>10s}"
              f"  {str(r['note'])[:100]}")
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
