"""GPU: what one ``gna_attention`` call costs on the host and on the device, small and large shapes.

    python benchmarks/host_overhead.py --out DIR [--label after]

Per case (bf16, batch 1) it measures, side by side with dense cuDNN SDPA:

- ``host_us``: host time per repeated call, with the GPU kept busy by a long sleep kernel so that
  the CPU never waits for it (100 calls after warm-up, median of 5 such loops);
- ``call_ms``: wall time per call of 100 back-to-back calls, synchronized once at the end (what a
  model's forward sees), median of 5;
- ``device_ms``: ``triton.testing.do_bench`` of the call (CUDA events, median);
- ``graph_ms``: the call captured once in a CUDA graph, replays timed with do_bench (no host
  overhead at all); ``graph_ok``: the replay's output equals the eager output;
- ``cudnn_ms``: dense SDPA (cuDNN backend) on the same q, k, v.

It imports whatever ``sparsesim`` is on the path, so the same script times the code before a
change (a copy of the old package first on ``PYTHONPATH``) and after it. One CSV row per case.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Any

CASES = (  # name, input_size, window, stride, heads, large
    ("image_32x32_w8x8", (32, 32), (8, 8), (1, 1), 24, False),
    ("1d_4096_w512", (4096,), (512,), (1,), 8, False),
    ("video_8x16x16_w4x8x8", (8, 16, 16), (4, 8, 8), (1, 1, 1), 24, False),
    ("flux_256x256_w80x80_s16x16", (256, 256), (80, 80), (16, 16), 24, True),
    ("hunyuan_30x48x80_w18x24x24_s16x8x8", (30, 48, 80), (18, 24, 24), (16, 8, 8), 24, True),
)
HEAD_DIM = 128


def _median_loop(fn: Any, calls: int, sleep_cycles: int = 0) -> float:
    """Median over 5 loops of the host seconds per call of ``calls`` calls (GPU asleep when asked)."""
    import torch

    out = []
    for _ in range(5):
        torch.cuda.synchronize()
        if sleep_cycles:
            torch.cuda._sleep(sleep_cycles)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        out.append((t1 - t0) if sleep_cycles else (t2 - t0))
    return statistics.median(out) / calls


def measure(name: str, size: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...], heads: int,
            label: str) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sparsesim.kernels import gna_attention

    g = torch.Generator(device="cuda").manual_seed(len(name))
    q, k, v = (torch.randn(1, *size, heads, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    out = torch.empty_like(q)

    def call() -> Any:
        return gna_attention(q, k, v, window=window, stride=stride, out=out)

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    eager = out.clone()
    host_s = _median_loop(call, 100, sleep_cycles=int(4e9))
    call_s = _median_loop(call, 100)
    device_ms = float(triton.testing.do_bench(call, warmup=25, rep=200, return_mode="median"))
    graph_ms, graph_ok, graph_note = float("nan"), False, ""
    try:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            call()
        torch.cuda.current_stream().wait_stream(stream)
        out.zero_()
        with torch.cuda.graph(graph):
            call()
        graph.replay()
        torch.cuda.synchronize()
        graph_ok = bool(torch.equal(out, eager))
        graph_ms = float(triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median"))
    except Exception as exc:  # noqa: BLE001 - a path that cannot be captured is a result too
        graph_note = f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    qd, kd, vd = (x.flatten(1, -3).transpose(1, 2).contiguous() for x in (q, k, v))

    def dense() -> Any:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(qd, kd, vd)

    cudnn_ms = float(triton.testing.do_bench(dense, warmup=25, rep=200, return_mode="median"))
    return {"label": label, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "case": name, "tokens": q[0, ..., 0, 0].numel(), "heads": heads,
            "host_us": host_s * 1e6, "call_ms": call_s * 1e3, "device_ms": device_ms, "graph_ms": graph_ms,
            "graph_ok": graph_ok, "cudnn_ms": cudnn_ms, "note": graph_note}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/host_overhead.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder of the CSV")
    parser.add_argument("--label", default="after", help="what this run times (before/after)")
    parser.add_argument("--small-only", action="store_true", help="skip the large shapes")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("host_overhead: needs a CUDA GPU", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"host_overhead_{args.label}.csv"
    rows = []
    for name, size, window, stride, heads, large in CASES:
        if large and args.small_only:
            continue
        try:
            rows.append(measure(name, size, window, stride, heads, args.label))
        except Exception as exc:  # noqa: BLE001 - record and go on
            rows.append({"label": args.label, "case": name, "note": f"ERROR {type(exc).__name__}: {exc}"[:200]})
        r = rows[-1]
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)
        fields = list(dict.fromkeys(k for row in rows for k in row))
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
