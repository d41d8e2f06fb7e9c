"""search.quality against a float64 brute force built on the simulator's dense_mask: one candidate at a time
(evaluate), every candidate at once (evaluate_all), and the error measure's invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsesim.search.quality import evaluate, evaluate_all, head_quality
from sparsesim.search.space import Candidate
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import GNAPattern, dense_mask, visible_mask

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def axis_params(draw: st.DrawFn, length: int) -> tuple[int, int, int, bool]:
    """(window, stride, dilation, causal) of one axis under GNAPattern's rules."""
    dilation = draw(st.integers(1, max(1, length // 2)))
    window = draw(st.integers(1, length // dilation))
    stride = draw(st.integers(1, window))
    return window, stride, dilation, draw(st.booleans())


@st.composite
def problems(draw: st.DrawFn) -> tuple[GNAPattern, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rank = draw(st.integers(1, 2))
    layout = tuple(draw(st.integers(4, 12)) for _ in range(rank))
    axes = [draw(axis_params(n)) for n in layout]
    pattern = GNAPattern(input_size=layout, window=tuple(a[0] for a in axes), stride=tuple(a[1] for a in axes),
                         dilation=tuple(a[2] for a in axes), causal=tuple(a[3] for a in axes))
    n = math.prod(layout)
    d = draw(st.sampled_from([4, 8, 16]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = np.sort(rng.choice(n, size=draw(st.integers(1, n)), replace=False)).astype(np.int64)
    q = rng.standard_normal((rows.size, d)).astype(np.float32)
    k = rng.standard_normal((n, d)).astype(np.float32)
    v = rng.standard_normal((n, d)).astype(np.float32)
    return pattern, q, k, v, rows


def full_mask(p: GNAPattern) -> np.ndarray:
    return dense_mask(input_size=p.input_size, window=p.window, stride=p.stride, dilation=p.dilation,
                      causal=p.causal)


def v_spread(v: np.ndarray) -> float:
    """RMS distance of the value vectors from their mean, in float64, written out term by term."""
    v64 = v.astype(np.float64)
    mean = [sum(v64[j, c] for j in range(v64.shape[0])) / v64.shape[0] for c in range(v64.shape[1])]
    return math.sqrt(sum(sum((v64[j, c] - mean[c]) ** 2 for c in range(v64.shape[1])) for j in range(v64.shape[0]))
                     / v64.shape[0])


def brute_force(p: GNAPattern, q: np.ndarray, k: np.ndarray, v: np.ndarray, rows: np.ndarray,
                reference_causal: tuple[bool, ...] = ()) -> tuple[float, float]:
    """(RMS output error per row over V's RMS spread, mean kept mass) in float64 from explicit mask rows."""
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    s = q64 @ k64.T / math.sqrt(q.shape[1])
    if any(reference_causal):
        s = np.where(dense_mask(input_size=p.input_size, window=p.input_size, causal=reference_causal)[rows], s,
                     -np.inf)
    prob = np.exp(s - s.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    dense = prob @ v64
    m = full_mask(p)[rows]
    masked = np.where(m, prob, 0.0)
    kept = masked.sum(axis=1)
    sparse = (masked / kept[:, None]) @ v64
    rms_err = math.sqrt(((sparse - dense) ** 2).sum() / rows.size)
    return rms_err / v_spread(v), float(kept.mean())


@FAST
@given(problems())
def test_evaluate_matches_brute_force(problem):
    pattern, q, k, v, rows = problem
    got = evaluate(head_quality(q, k, v, rows, pattern.input_size), pattern)
    err, mass = brute_force(pattern, q, k, v, rows)
    assert got.error == pytest.approx(err, rel=1e-4, abs=2e-6)
    assert got.mass == pytest.approx(mass, rel=1e-4, abs=1e-6)
    assert 0.0 < got.mass <= 1.0 + 1e-6


@FAST
@given(problems())
def test_sampled_rows_mask_equals_dense_mask_rows(problem):
    """The quality masks the sampled rows with the core's predicate: the rows of the full mask."""
    pattern, q, k, v, rows = problem
    hq = head_quality(q, k, v, rows, pattern.input_size)
    np.testing.assert_array_equal(hq.rows, rows)
    got = visible_mask(pattern, hq.rows)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, full_mask(pattern)[rows])


@FAST
@given(problems())
def test_head_quality_dense_output(problem):
    """The precomputed dense output is the float64 softmax attention of the sampled rows."""
    pattern, q, k, v, rows = problem
    hq = head_quality(q, k, v, rows, pattern.input_size)
    s = q.astype(np.float64) @ k.astype(np.float64).T / math.sqrt(q.shape[1])
    prob = np.exp(s - s.max(axis=1, keepdims=True))
    want = (prob / prob.sum(axis=1, keepdims=True)) @ v.astype(np.float64)
    np.testing.assert_allclose(hq.out, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(hq.coords, np.stack(np.unravel_index(rows, pattern.input_size), axis=1))


@pytest.mark.parametrize("layout", [(9,), (6, 7)])
def test_dense_pattern_is_exact(layout):
    rng = np.random.default_rng(7)
    n = math.prod(layout)
    q, k, v = (rng.standard_normal((n, 8)).astype(np.float32) for _ in range(3))
    hq = head_quality(q, k, v, np.arange(n), layout)
    got = evaluate(hq, GNAPattern(input_size=layout, window=layout))
    assert (got.error, got.mass) == (0.0, 1.0)
    # the general path (dense mask, not the shortcut) agrees: a full window with stride gives the same mask
    strided = GNAPattern(input_size=layout, window=layout, stride=tuple(max(1, x // 2) for x in layout))
    assert visible_mask(strided, hq.rows).all()


def test_smaller_window_keeps_less_mass():
    """Nested windows (stride 1, same centre rule) keep nested key sets, so mass is monotone."""
    rng = np.random.default_rng(3)
    layout = (12, 12)
    q, k, v = (rng.standard_normal((144, 16)).astype(np.float32) for _ in range(3))
    hq = head_quality(q, k, v, np.arange(144), layout)
    masses = [evaluate(hq, GNAPattern(input_size=layout, window=(w, w))).mass for w in (3, 5, 7, 9, 11, 12)]
    assert masses == sorted(masses)
    assert masses[-1] == 1.0


def test_causal_dense_candidate_has_zero_error():
    from sparsesim.search.space import Candidate

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((16, 8)).astype(np.float32) for _ in range(3))
    hq = head_quality(q, k, v, np.arange(16), (16,), causal=(True,))  # the model's dense attention is causal
    dense = Candidate((16,), (1,), (1,))
    assert dense.is_dense((16,))
    assert evaluate(hq, dense.pattern((16,), (True,))).error == 0.0
    # and a causal window of 4 keys matches the brute force on the causal reference
    window4 = GNAPattern(input_size=(16,), window=4, causal=True)
    want, _ = brute_force(window4, q, k, v, np.arange(16), reference_causal=(True,))
    assert want > 0.01
    assert evaluate(hq, window4).error == pytest.approx(want, rel=1e-4)
    # the unmasked reference is another head: the causal reference is what the measure compares with
    assert brute_force(window4, q, k, v, np.arange(16))[0] != pytest.approx(want, rel=1e-3)


# --------------------------------------------------------------------------------------------
# The error measure: independent of V's mean and scale
# --------------------------------------------------------------------------------------------


@FAST
@given(problems(), st.floats(-50, 50), st.floats(0.01, 100))
def test_error_ignores_v_mean_and_scale(problem, shift, factor):
    """Adding a constant vector to V, or scaling it, leaves every pattern's error and mass as they were."""
    pattern, q, k, v, rows = problem
    base = evaluate(head_quality(q, k, v, rows, pattern.input_size), pattern)
    offset = np.linspace(-1.0, 1.0, v.shape[1], dtype=np.float32) * np.float32(shift)
    moved = evaluate(head_quality(q, k, (v * np.float32(factor) + offset).astype(np.float32), rows,
                                  pattern.input_size), pattern)
    assert moved.error == pytest.approx(base.error, rel=2e-3, abs=1e-4)
    assert moved.mass == pytest.approx(base.mass, rel=1e-6)


def test_error_of_constant_v_is_zero_and_finite():
    rng = np.random.default_rng(1)
    q, k = (rng.standard_normal((36, 8)).astype(np.float32) for _ in range(2))
    v = np.tile(rng.standard_normal(8).astype(np.float32), (36, 1))
    got = evaluate(head_quality(q, k, v, np.arange(36), (6, 6)), GNAPattern(input_size=(6, 6), window=2))
    assert got.error == pytest.approx(0.0, abs=1e-5) and got.mass < 0.5


def test_global_head_over_zero_mean_v_is_not_hopeless():
    """Uniform attention over zero-mean V: the dense output is ~0, so the old measure (relative to ||O||)
    scored any window above 1; relative to V's spread, a window keeping half the keys errs ~1/sqrt(keys)."""
    rng = np.random.default_rng(2)
    n = 1024
    q = np.zeros((64, 16), np.float32)
    k = np.zeros((n, 16), np.float32)  # every score equal: uniform attention
    v = rng.standard_normal((n, 16)).astype(np.float32)
    rows = np.sort(rng.choice(n, 64, replace=False))
    hq = head_quality(q, k, v, rows, (n,))
    half = evaluate(hq, GNAPattern(input_size=(n,), window=n // 2))
    assert half.mass == pytest.approx(0.5, abs=1e-6)
    assert 0.02 < half.error < 0.1  # ~ sqrt(1/512 - 1/1024) = 0.031
    assert float(np.linalg.norm(hq.out)) < 0.2 * math.sqrt(64)  # the old denominator: tiny


# --------------------------------------------------------------------------------------------
# Every candidate at once
# --------------------------------------------------------------------------------------------


@st.composite
def candidate_sets(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[bool, ...], list[Candidate]]:
    rank = draw(st.integers(1, 3))
    layout = tuple(draw(st.integers(3, 9)) for _ in range(rank))
    causal = tuple(draw(st.booleans()) for _ in range(rank))
    cands = []
    for _ in range(draw(st.integers(1, 12))):
        axes = [draw(axis_params(n)) for n in layout]
        cands.append(Candidate(tuple(a[0] for a in axes), tuple(a[1] for a in axes), tuple(a[2] for a in axes)))
    if draw(st.booleans()):
        cands.append(Candidate(layout, (1,) * rank, (1,) * rank))  # the reference itself
    return layout, causal, cands


@FAST
@given(candidate_sets(), st.integers(0, 2**32 - 1), st.sampled_from([4, 8]), st.booleans())
def test_evaluate_all_equals_the_loop_and_brute_force(cset, seed, d, causal_reference):
    layout, causal, cands = cset
    rng = np.random.default_rng(seed)
    n = math.prod(layout)
    rows = np.sort(rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)).astype(np.int64)
    q = rng.standard_normal((rows.size, d)).astype(np.float32)
    k = rng.standard_normal((n, d)).astype(np.float32)
    v = rng.standard_normal((n, d)).astype(np.float32)
    ref_causal = causal if causal_reference else ()
    hq = head_quality(q, k, v, rows, layout, ref_causal)
    error, mass = evaluate_all(hq, cands, causal)
    assert error.shape == mass.shape == (len(cands),)
    for i, c in enumerate(cands):
        one = evaluate(hq, c.pattern(layout, causal))
        assert error[i] == pytest.approx(one.error, rel=1e-4, abs=1e-6)
        assert mass[i] == pytest.approx(one.mass, rel=1e-5, abs=1e-7)
        if not c.is_dense(layout) or causal != (ref_causal or (False,) * len(layout)):
            err, kept = brute_force(c.pattern(layout, causal), q, k, v, rows, reference_causal=ref_causal)
            assert error[i] == pytest.approx(err, rel=1e-4, abs=1e-6)
            assert mass[i] == pytest.approx(kept, rel=1e-5, abs=1e-7)
        else:
            assert (error[i], mass[i]) == (0.0, 1.0)  # the reference itself, as evaluate scores it


# --------------------------------------------------------------------------------------------
# Extra tokens (joint text tokens, sinks): every candidate keeps them; rows are layout tokens
# --------------------------------------------------------------------------------------------


def brute_force_extras(p: GNAPattern, q: np.ndarray, k: np.ndarray, v: np.ndarray, rows: np.ndarray,
                       extra: int, at: str, causal_reference: bool) -> tuple[float, float]:
    """Float64 (error, mass) of layout pattern ``p`` on a head whose calls carry ``extra`` more tokens: the layout
    rows (sequence positions ``rows``) see every extra key on top of their pattern; the reference is the dense
    layout (causal along ``p``'s causal axes when ``causal_reference``) plus every extra key."""
    n = math.prod(p.input_size)
    first, xfirst = (extra, 0) if at == "start" else (0, n)
    local = rows - first
    ref_layout = dense_mask(input_size=p.input_size, window=p.input_size,
                            causal=p.causal if causal_reference else False)[local]
    keep_layout = full_mask(p)[local]

    def sequence(layout_part: np.ndarray) -> np.ndarray:
        out = np.zeros((rows.size, n + extra), dtype=bool)
        out[:, first:first + n] = layout_part
        out[:, xfirst:xfirst + extra] = True
        return out

    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    s = np.where(sequence(ref_layout), q64 @ k64.T / math.sqrt(q.shape[1]), -np.inf)
    prob = np.exp(s - s.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    dense = prob @ v64
    masked = np.where(sequence(keep_layout), prob, 0.0)
    kept = masked.sum(axis=1)
    sparse = (masked / kept[:, None]) @ v64
    return math.sqrt(((sparse - dense) ** 2).sum() / rows.size) / v_spread(v), float(kept.mean())


@FAST
@given(candidate_sets(), st.integers(0, 2**32 - 1), st.integers(1, 9), st.booleans(), st.booleans())
def test_evaluate_all_with_extra_tokens_equals_the_loop_and_brute_force(cset, seed, extra, at_start, causal_ref):
    layout, causal, cands = cset
    causal = causal if causal_ref else (False,) * len(layout)
    at = "start" if at_start or any(causal) else "end"
    rng = np.random.default_rng(seed)
    n = math.prod(layout)
    first = extra if at == "start" else 0
    rows = first + np.sort(rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)).astype(np.int64)
    q = rng.standard_normal((rows.size, 8)).astype(np.float32)
    k = rng.standard_normal((n + extra, 8)).astype(np.float32) * 2
    v = rng.standard_normal((n + extra, 8)).astype(np.float32)
    hq = head_quality(q, k, v, rows, layout, causal, extra_tokens=extra, extra_at=at)
    error, mass = evaluate_all(hq, cands, causal)
    for i, c in enumerate(cands):
        pattern = c.pattern(layout, causal)
        one = evaluate(hq, pattern)  # the layout pattern gets the head's extra tokens
        with_extras = GNAPattern(input_size=layout, window=c.window, stride=c.stride, dilation=c.dilation,
                                 causal=causal, extra_tokens=extra, extra_at=at)
        assert evaluate(hq, with_extras) == one
        assert error[i] == pytest.approx(one.error, rel=1e-4, abs=1e-6)
        assert mass[i] == pytest.approx(one.mass, rel=1e-5, abs=1e-7)
        err, kept = brute_force_extras(pattern, q, k, v, rows, extra, at, causal_ref)
        assert error[i] == pytest.approx(err, rel=1e-4, abs=1e-6)
        assert mass[i] == pytest.approx(kept, rel=1e-5, abs=1e-7)


def test_extra_tokens_are_checked():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 4)).astype(np.float32)
    k = rng.standard_normal((10, 4)).astype(np.float32)
    with pytest.raises(ConfigError, match="k has 10 and v 10 tokens; the layout 8 with 3 extra tokens has 11"):
        head_quality(q, k, k, np.array([0, 1]), (8,), extra_tokens=3)
    with pytest.raises(ConfigError, match="sampled rows must be layout tokens: sequence positions 2 to 9"):
        head_quality(q, k, k, np.array([0, 5]), (8,), extra_tokens=2, extra_at="start")
    hq = head_quality(q, k, k, np.array([3, 5]), (8,), extra_tokens=2, extra_at="start")
    with pytest.raises(ConfigError, match="extra_tokens=1"):
        evaluate(hq, GNAPattern(input_size=8, window=2, extra_tokens=1))
