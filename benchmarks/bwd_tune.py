"""Backward tiles and launch options measured side by side on the GPU (issue 16: the backward at the limit).

    python benchmarks/bwd_tune.py [--out FILE.csv] [--commit SHA] [--parts dense,gna] [--budget-s 400]
                                  [--stream-layout gather,permute,box] [--quick] [--fused] [--cases SUBSTRINGS]

GPU only (bf16, batch 1, 24 heads, head dim 128). Every variant's gradients are checked against the default
variant's (``rel_err``: the largest ``||d - d_default|| / ||d_default||`` over dq, dk, dv, both bf16; the default
is checked against float64 by tests/gpu) and timed with :func:`sparsesim.kernels.timing.time_ms`.

- ``dense``: our dense backward (Delta + dK/dV + dQ launches) on 24,576 tokens, one launch's tiles/warps/stages
  varied at a time (the other at the default), next to cuDNN's backward (SDPA forward+backward minus forward);
  the fused backward (``FUSED_DQ``: one kernel, dQ by pointer atomics or TMA reductions) in the
  :data:`DENSE_FUSED` tiles, printed with the default as cuDNN's time over ours, then checked against the default
  on a causal GQA shape with ragged tiles and a dLSE (:data:`FUSED_CHECK`).
- ``gna``: the GNA backward (:class:`sparsesim.kernels.gna_bwd.BwdTuning`) on the issue's 3D and 2D shapes and
  the HunyuanVideo s16x8x8 / FLUX s16x16 cases of kernels/NOTES.md, dQ options varied with dK/dV at the
  default and the other way round, once per ``--stream-layout`` (``gather``: K/V (dQ) and Q/dO (dK/dV) gathered
  row by row from the caller's layout; ``permute``: permuted once per call into contiguous tiles, the
  permutation inside the timing). With ``permute`` listed, also (``--quick`` too): each kernel's first-call
  candidates (``DQ_CANDIDATES``/``DKV_CANDIDATES``, gathered) next to ``DQ_PERMUTED_CANDIDATES``/
  ``DKV_PERMUTED_CANDIDATES`` (permuted), the other kernel at the default, then the whole backward with each
  layout's fastest pair (kernel ``all``, variant ``best gather pair`` / ``best permute pair``; ``--stream-layout
  permute`` alone: the permuted ones only; ``box``: the same candidates reading the streamed operands in place
  by 5D TMA boxes), and with ``--fused`` the split dK/dV on 8 warps (:data:`DKV_WARPS8`) and the whole backward
  with dQ fused into the dK/dV kernel at each of :data:`FUSED_VARIANTS` (variant ``fused dq, ...``).

The CSV is rewritten after every row; ``--budget-s`` skips what is left once spent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backward_bench import CASES, git_commit  # noqa: E402
from kernel_cases import rewrite_csv  # noqa: E402

BATCH, HEADS, HEAD_DIM, DENSE_N = 1, 24, 128, 24576
COLUMNS = ["gpu", "date", "commit", "torch", "triton", "part", "case", "kernel", "variant", "ms", "rel_err", "note"]

#: dK/dV (kernel 1) and dQ (kernel 2) variants of the dense backward: (BLOCK_M, BLOCK_N, warps, stages).
DENSE_DKDV = [(64, 64, 4, 2), (64, 64, 4, 1), (64, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 2),
              (128, 64, 8, 3), (64, 128, 8, 3), (32, 128, 8, 3), (32, 128, 8, 2)]
DENSE_DQ = [(128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 3), (64, 128, 4, 2), (128, 64, 4, 3), (64, 64, 8, 2),
            (64, 64, 4, 2), (128, 32, 4, 3), (128, 32, 8, 2)]
#: The fused dense backward (one kernel, dQ by atomics: kernels/dense_bwd.py ``FUSED_DQ``), each with both
#: ``DQ_ATOMIC`` flavours: (BLOCK_M, BLOCK_N, warps, stages). Triton 3.6 for sm_90 (bf16, d128; shared KB ptr/tma,
#: ptxas spill bytes ptr/tma): 64x128 s2 161/177 KB, 32-40/24; s3 193/209 KB, 0/0; 64x64 w8 s2 129/137 KB, 0/0;
#: s3 161/169 KB, 0/0; 32x128 s2 136/152 KB, 0/0 (M=32 dots on mma.sync). 128x128 (257/289 KB) and 128x64 s2 tma
#: (241 KB) do not fit the H200's 227 KB; 64x64 w4 spills ~400 B.
DENSE_FUSED = [(64, 128, 8, 2), (64, 128, 8, 3), (64, 64, 8, 2), (64, 64, 8, 3), (32, 128, 8, 2)]
#: A small causal GQA shape with ragged tiles on which the fused variants are checked against the default too.
FUSED_CHECK = (4133, 24, 8)
#: GNA variants: (resident volume, streamed volume, warps, stages); a resident volume of 0 keeps the forward's.
#: dK/dV settings timed with dQ fused into the dK/dV kernel (``BwdTuning.fused_dq``, with ``permute`` listed;
#: H200 at 1cdb92e: slower than the split pair on all four layers, kernels/NOTES.md).
#: A fourth number pins the warps (0: the heuristic's). Offline compiles for sm_90 (Triton 3.6, 3D tiles, head dim
#: 128) spill in every setting but the 64-row resident tile with a 32-row stream on 8 warps (kernels/NOTES.md).
FUSED_VARIANTS = [(1 << 30, 64, 3), (64, 64, 2), (1 << 30, 64, 2, 8), (64, 64, 2, 8), (64, 32, 2, 8),
                  (64, 32, 3, 8), (1 << 30, 32, 2, 8), (64, 64, 3, 8)]
#: Split dK/dV settings on 8 warps (resident, stream, stages, warps), the dQ kernel at its default: the offline
#: compiles spill least there (a 64-row resident tile with a 32-row stream: none).
DKV_WARPS8 = [(64, 64, 2, 8), (64, 32, 2, 8), (64, 32, 3, 8)]
GNA_VARIANTS = [(0, 64, 8, 2), (0, 64, 4, 2), (0, 64, 8, 3), (0, 32, 4, 2), (0, 32, 8, 3), (0, 128, 8, 2),
                (0, 128, 8, 1), (64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 4, 2), (64, 128, 8, 2)]


class Rows:
    def __init__(self, env: dict[str, str], path: Path | None, budget_s: float) -> None:
        self.env, self.path = env, path
        self.rows: list[dict[str, Any]] = []
        self.deadline = time.monotonic() + budget_s

    def add(self, **row: Any) -> None:
        self.rows.append({**self.env, **row})
        print("  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)
        if self.path is not None:
            rewrite_csv(self.path, COLUMNS, self.rows)

    def spent(self) -> bool:
        return time.monotonic() > self.deadline


def _rel(grads: Any, ref: Any) -> float:
    pairs = zip(grads, ref, strict=True)
    return max(float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)) for a, b in pairs)


def _measure(rows: Rows, fn: Any, ref: Any, **tags: Any) -> float | None:
    from sparsesim.kernels.timing import time_ms

    if rows.spent():
        rows.add(**tags, note="skipped: --budget-s spent")
        return None
    try:
        grads = fn()
        err = 0.0 if ref is None else _rel(grads, ref)
        ms = time_ms(fn)
    except Exception as exc:  # noqa: BLE001 - one failing variant must not stop the sweep
        traceback.print_exc(limit=2)
        rows.add(**tags, note=f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
        return None
    rows.add(**tags, ms=ms, rel_err=err, note="WRONG" if err > 2e-2 else "")
    return ms


def run_dense(rows: Rows) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sparsesim.kernels.dense import dense_forward
    from sparsesim.kernels.dense_bwd import bwd_config, dense_backward
    from sparsesim.kernels.timing import time_ms

    g = torch.Generator(device="cuda").manual_seed(DENSE_N)
    q, k, v, do = (torch.randn(BATCH, DENSE_N, HEADS, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16)
                   for _ in range(4))
    scale = HEAD_DIM ** -0.5
    out, lse = dense_forward(q, k, v, want_lse=True)
    base = bwd_config(HEAD_DIM)
    case = f"dense_{DENSE_N}"
    ref = dense_backward(do, q, k, v, out, lse, None, scale, config=base)
    totals = {"default": _measure(rows, lambda: dense_backward(do, q, k, v, out, lse, None, scale, config=base), ref,
                                  part="dense", case=case, kernel="all", variant="default " + _cfg_name(base))}
    for bm, bn, warps, stages in DENSE_FUSED:
        for atomic in ("ptr", "tma"):
            cfg = _fused_cfg(base, bm, bn, warps, stages, atomic)
            name = f"fused {bm}x{bn} w{warps} s{stages} {atomic}"
            totals[name] = _measure(rows, lambda cfg=cfg: dense_backward(do, q, k, v, out, lse, None, scale,
                                                                         config=cfg),
                                    ref, part="dense", case=case, kernel="fused", variant=name)
    old = {"BLOCK_M1": 32, "BLOCK_N1": 128, "BLOCK_M2": 128, "BLOCK_N2": 32, "num_warps": 8, "num_stages": 2}
    _measure(rows, lambda: dense_backward(do, q, k, v, out, lse, None, scale, config=old), ref, part="dense",
             case=case, kernel="all", variant="until 4032037 " + _cfg_name(old))
    for kernel, variants in ((1, DENSE_DKDV), (2, DENSE_DQ)):
        for bm, bn, warps, stages in variants:
            cfg = {**base, f"BLOCK_M{kernel}": bm, f"BLOCK_N{kernel}": bn, f"num_warps{kernel}": warps,
                   f"num_stages{kernel}": stages}
            _measure(rows, lambda cfg=cfg: dense_backward(do, q, k, v, out, lse, None, scale, config=cfg), ref,
                     part="dense", case=case, kernel="dkdv" if kernel == 1 else "dq",
                     variant=f"{bm}x{bn} w{warps} s{stages}")
    qd, kd, vd, dod = (x.transpose(1, 2).contiguous() for x in (q, k, v, do))
    leaves = [x.clone().requires_grad_() for x in (qd, kd, vd)]
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        with torch.no_grad():
            fwd = time_ms(lambda: F.scaled_dot_product_attention(qd, kd, vd))
        lq, lk, lv = leaves
        both = time_ms(lambda: torch.autograd.grad(F.scaled_dot_product_attention(lq, lk, lv), leaves, dod))
    rows.add(part="dense", case=case, kernel="cudnn", variant="backward (fwd+bwd minus fwd)", ms=both - fwd,
             note=f"cudnn fwd {fwd:.3f} ms, fwd+bwd {both:.3f} ms")
    ours_fwd = time_ms(lambda: dense_forward(q, k, v, want_lse=True))
    rows.add(part="dense", case=case, kernel="ours_fwd", variant="forward with LSE", ms=ours_fwd)
    print(f"\ndense backward vs cuDNN ({both - fwd:.3f} ms), issue 16's target 0.85:")
    for name, ms in totals.items():
        print(f"  {name:34s} " + (f"{ms:9.3f} ms  cuDNN/ours {(both - fwd) / ms:.3f}" if ms else "not measured"))
    _fused_checks(rows, base)


def _fused_cfg(base: dict[str, Any], bm: int, bn: int, warps: int, stages: int, atomic: str) -> dict[str, Any]:
    return {**base, "FUSED_DQ": 1, "DQ_ATOMIC": atomic, "BLOCK_M1": bm, "BLOCK_N1": bn, "num_warps1": warps,
            "num_stages1": stages}


def _fused_checks(rows: Rows, base: dict[str, Any]) -> None:
    """The fused variants against the default on :data:`FUSED_CHECK` (causal, GQA, ragged tiles, with dLSE)."""
    import torch

    from sparsesim.kernels.dense import dense_forward
    from sparsesim.kernels.dense_bwd import dense_backward

    n, heads, heads_kv = FUSED_CHECK
    g = torch.Generator(device="cuda").manual_seed(n)
    q, do = (torch.randn(2, n, heads, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(2, n, heads_kv, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    dlse = torch.randn(2, heads, n, generator=g, device="cuda")
    scale = HEAD_DIM ** -0.5
    out, lse = dense_forward(q, k, v, causal=True, want_lse=True)
    ref = dense_backward(do, q, k, v, out, lse, dlse, scale, causal=True, config=base)
    case = f"dense_causal_gqa_{n}x2"
    _measure(rows, lambda: dense_backward(do, q, k, v, out, lse, dlse, scale, causal=True, config=base), ref,
             part="dense", case=case, kernel="all", variant="default " + _cfg_name(base))
    for bm, bn, warps, stages in DENSE_FUSED:
        for atomic in ("ptr", "tma"):
            cfg = _fused_cfg(base, bm, bn, warps, stages, atomic)
            _measure(rows, lambda cfg=cfg: dense_backward(do, q, k, v, out, lse, dlse, scale, causal=True, config=cfg),
                     ref, part="dense", case=case, kernel="fused",
                     variant=f"fused {bm}x{bn} w{warps} s{stages} {atomic}")


def _cfg_name(cfg: dict[str, int]) -> str:
    from sparsesim.kernels.dense_bwd import launch_options

    opts = [launch_options(cfg, i) for i in (1, 2)]
    return (f"dkdv {cfg['BLOCK_M1']}x{cfg['BLOCK_N1']} w{opts[0]['num_warps']} s{opts[0]['num_stages']} "
            f"dq {cfg['BLOCK_M2']}x{cfg['BLOCK_N2']} w{opts[1]['num_warps']} s{opts[1]['num_stages']}")


def run_gna(rows: Rows, wanted: list[str], quick: bool, layouts: tuple[str, ...] = ("gather",),
            fused: bool = False) -> None:
    import torch

    for name, size, window, stride, tiles in CASES:
        if not wanted or any(w in name for w in wanted):
            _gna_case(rows, name, size, {"window": window, "stride": stride}, tiles, quick, layouts, fused)
            torch.cuda.empty_cache()


def _gna_case(rows: Rows, name: str, size: tuple[int, ...], kw: dict[str, Any], tiles: Any, quick: bool,
              layouts: tuple[str, ...] = ("gather",), fused: bool = False) -> None:
    import torch

    from sparsesim.kernels.gna import build_launch, gna_forward
    from sparsesim.kernels.gna_bwd import BwdTuning, gna_backward

    g = torch.Generator(device="cuda").manual_seed(math.prod(size))
    q, k, v, do = (torch.randn(BATCH, *size, HEADS, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16)
                   for _ in range(4))
    if tiles is None:
        launch = build_launch(q, k, v, q_tile=None, kv_tile=None, scale=None, kv_layout=None, dilation=1,
                              causal=False, **kw)
        tiles = (launch.plan.schedule.q_tile, launch.plan.schedule.kv_tile)
    kw = {**kw, "q_tile": tiles[0], "kv_tile": tiles[1]}
    out, lse = gna_forward(q, k, v, **kw)
    ref = gna_backward(do, q, k, v, out, lse, **kw)
    tags = {"part": "gna", "case": name}
    _measure(rows, lambda: gna_backward(do, q, k, v, out, lse, **kw), ref, **tags, kernel="all",
             variant=f"picked on the first call, tiles {tiles}")
    if "gather" in layouts:
        _measure(rows, lambda: gna_backward(do, q, k, v, out, lse, tuning=BwdTuning(), **kw), ref, **tags,
                 kernel="all", variant="BwdTuning() (no pick)")
    for layout in layouts:
        if layout != "gather":
            both = BwdTuning(dq_stream_layout=layout, dkv_stream_layout=layout)
            _measure(rows, lambda t=both: gna_backward(do, q, k, v, out, lse, tuning=t, **kw), ref, **tags,
                     kernel="all", variant=f"BwdTuning(*_stream_layout={layout!r})")
    if "permute" in layouts or "box" in layouts:
        _candidates(rows, lambda t: gna_backward(do, q, k, v, out, lse, tuning=t, **kw), ref, tags, layouts, fused)
    for layout in layouts:
        for kernel in () if quick else ("dq", "dkdv"):
            for res, stream, warps, stages in GNA_VARIANTS:
                prefix = "dq" if kernel == "dq" else "dkv"
                tuning = BwdTuning(**{f"{prefix}_resident": res or 1 << 30, f"{prefix}_stream": stream,
                                      f"{prefix}_warps": warps, f"{prefix}_stages": stages,
                                      f"{prefix}_stream_layout": layout})
                _measure(rows, lambda t=tuning: gna_backward(do, q, k, v, out, lse, tuning=t, **kw), ref, **tags,
                         kernel=kernel, variant=f"res{res or 'fwd'} stream{stream} w{warps} s{stages} {layout}")


def _candidates(rows: Rows, run: Any, ref: Any, tags: dict[str, Any],
                layouts: tuple[str, ...] = ("gather", "permute"), fused: bool = False) -> None:
    """Each kernel's gather candidates and permuted candidates (of ``layouts``), the other kernel at the default;
    then the whole backward with each layout's fastest dQ and dK/dV candidates; with ``fused``, split dK/dV
    settings on 8 warps and the fused-dQ backward's settings."""
    from sparsesim.kernels import gna_bwd as gb

    best: dict[tuple[str, str], tuple[float, tuple[int, int, int]]] = {}
    for kernel, gather, permuted in (("dq", gb.DQ_CANDIDATES, gb.DQ_PERMUTED_CANDIDATES),
                                     ("dkv", gb.DKV_CANDIDATES, gb.DKV_PERMUTED_CANDIDATES)):
        for layout, cands in (("gather", gather), ("permute", permuted), ("box", permuted)):
            for c in cands if layout in layouts else ():
                t = gb.candidate_tuning(kernel, c, layout)
                ms = _measure(rows, lambda t=t: run(t), ref, **tags, kernel="dq" if kernel == "dq" else "dkdv",
                              variant=f"candidate {_cand(c)} {layout}")
                if ms is not None and (ms < best.get((kernel, layout), (math.inf,))[0]):
                    best[(kernel, layout)] = (ms, c)
    for layout in ("gather", "permute", "box"):
        if (("dq", layout) in best) and (("dkv", layout) in best):
            t = gb.candidate_tuning("dkv", best[("dkv", layout)][1], layout,
                                    base=gb.candidate_tuning("dq", best[("dq", layout)][1], layout))
            _measure(rows, lambda t=t: run(t), ref, **tags, kernel="all",
                     variant=f"best {layout} pair: dq {_cand(best[('dq', layout)][1])} "
                             f"dkdv {_cand(best[('dkv', layout)][1])}")
    for res, stream, stages, warps in DKV_WARPS8 if fused else ():
        t = gb.BwdTuning(dkv_resident=res, dkv_stream=stream, dkv_stages=stages, dkv_warps=warps,
                         dkv_stream_layout="permute")
        _measure(rows, lambda t=t: run(t), ref, **tags, kernel="dkdv",
                 variant=f"candidate {_cand((res, stream, stages))} w{warps} permute")
    for c in FUSED_VARIANTS if fused else ():  # dQ fused into dK/dV: the whole backward, one kernel's settings
        t = gb.fused_tuning(c)
        w = f" w{c[3]}" if len(c) > 3 else ""
        _measure(rows, lambda t=t: run(t), ref, **tags, kernel="all",
                 variant=f"fused dq, dkdv {_cand(c[:3])}{w} permute")


def _cand(c: tuple[int, int, int]) -> str:
    return f"res{'fwd' if c[0] >= 1 << 30 else c[0]} stream{c[1]} s{c[2]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bwd_tune.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--commit", default=None)
    parser.add_argument("--parts", default="dense,gna")
    parser.add_argument("--cases", default="", help="comma-separated substrings of the GNA case names")
    parser.add_argument("--budget-s", type=float, default=400.0)
    parser.add_argument("--quick", action="store_true",
                        help="GNA: the first-call pick, BwdTuning() and (with permute) the candidates only")
    parser.add_argument("--fused", action="store_true",
                        help="GNA: also the split dK/dV on 8 warps and the fused-dQ backward (FUSED_VARIANTS)")
    parser.add_argument("--stream-layout", default="gather",
                        help="GNA: comma-separated stream layouts to sweep (gather, permute, box)")
    args = parser.parse_args(argv)
    layouts = tuple(x for x in args.stream_layout.split(",") if x)
    if not layouts or any(x not in ("gather", "permute", "box") for x in layouts):
        print(f"bwd_tune: --stream-layout {args.stream_layout!r}; allowed: gather, permute, box, comma-separated",
              file=sys.stderr)
        return 2
    import torch
    import triton

    if not torch.cuda.is_available():
        print("bwd_tune: no CUDA device; this benchmark runs on a GPU only", file=sys.stderr)
        return 2
    env = {"gpu": torch.cuda.get_device_name(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
           "commit": args.commit or git_commit(), "torch": torch.__version__, "triton": triton.__version__}
    print(env, flush=True)
    rows = Rows(env, args.out, args.budget_s)
    parts = args.parts.split(",")
    if "gna" in parts:
        run_gna(rows, [w for w in args.cases.split(",") if w], args.quick, layouts, args.fused)
    if "dense" in parts:
        run_dense(rows)
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows.rows:
        if r.get("ms") and r.get("note", "") == "":
            key = (r["case"], r["kernel"])
            if key not in best or r["ms"] < best[key]["ms"]:
                best[key] = r
    print("\nfastest per case and kernel (the other kernel at its default):")
    for (case, kernel), r in sorted(best.items()):
        print(f"  {case:30s} {kernel:8s} {r['ms']:9.3f} ms  {r['variant']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
