"""The baselines on the plan's candidates, each tuned to the budget: within it, and no looser threshold is;
the plan is never slower than a tuned baseline at the same or lower mean error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsesim.search.baselines import SLACK, baselines
from sparsesim.search.latency import LatencyModel, LayerShape
from sparsesim.search.plan import Model, choose, outcome
from sparsesim.search.space import build_space
from sparsesim.search.study import Point, pareto

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: (layout, gpu, heads, heads_kv): a 1D causal-free space of 23 candidates, a 2D one, and GQA
SHAPES = [((1024,), "A100", 3, 3), ((16, 64), "H100", 2, 2), ((1024,), "H100", 4, 2)]
_SETUP: dict[int, tuple[LatencyModel, list, dict]] = {}


def setup(i: int) -> tuple[LatencyModel, list, dict]:
    if i not in _SETUP:
        layout, gpu, heads, heads_kv = SHAPES[i]
        space = build_space(layout, gpu=gpu, head_dim=32, dtype="fp16")
        lat = LatencyModel(shape=LayerShape(layout=layout, heads=heads, heads_kv=heads_kv, head_dim=32, dtype="fp16"),
                           gpu=gpu, q_tile=space.q_tile, kv_tile=space.kv_tile)
        cands = list(space.all_candidates())
        dens = {c: c.pattern(layout).density() for c in cands}
        _SETUP[i] = (lat, cands, dens)
    return _SETUP[i]


PROBLEMS = st.tuples(st.integers(0, len(SHAPES) - 1), st.integers(1, 2), st.integers(0, 2**31), st.booleans(),
                     st.sampled_from([0.005, 0.02, 0.05, 0.1, 0.2, 0.4]))


def problem(i: int, layers: int, seed: int, shaped: bool, budget: float):
    """A shape, per layer and head every candidate with a random error (dense 0; the rest random, or falling
    with the kept share), and the budget."""
    lat, cands, dens = setup(i)
    rng = np.random.default_rng(seed)
    pts = []
    for _ in range(layers):
        row = []
        for _ in range(lat.shape.heads):
            scale = rng.uniform(0.05, 1.0)
            row.append([Point(c, lat.head_ms(c), 0.0 if c.is_dense(lat.shape.layout) else float(
                scale * ((1 - dens[c]) * rng.uniform(0.5, 1.5) if shaped else rng.uniform(0.0, 1.0))), 1.0)
                for c in cands])
        pts.append(row)
    return lat, dens, pts, budget


def model_of(lat: LatencyModel) -> Model:
    return Model(latency=lat, other_ms=0.5)


def unit_points(pts, lat):
    """Per unit (the query heads of one KV head, layers flattened): candidate -> mean error over its heads."""
    g = lat.group
    out = []
    for layer in pts:
        for u in range(len(layer) // g):
            heads = layer[u * g:(u + 1) * g]
            out.append({p.candidate: float(np.mean([[q for q in h if q.candidate == p.candidate][0].error
                                                     for h in heads])) for p in heads[0]})
    return out


def vdit_mean(units, dens, ms, lam):
    """Brute force: per unit argmin error + lam * density (ties: less error, then faster)."""
    return float(np.mean([min(u.items(), key=lambda kv: (kv[1] + lam * dens[kv[0]], kv[1], ms[kv[0]]))[1]
                          for u in units]))


def sta_mean(units, dens, ms, tau):
    """Brute force: per unit the sparsest (then fastest) pattern of error <= tau, else the most accurate."""
    out = []
    for u in units:
        ok = [kv for kv in u.items() if kv[1] <= tau]
        out.append(min(ok, key=lambda kv: (dens[kv[0]], ms[kv[0]], kv[1]))[1] if ok else min(u.values()))
    return float(np.mean(out))


def within(x: float, budget: float) -> bool:
    return x <= budget * (1 + SLACK)


@FAST
@given(PROBLEMS)
def test_tuned_baselines_are_within_the_budget_and_loosest(args):
    lat, dens, pts, budget = problem(*args)
    base = {b.name: b for b in baselines(pts, model_of(lat), budget)}
    assert set(base) == {"uniform", "sparse-vdit", "sta"}
    units = unit_points(pts, lat)
    ms = {c: lat.head_ms(c) for c in dens}
    g = lat.group
    for b in base.values():
        assert within(b.mean_error, budget)  # a dense candidate (error 0) is always there
        for layer in b.layers:  # the heads of one KV head run one pattern
            assert all(len({p.candidate for p in layer[u * g:(u + 1) * g]}) == 1 for u in range(len(layer) // g))
        assert all(p in pts[li][h] for li, layer in enumerate(b.layers) for h, p in enumerate(layer))

    vd = base["sparse-vdit"]
    assert vd.threshold is not None and vd.threshold >= 0
    assert vdit_mean(units, dens, ms, vd.threshold) == pytest.approx(vd.mean_error, abs=1e-12)
    for k in range(12):  # every looser lambda exceeds the budget
        looser = vd.threshold * (1 + 1e-7) * 2 ** k + 1e-12 * 2 ** k
        assert not within(vdit_mean(units, dens, ms, looser), budget) or vd.threshold > 1e15

    st_ = base["sta"]
    assert st_.threshold is not None
    assert sta_mean(units, dens, ms, st_.threshold) == pytest.approx(st_.mean_error, abs=1e-12)
    for tau in sorted({e for u in units for e in u.values() if e > st_.threshold}):
        m = sta_mean(units, dens, ms, tau)  # a looser threshold: the same choice, or over the budget
        assert not within(m, budget) or m == pytest.approx(st_.mean_error, abs=1e-12)

    uni = base["uniform"]
    c = uni.layers[0][0].candidate
    assert all(p.candidate == c for layer in uni.layers for p in layer)
    faster = [d for d in dens if lat.layer_ms([d] * lat.shape.heads) < lat.layer_ms([c] * lat.shape.heads) - 1e-12
              and within(float(np.mean([u[d] for u in units])), budget)]
    assert not faster


@FAST
@given(PROBLEMS)
def test_plan_never_slower_than_a_tuned_baseline(args):
    lat, _, pts, budget = problem(*args)
    model = model_of(lat)
    fronts = [[pareto(h) for h in layer] for layer in pts]
    base = baselines(pts, model, budget)
    plan = choose(fronts, model, mean_error=budget, evaluated=pts, seeds=base)
    speed = outcome(model, plan).e2e_predicted_speedup
    assert within(plan.mean_error, budget)
    for b in base:
        at_b = choose(fronts, model, mean_error=b.mean_error, evaluated=pts, seeds=[b], name=f"plan at {b.name}")
        assert at_b.mean_error <= b.mean_error * (1 + SLACK) + 1e-15
        b_speed = outcome(model, b).e2e_predicted_speedup
        assert outcome(model, at_b).e2e_predicted_speedup >= b_speed * (1 - 1e-12)
        assert speed >= b_speed * (1 - 1e-12)


def test_baseline_over_budget_is_most_accurate():
    """No dense candidate and a budget below every error: each baseline is its most accurate choice."""
    lat, _, dens = setup(0)
    cands = [c for c in dens if not c.is_dense(lat.shape.layout)]
    pts = [[[Point(c, lat.head_ms(c), 0.5 + 0.1 * dens[c] + 0.01 * h, 1.0) for c in cands] for h in range(3)]]
    base = {b.name: b for b in baselines(pts, model_of(lat), 0.01)}
    best = [min(h, key=lambda p: p.error) for h in pts[0]]
    for name in ("sparse-vdit", "sta"):
        assert base[name].threshold is None
        assert [p.error for p in base[name].layers[0]] == [p.error for p in best]
    assert base["uniform"].mean_error == pytest.approx(min(np.mean([[p.error for p in h if p.candidate == c][0]
                                                                    for h in pts[0]]) for c in cands))


def test_baselines_respect_max_error():
    lat, _, dens = setup(0)
    rng = np.random.default_rng(5)
    pts = [[[Point(c, lat.head_ms(c), 0.0 if c.is_dense(lat.shape.layout) else float(rng.uniform(0, 0.5)), 1.0)
             for c in dens] for _ in range(3)]]
    for b in baselines(pts, model_of(lat), 0.2, max_error=0.1):
        assert b.max_error <= 0.1


@FAST
@given(PROBLEMS)
def test_array_table_gives_the_same_baselines(args):
    """An exhaustive search hands its arrays (:class:`Table`) in; the same as the points, in any order."""
    from sparsesim.search.baselines import Table, tuned

    lat, _, pts, budget = problem(*args)
    cands = tuple(p.candidate for p in pts[0][0])
    error = np.array([[[p.error for p in h] for h in layer] for layer in pts])
    table = Table(cands, error, lambda li, h, k: pts[li][h][k])
    shuffled = [[list(reversed(h)) for h in layer] for layer in pts]
    for got, want in zip(tuned(table, model_of(lat), budget), baselines(shuffled, model_of(lat), budget), strict=True):
        assert (got.name, got.threshold) == (want.name, want.threshold)
        assert got.layers == want.layers
