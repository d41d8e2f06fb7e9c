"""search.quality against a float64 brute force built on the simulator's dense_mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsesim.search.quality import evaluate, head_quality
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


def brute_force(p: GNAPattern, q: np.ndarray, k: np.ndarray, v: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
    """(relative Frobenius error, mean kept mass) in float64 from the explicit mask rows."""
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    s = q64 @ k64.T / math.sqrt(q.shape[1])
    prob = np.exp(s - s.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    dense = prob @ v64
    m = full_mask(p)[rows]
    masked = np.where(m, prob, 0.0)
    kept = masked.sum(axis=1)
    sparse = (masked / kept[:, None]) @ v64
    return float(np.linalg.norm(sparse - dense) / np.linalg.norm(dense)), float(kept.mean())


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
    from sparsesim.simulator.patterns import GNAPattern, dense_mask

    m = dense_mask(input_size=(16,), window=4, causal=True)
    full = dense_mask(input_size=(16,), window=16, causal=True)
    s = q.astype(np.float64) @ k.astype(np.float64).T / np.sqrt(8)
    p = np.where(full, np.exp(s - s.max(1, keepdims=True)), 0.0)
    ref = (p / p.sum(1, keepdims=True)) @ v
    pm = np.where(m, p, 0.0)
    out = (pm / pm.sum(1, keepdims=True)) @ v
    want = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    got = evaluate(hq, GNAPattern(input_size=(16,), window=4, causal=True)).error
    assert got == pytest.approx(want, rel=1e-4)
