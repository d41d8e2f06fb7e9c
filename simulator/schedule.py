"""Scheduling CTAs onto SMs: the makespan of a kernel from its per-CTA costs."""

from __future__ import annotations

import numpy as np


def makespan(costs: np.ndarray, sm_count: int, ctas_per_sm: int = 1, persistent: bool = False) -> float:
    """Time until the last CTA finishes.

    ``ctas_per_sm`` co-resident CTAs share an SM, so the chip is ``sm_count * ctas_per_sm`` slots
    each running at ``1 / ctas_per_sm`` speed. Non-persistent kernels take CTAs in launch order
    as slots free up (waves, and their quantization); persistent kernels with a tile scheduler
    take the longest first (LPT). Slots are refilled a wave at a time: within one wave the i-th
    CTA goes to the i-th earliest free slot, which is the greedy list schedule whenever a wave's
    CTAs start before the earliest slot frees again (always true for equal costs).

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
    finish = np.zeros(slots)
    for start in range(0, durations.size, slots):
        wave = durations[start:start + slots]
        finish.sort()
        finish[: wave.size] += wave
    return float(finish.max())


def wave_count(num_ctas: int, sm_count: int, ctas_per_sm: int = 1) -> int:
    """Number of waves of a non-persistent launch."""
    return -(-num_ctas // (sm_count * ctas_per_sm))
