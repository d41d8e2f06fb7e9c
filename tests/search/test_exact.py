"""Exhaustive search: enumerated fronts against brute force (every candidate scored one by one), the exact
front against the TPE path's points, and the CLI without storage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsesim.search.exact import front_indices, run_exhaustive
from sparsesim.search.latency import LatencyModel, LayerShape
from sparsesim.search.quality import evaluate, head_quality
from sparsesim.search.samples import synthetic
from sparsesim.search.space import Candidate, build_space
from sparsesim.search.study import Point, pareto

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def non_dominated(values: list[tuple[float, float]]) -> set[tuple[float, float]]:
    """The (ms, error) values no other value dominates, by pairwise comparison."""
    arr = np.array(values)
    out = set()
    for a in arr:
        dominated = np.any((arr[:, 0] <= a[0]) & (arr[:, 1] <= a[1]) & ((arr[:, 0] < a[0]) | (arr[:, 1] < a[1])))
        if not dominated:
            out.add((float(a[0]), float(a[1])))
    return out


@FAST
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=40))
def test_front_indices_is_non_domination_and_pareto(pairs):
    ms = np.array([a * 0.5 for a, _ in pairs])
    err = np.array([b * 0.25 for _, b in pairs])
    idx = front_indices(ms, err)
    got = [(float(ms[i]), float(err[i])) for i in idx]
    assert set(got) == non_dominated(list(zip(ms, err, strict=True)))
    assert len(got) == len(set(got)) and got == sorted(got)
    pool = [Candidate((i + 1,), (1,), (1,)) for i in range(len(pairs))]  # one candidate per point
    pts = [Point(c, float(m), float(e), 1.0) for c, m, e in zip(pool, ms, err, strict=True)]
    assert [p.candidate for p in pareto(pts)] == [pool[i] for i in idx]  # the same points, ties alike


def _latency(layout, gpu, space, causal=()):
    shape = LayerShape(layout=layout, heads=4, heads_kv=4, head_dim=32, dtype="fp16", causal=causal)
    return LatencyModel(shape=shape, gpu=gpu, q_tile=space.q_tile, kv_tile=space.kv_tile)


def check_fronts_against_brute_force(layout, gpu, causal=(), heads=2, rows=12, min_size=1):
    space = build_space(layout, gpu=gpu, head_dim=32, dtype="fp16")
    src = synthetic(layout=layout, layers=1, heads=heads, head_dim=32, rows=rows, seed=5)
    exact = run_exhaustive(src, [0], space, _latency(layout, gpu, space, causal))
    cands = list(space.all_candidates())
    assert min_size <= len(cands) == len(exact.candidates)
    fresh = _latency(layout, gpu, space, causal)  # another model: latency recomputed one candidate at a time
    for h in range(heads):
        q, k, v = src.head(0, h)
        hq = head_quality(q, k, v, src.rows_of(0), layout, causal)
        brute = {}
        for c in cands:
            qual = evaluate(hq, c.pattern(layout, causal))
            brute[c] = (fresh.head_ms(c), qual.error, qual.mass)
        every = {p.candidate: p for p in exact.points(0, h)}
        for c, (ms, err, mass) in brute.items():
            assert every[c].ms == ms
            assert every[c].error == pytest.approx(err, rel=1e-4, abs=1e-6)
            assert every[c].mass == pytest.approx(mass, rel=1e-5, abs=1e-7)
        want = non_dominated([(ms, err) for ms, err, _ in brute.values()])
        got = [(p.ms, p.error) for p in exact.front(0, h)]
        assert len(got) == len(want), (got, sorted(want))
        for (gm, ge), (wm, we) in zip(sorted(got), sorted(want), strict=True):
            assert gm == wm and ge == pytest.approx(we, rel=1e-4, abs=1e-6)
        assert got[-1][1] == 0.0  # the dense candidate ends every front, exactly
    return exact


@pytest.mark.parametrize(("layout", "gpu", "causal"), [
    ((1024,), "A100", ()),
    ((2048,), "H100", (True,)),
    ((16, 64), "H100", ()),
    ((8, 16, 16), "H100", (False, True, False)),
])
def test_enumerated_fronts_equal_brute_force_fronts(layout, gpu, causal):
    check_fronts_against_brute_force(layout, gpu, causal)


# --------------------------------------------------------------------------------------------
# search_plan and the CLI
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def tiny(tiny_workload: Path) -> tuple[str, object]:
    return str(tiny_workload), synthetic(layout=(32, 32), layers=1, heads=3, head_dim=32, rows=16, seed=3)


def test_exact_front_dominates_every_tpe_point(tiny, tmp_path):
    pytest.importorskip("optuna")
    from sparsesim.search.run import search_plan
    from sparsesim.search.study import SearchSettings, points

    workload, src = tiny
    url = f"sqlite:///{tmp_path}/s.db"
    settings = SearchSettings(study="t", storage=url, trials=12)
    exact = search_plan(src=src, workload=workload, gpu="H100", settings=settings, error_budget=0.1)
    tpe = search_plan(src=src, workload=workload, gpu="H100", settings=settings, sampler="tpe", error_budget=0.1)
    assert exact.plan.search.sampler.startswith("exhaustive") and tpe.plan.search.sampler.startswith("TPE")
    space = build_space((32, 32), gpu="H100", head_dim=32, dtype="bf16")
    runs = run_exhaustive(src, [0], space, _latency_tiny(workload, space))
    for h in range(3):
        front = runs.front(0, h)
        for p in points(url, "t", 0, h):
            assert any(f.ms <= p.ms * (1 + 1e-12) and f.error <= p.error + 1e-6 for f in front), p
    by_name = {o.name: o for o in exact.outcomes}
    assert by_name["plan"].mean_error <= 0.1 + 1e-12
    assert [o.name for o in exact.outcomes] == [o.name for o in tpe.outcomes]


def _latency_tiny(workload, space):
    from sparsesim.simulator.workloads import load_workload

    w = load_workload(workload)
    shape = LayerShape(layout=w.layout, heads=w.heads, heads_kv=w.heads_kv, head_dim=w.head_dim, batch=w.batch,
                       dtype=w.dtype, causal=w.causal)
    return LatencyModel(shape=shape, gpu="H100", q_tile=space.q_tile, kv_tile=space.kv_tile)


def test_exhaustive_progress_counts_heads_and_needs_no_settings(tiny, capsys):
    from sparsesim.search.run import search_plan

    workload, src = tiny
    calls: list[tuple[int, int]] = []
    res = search_plan(src=src, workload=workload, gpu="H100", error_budget=0.1,
                      progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 3) for i in range(4)]
    assert res.report.heads == 3 and res.report.ran == 3 * res.plan.search.trials and res.report.found == 0
    assert capsys.readouterr() == ("", "")


def test_unknown_sampler_and_tpe_without_settings_are_refused(tiny):
    from sparsesim.search.run import search_plan
    from sparsesim.simulator.errors import ConfigError

    workload, src = tiny
    with pytest.raises(ConfigError, match="--sampler 'nsga'; allowed: exhaustive, tpe"):
        search_plan(src=src, workload=workload, gpu="H100", sampler="nsga", error_budget=0.1)
    with pytest.raises(ConfigError, match="--sampler tpe needs"):
        search_plan(src=src, workload=workload, gpu="H100", sampler="tpe", error_budget=0.1)


def test_cli_exhaustive_stores_nothing_and_notes_ignored_flags(cli, tiny_workload, tmp_path, monkeypatch):
    from sparsesim.cli.search import SEARCH_COLUMNS
    from sparsesim.search.plan import load_plan

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPARSESIM_STORAGE", raising=False)
    base = ["search", "--workload", str(tiny_workload), "--rows", "8", "--out", "p.json", "--format", "csv"]
    code, out, err = cli(*base)
    assert code == 0, err
    assert "note" not in err and "(exhaustive)" in err
    assert load_plan(tmp_path / "p.json").search.sampler.startswith("exhaustive")
    code, tpe_out, err = cli(*base, "--sampler", "tpe", "--trials", "2", "--storage", "sqlite:///:memory:")
    assert code == 0, err
    header = out.splitlines()[0].split(",")
    assert header == tpe_out.splitlines()[0].split(",") and set(SEARCH_COLUMNS) <= set(header)  # the same table
    assert [line.split(",")[0] for line in out.splitlines()[1:]][:2] == ["plan", "uniform"]
    code, out, err = cli(*base, "--trials", "5", "--storage", "sqlite:///x.db")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "note" in line]
    assert len(notes) == 1 and "--trials, --storage" in notes[0] and "--sampler tpe" in notes[0]
    assert sorted(os.listdir(tmp_path)) == ["p.json", "tiny.toml"]  # no database file


@pytest.mark.parametrize(("layout", "gpu", "size"), [((8, 32, 32), "H100", 900), ((16, 32, 32), "H100", 2000)])
def test_enumerated_fronts_equal_brute_force_fronts_large(layout, gpu, size):
    """Spaces of ~10^3 candidates (3D layouts of 8K-16K tokens); the slowest test here, so the last."""
    check_fronts_against_brute_force(layout, gpu, heads=1, rows=8, min_size=size)


# --------------------------------------------------------------------------------------------
# Samples with extra tokens (joint text tokens, sinks)
# --------------------------------------------------------------------------------------------


def with_extras(src, extra: int, at: str):
    """``src`` materialized, its calls given ``extra`` more random tokens (K and V), rows as sequence positions."""
    from sparsesim.search.samples import LayerSamples, Samples

    rng = np.random.default_rng(7)
    s = src.materialize()
    layers = []
    for la in s.layers:
        hk, _, d = la.k.shape
        k_x, v_x = (rng.standard_normal((hk, extra, d)).astype(np.float16) for _ in range(2))
        parts_k, parts_v = ([k_x, la.k], [v_x, la.v]) if at == "start" else ([la.k, k_x], [la.v, v_x])
        layers.append(LayerSamples(name=la.name, q=la.q, rows=la.rows + (extra if at == "start" else 0),
                                   k=np.concatenate(parts_k, axis=1), v=np.concatenate(parts_v, axis=1),
                                   kinds=la.kinds))
    return Samples(layout=s.layout, layers=tuple(layers), extra_tokens=extra, extra_at=at)


@pytest.mark.parametrize(("layout", "causal", "at"), [((16, 64), (), "end"), ((2048,), (True,), "start")])
def test_exact_fronts_with_extra_tokens(layout, causal, at):
    space = build_space(layout, gpu="H100", head_dim=32, dtype="fp16")
    src = with_extras(synthetic(layout=layout, layers=1, heads=2, head_dim=32, rows=8, seed=5), 24, at)
    shape = LayerShape(layout=layout, heads=4, heads_kv=4, head_dim=32, dtype="fp16", causal=causal,
                       extra_tokens=24, extra_at=at)
    latency = LatencyModel(shape=shape, gpu="H100", q_tile=space.q_tile, kv_tile=space.kv_tile)
    exact = run_exhaustive(src, [0], space, latency)
    plain = _latency(layout, "H100", space, causal)
    for h in range(2):
        q, k, v = src.head(0, h)
        hq = head_quality(q, k, v, src.rows_of(0), layout, causal, extra_tokens=24, extra_at=at)
        for p in exact.points(0, h):
            one = evaluate(hq, p.candidate.pattern(layout, causal))
            assert p.error == pytest.approx(one.error, rel=1e-4, abs=1e-6)
            assert p.mass == pytest.approx(one.mass, rel=1e-5, abs=1e-7)
            assert p.ms > plain.head_ms(p.candidate)  # the extra tokens are costed
    wrong = LatencyModel(shape=LayerShape(layout=layout, heads=4, heads_kv=4, head_dim=32, dtype="fp16",
                                          causal=causal, extra_tokens=8, extra_at="start"),
                         gpu="H100", q_tile=space.q_tile, kv_tile=space.kv_tile)
    from sparsesim.simulator.errors import ConfigError

    with pytest.raises(ConfigError, match="the samples carry 24 extra tokens"):
        run_exhaustive(src, [0], space, wrong)


def test_search_plan_over_samples_with_extra_tokens(tiny, tmp_path):
    pytest.importorskip("optuna")
    from sparsesim.search.run import search_plan
    from sparsesim.search.study import SearchSettings

    workload, src = tiny
    joint = with_extras(src, 40, "end")
    plain = search_plan(src=src, workload=workload, gpu="H100", error_budget=0.1)
    settings = SearchSettings(study="x", storage=f"sqlite:///{tmp_path}/s.db", trials=4)
    for sampler in ("exhaustive", "tpe"):
        res = search_plan(src=joint, workload=workload, gpu="H100", error_budget=0.1, sampler=sampler,
                          settings=settings)
        assert res.outcomes[0].mean_error <= 0.1 + 1e-12
        # the dense baseline runs the text tokens too
        assert res.outcomes[0].dense_attention_ms > plain.outcomes[0].dense_attention_ms
