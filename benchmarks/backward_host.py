"""Host time of a GNA layer through autograd: forward+backward, forward with grad, forward without grad.

    python benchmarks/backward_host.py [--mode cpu|gpu] [--before REF] [--calls N] [--stream-layout L] [--out F.csv]

Cases (issue 16): a 1D layer of 4,096 tokens with a 1,024 window and a 2D 64x64 layout with a 32x32 window,
24 heads, head dim 128, batch 1. Paths per case:

- ``fwd_bwd``: ``gna_attention`` on q/k/v that require grad, then ``torch.autograd.grad`` of the output;
- ``fwd_grad``: the forward alone on q/k/v that require grad (what autograd's forward costs);
- ``fwd_nograd``: the forward on plain tensors (the in-place fast path, ``out=None``).

``--mode cpu`` (the default without a GPU): the Triton interpreter's device rules on CPU tensors (fp16; the
interpreter refuses bf16, whose host path is the same) with every kernel launch stubbed out (the GNA forward's,
dQ's and dK/dV's ``launch_compiled``, Delta's, the K/V permutation's, the extra-token kernels'), so the figure
is everything a call does on the host apart from the launches themselves: argument packing, caches, checks,
allocations (kept), autograd and custom-op machinery. The backward's stream layout is ``--stream-layout``
(default ``permute``, what the GPU's pick runs; the interpreter would run ``gather``). CPU tensors make the few
torch ops on real data (the LSE's base-2 scaling, allocations of fresh buffers) cost their CPU work and page
faults too, which a GPU call pays on the device. Times are per-thread CPU time, the best of 9 loops of
``--calls`` calls (the machine may be shared: waiting for a core is not the call's cost). ``--mode gpu``:
the real calls (bf16), wall time per call with the GPU kept busy by a sleep kernel (the host never waits),
median of 5 loops.

A breakdown follows each ``fwd_bwd`` figure: per-thread time inside the named host functions (where the
version has them), from a separate run with timers around them.

``--before REF``: the same measurement of the package at git commit ``REF`` (``git archive`` into a temporary
folder placed first on ``PYTHONPATH``, run in a child process), printed beside this tree's with the ratio.
One CSV row per (version, case, path) with ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES = (  # name, layout, window
    ("1d_4096_w1024", (4096,), (1024,)),
    ("2d_64x64_w32x32", (64, 64), (32, 32)),
)
HEADS, HEAD_DIM = 24, 128
PATHS = ("fwd_bwd", "fwd_grad", "fwd_nograd")
#: Host functions timed in the breakdown: (module under sparsesim.kernels, attribute path).
SPANS = (("gna", "gna_forward"), ("gna", "forward_call"), ("gna", "cached_launch"), ("gna", "GNALaunch.prepare_kv"),
         ("gna", "GNALaunch.launch"), ("gna", "tile_permute_pair"), ("gna_bwd", "gna_backward"),
         ("gna_bwd", "backward_call"), ("gna_bwd", "_delta"), ("gna_bwd", "_launch_dq"), ("gna_bwd", "_launch_dkdv"),
         ("gna_bwd", "_permuted_pair"), ("gna_bwd", "_permuted_rows"))
PACKAGES = ("cli", "simulator", "hwmodels", "search", "kernels", "reports")


class _NoLaunch:
    """A jit kernel stand-in: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid: Any) -> Any:
        return lambda *args, **kwargs: None


def stub_launches() -> None:
    """Replace every kernel launch on the GNA path by a no-op (outputs are still allocated by the callers)."""
    import sparsesim.kernels.gna as gna
    import sparsesim.kernels.gna_bwd as gna_bwd
    import sparsesim.kernels.permute as permute

    def no_launch(*args: Any, **kwargs: Any) -> None:
        return None

    for mod in (gna, gna_bwd):
        if hasattr(mod, "launch_compiled"):
            mod.launch_compiled = no_launch  # type: ignore[attr-defined]
    for mod, names in ((gna_bwd, ("_delta_kernel", "_rows_fwd_kernel", "_rows_dq_kernel", "_cols_dkdv_kernel")),
                       (permute, ("_permute_kernel",))):
        for name in names:
            if hasattr(mod, name):
                setattr(mod, name, _NoLaunch())


def force_stream_layout(layout: str) -> None:
    """Backwards built without a tuning (the interpreter's) read their streamed operands as ``layout`` says (the
    GPU's pick, :data:`sparsesim.kernels.gna_bwd.DKV_PICK`, is the permuted layout: its host path is timed so)."""
    import sparsesim.kernels.gna_bwd as gna_bwd

    build = gna_bwd.build_backward

    def build_with(fwd: Any, device: Any, tuning: Any = None) -> Any:
        if tuning is None:
            tuning = gna_bwd.BwdTuning(dq_stream_layout=layout, dkv_stream_layout=layout)
        return build(fwd, device, tuning)

    gna_bwd.build_backward = build_with


def _timer() -> Any:
    return time.thread_time if MODE == "cpu" else time.perf_counter


MODE = "cpu"


def per_call_us(fn: Any, calls: int) -> float:
    """Host microseconds per call: CPU mode the best of 9 loops of per-thread time; GPU mode the median of 5
    loops of wall time queued behind a sleep kernel."""
    import torch

    clock = _timer()
    loops = []
    for _ in range(9 if MODE == "cpu" else 5):
        if MODE == "gpu":
            torch.cuda.synchronize()
            torch.cuda._sleep(int(1e9))  # ~0.5 s: covers 100 calls of up to 5 ms host time (4e9: 2 s per loop)
        t0 = clock()
        for _ in range(calls):
            fn()
        loops.append(clock() - t0)
        if MODE == "gpu":
            torch.cuda.synchronize()
    best = min(loops) if MODE == "cpu" else statistics.median(loops)
    return best / calls * 1e6


def _resolve(mod: Any, path: str) -> tuple[Any, str] | None:
    obj = mod
    *parents, name = path.split(".")
    for p in parents:
        obj = getattr(obj, p, None)
        if obj is None:
            return None
    return (obj, name) if hasattr(obj, name) else None


def breakdown(fn: Any, calls: int) -> dict[str, float]:
    """Per-call host microseconds inside each of :data:`SPANS` (timers wrapped around them, then removed)."""
    import importlib

    clock = _timer()
    acc: collections.Counter[str] = collections.Counter()
    undo = []
    for mod_name, path in SPANS:
        found = _resolve(importlib.import_module(f"sparsesim.kernels.{mod_name}"), path)
        if found is None:
            continue
        owner, name = found
        orig = owner.__dict__.get(name, getattr(owner, name))
        func = getattr(owner, name)

        def timed(*args: Any, _f: Any = func, _label: str = path, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return _f(*args, **kwargs)
            finally:
                acc[_label] += clock() - t0

        setattr(owner, name, timed)
        undo.append((owner, name, orig))
    try:
        fn()
        acc.clear()
        for _ in range(calls):
            fn()
    finally:
        for owner, name, orig in reversed(undo):
            setattr(owner, name, orig)
    return {k: v / calls * 1e6 for k, v in acc.items()}


def measure(calls: int) -> list[dict[str, Any]]:
    """Rows of (case, path, host_us) and the fwd_bwd breakdowns for the package on the path."""
    import torch

    from sparsesim.kernels import gna_attention

    device = "cuda" if MODE == "gpu" else "cpu"
    dtype = torch.bfloat16 if MODE == "gpu" else torch.float16
    rows: list[dict[str, Any]] = []
    for name, size, window in CASES:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(1, *size, HEADS, HEAD_DIM, generator=g, device=device, dtype=dtype) for _ in range(3))
        qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
        grad = torch.randn(q.shape, generator=g, device=device, dtype=dtype)

        def fwd_bwd(qg: Any = qg, kg: Any = kg, vg: Any = vg, grad: Any = grad, window: Any = window) -> Any:
            o = gna_attention(qg, kg, vg, window=window)
            return torch.autograd.grad(o, (qg, kg, vg), grad)

        def fwd_grad(qg: Any = qg, kg: Any = kg, vg: Any = vg, window: Any = window) -> Any:
            return gna_attention(qg, kg, vg, window=window)

        def fwd_nograd(q: Any = q, k: Any = k, v: Any = v, window: Any = window) -> Any:
            return gna_attention(q, k, v, window=window)

        fns: dict[str, Any] = {"fwd_bwd": fwd_bwd, "fwd_grad": fwd_grad, "fwd_nograd": fwd_nograd}
        for path in PATHS:
            fn = fns[path]
            for _ in range(3):  # first calls build and cache (and on the GPU compile and tune)
                fn()
            row: dict[str, Any] = {"case": name, "path": path, "host_us": round(per_call_us(fn, calls), 1)}
            print(f"  {name} {path}: {row['host_us']} us per call", file=sys.stderr, flush=True)  # partial results
            if path == "fwd_bwd":
                row["breakdown"] = {k: round(v, 1) for k, v in breakdown(fn, calls).items()}
            rows.append(row)
    return rows


def child_rows(ref: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """:func:`measure` of the package at git commit ``ref``, in a child process."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        pkg = Path(tmp) / "sparsesim"
        pkg.mkdir()
        archive = subprocess.run(["git", "archive", ref, *PACKAGES], cwd=root, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(pkg)], input=archive.stdout, check=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([tmp, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        res = subprocess.run([sys.executable, __file__, "--child", "--mode", args.mode, "--calls", str(args.calls),
                              "--stream-layout", args.stream_layout],
                             env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"the run at {ref} failed: {res.stderr.strip().splitlines()[-1:]}")
        return list(json.loads(res.stdout.strip().splitlines()[-1]))


def git_commit(ref: str = "HEAD") -> str:
    res = subprocess.run(["git", "rev-parse", "--short", ref], cwd=Path(__file__).parent, capture_output=True,
                         text=True, check=False)
    return res.stdout.strip() if res.returncode == 0 else "unknown"


def main(argv: list[str] | None = None) -> int:
    global MODE
    parser = argparse.ArgumentParser(prog="python benchmarks/backward_host.py", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("auto", "cpu", "gpu"), default="auto",
                        help="cpu: launches stubbed, interpreter rules (no GPU needed); default: gpu when present")
    parser.add_argument("--before", default=None, help="git ref to measure too (e.g. HEAD), in a child process")
    parser.add_argument("--calls", type=int, default=100, help="calls per timed loop")
    parser.add_argument("--out", default=None, help="CSV file to write (default: print only)")
    parser.add_argument("--commit", default=None,
                        help="commit to record for this tree (default: git rev-parse HEAD, '+tree' appended)")
    parser.add_argument("--stream-layout", choices=("permute", "gather"), default="permute",
                        help="--mode cpu: the backward's stream layout (the interpreter's default is gather; the "
                             "GPU's pick is permute, the default here)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode == "auto":
        import importlib.util

        gpu = False
        if importlib.util.find_spec("torch") is not None:
            import torch

            gpu = torch.cuda.is_available()
        args.mode = "gpu" if gpu else "cpu"
    MODE = args.mode
    if MODE == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton.jit decorates the kernels: CPU tensors pass
    if args.out and not args.child:
        from sparsesim.simulator.files import check_output

        check_output(args.out, "--out", stdout_ok=False)
    import torch

    if MODE == "gpu" and not torch.cuda.is_available():
        print("backward_host: --mode gpu needs a CUDA GPU", file=sys.stderr)
        return 2
    if MODE == "cpu":
        torch.set_num_threads(1)  # no intra-op thread pool waking up for small CPU ops
        stub_launches()
        force_stream_layout(args.stream_layout)
    after = measure(args.calls)
    if args.child:
        print(json.dumps(after))
        return 0
    versions = [("this tree", args.commit or git_commit() + "+tree", after)]
    if args.before:
        versions.insert(0, ("before", git_commit(args.before), child_rows(args.before, args)))
    table = []
    for label, commit, rows in versions:
        for r in rows:
            table.append({"mode": MODE, "version": label, "commit": commit, "case": r["case"], "path": r["path"],
                          "host_us": r["host_us"], "breakdown": json.dumps(r.get("breakdown", {}))})
    base = {(r["case"], r["path"]): r["host_us"] for r in versions[0][2]}
    for name, _, _ in CASES:
        for path in PATHS:
            line = [f"{name:18s} {path:10s}"]
            for label, commit, rows in versions:
                us = next(r["host_us"] for r in rows if (r["case"], r["path"]) == (name, path))
                line.append(f"{label} ({commit}) {us:8.1f} us")
            if len(versions) > 1:
                now = next(r["host_us"] for r in after if (r["case"], r["path"]) == (name, path))
                line.append(f"ratio {base[(name, path)] / now:.2f}x")
            print("  ".join(line))
    for label, _, rows in versions:
        for r in rows:
            if r.get("breakdown"):
                parts = ", ".join(f"{k} {v:.1f}" for k, v in r["breakdown"].items())
                print(f"breakdown {label} {r['case']} fwd_bwd (us per call, nested spans overlap): {parts}")
    if args.out:
        from sparsesim.simulator.files import write_text

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
        write_text(buf.getvalue(), args.out, "--out")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
