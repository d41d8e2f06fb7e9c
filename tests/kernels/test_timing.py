"""``kernels.timing.bench_ms``: small calls benched several times, their median kept (do_bench replaced here)."""

from __future__ import annotations

import pytest
import triton.testing

from sparsesim.kernels import timing


@pytest.mark.parametrize(("est", "runs"), [(0.03, timing.SMALL_CALL_RUNS), (0.49, timing.SMALL_CALL_RUNS),
                                           (0.5, 1), (80.0, 1)])
def test_small_calls_keep_the_median_of_several_runs(monkeypatch, est, runs):
    results = iter([0.060, 0.035, 0.036, 9.9])  # a whole run came out slow, as on the H200 (warmup_bench.py)
    calls = []

    def fake(fn, warmup, rep, return_mode):
        calls.append((warmup, rep, return_mode))
        return next(results)

    monkeypatch.setattr(triton.testing, "do_bench", fake)
    got = timing.bench_ms(lambda: None, est)
    assert len(calls) == runs and got == (0.036 if runs == 3 else 0.060)
    assert all(c == (max(25, est), max(100, 3 * est), "median") for c in calls)
