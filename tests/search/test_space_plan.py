"""The search space, the Pareto front, an exhaustive check of the Optuna search, and plans (choice and file)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsesim.search.latency import LatencyModel, LayerShape
from sparsesim.search.plan import VERSION, Choice, Model, Plan, choose, load_plan, save_plan
from sparsesim.search.quality import evaluate, head_quality
from sparsesim.search.samples import synthetic
from sparsesim.search.space import STRIDES, Candidate, build_space
from sparsesim.search.study import Point, SearchSettings, pareto, points
from sparsesim.simulator import can_run
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import GNAPattern
from sparsesim.simulator.workloads import load_workload

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# Space
# --------------------------------------------------------------------------------------------

LAYOUTS = [(40,), (256,), (1000,), (16, 16), (12, 20), (32, 48), (4, 8, 16), (6, 10, 14), (8, 8, 8)]


@pytest.mark.parametrize(("gpu", "head_dim"), [("H100", 64), ("H100", 128), ("A100", 64), ("A100", 128),
                                               ("B200", 32), ("B200", 64), ("B200", 128), ("H100", 32)])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: "x".join(map(str, x)))
def test_space_candidates_run(layout, gpu, head_dim):
    space = build_space(layout, gpu=gpu, head_dim=head_dim)
    assert can_run(q_tile=space.q_tile, kv_tile=space.kv_tile, head_dim=head_dim, gpu=gpu)
    for a, n in enumerate(layout):
        ws = space.windows[a]
        assert list(ws) == sorted(set(ws)) and ws[-1] == n and ws[0] >= 1
        assert all(w % space.kv_tile[a] == 0 for w in ws[:-1])
    cands = list(space.all_candidates())
    assert len(cands) == len(set(cands)) == space.size()
    assert space.dense() in cands
    for c in cands:
        p = c.pattern(layout)
        assert isinstance(p, GNAPattern) and p.input_size == layout
        for a, n in enumerate(layout):
            w, s, d = c.window[a], c.stride[a], c.dilation[a]
            assert w in space.windows[a]
            assert s in (1, min(space.q_tile[a], w), w)
            assert d == 1 or (d == 2 and space.dilate[a] and 2 * w <= n and w < n)
        assert space.candidate(space.params_of(c)) == c
        assert c.is_dense(layout) == (c.window == layout)


def test_space_repairs_invalid_mixes():
    space = build_space((256,), gpu="A100", head_dim=64)
    # a window over the whole axis sees all of it whatever the stride: one dense candidate, stride 1
    assert space.candidate({"w0": 256, "s0": "tile", "d0": 2}) == Candidate((256,), (1,), (1,))
    assert space.candidate({"w0": 64, "s0": "block", "d0": 2}) == Candidate((64,), (64,), (2,))
    assert space.candidate({"w0": 128, "s0": "1", "d0": 2}) == Candidate((128,), (1,), (2,))
    assert set(STRIDES) == {"1", "tile", "block"}


def test_space_rejects_unrunnable_head_dim():
    with pytest.raises(ConfigError):
        build_space((64, 64), gpu="H100", head_dim=1000)


# --------------------------------------------------------------------------------------------
# Pareto front
# --------------------------------------------------------------------------------------------

POOL = [Candidate((w,), (s,), (1,)) for w in (4, 8, 16) for s in (1, 2, 4)]


@st.composite
def point_sets(draw: st.DrawFn) -> list[Point]:
    n = draw(st.integers(0, 30))
    return [Point(draw(st.sampled_from(POOL)), draw(st.integers(0, 6)) * 0.5, draw(st.integers(0, 6)) * 0.25,
                  1.0) for _ in range(n)]


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[0] and a[1] <= b[1] and a != b


@FAST
@given(point_sets())
def test_pareto_is_brute_force_non_domination(pts):
    front = pareto(pts)
    last = {p.candidate: p for p in pts}  # one point per candidate: the last one
    values = {(p.ms, p.error) for p in last.values()}
    want = {v for v in values if not any(dominates(u, v) for u in values)}
    got = [(p.ms, p.error) for p in front]
    assert set(got) == want
    assert len(got) == len(set(got))  # one point per value
    assert got == sorted(got)  # ascending ms, descending error
    assert all(b[1] < a[1] for a, b in itertools.pairwise(got))
    assert all(p in last.values() for p in front)


# --------------------------------------------------------------------------------------------
# Exhaustive check of the search on small spaces
# --------------------------------------------------------------------------------------------

WORKLOAD = """name = "tiny-{name}"
description = "a tiny test workload"
layout = {layout}
text_tokens = 0
heads = 2
heads_kv = 2
head_dim = 32
hidden = 64
mlp = 256
steps = 1
batch = 1
dtype = "fp16"

[[blocks]]
kind = "encoder"
count = 1
gemms = [[192, 64], [64, 64], [256, 64], [64, 256]]

[[patterns]]
window = {window}
stride = {stride}
"""

#: (layout, gpu, the workload's own pattern, error budget): spaces of 25 and 38 candidates
SMALL = {
    "1d": ((1024,), "A100", ([256], [1]), 0.3),
    "2d": ((16, 64), "H100", ([16, 16], [1, 16]), 0.45),
}


class Searched:
    def __init__(self, tmp, key):
        from sparsesim.search.run import search_plan

        layout, gpu, (window, stride), budget = SMALL[key]
        self.path = tmp / "w.toml"
        self.path.write_text(WORKLOAD.format(name=key, layout=list(layout), window=window, stride=stride))
        self.workload = load_workload(str(self.path))
        self.layout, self.gpu, self.budget = layout, gpu, budget
        self.space = build_space(layout, gpu=gpu, head_dim=32, dtype="fp16")
        self.size = self.space.size()
        self.src = synthetic(layout=layout, layers=1, heads=2, head_dim=32, rows=16)
        self.storage = f"sqlite:///{tmp}/s.db"
        self.settings = SearchSettings(study="t", storage=self.storage, trials=3 * self.size)
        self.result = search_plan(src=self.src, workload=str(self.path), gpu=gpu, settings=self.settings,
                                  sampler="tpe", error_budget=budget)
        w = self.workload
        shape = LayerShape(layout=w.layout, heads=w.heads, heads_kv=w.heads_kv, head_dim=w.head_dim,
                           batch=w.batch, dtype=w.dtype, causal=w.causal)
        self.latency = LatencyModel(shape=shape, gpu=gpu, q_tile=self.space.q_tile, kv_tile=self.space.kv_tile)

    def brute_force(self, head: int) -> dict[Candidate, Point]:
        q, k, v = self.src.head(0, head)
        hq = head_quality(q, k, v, self.src.rows_of(0), self.layout)
        out = {}
        for c in self.space.all_candidates():
            qual = evaluate(hq, c.pattern(self.layout, self.latency.shape.causal))
            out[c] = Point(c, self.latency.head_ms(c), qual.error, qual.mass)
        return out


@pytest.fixture(scope="module", params=sorted(SMALL))
def searched(request, tmp_path_factory):
    return Searched(tmp_path_factory.mktemp(f"search-{request.param}"), request.param)


def test_search_front_is_on_brute_force_front(searched):
    assert searched.size <= 40
    report = searched.result.report
    assert report.ran == 2 * searched.settings.trials and report.found == 0
    found_total = want_total = 0
    for h in range(2):
        every = searched.brute_force(h)
        pts = points(searched.storage, "t", 0, h)
        assert len(pts) == searched.settings.trials
        for p in pts:  # every trial recorded the candidate's true latency, error and mass
            bf = every[p.candidate]
            assert (p.ms, p.error) == pytest.approx((bf.ms, bf.error), rel=1e-9, abs=1e-12)
            assert p.mass == pytest.approx(bf.mass, rel=1e-9)
        values = {(p.ms, p.error) for p in every.values()}
        bf_front = {v for v in values if not any(dominates(u, v) for u in values)}
        got = {(p.ms, p.error) for p in pareto(pts)}
        assert got <= bf_front, f"head {h}: search front points dominated by an unsearched candidate"
        assert (every[searched.space.dense()].ms, 0.0) in got  # the dense start point
        found_total += len(got)
        want_total += len(bf_front)
        print(f"[{searched.layout} {searched.gpu}] head {h} ({searched.src.kind(0, h)}): search found "
              f"{len(got)}/{len(bf_front)} brute-force front points; {len({p.candidate for p in pts})}/"
              f"{searched.size} candidates tried in {len(pts)} trials")
    assert found_total >= 0.5 * want_total


def test_search_resumes_without_new_trials(searched):
    from sparsesim.search.run import search_plan

    again = search_plan(src=searched.src, workload=str(searched.path), gpu=searched.gpu,
                        settings=searched.settings, sampler="tpe", error_budget=searched.budget)
    assert again.report.ran == 0 and again.report.found == 2 * searched.settings.trials
    assert again.plan.layers == searched.result.plan.layers


def test_plan_meets_budget(searched):
    outcomes = {o.name: o for o in searched.result.outcomes}
    assert outcomes["plan"].mean_error <= searched.budget
    baselines = [o for o in searched.result.outcomes if o.name in ("uniform", "sparse-vdit", "sta")]
    assert len(baselines) == 3
    for b in baselines:
        assert outcomes[f"plan at {b.name}'s error"].mean_error <= b.mean_error + 1e-12
    data = searched.result.plan
    assert Plan.from_json(data.to_json()) == data
    assert data.mean_error == pytest.approx(outcomes["plan"].mean_error)
    for layer in data.layers:
        heads = sorted(h for la in layer.launches for h in la.heads)
        assert heads == list(range(2))
        assert layer.predicted_ms == pytest.approx(sum(la.predicted_ms for la in layer.launches))


def test_plan_at_least_as_fast_as_dense(searched):
    # all-dense (error 0) meets every budget, so the fastest plan within the budget is never slower
    assert {o.name: o for o in searched.result.outcomes}["plan"].e2e_predicted_speedup >= 1.0 - 1e-9


def test_plan_at_least_as_fast_as_baselines_at_matched_error(searched):
    outcomes = {o.name: o for o in searched.result.outcomes}
    slower = [b.name for b in searched.result.outcomes if b.name in ("uniform", "sparse-vdit", "sta")
              and outcomes[f"plan at {b.name}'s error"].e2e_predicted_speedup < b.e2e_predicted_speedup * (1 - 1e-9)]
    assert not slower


def test_plan_masses_are_recorded(searched):
    for layer in searched.result.plan.layers:
        for h in layer.heads:
            mass = [p.mass for p in points(searched.storage, "t", 0, h.head)
                    if (p.candidate.window, p.candidate.stride, p.candidate.dilation) == (h.window, h.stride,
                                                                                          h.dilation)]
            if mass:
                assert h.mass == pytest.approx(mass[0]), h


# --------------------------------------------------------------------------------------------
# choose() on hand-made fronts
# --------------------------------------------------------------------------------------------


@st.composite
def fronts(draw: st.DrawFn) -> list[list[list[Point]]]:
    layers = draw(st.integers(1, 2))
    heads = draw(st.integers(1, 3))
    out = []
    for _ in range(layers):
        row = []
        for _ in range(heads):
            k = draw(st.integers(1, 4))
            ms = sorted(draw(st.lists(st.integers(1, 50), min_size=k, max_size=k, unique=True)))
            err = sorted(draw(st.lists(st.integers(1, 50), min_size=k, max_size=k, unique=True)), reverse=True)
            err[-1] = 0  # the slowest point is dense
            row.append([Point(Candidate((w + 1,), (1,), (1,)), m / 10, e / 100, 1.0)
                        for w, (m, e) in enumerate(zip(ms, err, strict=True))])
        out.append(row)
    return out


def _model() -> Model:
    lat = LatencyModel(shape=LayerShape(layout=(64,), heads=1, heads_kv=1, head_dim=64), gpu="H100",
                       q_tile=(64,), kv_tile=(64,))
    return Model(latency=lat, other_ms=1.0)


@FAST
@given(fronts(), st.integers(0, 60))
def test_choose_meets_budget_and_is_lagrange_optimal(fr, budget_pct):
    budget = budget_pct / 100
    ch = choose(fr, _model(), mean_error=budget)
    assert ch.mean_error <= budget + 1e-12
    assert all(p in fr[li][h] for li, layer in enumerate(ch.layers) for h, p in enumerate(layer))
    ms = sum(p.ms for layer in ch.layers for p in layer)
    # no combination at most as erroneous as the choice is faster (the Lagrangian's guarantee)
    flat = [h for layer in fr for h in layer]
    for combo in itertools.product(*flat):
        if sum(p.error for p in combo) / len(combo) <= ch.mean_error + 1e-12:
            assert sum(p.ms for p in combo) >= ms - 1e-9


def test_choose_needs_one_goal():
    fr = [[[Point(Candidate((64,), (1,), (1,)), 1.0, 0.0, 1.0)]]]
    with pytest.raises(ConfigError):
        choose(fr, _model())
    with pytest.raises(ConfigError):
        choose(fr, _model(), mean_error=0.1, target_speedup=2.0)


# --------------------------------------------------------------------------------------------
# The plan file
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan_data(tmp_path_factory):
    return Searched(tmp_path_factory.mktemp("plan"), "1d").result.plan


def test_plan_round_trip(plan_data, tmp_path):
    text = plan_data.to_json()
    assert Plan.from_json(text) == plan_data
    assert Plan.from_json(text.encode()) == plan_data
    assert json.loads(text)["version"] == VERSION
    path = save_plan(plan_data, tmp_path / "plan.json")
    assert load_plan(path) == plan_data and path.read_text() == text
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]
    assert plan_data.layer(plan_data.layers[0].layer) is plan_data.layers[0]
    with pytest.raises(ConfigError, match="layer 99"):
        plan_data.layer(99)


def test_plan_attributes_are_typed_and_frozen(plan_data):
    import dataclasses

    layer = plan_data.layers[0]
    assert isinstance(plan_data.layout, tuple) and isinstance(layer.heads[0].window, tuple)
    assert plan_data.causal == (False,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan_data.gpu = "B200"
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.launches[0].dense = True
    p = plan_data.pattern(layer.heads[0])
    assert isinstance(p, GNAPattern) and p.window == layer.heads[0].window


def bad_plan(tmp_path, plan_data, edit=None, text=None):
    path = tmp_path / "bad.json"
    if text is None:
        data = plan_data.to_dict()
        edit(data)
        text = json.dumps(data)
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_plan(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def _set(path, value):
    def edit(data):
        obj = data
        for key in path[:-1]:
            obj = obj[key]
        if value is _DELETE:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
    return edit


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "needle"), [
    (("layers", 0, "heads", 1, "window"), [2048], "heads[1]"),
    (("layers", 0, "heads", 0, "stride"), [1, 1], "heads[0].stride"),
    (("layers", 0, "heads", 0, "dilation"), [0], "dilation"),
    (("heads_kv",), _DELETE, "missing field 'heads_kv'"),
    (("causal",), _DELETE, "missing field 'causal'"),
    (("layers", 0, "heads", 0, "error"), _DELETE, "missing field 'layers[0].heads[0].error'"),
    (("layers", 0, "launches", 0, "predicted_ms"), _DELETE, "missing field 'layers[0].launches[0].predicted_ms'"),
    (("head_dim",), "32", "field 'head_dim' is '32'"),
    (("heads",), True, "field 'heads' is True"),
    (("layout",), [1024.0], "field 'layout'"),
    (("layers", 0, "heads", 0, "error"), -0.5, "field 'layers[0].heads[0].error' is -0.5"),
    (("layers", 0, "heads", 0, "head"), 1, "field 'layers[0].heads[0].head' is 1"),
    (("version",), 99, "field 'version' is 99"),
    (("format",), "something", "field 'format'"),
    (("layers",), [], "field 'layers' is []"),
    (("surprise",), 1, "unknown field 'surprise'"),
    (("layers", 0, "heads", 0, "dense"), True, "heads[0].dense"),
])
def test_bad_plan_names_the_field(tmp_path, plan_data, path, value, needle):
    assert needle in bad_plan(tmp_path, plan_data, _set(path, value))


def test_plan_window_larger_than_axis(tmp_path, plan_data):
    msg = bad_plan(tmp_path, plan_data, _set(("layers", 0, "heads", 0, "window"), [2048]))
    assert "heads[0]" in msg and "2048" in msg and "1024" in msg


def test_truncated_plan(tmp_path, plan_data):
    text = plan_data.to_json()
    assert "not valid JSON" in bad_plan(tmp_path, plan_data, text=text[: len(text) // 2])
    assert "not valid JSON" in bad_plan(tmp_path, plan_data, text="")


def test_missing_plan_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.json"):
        load_plan(tmp_path / "missing.json")


def test_version_1_is_converted(tmp_path, plan_data):
    """A version 1 file: no causal field (no causal axis), a NaN mass (unknown), a password in the storage URL."""
    data = plan_data.to_dict()
    data["version"] = 1
    del data["causal"]
    data["search"]["storage"] = "postgresql://u:secret@db/x"
    text = json.dumps(data).replace('"mass": ' + json.dumps(data["layers"][0]["heads"][0]["mass"]), '"mass": NaN', 1)
    path = tmp_path / "v1.json"
    path.write_text(text)
    plan = load_plan(path)
    assert plan.causal == (False,) and plan.layers[0].heads[0].mass is None
    assert plan.search.storage == "postgresql://u:***@db/x"
    assert [la.launches for la in plan.layers] == [la.launches for la in plan_data.layers]
    assert json.loads(plan.to_json())["version"] == VERSION
    assert "secret" not in plan.to_json()


def test_save_plan_refuses_missing_folder(tmp_path, plan_data):
    with pytest.raises(ConfigError, match="does not exist"):
        save_plan(plan_data, tmp_path / "no" / "plan.json")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("field", ["window", "stride", "dilation", "dense"])
def test_launch_fields_are_validated(tmp_path, plan_data, field):
    assert field in bad_plan(tmp_path, plan_data, _set(("layers", 0, "launches", 0, field), _DELETE))


def test_launch_heads_are_validated(tmp_path, plan_data):
    bad_plan(tmp_path, plan_data, _set(("layers", 0, "launches", 0, "heads"), [7]))


def test_choice_properties():
    c = Candidate((8,), (1,), (1,))
    ch = Choice("x", ((Point(c, 1.0, 0.1, 1.0), Point(c, 1.0, 0.3, 1.0)), (Point(c, 1.0, 0.2, 1.0),)))
    assert ch.errors == [0.1, 0.3, 0.2]
    assert ch.mean_error == pytest.approx(0.2) and ch.max_error == 0.3
    assert math.isfinite(ch.mean_error) and np.isclose(ch.max_error, 0.3)
