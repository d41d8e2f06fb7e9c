"""The published rules a plan is compared with: on the same candidates as the plan, tuned to the same budget.

Each baseline chooses from every evaluated point of every head (under GQA per KV head, as the plan does:
:class:`~sparsesim.search.plan.Units`; a KV head's error of a pattern is the mean over its query heads),
and its one free threshold is tuned so that its mean error is as close as possible to the budget without
exceeding it (the loosest threshold within the budget):

- ``uniform``: one pattern for every head (the GNA paper's practice): of the patterns evaluated on every
  head, the fastest whose mean error is within the budget;
- ``sparse-vdit``: per head ``argmin error + lambda * (1 - sparsity)`` (Sparse-vDiT's rule: it counts kept
  pairs, not time; ties: less error, then faster); ``lambda`` tuned by bisection;
- ``sta``: per head the sparsest pattern (fewest kept pairs, then fastest) whose error is at most a
  threshold (STA's rule); the threshold tuned over the errors that occur.

A larger ``lambda`` or threshold never picks a point of less error, so each rule's mean error is
nondecreasing in its threshold and the tuning is a bisection. Where even the most accurate choice exceeds
the budget, the baseline is that choice (threshold ``None``), shown with its error. Within the budget
means at most ``budget * (1 + 1e-9)``, as for the plan (:func:`~sparsesim.search.plan.choose`).

Everything works on arrays (:class:`Table`: every candidate's error on every head), so the baselines of an
exhaustive search (thousands of candidates per head) cost a few array passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sparsesim.search.plan import Choice, Model, Rows
from sparsesim.search.space import Candidate
from sparsesim.search.study import Point
from sparsesim.simulator.errors import ConfigError

#: Each baseline's rule, in words (recorded in its plan file: :func:`~sparsesim.search.plan.rule_info`).
RULES = {
    "uniform": "one pattern for every head, the fastest within the budget",
    "sparse-vdit": "per head argmin error + lambda * (1 - sparsity) (Sparse-vDiT), lambda tuned to the budget",
    "sta": "per head the sparsest pattern with error <= threshold (STA), threshold tuned to the budget",
}
#: Relative slack of "within the budget" (the plan's).
SLACK = 1e-9


@dataclass(frozen=True, eq=False)
class Table:
    """Every evaluated point as arrays: ``error[layer, head, k]`` of candidate ``candidates[k]`` (NaN: not
    evaluated on that head), and ``point(layer, head, k)`` the :class:`Point` of an entry."""

    candidates: tuple[Candidate, ...]
    error: np.ndarray
    point: Callable[[int, int, int], Point]

    @classmethod
    def of_points(cls, evaluated: Rows) -> Table:
        """The table of per layer, per head, the head's evaluated points."""
        index: dict[Candidate, int] = {}
        heads = max((len(layer) for layer in evaluated), default=0)
        entries = []
        for li, layer in enumerate(evaluated):
            for h, pts in enumerate(layer):
                for p in pts:
                    entries.append((li, h, index.setdefault(p.candidate, len(index)), p))
        error = np.full((len(evaluated), heads, len(index)), np.nan)
        table = np.empty(error.shape, dtype=object)
        for li, h, k, p in entries:
            error[li, h, k] = p.error
            table[li, h, k] = p
        return cls(tuple(index), error, lambda li, h, k: table[li, h, k])


def _within(mean: float, budget: float) -> bool:
    return mean <= budget * (1 + SLACK)


class _Front:
    """Per unit, the points a rule can pick in the rule's order (error strictly falling along it), padded."""

    def __init__(self, err: np.ndarray, keys: Sequence[np.ndarray], pad: float) -> None:
        order = np.lexsort(tuple(np.broadcast_to(k, err.shape) for k in keys), axis=-1)  # last key first
        es = np.take_along_axis(err, order, axis=1)
        before = np.fmin.accumulate(np.concatenate([np.full((len(es), 1), np.inf), es[:, :-1]], axis=1), axis=1)
        keep = es < before  # NaN (not evaluated) never kept, nor counted
        self.n = keep.sum(axis=1)
        width = max(1, int(self.n.max(initial=0)))
        rows, cols = np.nonzero(keep)
        slot = np.cumsum(keep, axis=1)[rows, cols] - 1
        self.k = np.zeros((len(es), width), dtype=np.int64)  # the candidate index of each slot
        self.error = np.full((len(es), width), pad)
        self.k[rows, slot] = order[rows, cols]
        self.error[rows, slot] = es[rows, cols]

    def mean(self, slot: np.ndarray) -> float:
        return float(self.error[np.arange(len(slot)), slot].mean()) if len(slot) else 0.0


def sparse_vdit(err: np.ndarray, density: np.ndarray, ms: np.ndarray, budget: float
                ) -> tuple[np.ndarray, float | None]:
    """Sparse-vDiT's rule on ``err`` (units x candidates, NaN: not evaluated) with the loosest ``lambda``
    within ``budget``: each unit's candidate index, and ``lambda`` (None: over the budget at 0)."""
    fr = _Front(err, (ms, err, density), np.inf)  # by density, then error, then ms
    # slots reversed within each row (error ascending) so that argmin's first hit among equal costs is the
    # least error; padding stays at the end
    width = fr.error.shape[1]
    rev = np.where(np.arange(width)[None, :] < fr.n[:, None], fr.n[:, None] - 1 - np.arange(width)[None, :],
                   np.arange(width)[None, :])
    e_rev = np.take_along_axis(fr.error, rev, axis=1)
    d_rev = np.take_along_axis(np.where(np.isfinite(fr.error), density[fr.k], 0.0), rev, axis=1)
    units = np.arange(len(err))

    def pick(lam: float) -> np.ndarray:
        return np.asarray(rev[units, np.argmin(e_rev + lam * d_rev, axis=1)])

    def ok(lam: float) -> bool:
        return _within(fr.mean(pick(lam)), budget)

    if not ok(0.0):
        return fr.k[units, pick(0.0)], None
    hi = 1.0
    while ok(hi):
        if hi > 1e15:
            return fr.k[units, pick(hi)], hi
        hi *= 2
    lo = 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if not lo < mid < hi:
            break
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return fr.k[units, pick(lo)], lo


def sta(err: np.ndarray, density: np.ndarray, ms: np.ndarray, budget: float) -> tuple[np.ndarray, float | None]:
    """STA's rule on ``err`` (units x candidates, NaN: not evaluated) with the loosest error threshold within
    ``budget``: each unit's candidate index, and the threshold (None: over the budget at every one)."""
    fr = _Front(err, (err, ms, density), -np.inf)  # sparsest, then fastest, then least error
    units = np.arange(len(err))

    def pick(tau: float) -> np.ndarray:
        # the first slot (sparsest) of error <= tau; errors fall along the front; none: the last (most accurate)
        return np.minimum((fr.error > tau).sum(axis=1), fr.n - 1)

    values = np.unique(fr.error[np.isfinite(fr.error)])
    if not len(values) or not _within(fr.mean(pick(float(values[0]))), budget):
        return fr.k[units, pick(-np.inf)], None
    lo, hi = 0, len(values)  # values[lo] within the budget; values[hi] (if any) not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _within(fr.mean(pick(float(values[mid]))), budget) else (lo, mid)
    return fr.k[units, pick(float(values[lo]))], float(values[lo])


def uniform(err: np.ndarray, layer_ms: Callable[[int], float], budget: float) -> int | None:
    """The candidate of the fastest one-pattern choice within ``budget`` of those evaluated on every unit
    (none within: the most accurate); None where no candidate was evaluated on every unit."""
    mean = err.mean(axis=0)  # NaN where some unit lacks it
    common = np.flatnonzero(np.isfinite(mean))
    if not len(common):
        return None
    ok = common[mean[common] <= budget * (1 + SLACK)]
    if len(ok):
        return int(min(ok, key=lambda k: (layer_ms(int(k)), mean[k], k)))
    return int(min(common, key=lambda k: (mean[k], k)))


def tuned(table: Table, model: Model, mean_error: float, *, max_error: float | None = None) -> list[Choice]:
    """The three baselines (``uniform``, ``sparse-vdit``, ``sta``) on ``table``, each tuned to the budget
    ``mean_error`` (module doc); under a per-head cap ``max_error`` each keeps to it as the plan does.
    ``Choice.threshold``: the tuned ``lambda`` or error threshold."""
    lat = model.latency
    g = lat.group
    layers, heads, k = table.error.shape
    if heads % g:
        raise ConfigError(f"{heads} heads; allowed: a multiple of the GQA group {g}")
    grouped = table.error.reshape(layers, heads // g, g, k)
    err = grouped.mean(axis=2).reshape(-1, k)  # per unit (layer-major): mean over its query heads
    if max_error is not None:
        worst = grouped.max(axis=2).reshape(-1, k)
        capped = np.where(worst <= max_error, err, np.nan)
        none = ~np.isfinite(capped).any(axis=1)
        if none.any():  # a unit no pattern keeps within the cap: its most accurate pattern only
            best = np.nanargmin(np.where(np.isfinite(worst[none]), worst[none], np.inf), axis=1)
            capped[np.flatnonzero(none), best] = err[np.flatnonzero(none), best]
        err = capped
    empty = np.flatnonzero(~np.isfinite(err).any(axis=1))
    if len(empty):
        li, u = divmod(int(empty[0]), heads // g)
        raise ConfigError(f"layer {li}, KV head {u}: no pattern was evaluated on all its {g} query heads")
    layout, causal = lat.shape.layout, lat.shape.causal
    density = np.array([c.pattern(layout, causal).density() for c in table.candidates])
    ms = np.array([lat.head_ms(c) if np.isfinite(err[:, i]).any() else np.inf
                   for i, c in enumerate(table.candidates)])
    units_per_layer = heads // g

    def choice(name: str, picked: np.ndarray, threshold: float | None) -> Choice:
        rows = tuple(tuple(table.point(li, h, int(picked[li * units_per_layer + h // g])) for h in range(heads))
                     for li in range(layers))
        return Choice(name, rows, threshold)

    out = []
    uni = uniform(err, lambda i: lat.layer_ms([table.candidates[i]] * lat.shape.heads), mean_error)
    if uni is not None:
        out.append(choice("uniform", np.full(len(err), uni), None))
    for name, rule in (("sparse-vdit", sparse_vdit), ("sta", sta)):
        picked, threshold = rule(err, density, ms, mean_error)
        out.append(choice(name, picked, threshold))
    return out


def baselines(evaluated: Rows, model: Model, mean_error: float, *, max_error: float | None = None) -> list[Choice]:
    """:func:`tuned` on per layer, per head, every evaluated point (the plan's candidates)."""
    return tuned(Table.of_points(evaluated), model, mean_error, max_error=max_error)


__all__ = ["RULES", "SLACK", "Table", "baselines", "sparse_vdit", "sta", "tuned", "uniform"]
