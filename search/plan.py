"""Plans: one pattern per layer and head, chosen from each head's Pareto front, as a versioned JSON file.

:func:`choose` picks per head to maximize the predicted end-to-end speedup under an error budget (mean
over heads, and optionally a per-head maximum), or to meet a target speedup at least error: a
Lagrangian search over ``sum(ms) + lambda * sum(error)`` (per-head shares of full-layer launches), then
every layer's time is simulated as the launches it really makes (heads with one pattern share a launch).
Under GQA the query heads of one KV head get one pattern (:class:`Units`), so every launch is whole KV
groups. The baselines (:mod:`sparsesim.search.baselines`) choose from the same evaluated points, each with
its threshold tuned to the same budget, and ``choose`` takes them as seeds: the plan is never slower.

The plan file is a typed, versioned record (:class:`~sparsesim.simulator.plan.Plan`, defined in the core so
that kernels and reports read it without importing the search): :func:`build_plan` makes it from a choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sparsesim.search.latency import LatencyModel
from sparsesim.search.space import Candidate
from sparsesim.search.study import Point, pareto
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.plan import (  # the record and its reader live in the core; re-exported here
    FORMAT,
    MAX_PLAN_BYTES,
    READS,
    VERSION,
    BaselineOutcome,
    ErrorBudget,
    GpuPrediction,
    Plan,
    PlanHead,
    PlanLaunch,
    PlanLayer,
    SearchInfo,
    load_plan,
    parse_plan,
    save_plan,
)


@dataclass(frozen=True)
class Choice:
    """A whole-model choice: per searched layer, one point per head (``threshold``: a baseline's tuned free
    parameter, :mod:`sparsesim.search.baselines`)."""

    name: str
    layers: tuple[tuple[Point, ...], ...]
    threshold: float | None = None

    @property
    def errors(self) -> list[float]:
        return [p.error for layer in self.layers for p in layer]

    @property
    def mean_error(self) -> float:
        return float(sum(self.errors) / max(1, len(self.errors)))

    @property
    def max_error(self) -> float:
        return float(max(self.errors, default=0.0))


@dataclass(frozen=True)
class Outcome:
    """A choice's predicted times: attention per step and end to end, against all-dense."""

    name: str
    mean_error: float
    max_error: float
    attention_ms: float
    dense_attention_ms: float
    attention_speedup: float
    e2e_predicted_speedup: float


@dataclass(frozen=True)
class Model:
    """How a choice becomes times: the layer latency model, and the step around the searched layers.

    ``other_ms`` is everything of one dense step that no searched layer's self-attention holds (GEMMs,
    elementwise passes, text attention, unsearched layers' attention), per step.
    """

    latency: LatencyModel
    other_ms: float


def outcome(model: Model, choice: Choice) -> Outcome:
    lat = model.latency
    attn = sum(lat.layer_ms([p.candidate for p in layer]) for layer in choice.layers)
    dense = lat.dense_layer_ms() * len(choice.layers)
    return Outcome(name=choice.name, mean_error=choice.mean_error, max_error=choice.max_error, attention_ms=attn,
                   dense_attention_ms=dense, attention_speedup=dense / attn if attn > 0 else math.inf,
                   e2e_predicted_speedup=(model.other_ms + dense) / (model.other_ms + attn))


# --------------------------------------------------------------------------------------------
# Units: the query heads of one KV head choose together
# --------------------------------------------------------------------------------------------

Rows = Sequence[Sequence[Sequence[Point]]]


class Units:
    """The unit a plan chooses a pattern for: the query heads of one KV head (``size`` = the GQA group; they
    run one pattern, so every launch is whole KV groups), one head without GQA.

    A unit's point of a candidate (one evaluated on every head of the unit): ms summed over its heads,
    error and mass their means (units are equal in size, so the mean over units is the mean over heads).
    Under a per-head cap ``max_error`` a unit keeps the candidates every head of it meets (the most
    accurate one where none does)."""

    def __init__(self, size: int, max_error: float | None = None) -> None:
        self.size = size
        self.max_error = max_error
        self._members: dict[tuple[int, int, Candidate], tuple[Point, ...]] = {}

    def rows(self, heads: Rows) -> list[list[list[Point]]]:
        """Per layer, per unit, its points (from per layer, per head, the head's points)."""
        out = []
        for li, layer in enumerate(heads):
            if len(layer) % self.size:
                raise ConfigError(f"layer {li} has {len(layer)} heads; allowed: a multiple of the GQA group "
                                  f"{self.size}")
            if self.size == 1:  # each head its own unit
                row = [[p for p in h if self.max_error is None or p.error <= self.max_error] or
                       [min(h, key=lambda p: p.error)] for h in layer]
                out.append(row)
                continue
            row = []
            for u in range(len(layer) // self.size):
                per = [{p.candidate: p for p in h} for h in layer[u * self.size:(u + 1) * self.size]]
                common = {c: tuple(d[c] for d in per) for c in per[0] if all(c in d for d in per[1:])}
                if not common:
                    raise ConfigError(f"layer {li}, KV head {u}: no pattern was evaluated on all its "
                                      f"{self.size} query heads")
                ok = {c: m for c, m in common.items()
                      if self.max_error is None or max(p.error for p in m) <= self.max_error}
                if not ok:
                    c, m = min(common.items(), key=lambda kv: max(p.error for p in kv[1]))
                    ok = {c: m}
                row.append([self.point(li, u, m) for m in ok.values()])
            out.append(row)
        return out

    def point(self, li: int, u: int, members: Sequence[Point]) -> Point:
        """The unit point of ``members`` (one candidate on each head of unit ``u`` of layer ``li``)."""
        members = tuple(members)
        if len(members) == 1:
            return members[0]
        c = members[0].candidate
        self._members.setdefault((li, u, c), members)
        n = len(members)
        return Point(c, sum(p.ms for p in members), sum(p.error for p in members) / n,
                     sum(p.mass for p in members) / n)

    def heads(self, rows: Sequence[Sequence[Point]]) -> list[list[Point]]:
        """Unit rows as per-head rows."""
        if self.size == 1:
            return [list(r) for r in rows]
        return [[p for u, q in enumerate(r) for p in self._members[(li, u, q.candidate)]]
                for li, r in enumerate(rows)]

    def layer_ms(self, lat: LatencyModel, row: Sequence[Point]) -> float:
        """The simulated time of a layer whose units run ``row`` (whole-group launches)."""
        return lat.layer_ms([p.candidate for p in row for _ in range(self.size)])

    def choice(self, name: str, rows: Sequence[Sequence[Point]], threshold: float | None = None) -> Choice:
        return Choice(name, tuple(tuple(r) for r in self.heads(rows)), threshold)


# --------------------------------------------------------------------------------------------
# The choice under a budget
# --------------------------------------------------------------------------------------------


def _pick(fronts: Rows, lam: float) -> list[list[Point]]:
    return [[min(front, key=lambda p: (p.ms + lam * p.error, p.error)) for front in layer] for layer in fronts]


def _mean(picked: Sequence[Sequence[Point]]) -> float:
    errs = [p.error for row in picked for p in row]
    return sum(errs) / max(1, len(errs))


class _Launches:
    """A layer's simulated time kept as launch counts: units per pattern, each pattern one launch of whole
    groups (what :meth:`Units.layer_ms` simulates), so moving one unit costs two launch lookups, not a whole
    layer's regrouping."""

    def __init__(self, lat: LatencyModel, size: int, row: Sequence[Point]) -> None:
        self.lat, self.size = lat, size
        self.counts: dict[Candidate, int] = {}
        for p in row:
            self.counts[p.candidate] = self.counts.get(p.candidate, 0) + 1
        self.ms = sum(self.launch(c, n) for c, n in self.counts.items())

    def launch(self, cand: Candidate, units: int) -> float:
        """One launch of ``units`` units of ``cand`` (0 for none)."""
        if units <= 0:
            return 0.0
        r = self.lat.result(cand, units * self.size)
        return r.dense_ms if cand.is_dense(self.lat.shape.layout) else r.call_ms

    def delta(self, old: Candidate, new: Candidate) -> float:
        """Change of the layer's time when one unit moves from ``old`` to ``new``."""
        if old == new:
            return 0.0
        na, nb = self.counts.get(old, 0), self.counts.get(new, 0)
        return (self.launch(old, na - 1) - self.launch(old, na)) + (self.launch(new, nb + 1) - self.launch(new, nb))

    def move(self, old: Candidate, new: Candidate) -> None:
        self.ms += self.delta(old, new)
        self.counts[old] -= 1
        if not self.counts[old]:
            del self.counts[old]
        self.counts[new] = self.counts.get(new, 0) + 1


def _refine(rows: list[list[Point]], fronts: Rows, evaluated: Rows, model: Model, units: Units,
            lam: float) -> list[list[Point]]:
    """Local search on real launches: move one unit at a time to another point of its front, or to a
    pattern another unit of its layer runs (where that unit has been evaluated on it), while the layer's
    simulated time (grouped launches) plus ``lam`` times its error sum drops."""
    lat = model.latency
    out = []
    for li, row in enumerate(rows):
        row = list(row)
        layer = _Launches(lat, units.size, row)
        best = layer.ms + lam * sum(p.error for p in row)
        for _ in range(4):
            moved = False
            used = {p.candidate for p in row}
            for h in range(len(row)):
                options = list(fronts[li][h]) + [p for p in evaluated[li][h] if p.candidate in used]
                for p in options:
                    cur = row[h]
                    if p.candidate == cur.candidate:
                        continue
                    c = best + layer.delta(cur.candidate, p.candidate) + lam * (p.error - cur.error)
                    if c < best * (1 - 1e-9):
                        layer.move(cur.candidate, p.candidate)
                        row[h], best, moved = p, c, True
            if not moved:
                break
        out.append(row)
    return out


def _fill(rows: Sequence[Sequence[Point]], evaluated: Rows, model: Model, units: Units,
          mean_error: float) -> list[list[Point]]:
    """Spend the budget the Lagrangian choice leaves: repeatedly move the one unit whose move saves the most
    simulated layer time (grouped launches) per unit of added error, while the mean error stays within
    ``mean_error``.

    Each layer keeps its moves sorted by that ratio and is rescored only when one of its units moves (a move
    changes no other layer's launches); the best feasible move of a layer is searched from where it was last
    found while the slack shrinks, from the top when a move that lowers the error widens it."""
    lat = model.latency
    out = [list(r) for r in rows]
    n = sum(len(r) for r in out)
    total_err = sum(p.error for r in out for p in r)
    layers = [_Launches(lat, units.size, r) for r in out]

    def moves(li: int) -> list[tuple[float, float, int, Point, float]]:
        layer, found = layers[li], []
        for h, cur in enumerate(out[li]):
            for p in evaluated[li][h]:
                if p.candidate == cur.candidate:
                    continue
                saved = -layer.delta(cur.candidate, p.candidate)
                if saved <= 1e-12 * layer.ms:
                    continue
                d_err = p.error - cur.error
                found.append((saved / max(d_err, 1e-12), d_err, h, p, saved))
        found.sort(key=lambda m: -m[0])  # stable: ties keep the (head, point) order
        return found

    lists = [moves(li) for li in range(len(out))]
    at = [0] * len(out)  # per layer: no move before this index fits the current slack
    last_slack = math.inf
    while True:
        slack = mean_error * n - total_err
        if slack > last_slack:
            at = [0] * len(out)
        last_slack = slack
        best: tuple[float, int, int] | None = None
        for li, lst in enumerate(lists):
            i = at[li]
            while i < len(lst) and lst[i][1] > slack:
                i += 1
            at[li] = i
            if i < len(lst) and (best is None or lst[i][0] > best[0]):
                best = (lst[i][0], li, i)
        if best is None:
            return out
        _, li, i = best
        _, d_err, h, p, _saved = lists[li][i]
        total_err += d_err
        layers[li].move(out[li][h].candidate, p.candidate)
        out[li][h] = p
        lists[li], at[li] = moves(li), 0


def choose(fronts: Rows, model: Model, *, mean_error: float | None = None, max_error: float | None = None,
           target_speedup: float | None = None, name: str = "plan", evaluated: Rows | None = None,
           seeds: Sequence[Choice] = ()) -> Choice:
    """Per head one point: fastest under the error budget, or least error at a target end-to-end speedup
    (exactly one of ``mean_error`` / ``target_speedup``).

    The query heads of one KV head get one pattern (:class:`Units`; every head its own without GQA): a
    unit's front is the Pareto front of the candidates evaluated on all its heads (from ``evaluated``, the
    heads' every evaluated point, else ``fronts``); give every evaluated point under GQA.

    Under a budget: the Lagrangian choice on per-unit costs, then (with ``evaluated``) :func:`_refine` on
    real launches and :func:`_fill` of the budget it leaves; the fastest end to end within the budget of
    these, of the one-pattern choices and of ``seeds`` (whole choices, e.g. the tuned baselines of
    :mod:`sparsesim.search.baselines`) is the plan: never slower than a seed within the budget."""
    if (mean_error is None) == (target_speedup is None):
        raise ConfigError("give --error-budget or --target-speedup (one of them)")
    units = Units(model.latency.group, max_error)
    ev = units.rows(evaluated if evaluated is not None else fronts)
    fr = units.rows(fronts) if units.size == 1 else [[pareto(u) for u in layer] for layer in ev]
    scale = max((p.ms for layer in fr for f in layer for p in f), default=1.0)
    lo, hi = 0.0, 1.0
    for _ in range(60):  # grow hi until the budget (or target) is met at hi
        picked = _pick(fr, hi * scale)
        ok = _mean(picked) <= mean_error if mean_error is not None else True
        if ok or hi > 1e12:
            break
        hi *= 4
    if mean_error is not None:
        for _ in range(60):  # smallest lambda whose choice meets the mean budget: the fastest such choice
            mid = (lo + hi) / 2
            if _mean(_pick(fr, mid * scale)) <= mean_error:
                hi = mid
            else:
                lo = mid
        picked = _pick(fr, hi * scale)
        options = [picked]
        if evaluated is not None:
            refined = _refine(picked, fr, ev, model, units, hi * scale)
            options += [refined, _fill(refined, ev, model, units, mean_error),
                        _fill(picked, ev, model, units, mean_error)]
            options += _uniform_rows(ev)
        heads = [units.heads(o) for o in options] + [[list(r) for r in seed.layers] for seed in seeds]
        within = [o for o in heads if _mean(o) <= mean_error * (1 + 1e-9)
                  and (max_error is None or all(p.error <= max_error for r in o for p in r))] or [heads[0]]
        best = max(within, key=lambda o: outcome(model, Choice(name, tuple(tuple(r) for r in o))).e2e_predicted_speedup)
        return Choice(name, tuple(tuple(r) for r in best))
    assert target_speedup is not None
    speed: Callable[[float], float] = lambda lam: outcome(  # noqa: E731
        model, units.choice(name, _pick(fr, lam * scale))).e2e_predicted_speedup
    lo, hi = 0.0, 1e6
    if speed(lo) < target_speedup:
        raise ConfigError(f"--target-speedup {target_speedup}: the fastest choice reaches {speed(lo):.3f}x")
    for _ in range(60):  # largest lambda (least error) still at the target
        mid = (lo + hi) / 2
        if speed(mid) >= target_speedup:
            lo = mid
        else:
            hi = mid
    return units.choice(name, _pick(fr, lo * scale))


def _uniform_rows(evaluated: Rows) -> list[list[list[Point]]]:
    """Every pattern evaluated on every unit, as a one-pattern choice."""
    per_unit = [[{p.candidate: p for p in u} for u in layer] for layer in evaluated]
    common = set.intersection(*[set(u) for layer in per_unit for u in layer]) if per_unit else set()
    return [[[u[c] for u in layer] for layer in per_unit] for c in sorted(common, key=lambda c: c.label())]


# --------------------------------------------------------------------------------------------
# The plan file
# --------------------------------------------------------------------------------------------


def build_plan(*, choice: Choice, model: Model, layer_index: Sequence[int], layer_names: Sequence[str],
               workload: str, gpu: str, error_budget: ErrorBudget, predicted: Sequence[GpuPrediction],
               search: SearchInfo | None) -> Plan:
    """The plan of ``choice``: per layer its heads, the launches they make and their simulated times."""
    lat = model.latency
    s = lat.shape
    layers = []
    for li, name, row in zip(layer_index, layer_names, choice.layers, strict=True):
        launches = lat.launches([p.candidate for p in row])
        layers.append(PlanLayer(
            layer=li, name=name,
            heads=tuple(PlanHead(head=h, window=p.candidate.window, stride=p.candidate.stride,
                                 dilation=p.candidate.dilation, dense=p.candidate.is_dense(s.layout),
                                 error=float(p.error), mass=float(p.mass) if math.isfinite(p.mass) else None)
                        for h, p in enumerate(row)),
            launches=tuple(PlanLaunch(heads=tuple(la.heads), window=la.candidate.window, stride=la.candidate.stride,
                                      dilation=la.candidate.dilation, dense=la.dense, predicted_ms=float(la.ms))
                           for la in launches),
            predicted_ms=float(sum(la.ms for la in launches)), dense_ms=float(lat.dense_layer_ms())))
    res = outcome(model, choice)
    plan = Plan(workload=workload, gpu=gpu, kernel_profile=lat.kernel_profile, dense_profile=lat.dense_profile,
                layout=tuple(s.layout), causal=tuple(s.causal) or (False,) * len(s.layout), heads=s.heads,
                heads_kv=s.heads_kv, head_dim=s.head_dim, batch=s.batch, dtype=s.dtype, q_tile=tuple(lat.q_tile),
                kv_tile=tuple(lat.kv_tile), error_budget=error_budget, mean_error=float(res.mean_error),
                max_error=float(res.max_error), attention_speedup=float(res.attention_speedup),
                e2e_predicted_speedup=float(res.e2e_predicted_speedup), predicted=tuple(predicted), search=search,
                layers=tuple(layers), extra_tokens=s.extra_tokens, extra_at=s.extra_at)
    return parse_plan(plan.to_dict(), "the plan being built")  # the loader's checks: what is built loads


def save_plans(plans: Mapping[str, Plan], folder: str | Path, flag: str = "--baselines-out") -> list[Path]:
    """Write each plan as ``<name>.json`` into ``folder`` (new, or an existing folder; its parent must exist),
    through :func:`sparsesim.simulator.files.write_files`. Check the folder first with
    :func:`sparsesim.simulator.files.check_output_dir` (before the search)."""
    from sparsesim.simulator.files import write_files

    files = {f"{name}.json": plan.to_json().encode("utf-8") for name, plan in plans.items()}
    out = write_files(files, folder, flag)
    return [out / name for name in files]


def rule_info(search: SearchInfo | None, choice: Choice, rule: str) -> SearchInfo | None:
    """The search record of a baseline's plan: the run's, its sampler naming the rule and its tuned threshold
    (``simulate plan show`` and ``simulate validate --plan`` show which baseline a file holds)."""
    if search is None:
        return None
    tuned = "" if choice.threshold is None else f", tuned threshold {choice.threshold:.6g}"
    return replace(search, sampler=f"baseline {choice.name}: {rule}{tuned}; candidates from {search.sampler}",
                   baselines=())


__all__ = [
    "FORMAT", "MAX_PLAN_BYTES", "READS", "VERSION", "BaselineOutcome", "Choice", "ErrorBudget", "GpuPrediction",
    "Model", "Outcome", "Plan", "PlanHead", "PlanLaunch", "PlanLayer", "SearchInfo", "Units", "build_plan",
    "choose", "load_plan", "outcome", "parse_plan", "rule_info", "save_plan", "save_plans",
]
