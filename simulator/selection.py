"""The selection bias of the tile pick, and the correction of the pick's reported time (issue 17).

The model predicts every candidate (Q tile, KV tile) pair of a layer and runs the one it predicts fastest
(:func:`~sparsesim.simulator.tile_choice.rank_tiles`). Each prediction carries a pair-specific error, so
among candidates predicted within that error of each other, the minimum tends to be the one the model
under-predicted most: the pick's predicted time is biased fast (the winner's curse), even when the average
pair is predicted without bias.

The correction never changes the choice; it only raises the pick's reported time by the optimism the
choice is expected to carry. With ``t_i`` the candidates' predicted times taken as their true times
(plug-in) and independent pair errors ``e_i ~ N(0, sigma^2)`` on log time, the pick is
``J = argmin_i (log t_i + e_i)`` and its expected error is

    E[e_J] = sum_i  integral e phi_sigma(e) prod_{j != i} P(e_j > log t_i - log t_j + e) de    (<= 0),

computed by quadrature on a fixed grid (no random draws: the same candidates give the same number). The
reported time is ``min_i t_i * exp(-E[e_J])``: a clear winner keeps its time, near-ties among many
candidates raise it by up to ``sigma`` times the expected minimum of that many standard normals.

``sigma`` is not the whole spread of the model's errors (:mod:`~sparsesim.simulator.bands`): errors of
similar tiles move together and do not compete. It is fitted (:func:`fit_sigma`) on the training layers
of picked-vs-measured pairs: the value whose expected optimism matches the measured optimism of the pick
(its log error minus the mean log error of the candidates it was picked from) over many candidate subsets
of those layers. ``benchmarks/selection_bias.py`` fits it from the committed measurements
(``h200_tiles_train``), checks :data:`TRITON_SIGMA` against the fit and reports the pick's error before and
after the correction on layers never fitted (``h200_tiles``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Pair-specific log-time error of the ``triton`` profile's tile predictions that competes in the pick,
#: fitted by ``benchmarks/selection_bias.py`` on the h200_tiles_train layers (H200 measurements).
TRITON_SIGMA = 0.0289
#: Quadrature grid in standard deviations (the integrand is smooth and negligible past 8).
_GRID = np.linspace(-8.0, 8.0, 321)


def selection_sigma(profile_name: str) -> float:
    """The pick's competing error of a kernel profile: :data:`TRITON_SIGMA` for our kernels' profiles
    (``triton*``), 0 (no correction: no picked-vs-measured evidence) for any other.

    Example:
        >>> selection_sigma("triton") > 0, selection_sigma("reference-hopper")
        (True, 0.0)
    """
    return TRITON_SIGMA if profile_name.startswith("triton") else 0.0


def expected_optimism(times_ms: Sequence[float], sigma: float) -> float:
    """``E[e_J]``: the expected log error of the fastest-predicted of ``times_ms`` (<= 0; 0 for one candidate
    or ``sigma = 0``).

    Example:
        >>> round(expected_optimism([1.0, 1.0], 0.1), 4)  # two tied candidates: sigma / sqrt(pi)
        -0.0564
        >>> expected_optimism([1.0, 3.0], 0.01)  # a clear winner carries no optimism
        0.0
    """
    from scipy.special import log_ndtr

    t = np.asarray(times_ms, dtype=float)
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f"times_ms must be positive and finite, got {list(times_ms)[:8]}")
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be >= 0 and finite, got {sigma}")
    if t.size == 1 or sigma == 0:
        return 0.0
    lt = np.log(t)
    d = (lt[:, None] - lt[None, :]) / sigma  # d[i, j] = (log t_i - log t_j) / sigma
    z = _GRID
    # log P(every j != i has log t_j + e_j > log t_i + sigma z) for each i and grid point: [N, G]
    logs = log_ndtr(-(d[:, :, None] + z[None, None, :]))
    n = t.size
    logs[np.arange(n), np.arange(n), :] = 0.0
    win = np.exp(logs.sum(axis=1) - 0.5 * z[None, :] ** 2)  # phi(z) up to a constant, times P(i wins | z)
    # uniform grid, negligible ends: the trapezoid rule's weights are equal and cancel in the ratio
    mass = float(win.sum())
    value = float(sigma * (win * z[None, :]).sum() / mass) if mass > 0 else 0.0
    return min(value, 0.0) if abs(value) > 1e-12 else 0.0


def corrected_pick_ms(times_ms: Sequence[float], sigma: float) -> float:
    """The reported time of the fastest-predicted candidate: its predicted time raised by the optimism of
    picking it among ``times_ms`` (:func:`expected_optimism`)."""
    return float(min(times_ms)) * math.exp(-expected_optimism(times_ms, sigma))


# --------------------------------------------------------------------------------------------------------------------
# Fitting and judging on picked-vs-measured layers


@dataclass(frozen=True)
class Layer:
    """One layer measured with several tile pairs: each pair's predicted and measured time (ms)."""

    name: str
    predicted_ms: tuple[float, ...]
    measured_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.predicted_ms) != len(self.measured_ms) or not self.predicted_ms:
            raise ValueError(f"layer {self.name!r}: {len(self.predicted_ms)} predictions for "
                             f"{len(self.measured_ms)} measurements; allowed: one each, at least one")

    @property
    def pick(self) -> int:
        """Index of the pair the model picks (fastest predicted; the first on ties)."""
        return int(np.argmin(self.predicted_ms))

    def errors(self) -> np.ndarray:
        """Predicted over measured time minus 1, per pair."""
        return np.asarray(self.predicted_ms) / np.asarray(self.measured_ms) - 1


@dataclass(frozen=True)
class PickError:
    """The pick of one layer: its error (predicted / measured - 1) before and after the correction, and the
    mean error of every pair of the layer (what an unbiased pick would carry on average)."""

    layer: str
    pairs: int
    mean_error: float
    before: float
    after: float

    @property
    def bias_before(self) -> float:
        """The pick's error minus the layer's mean pair error (negative: picked optimistically)."""
        return self.before - self.mean_error

    @property
    def bias_after(self) -> float:
        return self.after - self.mean_error


@dataclass(frozen=True)
class PickSummary:
    """Pick errors over layers: the mean selection bias and mean absolute pick error, before and after."""

    sigma: float
    picks: tuple[PickError, ...]

    @property
    def bias_before(self) -> float:
        return float(np.mean([p.bias_before for p in self.picks]))

    @property
    def bias_after(self) -> float:
        return float(np.mean([p.bias_after for p in self.picks]))

    @property
    def mae_before(self) -> float:
        return float(np.mean([abs(p.before) for p in self.picks]))

    @property
    def mae_after(self) -> float:
        return float(np.mean([abs(p.after) for p in self.picks]))


def pick_error(layer: Layer, sigma: float) -> PickError:
    """The pick of ``layer`` with and without the correction for ``sigma``."""
    i = layer.pick
    err = layer.errors()
    corrected = corrected_pick_ms(layer.predicted_ms, sigma)
    return PickError(layer=layer.name, pairs=len(layer.predicted_ms), mean_error=float(err.mean()),
                     before=float(err[i]), after=corrected / layer.measured_ms[i] - 1)


def summarize(layers: Sequence[Layer], sigma: float) -> PickSummary:
    """:func:`pick_error` of every layer."""
    return PickSummary(sigma=sigma, picks=tuple(pick_error(layer, sigma) for layer in layers))


def subsets(layers: Sequence[Layer], sizes: Sequence[int] = (4, 8, 12, 16), draws: int = 20,
            seed: int = 0) -> list[Layer]:
    """More pick events from the same measurements: ``draws`` seeded random subsets of each size (at most the
    layer's pairs; a layer with no more pairs than a size gives itself once)."""
    rng = np.random.default_rng(seed)
    out: list[Layer] = []
    for layer in layers:
        n = len(layer.predicted_ms)
        whole = False
        for k in sizes:
            if k >= n:
                if not whole:
                    out.append(layer)
                    whole = True
                continue
            for d in range(draws):
                idx = np.sort(rng.choice(n, size=k, replace=False))
                out.append(Layer(f"{layer.name}#{k}.{d}", tuple(layer.predicted_ms[i] for i in idx),
                                 tuple(layer.measured_ms[i] for i in idx)))
    return out


def log_bias(layer: Layer) -> float:
    """The pick's log error minus the mean log error of the layer's pairs (the optimism it was picked with)."""
    e = np.log(np.asarray(layer.predicted_ms) / np.asarray(layer.measured_ms))
    return float(e[layer.pick] - e.mean())


def fit_sigma(layers: Sequence[Layer], *, high: float = 0.3, tol: float = 1e-4) -> float:
    """The ``sigma`` whose expected optimism, averaged over ``layers``, equals their measured mean optimism
    (:func:`log_bias`); 0 when the picks were not optimistic on average. Bisection: the expected optimism
    grows with ``sigma``."""
    if not layers:
        raise ValueError("no layers to fit")
    target = float(np.mean([log_bias(layer) for layer in layers]))
    if target >= 0:
        return 0.0

    def gap(sigma: float) -> float:
        return float(np.mean([expected_optimism(layer.predicted_ms, sigma) for layer in layers])) - target

    lo, hi = 0.0, high
    if gap(hi) > 0:
        return hi
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


__all__ = ["Layer", "PickError", "PickSummary", "TRITON_SIGMA", "corrected_pick_ms", "expected_optimism",
           "fit_sigma", "log_bias", "pick_error", "selection_sigma", "subsets", "summarize"]
