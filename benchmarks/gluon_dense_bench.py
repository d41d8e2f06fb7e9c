"""The warp-specialized Gluon dense forward next to our Triton dense kernel and cuDNN, in one run (issue 17 item 1).

    python benchmarks/gluon_dense_bench.py --out FILE.csv [--commit SHA] [--budget-s 420] [--sizes 16384,...]

GPU only (Hopper). Each implementation runs in its own subprocess under a timeout (a deadlocked pipeline costs
its own rows, not the run): the Gluon variants first check their output on fresh random bf16 inputs against a
float64 reference (odd lengths, batch 2, GQA, head dim 64; ``rel_err`` = ||out - ref|| / ||ref||, LSE too),
then every implementation is timed on batch 1, 24 heads, head dim 128 at each size (median of
:func:`sparsesim.kernels.timing.time_ms`). The CSV (rewritten after every job) has ``vs_cudnn`` = cuDNN's time /
this row's, and effective TFLOP/s (``4 B H N^2 D`` / time). ``triton``: our Triton dense kernel
(``SPARSESIM_FWD_KERNEL=triton``); ``attention``: what :func:`sparsesim.kernels.attention` runs by default.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backward_bench import git_commit  # noqa: E402
from kernel_cases import rewrite_csv  # noqa: E402

HEADS, HEAD_DIM = 24, 128
SIZES = (4096, 8192, 16384, 32768, 65536, 115200)
COLUMNS = ["gpu", "date", "commit", "torch", "triton", "impl", "variant", "check", "tokens", "ms", "tflops",
           "vs_cudnn", "rel_err", "note"]
#: Gluon variants: (name, block_n, stages, overlap, pingpong, consumer_regs[, other knobs of ws_forward]);
#: ``mask_kv`` True masks the keys in every KV tile (the kernel before 2026-11-30: the default masks only where
#: the keys end mid-tile); ``persistent`` runs a program per SM over the work items; ``early`` False hands the
#: Q buffer back after an item's last softmax and loads the next item's K/V after its Q (before session 27).
VARIANTS = [
    ("ws+overlap+pingpong st3", 128, 3, True, True, 240),
    ("ws+overlap+pingpong st3 persistent", 128, 3, True, True, 240, {"persistent": True}),
    ("ws+overlap+pingpong st3 kvmask", 128, 3, True, True, 240, {"mask_kv": True}),
    ("ws+overlap+pingpong st3 persistent late", 128, 3, True, True, 240, {"persistent": True, "early": False}),
    ("ws+overlap st3", 128, 3, True, False, 240),
    ("ws+overlap+pingpong st3 r232", 128, 3, True, True, 232),
    ("ws", 128, 2, False, False, 240),
    ("ws+overlap", 128, 2, True, False, 240),
    ("ws+overlap+pingpong", 128, 2, True, True, 240),
    ("ws st3", 128, 3, False, False, 240),
    ("ws+overlap+pingpong bn64 st3", 64, 3, True, True, 240),
]
#: Correctness cases: (batch, n_q, n_kv, heads, heads_kv, head_dim).
CHECKS = [(1, 1000, 1000, 4, 4, 128), (2, 777, 1300, 4, 4, 128), (1, 2048, 2048, 8, 2, 128), (1, 513, 513, 4, 4, 64),
          (1, 64, 200, 2, 2, 128)]


def _reference(q: Any, k: Any, v: Any) -> tuple[Any, Any]:
    """float64 attention and natural-log LSE, ``[B, N, H, D]`` in, GQA by repeating KV heads."""
    import torch

    group = q.shape[2] // k.shape[2]
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    kd, vd = kd.repeat_interleave(group, 1), vd.repeat_interleave(group, 1)
    s = qd @ kd.transpose(-1, -2) * q.shape[-1] ** -0.5
    return (torch.softmax(s, -1) @ vd).transpose(1, 2), torch.logsumexp(s, -1)


def _inputs(batch: int, n_q: int, n_kv: int, heads: int, heads_kv: int, head_dim: int, seed: int) -> tuple:
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda n, h: torch.randn(batch, n, h, head_dim, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
    return mk(n_q, heads), mk(n_kv, heads_kv), mk(n_kv, heads_kv)


def job(name: str, sizes: list[int]) -> list[dict[str, Any]]:
    """One implementation's rows (run in a subprocess)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sparsesim.kernels import attention
    from sparsesim.kernels.timing import time_ms

    rows: list[dict[str, Any]] = []
    if name == "cudnn":
        def run(q: Any, k: Any, v: Any) -> Any:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    elif name in ("triton", "attention"):  # the Triton kernel alone / whatever attention() picks
        if name == "triton":
            os.environ["SPARSESIM_FWD_KERNEL"] = "triton"

        def run(q: Any, k: Any, v: Any) -> Any:
            return attention(q, k, v)
    else:
        from sparsesim.kernels.gluon_fwd import gluon_dense_forward

        _, bn, stages, overlap, pingpong, regs, *extra = next(v for v in VARIANTS if v[0] == name)
        opts = dict(block_n=bn, stages=stages, overlap=overlap, pingpong=pingpong, consumer_regs=regs,
                    **(extra[0] if extra else {}))

        def run(q: Any, k: Any, v: Any) -> Any:
            return gluon_dense_forward(q, k, v, **opts)

        for i, case in enumerate(CHECKS):
            q, k, v = _inputs(*case, seed=100 + i)
            out, lse = gluon_dense_forward(q, k, v, **opts, return_lse=True)
            ref, ref_lse = _reference(q, k, v)
            err = float((out.double() - ref).norm() / ref.norm())
            lse_err = float((lse.double() - ref_lse).abs().max())
            rows.append({"impl": "gluon", "variant": name, "check": "x".join(map(str, case)), "rel_err": err,
                         "note": f"lse max abs err {lse_err:.2e}"})
            if not (err < 2e-2 and lse_err < 1e-2):
                rows[-1]["note"] += " FAILED"
                return rows
    for n in sizes:
        q, k, v = _inputs(1, n, n, HEADS, HEADS, HEAD_DIM, seed=n)
        ms = time_ms(functools.partial(run, q, k, v))
        impl = name if name in ("cudnn", "triton", "attention") else "gluon"
        rows.append({"impl": impl, "variant": name, "tokens": n, "ms": ms,
                     "tflops": 4 * HEADS * n * n * HEAD_DIM / ms / 1e9})
        del q, k, v
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--commit", default=None)
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--job-timeout-s", type=float, default=150.0)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--jobs", default=None,
                    help="comma-separated subset of: cudnn, triton, attention, and the variant names")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.job is not None:
        print(json.dumps(job(args.job, sizes)))
        return 0
    import torch
    import triton

    env = {"gpu": torch.cuda.get_device_name(), "date": dt.date.today().isoformat(),
           "commit": args.commit or git_commit(), "torch": torch.__version__, "triton": triton.__version__}
    names = ["cudnn", "triton", "attention"] + [v[0] for v in VARIANTS]
    if args.jobs:
        names = [n for n in names if n in args.jobs.split(",")]
    deadline = time.monotonic() + args.budget_s
    rows: list[dict[str, Any]] = []
    cudnn_ms: dict[int, float] = {}
    for name in names:
        left = deadline - time.monotonic()
        if left < 20:
            rows.append({**env, "impl": name, "variant": name, "note": "skipped: budget spent"})
            continue
        cmd = [sys.executable, __file__, "--job", name, "--sizes", args.sizes]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=min(args.job_timeout_s, left))
            got = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
            note = "" if got is not None else f"exit {res.returncode}: {res.stderr.strip().splitlines()[-1:]}"
        except subprocess.TimeoutExpired:
            got, note = None, f"timed out after {min(args.job_timeout_s, left):.0f} s (deadlock or compile)"
        if got is None:
            rows.append({**env, "impl": name, "variant": name, "note": note})
        for row in got or []:
            if name == "cudnn" and row.get("ms"):
                cudnn_ms[row["tokens"]] = row["ms"]
            if row.get("ms") and row["tokens"] in cudnn_ms:
                row["vs_cudnn"] = cudnn_ms[row["tokens"]] / row["ms"]
            rows.append({**env, **row})
        for row in rows[-len(got or [1]):]:
            print("  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                                  if k not in env and v not in (None, "")), flush=True)
        if args.out is not None:
            rewrite_csv(args.out, COLUMNS, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
