"""Scheduling CTAs onto SMs: the makespan of a kernel from its per-CTA costs.

The chip is ``sm_count * ctas_per_sm`` slots; each CTA starts on the slot that frees first
(Graham's greedy list schedule). Non-persistent kernels take CTAs in launch order (waves and
their quantization); persistent kernels with a tile scheduler take the longest first (LPT). Our persistent
GNA forward runs a static schedule, :func:`persistent_schedule`, which its host code imports from here: the
model's schedule of that kernel is the kernel's own table (:func:`schedule_choice` says when it runs).

The schedule never expands the launch: a launch is one pass of per-CTA costs (one head of one
batch) repeated ``repeat`` times. Runs of equal costs are placed in bulk (a run of ``n`` CTAs of
duration ``c`` takes the ``n`` earliest start times ``f_j + t*c`` of the slots, a water-filling
computed in closed form), so a 10M-token layout with a handful of distinct tile costs costs a few
hundred bulk steps, not millions of CTAs. It is exact, except that a stretch of more than
:data:`EXACT_LIMIT` CTAs of all-different costs (a 10M-token causal triangle) is poured as a fluid,
which the greedy schedule ends within one of those CTAs of (0.01% at 10M tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Runs shorter than this many slots are placed CTA by CTA; longer ones in bulk.
_BULK_MIN_RUN_SLOTS = 0.25
#: A stretch of more short-run CTAs than this is placed as a fluid (see :func:`_place_fluid`).
EXACT_LIMIT = 1 << 18


def _fill(finish: np.ndarray, cost: float, n: int) -> np.ndarray:
    """Place ``n`` CTAs of equal ``cost`` greedily on slots with sorted finish times; new sorted times.

    Slot ``j`` offers start times ``f_j, f_j + c, ...``; greedy takes the ``n`` smallest. With the
    water level ``L`` where ``sum_j max(0, L - f_j) = n * c``, every start ``<= L - c`` is taken
    (``floor((L - f_j) / c)`` per slot, at most ``n`` in all), and the ``r < S`` still missing go to
    the ``r`` smallest next starts, which all lie in ``(L - c, L]`` and below any slot's second one.
    """
    if n <= 0 or cost <= 0.0:
        return finish
    slots = finish.size
    levels = (n * cost + np.cumsum(finish)) / np.arange(1, slots + 1)
    nxt = np.append(finish[1:], np.inf)
    active = int(np.argmax(levels <= nxt)) + 1  # the first k whose level does not reach slot k
    level = levels[active - 1]
    taken = np.zeros(slots, dtype=np.int64)
    taken[:active] = np.maximum(0, np.floor((level - finish[:active]) / cost)).astype(np.int64)
    rest = n - int(taken.sum())
    if rest < 0:  # rounding in the level: give back the latest starts
        while rest < 0:
            j = int(np.argmax(np.where(taken > 0, finish + (taken - 1) * cost, -np.inf)))
            taken[j] -= 1
            rest += 1
    if rest > 0:
        starts = finish + taken * cost
        if rest >= slots:  # rounding again: fall back to whole rounds first
            taken += rest // slots
            rest %= slots
            starts = finish + taken * cost
        if rest:
            taken[np.argpartition(starts, rest - 1)[:rest]] += 1
    return np.sort(finish + taken * cost)


def _place_each(finish: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """Place CTAs one run of slots at a time (the exact per-CTA greedy, for short runs)."""
    finish = finish.copy()
    slots = finish.size
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
    return finish


def _place_fluid(finish: np.ndarray, work: float) -> np.ndarray:
    """Pour ``work`` seconds onto the slots as a fluid (lowest first): the greedy ends within one CTA of it."""
    slots = finish.size
    levels = (work + np.cumsum(finish)) / np.arange(1, slots + 1)
    nxt = np.append(finish[1:], np.inf)
    level = levels[int(np.argmax(levels <= nxt))]
    return np.maximum(finish, level)


def runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-length encoding of a 1D array: the value and the length of each run of equal values."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return values, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return values[starts], np.diff(np.r_[starts, values.size])


def _place_runs(finish: np.ndarray, values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Place runs in order: long runs in bulk, stretches of short runs CTA by CTA."""
    slots = finish.size
    long = lengths >= max(2, int(_BULK_MIN_RUN_SLOTS * slots))
    edges = np.flatnonzero(np.r_[True, long[1:] != long[:-1], True])
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if long[a]:
            for value, length in zip(values[a:b], lengths[a:b], strict=True):
                finish = _fill(finish, float(value), int(length))
        elif int(lengths[a:b].sum()) > EXACT_LIMIT:
            finish = _place_fluid(finish, float((values[a:b] * lengths[a:b]).sum()))
        else:
            finish = _place_each(finish, np.repeat(values[a:b], lengths[a:b]))
    return finish


def makespan(costs: np.ndarray, sm_count: int, ctas_per_sm: int = 1, persistent: bool = False,
             repeat: int = 1) -> float:
    """Time until the last CTA finishes: ``costs`` (one pass, in launch order) launched ``repeat`` times.

    ``ctas_per_sm`` co-resident CTAs share an SM, so the chip is ``sm_count * ctas_per_sm`` slots
    each running at ``1 / ctas_per_sm`` speed. When a pass moves every slot by the same time, every
    later pass does the same (the greedy schedule is shift-invariant), so it is not replayed.

    Example:
        >>> makespan(np.ones(133), sm_count=132)  # one wave plus one CTA
        2.0
        >>> makespan(np.ones(10_000_000), sm_count=132) == float(-(-10_000_000 // 132))
        True
    """
    durations = np.asarray(costs, dtype=np.float64).ravel() * ctas_per_sm
    if durations.size == 0 or repeat < 1:
        return 0.0
    finish = np.zeros(sm_count * ctas_per_sm)
    if persistent:
        values, counts = np.unique(durations, return_counts=True)
        return float(_place_runs(finish, values[::-1], counts[::-1] * repeat)[-1])
    values, lengths = runs(durations)
    if values.size == 1:  # one cost throughout: every pass continues the same run
        return float(_place_runs(finish, values, lengths * repeat)[-1])
    for done in range(1, repeat + 1):
        before = finish
        finish = _place_runs(finish, values, lengths)
        step = finish - before
        if done < repeat and float(np.abs(step - step[0]).max()) <= 1e-12 * float(finish[-1]):
            # Every slot moved by the same time: the greedy is shift-invariant, so each later pass does too.
            return float(finish[-1] + step[0] * (repeat - done))
    return float(finish[-1])


def wave_count(num_ctas: int, sm_count: int, ctas_per_sm: int = 1) -> int:
    """Number of waves of a non-persistent launch."""
    return -(-num_ctas // (sm_count * ctas_per_sm))


# --------------------------------------------------------------------------------------------
# The persistent GNA forward: one static schedule, shared by the kernel and the model.
# --------------------------------------------------------------------------------------------

#: The kernel's default runs persistent only where the model predicts its schedule at least this much shorter than
#: the launch order's. The persistent loop's own cost is not modelled: on the H200 at 953c6b0
#: (benchmarks/persistent_bench.py) predicted gains of 2.1%, 9.0% and 2.7% (causal 1D, 2D, 3D) measured -5.0%,
#: -4.6% and +2.1%, and the block-sparse HunyuanVideo/FLUX cases (no predicted gain) -2.7% and -2.3%: so
#: persistent runs only on request until a case predicted above this gain measures faster.
PERSISTENT_MIN_GAIN = 0.10


@dataclass(frozen=True, eq=False)
class PersistentSchedule:
    """Work items assigned to the programs of a persistent kernel (static: the kernel reads it as a table).

    Program ``p`` runs items ``order[starts[p]:starts[p + 1]]`` in that order; ``loads[p]`` is the sum of
    their costs (summed in that order).
    """

    order: np.ndarray  # int64 item indices, program by program
    starts: np.ndarray  # int64 [programs + 1]
    loads: np.ndarray  # float64 [programs]

    @property
    def programs(self) -> int:
        return int(self.loads.size)

    def makespan(self, ctas_per_sm: int = 1) -> float:
        """Time until the last program ends, each program on one slot at ``1 / ctas_per_sm`` speed."""
        return float(self.loads.max()) * ctas_per_sm if self.loads.size else 0.0


def persistent_programs(items: int, sm_count: int, ctas_per_sm: int = 1) -> int:
    """Programs of a persistent launch: one per slot (``sm_count * ctas_per_sm``), at most one per item."""
    return max(0, min(int(items), int(sm_count) * int(ctas_per_sm)))


def persistent_schedule(costs: np.ndarray, programs: int) -> PersistentSchedule:
    """The persistent kernel's static schedule of items with ``costs`` (in launch order) over ``programs``.

    Longest first, in rounds: the items sorted by descending cost (ties in launch order) are dealt ``programs``
    at a time, each round's longest to the program least loaded so far (ties to the lower program); a program
    runs its items in the order it got them. This is Graham's LPT list schedule except within a round (there
    it is the sorted matching of the round's items to the programs' loads), and it is a pure function of the
    costs: the kernel's host code (:mod:`sparsesim.kernels.gna`) builds its device table with this function
    and the model predicts the same schedule from the same costs. Items of equal cost are interchangeable, so
    the loads depend only on the multiset of costs (the model's CTA order need not be the kernel's).

    Example:
        >>> s = persistent_schedule(np.array([1.0, 3.0, 2.0, 2.0, 1.0]), programs=2)
        >>> s.order.tolist(), s.starts.tolist(), s.loads.tolist()
        ([1, 0, 4, 2, 3], [0, 3, 5], [5.0, 4.0])
    """
    costs = np.asarray(costs, dtype=np.float64).ravel()
    n = costs.size
    if programs < 1 or (n and programs > n):
        raise ValueError(f"persistent_schedule: programs={programs}; allowed: 1 to the {n} items")
    ranked = np.argsort(-costs, kind="stable")
    owner = np.empty(n, dtype=np.int64)  # program of each ranked item
    loads = np.zeros(programs)
    for r in range(0, n, programs):
        items = ranked[r:r + programs]
        target = np.argsort(loads, kind="stable")[:items.size]
        owner[r:r + items.size] = target
        loads[target] += costs[items]
    grouped = np.argsort(owner, kind="stable")  # program by program, each in the order dealt
    starts = np.zeros(programs + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=programs), out=starts[1:])
    return PersistentSchedule(order=ranked[grouped], starts=starts, loads=loads)


@dataclass(frozen=True)
class ScheduleChoice:
    """The launch-order and persistent makespans of one pass of CTAs, and which one the kernel runs."""

    launch_s: float
    persistent_s: float
    programs: int

    @property
    def persistent(self) -> bool:
        return self.persistent_s < self.launch_s * (1.0 - PERSISTENT_MIN_GAIN)

    @property
    def makespan(self) -> float:
        return self.persistent_s if self.persistent else self.launch_s


def schedule_choice(costs: np.ndarray, sm_count: int, ctas_per_sm: int = 1, repeat: int = 1) -> ScheduleChoice:
    """Launch order (:func:`makespan`) against the persistent schedule (:func:`persistent_schedule` over
    :func:`persistent_programs` programs) of ``costs`` (one pass) launched ``repeat`` times: what the GNA
    forward's default picks (``persistent=None``), and so what the model predicts for it.

    Example:
        >>> c = schedule_choice(np.array([1.0, 1.0, 2.0]), sm_count=2)  # the long CTA last: a tail
        >>> c.launch_s, c.persistent_s, c.persistent
        (3.0, 2.0, True)
        >>> schedule_choice(np.ones(5), sm_count=2).persistent  # even costs: launch order
        False
    """
    costs = np.asarray(costs, dtype=np.float64).ravel()
    launch = makespan(costs, sm_count, ctas_per_sm, repeat=repeat)
    items = np.tile(costs, max(0, repeat))
    programs = persistent_programs(items.size, sm_count, ctas_per_sm)
    span = persistent_schedule(items, programs).makespan(ctas_per_sm) if programs else 0.0
    return ScheduleChoice(launch_s=launch, persistent_s=span, programs=programs)
