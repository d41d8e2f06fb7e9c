"""Measuring kernels: median device time, NaN-poisoned calls and a row-sampled correctness check.

Shared by ``simulate validate`` (:mod:`sparsesim.kernels.validate`) and the benchmark scripts. Device
work is timed with CUDA events through ``triton.testing.do_bench`` (median, at least three timed
repetitions, L2 flushed between runs); under the Triton interpreter (CPU) with the host clock, which
only shows that the path runs.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from sparsesim.kernels._launch import interpret

#: Query rows checked against the float32 reference, and the bound on ``||out - ref|| / ||ref||`` (bf16).
CHECK_ROWS = 256
TOLERANCE = 1e-2


def synchronize() -> None:
    import torch

    if torch.cuda.is_available() and not interpret():
        torch.cuda.synchronize()


#: A call estimated under this many ms is timed by several do_bench runs (:data:`SMALL_CALL_RUNS`), their median
#: kept: on the H200 a 0.03-0.17 ms call timed alone came out 1.5-2x slow in whole runs, 1 to 3 rounds of 8, with
#: the SM clock at its maximum and whatever the warm-up (benchmarks/warmup_bench.py, a11c078).
SMALL_CALL_MS = 0.5
SMALL_CALL_RUNS = 3


def bench_ms(fn: Callable[[], Any], est_ms: float) -> float:
    """do_bench's median of ``fn`` (warm-up and repetitions sized to ``est_ms``, its time once); a call under
    :data:`SMALL_CALL_MS` is benched :data:`SMALL_CALL_RUNS` times and the median of those medians kept."""
    import triton

    runs = SMALL_CALL_RUNS if est_ms < SMALL_CALL_MS else 1
    return statistics.median(
        float(triton.testing.do_bench(fn, warmup=max(25, est_ms), rep=max(100, 3 * est_ms), return_mode="median"))
        for _ in range(runs))


def time_ms(fn: Callable[[], Any]) -> float:
    """Median ms of ``fn``: do_bench on a GPU (warm-up and repetitions sized to the call; small calls benched
    several times, :func:`bench_ms`), the host clock under the interpreter."""
    if interpret():
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    import torch

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return bench_ms(fn, start.elapsed_time(end))


def random_tensor(shape: tuple[int, ...], dtype: Any, device: Any, seed: int) -> Any:
    """Fresh standard-normal data (never zeros: they hide unwritten outputs and run faster)."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)


def poisoned_call(fn: Callable[[Any], Any], like: Any) -> tuple[Any, int]:
    """Call ``fn(out)`` on a NaN-filled buffer; the output and how many elements stayed unwritten."""
    import torch

    out = torch.full_like(like, float("nan"))
    fn(out)
    synchronize()
    return out, int(torch.isnan(out).sum())


def check_rows(out: Any, q: Any, k: Any, v: Any, mask_fn: Callable[[Any], Any], seed: int,
               rows: int = CHECK_ROWS) -> float:
    """``||out - ref|| / ||ref||`` on random query rows against a float32 reference with their exact masks.

    ``mask_fn(rows)`` gives the bool ``[R, N]`` mask of the sampled (row-major) query tokens.
    """
    import torch

    from sparsesim.kernels.reference import rel_error, row_reference

    n = math.prod(q.shape[1:-2])
    g = torch.Generator().manual_seed(seed)
    picked = torch.randperm(n, generator=g)[:rows].sort().values
    qf, kf, vf = (x.reshape(x.shape[0], n, x.shape[-2], x.shape[-1]) for x in (q, k, v))
    mask = torch.as_tensor(mask_fn(picked.numpy()), device=q.device)
    ref = row_reference(qf[:, picked.to(q.device)], kf, vf, mask)
    got = out.reshape(out.shape[0], n, out.shape[-2], out.shape[-1])[:, picked.to(q.device)]
    return rel_error(got, ref)
