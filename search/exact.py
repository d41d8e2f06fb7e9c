"""Exact per-head fronts: every candidate of the space evaluated on every head, no sampler.

Latency does not depend on the head: one table of every candidate's per-head share of a full-layer launch
(:meth:`~sparsesim.search.latency.LatencyModel.head_ms`) per (layout, GPU, tiles), shared by all heads of
all searched layers. Quality is computed per head for all candidates at once
(:func:`~sparsesim.search.quality.evaluate_all`: the dense softmax rows once, the kept sums by per-axis
contractions). A head's exact Pareto front over (ms, error) follows from the two arrays
(:func:`front_indices`). Samples with extra tokens (joint text tokens, sinks) are scored with them, every
candidate keeping them, and the latency model costs them (its :class:`~sparsesim.search.latency.LayerShape`
carries the same count). Nothing is stored: the run is deterministic, so running it again is the resume.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sparsesim.search.latency import LatencyModel
from sparsesim.search.quality import evaluate_all, head_quality
from sparsesim.search.samples import extras_of
from sparsesim.search.space import Candidate, Space
from sparsesim.search.study import HeadSource, Point, Progress, SearchReport
from sparsesim.simulator.errors import ConfigError

#: Candidates below which the latency table is computed in this process (workers cost a second or two).
PARALLEL_MIN = 512


def latency_table(latency: LatencyModel, candidates: Sequence[Candidate], workers: int | None = None) -> np.ndarray:
    """Every candidate's per-head share of a full-layer launch (ms), in the order of ``candidates``.

    ``workers``: processes that share the candidates (default: the CPUs this process may use, for tables of
    :data:`PARALLEL_MIN` candidates or more; 1: here). Each simulation is independent and deterministic, so the
    table is the same either way."""
    cands = list(candidates)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = workers if len(cands) >= PARALLEL_MIN else 1
    workers = max(1, min(int(workers), len(cands)))
    if workers == 1:
        return np.array([latency.head_ms(c) for c in cands], dtype=np.float64)
    import multiprocessing

    chunks = [cands[i::workers] for i in range(workers)]  # interleaved: similar costs per worker
    # fork: the workers inherit the model and re-import nothing (spawn would rerun a caller's unguarded script)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_head_ms, [(latency, chunk) for chunk in chunks])
    out = np.empty(len(cands), dtype=np.float64)
    for i, part in enumerate(parts):
        out[i::workers] = part
    return out


def _head_ms(job: tuple[LatencyModel, list[Candidate]]) -> list[float]:
    latency, cands = job
    return [latency.head_ms(c) for c in cands]


def front_indices(ms: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (lower ms and lower error), one per value, by ascending ms: what
    :func:`~sparsesim.search.study.pareto` keeps of the same points (ties go to the earlier index)."""
    order = np.lexsort((error, ms))  # by ms, then error; stable: equal values keep their input order
    keep = []
    best = np.inf
    for i in order:
        if error[i] < best:
            keep.append(i)
            best = error[i]
    return np.array(keep, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class ExactFronts:
    """Every candidate's latency, and its error and mass on every searched head."""

    candidates: tuple[Candidate, ...]
    ms: np.ndarray  # (candidates,)
    error: np.ndarray  # (layers, heads, candidates)
    mass: np.ndarray  # (layers, heads, candidates)
    report: SearchReport
    index: dict[Candidate, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.index.update({c: i for i, c in enumerate(self.candidates)})

    def point(self, layer: int, head: int, i: int) -> Point:
        return Point(self.candidates[i], float(self.ms[i]), float(self.error[layer, head, i]),
                     float(self.mass[layer, head, i]))

    def points(self, layer: int, head: int) -> list[Point]:
        """Every candidate on head ``(layer, head)`` (``layer``: index among the searched layers)."""
        return [self.point(layer, head, i) for i in range(len(self.candidates))]

    def front(self, layer: int, head: int) -> list[Point]:
        """The head's exact Pareto front, by ascending ms."""
        return [self.point(layer, head, int(i)) for i in front_indices(self.ms, self.error[layer, head])]


def run_exhaustive(src: HeadSource, layers: Sequence[int], space: Space, latency: LatencyModel, *,
                   extra: Sequence[Candidate] = (), progress: Progress | None = None) -> ExactFronts:
    """Evaluate every candidate of ``space`` (and ``extra``, e.g. the uniform baselines' patterns) on every
    head of the sample layers ``layers``; ``progress(done, total)`` is called per head."""
    t0 = time.perf_counter()
    cands = tuple(dict.fromkeys([*space.all_candidates(), *extra]))
    ms = latency_table(latency, cands)
    simulator_s = time.perf_counter() - t0
    causal = latency.shape.causal
    extra_tokens, extra_at = extras_of(src)
    if (extra_tokens, extra_at) != (latency.shape.extra_tokens, latency.shape.extra_at) and extra_tokens:
        raise ConfigError(f"the samples carry {extra_tokens} extra tokens ({extra_at}); the latency model "
                          f"{latency.shape.extra_tokens} ({latency.shape.extra_at}): they must be the same")
    pairs = [(li, h) for li in layers for h in range(src.layer_heads(li))]
    heads = max((src.layer_heads(li) for li in layers), default=0)
    error = np.full((len(layers), heads, len(cands)), np.nan)
    mass = np.full((len(layers), heads, len(cands)), np.nan)
    if progress is not None:
        progress(0, len(pairs))
    t1 = time.perf_counter()
    for n, (li, h) in enumerate(pairs, 1):
        q, k, v = src.head(li, h)
        hq = head_quality(q, k, v, src.rows_of(li), space.layout, causal, extra_tokens=extra_tokens,
                          extra_at=extra_at)
        row = list(layers).index(li)
        error[row, h], mass[row, h] = evaluate_all(hq, cands, causal)
        if progress is not None:
            progress(n, len(pairs))
    quality_s = time.perf_counter() - t1
    seconds = time.perf_counter() - t0
    report = SearchReport(heads=len(pairs), found=0, ran=len(pairs) * len(cands), seconds=seconds,
                          simulator_s=simulator_s, quality_s=quality_s,
                          other_s=max(0.0, seconds - simulator_s - quality_s))
    return ExactFronts(candidates=cands, ms=ms, error=error, mass=mass, report=report)
