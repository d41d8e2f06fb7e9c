"""Block-sparse calls with a large block map: host time per repeated call (raw and prepared maps), kernel time.

    python benchmarks/block_map_bench.py [--mode auto|cpu|gpu] [--out FILE.csv] [--commit SHA] [--label L]

The case (issue 16): 64K tokens, 24 heads, head dim 128, 128x128 tiles, so a 24 x 512 x 512 map; each Q block
keeps its diagonal and random KV blocks (``--density``, per head).

Host time per repeated call (median of 5 loops of ``--calls`` calls; the map variants' loops interleaved,
round by round), for:

- ``content_hash``: what the per-call content hash used to cost (the map copied to the host, blake2b of its
  bytes); ``prepare``: building a BlockMap once (validation, forward and transposed lists);
- ``raw_numpy``, ``raw_torch_cpu`` (and on a GPU ``raw_torch_cuda``): a raw map found again by identity;
- ``prepared``: a BlockMap.

``--mode cpu`` (no GPU needed): the Triton interpreter's device rules with the kernel launch itself stubbed out,
so the figure is everything a call does on the host before the launch (plus the argument packing), not the
launch. ``--mode gpu``: the real call, the GPU kept busy by a sleep kernel so the host never waits; then kernel
times: ``call_ms`` (100 back-to-back calls, one synchronization), ``graph_ms`` (the call captured in a CUDA
graph, replays timed), FlexAttention with the same map (a BlockMask from the BlockMap's lists), and forward +
backward (ours through the custom op, eager and CUDA graph; Flex). Each variant runs in its own try/except:
a failure is a row with a note. One CSV row per variant, with GPU, torch, triton and commit.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOKENS, HEADS, HEAD_DIM, TILE = 65536, 24, 128, 128


def git_commit() -> str:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = res.stdout.strip()
    return sha if res.returncode == 0 and re.fullmatch(r"[0-9a-f]{7,64}", sha) else "unknown"


def random_map(heads: int, blocks: int, density: float, seed: int = 0) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    bm = rng.random((heads, blocks, blocks)) < density
    bm[:, np.arange(blocks), np.arange(blocks)] = True
    return bm


def host_us(fn: Any, calls: int, gpu: bool, loops: int = 5) -> float:
    """Median over ``loops`` loops of host microseconds per call (on a GPU: queued behind a sleep kernel)."""
    import torch

    out = []
    for _ in range(loops):
        if gpu:
            torch.cuda.synchronize()
            torch.cuda._sleep(int(2e9))
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append(time.perf_counter() - t0)
        if gpu:
            torch.cuda.synchronize()
    return statistics.median(out) / calls * 1e6


def content_hash(block_map: Any) -> tuple:
    """The per-call key the launch cache used before BlockMap (the map's bytes hashed)."""
    import numpy as np
    import torch

    bm = block_map.detach().cpu().numpy() if isinstance(block_map, torch.Tensor) else np.asarray(block_map)
    bm = np.ascontiguousarray(bm)
    return bm.shape, bm.dtype.str, hashlib.blake2b(bm.tobytes(), digest_size=16).digest()


class Rows:
    def __init__(self, base: dict[str, Any]) -> None:
        self.base = base
        self.rows: list[dict[str, Any]] = []

    def add(self, variant: str, **values: Any) -> None:
        row = {**self.base, "variant": variant, **values}
        self.rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                       if k not in self.base or k in ("mode",)), flush=True)

    def guard(self, variant: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a variant that fails is a result too
            self.add(variant, note=f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc)
                     else f"ERROR {type(exc).__name__}")

    def csv(self) -> str:
        fields = list(dict.fromkeys(k for row in self.rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        return buf.getvalue()


def host_rows(rows: Rows, q: Any, k: Any, v: Any, bm_np: Any, calls: int, gpu: bool) -> Any:
    """Host time per call for the content hash (before), preparing once, raw maps and a prepared map."""
    import torch

    from sparsesim.kernels import block_sparse_attention, prepare_block_map

    out = torch.empty_like(q)
    bm_cpu = torch.from_numpy(bm_np)
    rows.guard("content_hash_numpy", lambda: rows.add("content_hash_numpy", host_us=host_us(
        lambda: content_hash(bm_np), max(3, calls // 20), False)))
    if gpu:
        bm_gpu = bm_cpu.to(q.device)
        rows.guard("content_hash_cuda", lambda: rows.add("content_hash_cuda", host_us=host_us(
            lambda: content_hash(bm_gpu), max(3, calls // 20), False)))
    t0 = time.perf_counter()
    prepared = prepare_block_map(bm_np, seq_len=int(q.shape[1]), q_tile=TILE, kv_tile=TILE, device=q.device)
    if gpu:
        torch.cuda.synchronize()
    rows.add("prepare", host_us=(time.perf_counter() - t0) * 1e6, note="once: validation + forward/transposed lists")
    maps = [("raw_numpy", bm_np), ("raw_torch_cpu", bm_cpu)] + ([("raw_torch_cuda", bm_gpu)] if gpu else [])
    calls_of = {}
    for name, m in maps + [("prepared", prepared)]:
        def one(m: Any = m) -> Any:
            return block_sparse_attention(q, k, v, m, q_tile=TILE, kv_tile=TILE, out=out)

        try:
            for _ in range(3):
                one()
            calls_of[name] = one
        except Exception as exc:  # noqa: BLE001 - a variant that fails is a result too
            rows.add(name, note=f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
    # interleaved: each round times one loop of every variant in turn, so no variant takes all of an early (or
    # late) stretch of the run (at 1a430a6 the first-measured variant read 14-20 us above the rest, in order)
    loops: dict[str, list[float]] = {name: [] for name in calls_of}
    for _ in range(5):
        for name, one in calls_of.items():
            loops[name].append(host_us(one, calls, gpu, loops=1))
    for name, times in loops.items():
        rows.add(name, host_us=statistics.median(times))
    return prepared


def device_rows(rows: Rows, q: Any, k: Any, v: Any, prepared: Any) -> None:
    """Kernel times: back to back, CUDA graph, FlexAttention; forward + backward."""
    import torch
    import triton

    from sparsesim.kernels import block_sparse_attention
    from sparsesim.kernels.block_map import sorted_lists

    out = torch.empty_like(q)

    def call() -> Any:
        return block_sparse_attention(q, k, v, prepared, out=out)

    def back_to_back() -> None:
        for _ in range(3):
            call()
        torch.cuda.synchronize()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(100):
                call()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / 100 * 1e3)
        rows.add("ours_call", ms=statistics.median(times), note="100 calls back to back, one sync (wall per call)")
        rows.add("ours_do_bench", ms=float(triton.testing.do_bench(call, warmup=25, rep=200, return_mode="median")))

    def graph() -> None:
        eager = call().clone()
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            call()
        torch.cuda.current_stream().wait_stream(s)
        out.zero_()
        with torch.cuda.graph(g):
            call()
        g.replay()
        torch.cuda.synchronize()
        ok = bool(torch.equal(out, eager))
        rows.add("ours_graph", ms=float(triton.testing.do_bench(g.replay, warmup=25, rep=200, return_mode="median")),
                 note=f"CUDA graph replay; output equal to eager: {ok}")

    rows.guard("ours_call", back_to_back)
    rows.guard("ours_graph", graph)

    qd, kd, vd = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    flex_state: dict[str, Any] = {}

    def flex_setup() -> None:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention

        for key in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, key):
                setattr(torch._dynamo.config, key, 64)
        num, idx = sorted_lists(prepared.dense())
        heads = int(q.shape[2])
        num = num.expand(heads, -1) if num.shape[0] == 1 else num
        idx = idx.expand(heads, -1, -1) if idx.shape[0] == 1 else idx
        num, idx = num[None].contiguous(), idx[None].contiguous()  # every block full, as kernel_bench.py gives Flex
        flex_state["mask"] = BlockMask.from_kv_blocks(torch.zeros_like(num), idx, num, idx,
                                                      BLOCK_SIZE=(prepared.q_tile, prepared.kv_tile))
        flex_state["fn"] = torch.compile(flex_attention, dynamic=False)

    def flex_fwd() -> None:
        flex_setup()
        fn, mask = flex_state["fn"], flex_state["mask"]
        got = fn(qd, kd, vd, block_mask=mask).transpose(1, 2)
        ours = call()
        err = float((got.float() - ours.float()).norm() / ours.float().norm())
        ms = float(triton.testing.do_bench(lambda: fn(qd, kd, vd, block_mask=mask), warmup=25, rep=200,
                                           return_mode="median"))
        rows.add("flex", ms=ms, note=f"torch.compile(flex_attention), BlockMask from the BlockMap's lists; "
                                     f"rel. difference to ours {err:.2g}")

    rows.guard("flex", flex_fwd)

    qg, kg, vg = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    do = torch.randn_like(q)

    def ours_train() -> Any:
        o = block_sparse_attention(qg, kg, vg, prepared)
        return torch.autograd.grad(o, (qg, kg, vg), do)

    def fwd_bwd() -> None:
        for _ in range(2):
            ours_train()
        rows.add("ours_fwd_bwd", ms=float(triton.testing.do_bench(ours_train, warmup=10, rep=100,
                                                                   return_mode="median")),
                 note="through the custom op (autograd)")

    def fwd_bwd_graph() -> None:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                ours_train()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            ours_train()
        rows.add("ours_fwd_bwd_graph", ms=float(triton.testing.do_bench(g.replay, warmup=10, rep=100,
                                                                         return_mode="median")))

    def flex_fwd_bwd() -> None:
        if "fn" not in flex_state:
            flex_setup()
        fn, mask = flex_state["fn"], flex_state["mask"]
        qf, kf, vf = (x.detach().clone().requires_grad_(True) for x in (qd, kd, vd))
        dof = do.transpose(1, 2).contiguous()

        def train() -> Any:
            return torch.autograd.grad(fn(qf, kf, vf, block_mask=mask), (qf, kf, vf), dof)

        for _ in range(2):
            train()
        rows.add("flex_fwd_bwd", ms=float(triton.testing.do_bench(train, warmup=10, rep=100, return_mode="median")))

    rows.guard("ours_fwd_bwd", fwd_bwd)
    rows.guard("ours_fwd_bwd_graph", fwd_bwd_graph)
    rows.guard("flex_fwd_bwd", flex_fwd_bwd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/block_map_bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("auto", "cpu", "gpu"), default="auto",
                        help="cpu: host path only, kernel launch stubbed (no GPU needed); default: gpu when present")
    parser.add_argument("--out", default=None, help="CSV file to write (default: print only)")
    parser.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    parser.add_argument("--label", default="", help="free text recorded in every row")
    parser.add_argument("--tokens", type=int, default=TOKENS)
    parser.add_argument("--heads", type=int, default=HEADS)
    parser.add_argument("--density", type=float, default=0.08, help="fraction of blocks set per head (and diagonal)")
    parser.add_argument("--calls", type=int, default=200, help="calls per host-time loop")
    parser.add_argument("--skip-device", action="store_true", help="gpu mode: host times only")
    args = parser.parse_args(argv)

    if args.out:
        from sparsesim.simulator.files import check_output

        check_output(args.out, "--out", stdout_ok=False)
    mode = args.mode
    if mode in ("auto", "cpu"):
        import importlib.util

        gpu_present = False
        if mode == "auto" and importlib.util.find_spec("torch") is not None:
            import torch

            gpu_present = torch.cuda.is_available()
        mode = "gpu" if gpu_present else "cpu"
    if mode == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # CPU tensors pass the device check; set before triton.jit runs
    import torch
    import triton

    if mode == "gpu" and not torch.cuda.is_available():
        print("block_map_bench: --mode gpu needs a CUDA GPU", file=sys.stderr)
        return 2
    import sparsesim.kernels.block_sparse as bs

    if mode == "cpu":
        bs.launch_compiled = lambda *a, **kw: None  # type: ignore[assignment]  # host path only
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    blocks = -(-args.tokens // TILE)
    bm_np = random_map(args.heads, blocks, args.density)
    rows = Rows({"mode": mode, "gpu": torch.cuda.get_device_name() if mode == "gpu" else "none",
                 "torch": torch.__version__, "triton": triton.__version__, "commit": args.commit or git_commit(),
                 "label": args.label, "tokens": args.tokens, "heads": args.heads, "head_dim": HEAD_DIM, "tile": TILE,
                 "map": f"{args.heads}x{blocks}x{blocks}", "density": round(float(bm_np.mean()), 4)})
    dtype = torch.bfloat16 if mode == "gpu" else torch.float16
    shape = (1, args.tokens, args.heads, HEAD_DIM)
    if mode == "gpu":
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(3))
    else:  # never touched: the launch is stubbed
        q, k, v = (torch.empty(shape, device=device, dtype=dtype) for _ in range(3))
    prepared = host_rows(rows, q, k, v, bm_np, args.calls, mode == "gpu")
    if mode == "gpu" and not args.skip_device:
        device_rows(rows, q, k, v, prepared)
    if args.out:
        from sparsesim.simulator.files import write_text

        write_text(rows.csv(), args.out, "--out")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
