"""Plans: one pattern per layer and head, chosen from each head's Pareto front, as a versioned JSON file.

:func:`choose` picks per head to maximize the predicted end-to-end speedup under an error budget (mean
over heads, and optionally a per-head maximum), or to meet a target speedup at least error: a
Lagrangian search over ``sum(ms) + lambda * sum(error)`` (per-head shares of full-layer launches), then
every layer's time is simulated as the launches it really makes (heads with one pattern share a launch).
The baselines (:func:`baselines`) choose from the same evaluated points.

The plan file is a typed, versioned record (:class:`~sparsesim.simulator.plan.Plan`, defined in the core so
that kernels and reports read it without importing the search): :func:`build_plan` makes it from a choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sparsesim.search.latency import LatencyModel
from sparsesim.search.space import Candidate
from sparsesim.search.study import Point
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
    """A whole-model choice: per searched layer, one point per head."""

    name: str
    layers: tuple[tuple[Point, ...], ...]

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


def _pick(fronts: Sequence[Sequence[Sequence[Point]]], lam: float, max_error: float | None) -> list[list[Point]]:
    out = []
    for layer in fronts:
        row = []
        for front in layer:
            allowed = [p for p in front if max_error is None or p.error <= max_error] or \
                [min(front, key=lambda p: p.error)]
            row.append(min(allowed, key=lambda p: (p.ms + lam * p.error, p.error)))
        out.append(row)
    return out


def _mean(picked: list[list[Point]]) -> float:
    errs = [p.error for row in picked for p in row]
    return sum(errs) / max(1, len(errs))


def _refine(rows: list[list[Point]], fronts: Sequence[Sequence[Sequence[Point]]],
            evaluated: Sequence[Sequence[Sequence[Point]]], model: Model, lam: float,
            max_error: float | None) -> list[list[Point]]:
    """Local search on real launches: move one head at a time to another point of its front, or to a
    pattern another head of its layer runs (where that head has been evaluated on it), while the layer's
    simulated time (grouped launches) plus ``lam`` times its error sum drops."""
    lat = model.latency
    out = []
    for li, row in enumerate(rows):
        row = list(row)

        def cost(r: Sequence[Point]) -> float:
            return lat.layer_ms([p.candidate for p in r]) + lam * sum(p.error for p in r)

        best = cost(row)
        for _ in range(4):
            moved = False
            used = {p.candidate for p in row}
            for h in range(len(row)):
                options = list(fronts[li][h]) + [p for p in evaluated[li][h] if p.candidate in used]
                for p in options:
                    if p.candidate == row[h].candidate or (max_error is not None and p.error > max_error):
                        continue
                    trial = row[:h] + [p] + row[h + 1:]
                    c = cost(trial)
                    if c < best * (1 - 1e-9):
                        row, best, moved = trial, c, True
            if not moved:
                break
        out.append(row)
    return out


def _fill(rows: list[list[Point]], evaluated: Sequence[Sequence[Sequence[Point]]], model: Model,
          mean_error: float, max_error: float | None) -> list[list[Point]]:
    """Spend the budget the Lagrangian choice leaves: repeatedly move the one head whose move saves the most
    simulated layer time (grouped launches) per unit of added error, while the mean error stays within
    ``mean_error``."""
    lat = model.latency
    rows = [list(r) for r in rows]
    n = sum(len(r) for r in rows)
    total_err = sum(p.error for r in rows for p in r)
    layer_ms = [lat.layer_ms([p.candidate for p in r]) for r in rows]
    while True:
        slack = mean_error * n - total_err
        best: tuple[float, int, int, Point, float] | None = None
        for li, row in enumerate(rows):
            for h, cur in enumerate(row):
                for p in evaluated[li][h]:
                    d_err = p.error - cur.error
                    if p.candidate == cur.candidate or d_err > slack or (max_error is not None and
                                                                           p.error > max_error):
                        continue
                    trial = row[:h] + [p] + row[h + 1:]
                    saved = layer_ms[li] - lat.layer_ms([q.candidate for q in trial])
                    if saved <= 1e-12 * layer_ms[li]:
                        continue
                    score = saved / max(d_err, 1e-12)
                    if best is None or score > best[0]:
                        best = (score, li, h, p, saved)
        if best is None:
            return rows
        _, li, h, p, saved = best
        total_err += p.error - rows[li][h].error
        rows[li][h] = p
        layer_ms[li] -= saved


def choose(fronts: Sequence[Sequence[Sequence[Point]]], model: Model, *, mean_error: float | None = None,
           max_error: float | None = None, target_speedup: float | None = None, name: str = "plan",
           evaluated: Sequence[Sequence[Sequence[Point]]] | None = None) -> Choice:
    """Per head one point: fastest under the error budget, or least error at a target end-to-end speedup
    (exactly one of ``mean_error`` / ``target_speedup``).

    Under a budget: the Lagrangian choice on per-head costs, then (with ``evaluated``, every evaluated
    point per head) :func:`_refine` on real launches and :func:`_fill` of the budget it leaves; the
    fastest end to end within the budget of these, and of the one-pattern choices, is the plan."""
    if (mean_error is None) == (target_speedup is None):
        raise ConfigError("give --error-budget or --target-speedup (one of them)")
    scale = max((p.ms for layer in fronts for f in layer for p in f), default=1.0)
    lo, hi = 0.0, 1.0
    for _ in range(60):  # grow hi until the budget (or target) is met at hi
        picked = _pick(fronts, hi * scale, max_error)
        ok = _mean(picked) <= mean_error if mean_error is not None else True
        if ok or hi > 1e12:
            break
        hi *= 4
    if mean_error is not None:
        for _ in range(60):  # smallest lambda whose choice meets the mean budget: the fastest such choice
            mid = (lo + hi) / 2
            if _mean(_pick(fronts, mid * scale, max_error)) <= mean_error:
                hi = mid
            else:
                lo = mid
        picked = _pick(fronts, hi * scale, max_error)
        options = [picked]
        if evaluated is not None:
            refined = _refine(picked, fronts, evaluated, model, hi * scale, max_error)
            options += [refined, _fill(refined, evaluated, model, mean_error, max_error),
                        _fill(picked, evaluated, model, mean_error, max_error)]
            options += _uniform_rows(evaluated)
        within = [o for o in options if _mean(o) <= mean_error * (1 + 1e-9)
                  and (max_error is None or all(p.error <= max_error for r in o for p in r))] or [picked]
        best = max(within, key=lambda o: outcome(model, Choice(name, tuple(tuple(r) for r in o))).e2e_predicted_speedup)
        return Choice(name, tuple(tuple(r) for r in best))
    assert target_speedup is not None
    speed: Callable[[float], float] = lambda lam: outcome(  # noqa: E731
        model, Choice(name, tuple(tuple(r) for r in _pick(fronts, lam * scale, max_error)))).e2e_predicted_speedup
    lo, hi = 0.0, 1e6
    if speed(lo) < target_speedup:
        raise ConfigError(f"--target-speedup {target_speedup}: the fastest choice reaches {speed(lo):.3f}x")
    for _ in range(60):  # largest lambda (least error) still at the target
        mid = (lo + hi) / 2
        if speed(mid) >= target_speedup:
            lo = mid
        else:
            hi = mid
    return Choice(name, tuple(tuple(r) for r in _pick(fronts, lo * scale, max_error)))


def _uniform_rows(evaluated: Sequence[Sequence[Sequence[Point]]]) -> list[list[list[Point]]]:
    """Every pattern evaluated on every head, as a one-pattern choice."""
    per_head = [[{p.candidate: p for p in h} for h in layer] for layer in evaluated]
    common = set.intersection(*[set(h) for layer in per_head for h in layer]) if per_head else set()
    return [[[h[c] for h in layer] for layer in per_head] for c in sorted(common, key=lambda c: c.label())]


def baselines(points: Sequence[Sequence[Sequence[Point]]], uniform: Mapping[Candidate, Sequence[Sequence[float]]],
              model: Model, mean_error: float) -> list[Choice]:
    """The three baselines on the same evaluated points (``uniform``: per candidate, the error of every
    layer and head, from :func:`sparsesim.search.run.uniform_quality`):

    - ``uniform``: one pattern for every head (the GNA paper's practice), the fastest within the budget;
    - ``sparse-vdit``: per head argmin ``error + 0.5 * (1 - sparsity)`` (Sparse-vDiT's rule: it counts
      kept blocks, not time);
    - ``sta``: per head the smallest window (fewest kept pairs) with error within the budget (STA's).
    """
    lat = model.latency
    layout = lat.shape.layout
    density = {p.candidate: p.candidate.pattern(layout, lat.shape.causal).density()
               for layer in points for head in layer for p in head}
    out = []
    best: Choice | None = None
    for cand, errs in uniform.items():
        ms = lat.head_ms(cand)
        ch = Choice("uniform", tuple(tuple(Point(cand, ms, e, float("nan")) for e in layer) for layer in errs))
        if ch.mean_error <= mean_error and (best is None or outcome(model, ch).e2e_predicted_speedup >
                                            outcome(model, best).e2e_predicted_speedup):
            best = ch
    if best is None and uniform:  # none within the budget: the most accurate one, shown with its error
        cand, errs = min(uniform.items(), key=lambda kv: sum(map(sum, kv[1])))
        best = Choice("uniform", tuple(tuple(Point(cand, lat.head_ms(cand), e, float("nan")) for e in layer)
                                       for layer in errs))
    if best is not None:
        out.append(best)
    out.append(Choice("sparse-vdit", tuple(tuple(min(h, key=lambda p: p.error + 0.5 * density[p.candidate])
                                                 for h in layer) for layer in points)))
    sta = []
    for layer in points:
        row = []
        for h in layer:
            ok = [p for p in h if p.error <= mean_error] or [min(h, key=lambda p: p.error)]
            row.append(min(ok, key=lambda p: (density[p.candidate], p.ms)))
        sta.append(tuple(row))
    out.append(Choice("sta", tuple(sta)))
    return out


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
                layers=tuple(layers))
    return parse_plan(plan.to_dict(), "the plan being built")  # the loader's checks: what is built loads


__all__ = [
    "FORMAT", "MAX_PLAN_BYTES", "READS", "VERSION", "BaselineOutcome", "Choice", "ErrorBudget", "GpuPrediction",
    "Model", "Outcome", "Plan", "PlanHead", "PlanLaunch", "PlanLayer", "SearchInfo", "baselines", "build_plan",
    "choose", "load_plan", "outcome", "parse_plan", "save_plan",
]
