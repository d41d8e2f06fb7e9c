"""DiT-like synthetic heads (search/synthetic.py, ``synthetic(..., mix="dit")``): each kind measurably is what
its name says (mass and error of windows on sampled rows, search/quality.py), the mixture differs across
layers and follows depth, and the generation is seeded and never tokens x tokens."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from sparsesim.search.quality import evaluate, head_quality
from sparsesim.search.samples import load_samples, save_samples, synthetic
from sparsesim.search.synthetic import DIT_KINDS, heavy_profile, layer_mixture
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import GNAPattern

LAYOUT = (8, 16, 24)  # T, H, W
T, H, W = LAYOUT
TOKENS = T * H * W
PER_KIND = 3


@pytest.fixture(scope="module")
def heads():
    """``PER_KIND`` heads of every DiT kind, as (kind, HeadQuality, sink keys)."""
    kinds = [k for k in DIT_KINDS for _ in range(PER_KIND)]
    out = []
    for seed in (0, 1):
        s = synthetic(layout=LAYOUT, layers=1, heads=len(kinds), head_dim=64, rows=64, seed=seed, kinds=kinds)
        for h in range(len(kinds)):
            q, k, v = s.head(0, h)
            out.append((s.kind(0, h), head_quality(q, k, v, s.rows_of(0), LAYOUT), s.sinks_of(0)))
    return out


def of(heads, kind):
    got = [(hq, sinks) for k, hq, sinks in heads if k == kind]
    assert len(got) == 2 * PER_KIND
    return got


def mass(hq, window):
    return evaluate(hq, GNAPattern(input_size=LAYOUT, window=window)).mass


def test_spatial_heads_stay_in_their_frame_and_spread_over_it(heads):
    for hq, _ in of(heads, "spatial"):
        assert mass(hq, (3, H, W)) > 0.8  # a T window of 3 frames, whole frames
        assert mass(hq, (1, H, W)) > 0.6  # most of it in the query's own frame
        assert mass(hq, (T, 5, 7)) < 0.5  # not local in H/W


def test_temporal_heads_follow_one_position_across_frames(heads):
    for hq, _ in of(heads, "temporal"):
        assert mass(hq, (T, 5, 5)) > 0.8  # every frame, a small H/W window
        assert mass(hq, (1, H, W)) < 0.4  # not within one frame


def test_local_heads_keep_a_small_3d_neighbourhood(heads):
    for hq, _ in of(heads, "local"):
        assert mass(hq, (T // 2, H // 2, W // 2)) > 0.9  # 1/8 of the keys, around the query
        assert mass(hq, (1, H, W)) < 0.8  # across neighbouring frames too


def test_heavy_heads_trade_error_gradually(heads):
    ladder = [tuple(max(1, round(n * f / 8)) for n in LAYOUT) for f in range(1, 8)]
    for hq, _ in of(heads, "heavy"):
        assert mass(hq, (T // 2, H // 2, W // 2)) > 0.5  # most mass nearby (global heads: ~0.15)
        assert mass(hq, (1, H, W)) < 0.6 and mass(hq, (T, 5, 5)) < 0.9  # neither spatial nor temporal
        errors = []
        for w in ladder:
            e = evaluate(hq, GNAPattern(input_size=LAYOUT, window=w)).error
            if np.prod(w) < 0.3 * TOKENS:
                assert e >= 0.02, f"window {w} keeps {np.prod(w) / TOKENS:.0%} of the keys at error {e:.4f}"
            errors.append(e)
        assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors  # every step still gains
        assert sum(0.02 <= e <= 0.7 for e in errors) >= 5, errors  # no cliff: intermediate errors all along


def test_local_heads_are_not_heavy(heads):
    """The heavy-tail check is not vacuous: a Gaussian local head gets nearly exact with few keys."""
    ladder = [tuple(max(1, round(n * f / 8)) for n in LAYOUT) for f in range(1, 8)]
    for hq, _ in of(heads, "local"):
        best = min(evaluate(hq, GNAPattern(input_size=LAYOUT, window=w)).error
                   for w in ladder if np.prod(w) < 0.3 * TOKENS)
        assert best < 0.02


def test_global_heads_are_diffuse(heads):
    for hq, _ in of(heads, "global"):
        q = evaluate(hq, GNAPattern(input_size=LAYOUT, window=(T // 2, H // 2, W // 2)))
        assert q.mass < 0.3 and q.error > 0.1  # 1/8 of the keys: far from enough


def test_sink_heads_put_their_mass_on_the_sink_keys(heads):
    for kind, hq, sinks in heads:
        p = hq.p / hq.z[:, None]
        on_sinks = float(p[:, sinks].sum(axis=1).mean())
        if kind == "sink":
            assert 1 <= sinks.size <= 3 and on_sinks > 0.3
        else:
            assert on_sinks < 0.1, kind


def test_mixture_differs_across_layers_and_follows_depth():
    s = synthetic(layout=LAYOUT, layers=12, heads=40, head_dim=32, rows=4, seed=7)
    kinds = [[s.kind(li, h) for h in range(40)] for li in range(12)]
    counts = [tuple(row.count(k) for k in DIT_KINDS) for row in kinds]
    assert len(set(counts)) > 6  # the mixture is drawn per layer
    assert all(set(row) <= set(DIT_KINDS) for row in kinds)
    early = sum(row.count("local") + row.count("spatial") for row in kinds[:4])
    late = sum(row.count("local") + row.count("spatial") for row in kinds[-4:])
    assert early > late
    early_global = sum(row.count("global") for row in kinds[:4])
    late_global = sum(row.count("global") for row in kinds[-4:])
    assert late_global > early_global
    _, p = layer_mixture(3, 0, 12, 7)
    assert p.shape == (6,) and abs(p.sum() - 1) < 1e-9


def test_same_seed_same_heads_and_kinds():
    a = synthetic(layout=LAYOUT, layers=3, heads=6, head_dim=32, rows=8, seed=4)
    b = synthetic(layout=LAYOUT, layers=3, heads=6, head_dim=32, rows=8, seed=4)
    c = synthetic(layout=LAYOUT, layers=3, heads=6, head_dim=32, rows=8, seed=5)
    assert [a.kind(li, h) for li in range(3) for h in range(6)] == [b.kind(li, h) for li in range(3) for h in range(6)]
    for li in range(3):
        np.testing.assert_array_equal(a.sinks_of(li), b.sinks_of(li))
        for h in range(6):
            for x, y, z in zip(a.head(li, h), b.head(li, h), c.head(li, h), strict=True):
                np.testing.assert_array_equal(x, y)
                assert not np.array_equal(x, z)


@pytest.mark.parametrize("layout", [(300,), (12, 20)])
def test_lower_ranks_use_the_kinds_that_apply(layout):
    s = synthetic(layout=layout, layers=6, heads=16, head_dim=32, rows=8, seed=2)
    seen = {s.kind(li, h) for li in range(6) for h in range(16)}
    assert seen <= {"local", "heavy", "global", "sink"} and len(seen) >= 3
    for kind in ("local", "heavy", "global", "sink"):
        q, k, v = synthetic(layout=layout, layers=1, heads=1, head_dim=32, rows=8, kinds=[kind]).head(0, 0)
        assert np.isfinite(q).all() and np.isfinite(k).all() and np.isfinite(v).all()
    with pytest.raises(ConfigError, match="temporal"):
        synthetic(layout=layout, kinds=["temporal"])


def test_mix_argument():
    basic = synthetic(layout=LAYOUT, layers=2, heads=3, head_dim=16, rows=4, mix="basic")
    assert [basic.kind(0, h) for h in range(3)] == ["local", "axis", "global"]
    with pytest.raises(ConfigError, match="mix 'video'"):
        synthetic(layout=LAYOUT, mix="video")
    with pytest.raises(ConfigError, match="'axis'"):
        synthetic(layout=LAYOUT, kinds=["axis"])  # a basic kind, not a DiT one
    with pytest.raises(ConfigError, match="'sink'"):
        synthetic(layout=LAYOUT, kinds=["sink"], mix="basic")


def test_dit_samples_round_trip_a_file(tmp_path):
    s = synthetic(layout=(4, 6, 5), layers=2, heads=6, head_dim=32, rows=9, seed=3, kinds=list(DIT_KINDS))
    back = load_samples(save_samples(s.materialize(), tmp_path / "dit.npz"))
    assert [back.kind(1, h) for h in range(6)] == list(DIT_KINDS)


def test_heavy_profile_fits_the_power_law_near_the_peak():
    for length in (8, 21, 80):
        w, a = heavy_profile(length, 9, 1.5, 1.0)
        lag = np.arange(length)
        fitted = np.cos(np.outer(lag, w)) @ a
        target = -0.75 * np.log1p(lag**2.0)
        gap = (fitted - fitted[0]) - target
        assert np.abs(gap[:6]).max() < 0.3, (length, gap[:6])
        assert fitted[length - 1] - fitted[0] < -1.0  # the far end well below the peak


def test_generation_is_rows_by_tokens_not_tokens_squared():
    layout = (16, 64, 64)  # 65,536 tokens: one float32 tokens x tokens array would be 17 GB
    s = synthetic(layout=layout, layers=1, heads=6, head_dim=64, rows=16, kinds=list(DIT_KINDS))
    tracemalloc.start()
    try:
        for h in range(6):
            s.head(0, h)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * 65_536 * 64 * 4  # a few copies of K and V
