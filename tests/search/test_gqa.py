"""GQA in the planner: every launch a valid problem, the heads of one KV head launched together, plans that
load; and the long 1D space (windows up to the whole sequence)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsesim.search.baselines import baselines
from sparsesim.search.latency import LatencyModel, LayerShape
from sparsesim.search.plan import ErrorBudget, Model, build_plan, choose, save_plan, save_plans
from sparsesim.search.space import Candidate, build_space
from sparsesim.search.study import Point, pareto
from sparsesim.simulator.plan import Plan, load_plan
from sparsesim.simulator.workloads import load_workload

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_launches(launches, heads: int, heads_kv: int) -> None:
    """Every head run once; every launch a valid problem: whole KV groups in order (GQA kept) or, for the
    heads of a group its pattern covers in part, one KV head per query head (what run_plan runs)."""
    group = heads // heads_kv
    ran = sorted(h for la in launches for h in la.heads)
    assert ran == list(range(heads))
    for la in launches:
        n = len(la.heads)
        assert la.heads_kv >= 1 and n % la.heads_kv == 0
        if la.heads_kv * group == n:
            kv = sorted({h // group for h in la.heads})
            assert list(la.heads) == [g * group + i for g in kv for i in range(group)]
        else:
            assert la.heads_kv == n


def plan_launches_are_whole_groups(plan: Plan) -> None:
    group = plan.heads // plan.heads_kv
    for layer in plan.layers:
        for la in layer.launches:
            kv = sorted({h // group for h in la.heads})
            assert sorted(la.heads) == [g * group + i for g in kv for i in range(group)], la.heads
        for h in layer.heads:  # the query heads of one KV head run one pattern
            first = layer.heads[h.head - h.head % group]
            assert (h.window, h.stride, h.dilation) == (first.window, first.stride, first.dilation)


# --------------------------------------------------------------------------------------------
# Launches of any per-head assignment
# --------------------------------------------------------------------------------------------

POOL = [Candidate((128,), (1,), (1,)), Candidate((256,), (128,), (1,)), Candidate((1024,), (1,), (1,))]


@FAST
@given(st.sampled_from([(8, 2), (8, 4), (32, 8), (6, 6), (4, 1)]), st.data())
def test_launches_are_valid_problems(shape, data):
    heads, heads_kv = shape
    lat = LatencyModel(shape=LayerShape(layout=(1024,), heads=heads, heads_kv=heads_kv, head_dim=64), gpu="H100",
                       q_tile=(128,), kv_tile=(128,))
    cands = data.draw(st.lists(st.sampled_from(POOL), min_size=heads, max_size=heads))
    launches = lat.launches(cands)  # the simulator refuses an invalid (heads, heads_kv): this would raise
    check_launches(launches, heads, heads_kv)
    for la in launches:
        assert all(cands[h] == la.candidate for h in la.heads)
    # the 11-of-group-4 case of the issue: heads 0..10 one pattern, head 11 another
    if (heads, heads_kv) == (32, 8):
        odd = [POOL[0]] * 11 + [POOL[1]] + [POOL[2]] * 20
        check_launches(lat.launches(odd), heads, heads_kv)


def test_gqa_launch_problems_keep_the_group():
    """The simulated problem of a launch: whole groups keep heads / heads_kv = group; the default for a
    head count that is no multiple of the group repeats KV (the issue's 11 heads of group 4)."""
    lat = LatencyModel(shape=LayerShape(layout=(4096,), heads=32, heads_kv=8, head_dim=128), gpu="H100",
                       q_tile=(128,), kv_tile=(128,))
    c = Candidate((1024,), (1,), (1,))
    assert (lat.result(c, 32).problem.heads, lat.result(c, 32).problem.heads_kv) == (32, 8)
    assert (lat.result(c, 12).problem.heads, lat.result(c, 12).problem.heads_kv) == (12, 3)
    assert (lat.result(c, 11).problem.heads, lat.result(c, 11).problem.heads_kv) == (11, 11)
    assert lat.head_ms(c) == pytest.approx(lat.result(c, 32).call_ms / 32)


# --------------------------------------------------------------------------------------------
# The planner on the Llama-3.1-8B preset (32 query heads, 8 KV heads, 128K tokens)
# --------------------------------------------------------------------------------------------


def random_points(cands, lat, layers, heads, seed):
    """Per layer and head, every candidate with its real per-head ms and a made-up error falling with the
    candidate's kept share (dense: 0), different per head."""
    rng = np.random.default_rng(seed)
    layout, causal = lat.shape.layout, lat.shape.causal
    dens = {c: c.pattern(layout, causal).density() for c in cands}
    full = max(dens.values())
    out = []
    for _ in range(layers):
        row = []
        for _ in range(heads):
            tail = rng.uniform(0.05, 0.6)
            row.append([Point(c, lat.head_ms(c), 0.0 if c.is_dense(layout) else
                              float(tail * (1 - dens[c] / full) ** 0.5 * rng.uniform(0.7, 1.3)), 1.0) for c in cands])
        out.append(row)
    return out


@pytest.fixture(scope="module")
def llama():
    w = load_workload("llama-3.1-8b")
    space = build_space(w.layout, gpu="H200", head_dim=w.head_dim, dtype=w.dtype)
    shape = LayerShape(layout=w.layout, heads=w.heads, heads_kv=w.heads_kv, head_dim=w.head_dim, batch=w.batch,
                       dtype=w.dtype, causal=w.causal)
    lat = LatencyModel(shape=shape, gpu="H200", q_tile=space.q_tile, kv_tile=space.kv_tile)
    return w, space, lat


@pytest.mark.parametrize("budget", [0.02, 0.1, 0.3])
def test_llama_plan_has_valid_launches_and_loads(llama, budget, tmp_path):
    w, space, lat = llama
    assert (w.heads, w.heads_kv) == (32, 8)
    pts = random_points(list(space.all_candidates()), lat, 2, w.heads, seed=int(budget * 100))
    fronts = [[pareto(h) for h in layer] for layer in pts]
    model = Model(latency=lat, other_ms=50.0)
    base = baselines(pts, model, budget)
    plan = choose(fronts, model, mean_error=budget, evaluated=pts, seeds=base)
    assert plan.mean_error <= budget * (1 + 1e-9)
    plans = {}
    for ch in [plan, *base]:
        for layer in ch.layers:
            check_launches(lat.launches([p.candidate for p in layer]), w.heads, w.heads_kv)
        plans[ch.name] = build_plan(choice=ch, model=model, layer_index=[0, 1], layer_names=["layer0", "layer1"],
                                    workload=w.name, gpu="H200", error_budget=ErrorBudget(budget, None, None),
                                    predicted=(), search=None)
    paths = save_plans(plans, tmp_path / "plans")
    assert sorted(p.name for p in paths) == ["plan.json", "sparse-vdit.json", "sta.json", "uniform.json"]
    for path in paths:
        loaded = load_plan(path)
        assert loaded == plans[path.stem] and (loaded.heads, loaded.heads_kv) == (32, 8)
        plan_launches_are_whole_groups(loaded)
    assert any(not h.dense for layer in plans["plan"].layers for h in layer.heads)  # something went sparse


def test_llama_target_speedup(llama):
    w, space, lat = llama
    pts = random_points(list(space.all_candidates()), lat, 1, w.heads, seed=3)
    model = Model(latency=lat, other_ms=5.0)
    ch = choose([[pareto(h) for h in layer] for layer in pts], model, target_speedup=1.5, evaluated=pts)
    check_launches(lat.launches([p.candidate for p in ch.layers[0]]), w.heads, w.heads_kv)
    group = w.heads // w.heads_kv
    assert all(len({p.candidate for p in ch.layers[0][g * group:(g + 1) * group]}) == 1 for g in range(w.heads_kv))


# --------------------------------------------------------------------------------------------
# A whole search on a small GQA workload (8 query heads, 2 KV heads)
# --------------------------------------------------------------------------------------------

GQA_WORKLOAD = """name = "tiny-gqa"
description = "a tiny GQA test workload"
layout = [1024]
causal = [true]
text_tokens = 0
heads = 8
heads_kv = 2
head_dim = 32
hidden = 256
mlp = 512
steps = 1
batch = 1
dtype = "fp16"

[[blocks]]
kind = "decoder"
count = 2
gemms = [[384, 256], [256, 256], [1024, 256], [256, 512]]

[[patterns]]
window = [256]
stride = [1]
"""


@pytest.mark.parametrize("sampler", ["exhaustive", "tpe"])
def test_gqa_search_plans_load(tmp_path, sampler):
    from sparsesim.search.run import search_plan
    from sparsesim.search.samples import synthetic
    from sparsesim.search.study import SearchSettings

    path = tmp_path / "gqa.toml"
    path.write_text(GQA_WORKLOAD)
    src = synthetic(layout=(1024,), layers=2, heads=8, head_dim=32, rows=8, seed=1)
    settings = SearchSettings(study="g", storage=f"sqlite:///{tmp_path}/g.db", trials=4)
    result = search_plan(src=src, workload=str(path), gpu="H100", settings=settings, sampler=sampler,
                         error_budget=0.2)
    out = save_plan(result.plan, tmp_path / "plan.json")
    plan = load_plan(out)
    assert plan == result.plan and (plan.heads, plan.heads_kv) == (8, 2) and len(plan.layers) == 2
    plan_launches_are_whole_groups(plan)
    assert plan.mean_error <= 0.2 * (1 + 1e-9)
    assert list(result.baselines) == ["uniform", "sparse-vdit", "sta"]
    assert [b.search.sampler.split(":")[0] for b in result.baselines.values()] == \
        ["baseline uniform", "baseline sparse-vdit", "baseline sta"]
    for path in save_plans(result.baselines, tmp_path / "base"):
        b = load_plan(path)
        plan_launches_are_whole_groups(b)
        assert b.mean_error <= 0.2 * (1 + 1e-9)
        assert b.e2e_predicted_speedup <= plan.e2e_predicted_speedup * (1 + 1e-9)  # same budget: never faster


# --------------------------------------------------------------------------------------------
# 1D windows up to the whole sequence
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu", ["H100", "H200", "A100"])
def test_long_1d_windows_reach_the_whole_sequence(gpu):
    space = build_space((131072,), gpu=gpu, head_dim=128)
    ws = space.windows[0]
    assert {16384, 32768, 65536, 131072} <= set(ws)
    assert ws[-1] == 131072 and list(ws) == sorted(set(ws))
    t = space.kv_tile[0]
    assert list(ws[:-1]) == [t * 2 ** i for i in range(len(ws) - 1)]  # powers of two of KV tiles, then the axis
    assert space.size() < 100  # the space stays small
    cands = list(space.all_candidates())
    assert any(c.window == (65536,) and c.dilation == (2,) for c in cands)  # dilation where the window fits twice


def test_max_tiles_still_caps_when_asked():
    space = build_space((131072,), gpu="H100", head_dim=128, max_tiles=64)
    assert max(w for w in space.windows[0] if w < 131072) == 64 * space.kv_tile[0]


def test_cli_writes_baseline_plans(tmp_path, cli):
    path = tmp_path / "gqa.toml"
    path.write_text(GQA_WORKLOAD)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli("search", "--workload", str(path), "--rows", "8", "--baselines-out", str(blocker),
                       "--out", str(tmp_path / "p.json"))
    assert code == 2 and "--baselines-out" in err and "\n" not in err.strip()
    assert not (tmp_path / "p.json").exists()  # refused before the search
    code, out, err = cli("search", "--workload", str(path), "--rows", "8", "--error-budget", "0.1",
                         "--baselines-out", str(tmp_path / "base"), "--out", str(tmp_path / "p.json"))
    assert code == 0, err
    plan = load_plan(tmp_path / "p.json")
    for name in ("uniform", "sparse-vdit", "sta"):
        b = load_plan(tmp_path / "base" / f"{name}.json")
        assert b.search.sampler.startswith(f"baseline {name}:") and b.mean_error <= 0.1 * (1 + 1e-9)
        assert b.e2e_predicted_speedup <= plan.e2e_predicted_speedup * (1 + 1e-9)
        plan_launches_are_whole_groups(b)
        assert name in out
