"""The selection-bias correction of the tile pick (simulator/selection.py) and its use in rank_tiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparsesim.simulator import selection
from sparsesim.simulator.patterns import GNAPattern
from sparsesim.simulator.selection import (
    Layer,
    corrected_pick_ms,
    expected_optimism,
    fit_sigma,
    log_bias,
    selection_sigma,
    subsets,
    summarize,
)
from sparsesim.simulator.tile_choice import rank_tiles


def _mc_pick_error(times: list[float], sigma: float, draws: int = 400_000, seed: int = 1) -> float:
    """Monte Carlo of the pick's log error: noisy predictions, argmin, the noise it carries."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((draws, len(times))) * sigma
    j = (np.log(times) + e).argmin(axis=1)
    return float(e[np.arange(draws), j].mean())


@pytest.mark.parametrize("times", [[1.0] * 5, [1.0, 1.01, 1.03, 1.2, 2.0], [2.0, 2.1] + [2.05] * 10])
def test_optimism_matches_monte_carlo(times: list[float]) -> None:
    sigma = 0.04
    assert expected_optimism(times, sigma) == pytest.approx(_mc_pick_error(times, sigma), abs=4e-4)


def test_two_tied_candidates_closed_form() -> None:
    # E[min(X1, X2)] of two standard normals is -1/sqrt(pi)
    assert expected_optimism([3.0, 3.0], 0.05) == pytest.approx(-0.05 / math.sqrt(math.pi), rel=1e-6)


def test_no_optimism_without_competition() -> None:
    assert expected_optimism([1.0], 0.1) == 0.0
    assert expected_optimism([1.0, 1.0, 1.0], 0.0) == 0.0
    assert expected_optimism([1.0, 5.0, 9.0], 0.02) == pytest.approx(0.0, abs=1e-9)


def test_optimism_grows_with_ties_and_sigma() -> None:
    few, many = expected_optimism([1.0] * 2, 0.03), expected_optimism([1.0] * 16, 0.03)
    assert many < few < 0
    assert expected_optimism([1.0, 1.05, 1.1], 0.06) < expected_optimism([1.0, 1.05, 1.1], 0.02) < 0


def test_corrected_pick_raises_only_the_minimum() -> None:
    times = [4.0, 4.1, 4.05, 6.0]
    got = corrected_pick_ms(times, 0.05)
    assert got > 4.0
    assert got == pytest.approx(4.0 * math.exp(-expected_optimism(times, 0.05)))
    assert corrected_pick_ms(times, 0.0) == 4.0
    assert corrected_pick_ms(list(reversed(times)), 0.05) == pytest.approx(got)


@pytest.mark.parametrize("bad", [[], [1.0, -1.0], [1.0, float("nan")]])
def test_bad_times_refused(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        expected_optimism(bad, 0.1)


def test_bad_sigma_refused() -> None:
    with pytest.raises(ValueError):
        expected_optimism([1.0, 2.0], -0.1)


def test_layer_checks_lengths() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1 measurements"):
        Layer("x", (1.0, 2.0), (1.0,))


def _synthetic(sigma: float, layers: int = 150, pairs: int = 12, seed: int = 0) -> list[Layer]:
    """Layers whose candidates' true times are close, predicted with independent log-normal errors."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(layers):
        true = 1.0 + rng.uniform(0.0, 0.05, pairs)
        pred = true * np.exp(rng.standard_normal(pairs) * sigma)
        out.append(Layer(f"l{i}", tuple(pred.tolist()), tuple(true.tolist())))
    return out


def test_correction_reduces_the_bias_of_noisy_picks() -> None:
    layers = _synthetic(0.05)
    before = summarize(layers, 0.0)
    after = summarize(layers, 0.05)
    assert before.bias_before < -0.03  # the winner's curse is there
    assert abs(after.bias_after) < 0.5 * abs(before.bias_before)
    assert after.mae_after < before.mae_before


def test_fit_sigma_finds_the_noise() -> None:
    fitted = fit_sigma(_synthetic(0.05))
    assert 0.03 < fitted < 0.08
    assert fit_sigma(_synthetic(0.02)) < fitted


def test_fit_sigma_is_zero_for_pessimistic_picks() -> None:
    # the fastest-predicted pair is measured faster than predicted by more than the others: no optimism
    layer = Layer("p", (1.0, 1.2, 1.4), (0.8, 1.2, 1.4))
    assert log_bias(layer) > 0
    assert fit_sigma([layer]) == 0.0


def test_subsets_are_seeded_and_sized() -> None:
    layer = Layer("l", tuple(1.0 + 0.01 * i for i in range(10)), tuple(1.0 for _ in range(10)))
    a, b = subsets([layer], sizes=(4, 8, 16), draws=3, seed=5), subsets([layer], sizes=(4, 8, 16), draws=3, seed=5)
    assert a == b
    assert [len(x.predicted_ms) for x in a] == [4, 4, 4, 8, 8, 8, 10]


def test_selection_sigma_by_profile() -> None:
    assert selection_sigma("triton") == selection.TRITON_SIGMA > 0
    assert selection_sigma("cudnn-hopper") == 0.0


PATTERN = GNAPattern(input_size=(16, 32, 48), window=(8, 16, 16))


def test_rank_tiles_keeps_the_choice_and_corrects_the_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    ranked = rank_tiles(PATTERN, gpu="H200", top=4)
    monkeypatch.setattr(selection, "TRITON_SIGMA", 0.0)
    plain = rank_tiles(PATTERN, gpu="H200", top=4)
    assert [(c.q_tile, c.kv_tile, c.call_ms) for c in ranked] == [(c.q_tile, c.kv_tile, c.call_ms) for c in plain]
    assert ranked[0].call_ms is not None and ranked[0].pick_ms is not None
    assert ranked[0].pick_ms > ranked[0].call_ms
    assert plain[0].pick_ms == pytest.approx(plain[0].call_ms)
    assert all(c.pick_ms is None for c in ranked[1:])


def test_rank_tiles_no_correction_without_evidence() -> None:
    best = rank_tiles(PATTERN, gpu="H200", kernel_profile="reference", top=1)[0]
    assert best.pick_ms == pytest.approx(best.call_ms)


def test_class_candidates_one_pair_per_tile_class_best_first():
    # What a small layer's first GPU call times: per (Q, KV) volume class the model's best pair, ordered by the
    # model's time; every pair runs in our kernels (can_run) and the 32-token KV class is among them.
    from sparsesim.simulator import GNAPattern, can_run
    from sparsesim.simulator.engine import simulate
    from sparsesim.simulator.tile_choice import PICK_KV_VOLUMES, PICK_Q_VOLUMES, class_candidates, rank_tiles

    pattern = GNAPattern(input_size=(32, 32), window=(8, 8))
    pairs = class_candidates(pattern, "H200", 24, 24, 128, 1, "bf16")
    classes = [(int(np.prod(q)), int(np.prod(kv))) for q, kv in pairs]
    assert len(set(classes)) == len(classes) == len(PICK_Q_VOLUMES) * len(PICK_KV_VOLUMES)
    assert any(kv == 32 for _, kv in classes)
    times = [simulate(input_size=(32, 32), window=(8, 8), q_tile=q, kv_tile=kv, gpu="H200", heads=24, head_dim=128,
                      dtype="bf16", kernel_profile="triton").call_ms
             for q, kv in pairs]
    assert times == sorted(times)
    for (q, kv), (qv, kvv) in zip(pairs, classes, strict=True):
        assert can_run(q_tile=q, kv_tile=kv, head_dim=128, dtype="bf16", gpu="H200")
        others = rank_tiles(pattern, gpu="H200", heads=24, top=50, q_volumes=(qv,), kv_volumes=(kvv,))
        assert all(o.call_ms >= times[classes.index((qv, kvv))] - 1e-12 for o in others)
