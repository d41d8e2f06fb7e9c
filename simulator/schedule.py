"""Scheduling CTAs onto SMs: the makespan of a kernel from its per-CTA costs."""

from __future__ import annotations

import numpy as np


def makespan(costs: np.ndarray, sm_count: int, ctas_per_sm: int = 1, persistent: bool = False) -> float:
    """Time until the last CTA finishes under greedy list scheduling.

    ``ctas_per_sm`` co-resident CTAs share an SM, so the chip is ``sm_count * ctas_per_sm`` slots
    each running at ``1 / ctas_per_sm`` speed. Non-persistent kernels take CTAs in launch order
    as slots free up (waves, and their quantization); persistent kernels with a tile scheduler
    take the longest first (LPT). The schedule is exact: CTAs are placed a run at a time, where
    a run is the longest prefix that provably lands on the slots in order of their finish time.

    Example:
        >>> makespan(np.ones(133), sm_count=132)  # one wave plus one CTA
        2.0
    """
    durations = np.asarray(costs, dtype=np.float64).ravel() * ctas_per_sm
    if durations.size == 0:
        return 0.0
    if persistent:
        durations = np.sort(durations)[::-1]
    slots = sm_count * ctas_per_sm
    finish = np.zeros(slots)  # kept sorted
    pos, n = 0, durations.size
    while pos < n:
        run = durations[pos:pos + slots]
        # CTA j goes to the j-th earliest slot if that slot frees no later than any slot already
        # given a CTA of this run: finish[j] <= finish[0] + min(run[:j]) is enough.
        ok = finish[1:run.size] <= finish[0] + np.minimum.accumulate(run)[:-1]
        k = run.size if ok.all() else int(np.argmin(ok)) + 1
        finish[:k] += run[:k]
        finish.sort()
        pos += k
    return float(finish[-1])


def wave_count(num_ctas: int, sm_count: int, ctas_per_sm: int = 1) -> int:
    """Number of waves of a non-persistent launch."""
    return -(-num_ctas // (sm_count * ctas_per_sm))
