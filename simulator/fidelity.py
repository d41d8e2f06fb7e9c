"""Held-out error of a fitted profile by kernel and size band (issue 17): where the model misses, not one MAPE.

``simulate calibrate`` splits measured rows by configuration (:func:`~sparsesim.simulator.calibrate.split`)
and reports one held-out MAPE; :func:`heldout_errors` breaks the same held-out rows down by measured kernel
and token band (:data:`SIZE_BANDS`), with the signed mean error beside the absolute one (a band predicted
fast on average shows a negative mean). :func:`judge_errors` does the same on files never fitted (for
example the held-out half of a sweep split by configuration into two files, such as
``benchmarks/validation/h200_dense_fidelity_heldout.toml``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsesim.hwmodels import load_gpu
from sparsesim.hwmodels.profiles import KernelProfile
from sparsesim.simulator.calibrate import Fit, Row, load_rows, predicted_ms, split

#: Token bands: at most this many tokens (None: any more), and the band's label.
SIZE_BANDS: tuple[tuple[int | None, str], ...] = ((4096, "<=4K"), (16384, "4K-16K"), (65536, "16K-64K"),
                                                  (None, ">64K"))


def size_band(tokens: int) -> str:
    """The label of the band ``tokens`` falls in.

    Example:
        >>> size_band(4096), size_band(4097), size_band(115200)
        ('<=4K', '4K-16K', '>64K')
    """
    for limit, label in SIZE_BANDS:
        if limit is None or tokens <= limit:
            return label
    raise AssertionError("the last band has no limit")


@dataclass(frozen=True)
class BandError:
    """Prediction error (predicted / measured - 1) of the rows of one kernel and size band (``*``: all sizes)."""

    kernel: str
    size: str
    rows: int
    configs: int
    mape: float
    mean_error: float
    max_abs_error: float


def band_errors(residuals: Iterable[tuple[str, int, str, float]]) -> list[BandError]:
    """Errors by kernel and size band, then each kernel over all sizes, from ``(kernel, tokens, config_id,
    error)`` tuples; kernels in first-seen order, bands in :data:`SIZE_BANDS` order."""
    cells: dict[tuple[str, str], list[tuple[str, float]]] = {}
    kernels: list[str] = []
    for kernel, tokens, config, error in residuals:
        if kernel not in kernels:
            kernels.append(kernel)
        cells.setdefault((kernel, size_band(tokens)), []).append((config, error))
        cells.setdefault((kernel, "*"), []).append((config, error))
    out = []
    for kernel in kernels:
        for label in [b for _, b in SIZE_BANDS] + ["*"]:
            got = cells.get((kernel, label))
            if not got:
                continue
            e = np.array([x for _, x in got])
            out.append(BandError(kernel=kernel, size=label, rows=len(got), configs=len({c for c, _ in got}),
                                 mape=float(np.mean(np.abs(e))), mean_error=float(np.mean(e)),
                                 max_abs_error=float(np.max(np.abs(e)))))
    return out


def _residuals(rows: Sequence[Row], gpu_name: str, profile: KernelProfile) -> list[tuple[str, int, str, float]]:
    gpu = load_gpu(gpu_name)
    return [(r.kernel, r.tokens, r.config_id, predicted_ms(r, gpu, profile) / r.measured_ms - 1) for r in rows]


def heldout_errors(measurements: Sequence[str | Path], fit: Fit, *, holdout: float, seed: int) -> list[BandError]:
    """The held-out rows of ``fit`` (the split ``simulate calibrate`` made of ``measurements`` with ``holdout``
    and ``seed``) by kernel and size band, as the fitted profile predicts them."""
    gpu = load_gpu(fit.gpu_name)
    rows = load_rows(measurements, gpu, fit.kernels)
    _, held = split(rows, holdout, seed)
    return band_errors(_residuals(held, fit.gpu_name, fit.profile))


def judge_errors(paths: Sequence[str | Path], fit: Fit) -> list[BandError]:
    """Every usable row of ``paths`` (files never fitted) by kernel and size band, as the fitted profile
    predicts them."""
    gpu = load_gpu(fit.gpu_name)
    return band_errors(_residuals(load_rows(paths, gpu, fit.kernels), fit.gpu_name, fit.profile))


def as_records(errors: Sequence[BandError]) -> list[dict[str, object]]:
    """Plain dicts (for tables and JSON), NaN-free."""
    return [{"kernel": e.kernel, "size": e.size, "rows": e.rows, "configs": e.configs,
             "mape": e.mape if math.isfinite(e.mape) else None,
             "mean_error": e.mean_error if math.isfinite(e.mean_error) else None,
             "max_abs_error": e.max_abs_error if math.isfinite(e.max_abs_error) else None} for e in errors]


__all__ = ["BandError", "SIZE_BANDS", "as_records", "band_errors", "heldout_errors", "judge_errors", "size_band"]
