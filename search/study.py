"""Optuna studies: per head, the patterns that trade simulated latency against measured error.

One study per (layer, head), named ``<study>:L<layer>:H<head>``, in storage given by URL (default an
embedded SQLite file): ``sqlite:///FILE`` or a server URL such as ``postgresql://user:password@host/db``,
whose driver is picked here (:func:`storage_url`). A URL's password never leaves this module in a message
or a record: :func:`redact_url` replaces it with ``***``. Two objectives, both minimized: the head's share of
its layer's simulated attention time (ms) and the relative output error on the sampled rows.

Sampler: Optuna's ``TPESampler`` (multivariate, seeded per head). It handles categorical spaces and two
objectives (MOTPE) and learns from the few trials a per-head budget allows; NSGA-II wants generations
of a population, more trials than that. Each fresh study first tries the dense pattern (error 0) and the
smallest tile-aligned window.

A finished trial is committed to the storage when it ends, so an interrupted run keeps every finished
trial, and running the same command again resumes: each head study runs only the trials it still
lacks. Worker processes (``n_jobs``, or the same command on other machines with a shared PostgreSQL URL)
share the studies; a study stops at its trial budget counted over all workers (a race can add at most
one trial per extra worker).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from sparsesim.search.latency import LatencyModel
from sparsesim.search.quality import Quality, evaluate, head_quality
from sparsesim.search.space import Candidate, Space
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.plan import redact_url


class HeadSource(Protocol):
    """What the search reads samples through (:class:`~sparsesim.search.samples.Samples`,
    :class:`~sparsesim.search.samples.SyntheticSamples`)."""

    layout: tuple[int, ...]

    @property
    def num_layers(self) -> int: ...

    def layer_heads(self, layer: int) -> int: ...

    def rows_of(self, layer: int) -> np.ndarray: ...

    def head(self, layer: int, head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class SearchSettings:
    """How to search: study name and storage, trials per head, seed, worker processes."""

    study: str
    storage: str
    trials: int
    seed: int = 0
    n_jobs: int = 1
    fingerprint: str = ""  # what the studies were made from; a different one is refused on resume


@dataclass(frozen=True)
class Point:
    """One evaluated pattern of one head."""

    candidate: Candidate
    ms: float
    error: float
    mass: float


@dataclass(frozen=True)
class SearchReport:
    """What a search run did: trials found at the start, trials run, and where the time went (s)."""

    heads: int
    found: int
    ran: int
    seconds: float
    simulator_s: float
    quality_s: float
    other_s: float  # Optuna: storage and sampler
    timings: dict[str, float] = field(default_factory=dict)


def head_study_name(study: str, layer: int, head: int) -> str:
    return f"{study}:L{layer}:H{head}"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("the search needs optuna: pip install 'sparsesim[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


#: PostgreSQL drivers SQLAlchemy takes, in order of preference: (module, URL scheme).
_PG_DRIVERS = (("psycopg2", "postgresql+psycopg2"), ("psycopg", "postgresql+psycopg"), ("pg8000", "postgresql+pg8000"))


def storage_url(url: str) -> str:
    """The URL handed to Optuna for ``--storage url``: ``postgresql://`` (and ``postgres://``) get a driver
    that is installed; a SQLite URL must name a file (or ``:memory:``). Raises a one-line error naming the
    (redacted) URL."""
    shown = redact_url(url)
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"--storage {shown!r}; allowed: sqlite:///FILE or postgresql://user@host/db")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"--storage {shown!r} is not a URL; allowed: sqlite:///FILE or postgresql://user@host/db")
    if scheme.lower() == "sqlite":
        if rest in ("", "/") or not rest.startswith("/"):
            raise ConfigError(f"--storage {shown!r} names no database file; allowed: sqlite:///FILE (relative), "
                              "sqlite:////abs/FILE or sqlite:///:memory:")
        return url
    if scheme.lower() in ("postgresql", "postgres"):
        for module, name in _PG_DRIVERS:
            if importlib.util.find_spec(module) is not None:
                return f"{name}://{rest}"
        raise ConfigError(f"--storage {shown!r} needs a PostgreSQL driver: pip install 'sparsesim[postgres]' "
                          "(psycopg2)")
    return url


def open_storage(url: str) -> Any:
    """Optuna's storage for ``url`` (see :func:`storage_url`), connected once: a bad URL, a missing driver or
    an unreachable server fails here, before any work. An SQLite file gets write-ahead logging and
    ``synchronous=NORMAL``: still safe against a killed process, and a trial commits in ~25 ms, not ~50."""
    target = storage_url(url)
    optuna = _optuna()
    try:
        storage = optuna.storages.RDBStorage(target)
    except Exception as exc:  # noqa: BLE001 - a bad URL, a missing driver, an unreachable server
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--storage {redact_url(url)!r}: {redact_url(first).replace(url, redact_url(url))}"
                          ) from None
    if target.startswith("sqlite") and ":memory:" not in target:  # (an in-memory database lives in one connection)
        from sqlalchemy import event

        def pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        event.listen(storage.engine, "connect", pragmas)
        storage.engine.dispose()  # later connections get the pragmas
    return storage


def _open(optuna: Any, settings: SearchSettings, name: str, seed: int, storage: Any = None) -> Any:
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(8, settings.trials))
    storage = storage if storage is not None else open_storage(settings.storage)
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=["minimize", "minimize"],
                                    sampler=sampler, load_if_exists=True)
    except optuna.exceptions.StorageInternalError as exc:
        first = redact_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise ConfigError(f"--storage {redact_url(settings.storage)!r}: {first}") from None
    made = study.user_attrs.get("fingerprint")
    if made is None:
        study.set_user_attr("fingerprint", settings.fingerprint)
    elif made != settings.fingerprint:
        raise ConfigError(f"study {settings.study!r} in {redact_url(settings.storage)} was made for {made}; this "
                          f"run is {settings.fingerprint}: pass another --study or --storage")
    return study


def finished_trials(storage: Any, study: str, pairs: Sequence[tuple[int, int]], trials: int) -> int:
    """Finished (complete) trials already in the storage for these heads, each head counted up to its budget."""
    optuna = _optuna()
    names = {head_study_name(study, li, h) for li, h in pairs} & set(optuna.get_all_study_names(storage))
    done = optuna.trial.TrialState.COMPLETE
    return sum(min(trials, len(storage.get_all_trials(storage.get_study_id_from_name(n), deepcopy=False,
                                                      states=(done,)))) for n in names)


def complete_count(study: Any) -> int:
    optuna = _optuna()
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


@dataclass
class _Clock:
    simulator: float = 0.0
    quality: float = 0.0


def search_head(optuna: Any, src: HeadSource, layer: int, head: int, space: Space, latency: LatencyModel,
                settings: SearchSettings, clock: _Clock, on_trial: Callable[[], None] | None = None,
                uniform: Sequence[Candidate] = (), storage: Any = None) -> int:
    """Run the trials head ``(layer, head)`` still lacks; returns how many this call ran. The errors of
    the ``uniform`` candidates (for the one-pattern baseline) are kept in the study's user attributes."""
    name = head_study_name(settings.study, layer, head)
    study = _open(optuna, settings, name, seed=settings.seed * 1_000_003 + layer * 1009 + head, storage=storage)
    done = complete_count(study)
    todo = [c for c in uniform if f"uniform {c.label()}" not in study.user_attrs]
    if done >= settings.trials and not todo:
        return 0
    if not study.get_trials(deepcopy=False):
        study.enqueue_trial(space.params_of(space.dense()))
        smallest = Candidate(tuple(w[0] for w in space.windows), tuple(min(q, w[0]) for q, w in
                                                                       zip(space.q_tile, space.windows,
                                                                           strict=True)),
                             (1,) * len(space.layout))
        study.enqueue_trial(space.params_of(smallest))
    t0 = time.perf_counter()
    q, k, v = src.head(layer, head)
    hq = head_quality(q, k, v, src.rows_of(layer), space.layout, latency.shape.causal,
                      extra_tokens=latency.shape.extra_tokens, extra_at=latency.shape.extra_at)
    seen: dict[Candidate, Quality] = {}
    for c in todo:
        seen[c] = evaluate(hq, c.pattern(space.layout, latency.shape.causal))
        study.set_user_attr(f"uniform {c.label()}", [seen[c].error, seen[c].mass])
    clock.quality += time.perf_counter() - t0
    if done >= settings.trials:
        return 0
    ran = 0

    def objective(trial: Any) -> tuple[float, float]:
        cand = space.suggest(trial)
        t1 = time.perf_counter()
        ms = latency.head_ms(cand)
        t2 = time.perf_counter()
        qual = seen.get(cand)
        if qual is None:
            qual = seen[cand] = evaluate(hq, cand.pattern(space.layout, latency.shape.causal))
        clock.simulator += t2 - t1
        clock.quality += time.perf_counter() - t2
        trial.set_user_attr("point", [list(cand.window), list(cand.stride), list(cand.dilation), qual.mass,
                                      os.getpid()])  # one attribute: one storage write
        return ms, qual.error

    def stop_at_budget(study: Any, _trial: Any) -> None:
        nonlocal ran
        ran += 1
        if on_trial is not None:
            on_trial()
        if complete_count(study) >= settings.trials:
            study.stop()

    study.optimize(objective, n_trials=settings.trials - done, callbacks=[stop_at_budget], catch=())
    return ran


def _heads(src: HeadSource, layers: Sequence[int]) -> list[tuple[int, int]]:
    return [(li, h) for li in layers for h in range(src.layer_heads(li))]


#: Called as ``progress(done, total)``: trials finished (found in the storage at the start, then run) of the
#: whole search; the CLI draws its bar from it (the engine never prints).
Progress = Callable[[int, int], None]


def run_search(src: HeadSource, layers: Sequence[int], space: Space, latency: LatencyModel,
               settings: SearchSettings, *, progress: Progress | None = None, worker: int = 0,
               uniform: Sequence[Candidate] = (), storage: Any = None) -> SearchReport:
    """Search every head of ``layers`` (in this process; see :func:`run_parallel` for workers)."""
    optuna = _optuna()
    pairs = _heads(src, layers)
    shift = (worker * len(pairs)) // max(1, settings.n_jobs)
    pairs = pairs[shift:] + pairs[:shift]  # workers start on different heads
    clock = _Clock()
    t0 = time.perf_counter()
    storage = storage if storage is not None else open_storage(settings.storage)
    found = finished_trials(storage, settings.study, pairs, settings.trials) if worker == 0 else 0
    total = len(pairs) * settings.trials
    done = found

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(min(done, total), total)

    if progress is not None:
        progress(min(done, total), total)
    ran = 0
    for li, h in pairs:
        ran += search_head(optuna, src, li, h, space, latency, settings, clock, on_trial=step, uniform=uniform,
                           storage=storage)
    seconds = time.perf_counter() - t0
    return SearchReport(heads=len(pairs), found=found, ran=ran, seconds=seconds, simulator_s=clock.simulator,
                        quality_s=clock.quality, other_s=max(0.0, seconds - clock.simulator - clock.quality))


def _worker(args: tuple[Any, ...]) -> SearchReport:
    src, layers, space, latency, settings, index, uniform = args
    return run_search(src, layers, space, latency, settings, worker=index, uniform=uniform)


def run_parallel(src: HeadSource, layers: Sequence[int], space: Space, latency: LatencyModel,
                 settings: SearchSettings, *, progress: Progress | None = None, uniform: Sequence[Candidate] = (),
                 storage: Any = None) -> SearchReport:
    """``settings.n_jobs`` worker processes share the studies through the storage; one report for all."""
    if settings.n_jobs <= 1:
        return run_search(src, layers, space, latency, settings, progress=progress, uniform=uniform,
                          storage=storage)
    if ":memory:" in settings.storage:
        raise ConfigError(f"--storage {redact_url(settings.storage)!r} lives in one process; --n-jobs needs a "
                          "file or server URL")
    t0 = time.perf_counter()
    storage = storage if storage is not None else open_storage(settings.storage)
    found = finished_trials(storage, settings.study, _heads(src, layers), settings.trials)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(settings.n_jobs) as pool:
        reports = pool.map(_worker, [(src, list(layers), space, latency, settings, i, list(uniform))
                                     for i in range(settings.n_jobs)])
    return SearchReport(heads=reports[0].heads, found=found, ran=sum(r.ran for r in reports),
                        seconds=time.perf_counter() - t0, simulator_s=sum(r.simulator_s for r in reports),
                        quality_s=sum(r.quality_s for r in reports), other_s=sum(r.other_s for r in reports))


def points(storage: Any, study: str, layer: int, head: int) -> list[Point]:
    """Every completed trial of one head, as points (loaded from the storage: a URL or storage object)."""
    optuna = _optuna()
    shown = redact_url(storage) if isinstance(storage, str) else "the storage"
    if isinstance(storage, str):
        storage = open_storage(storage)
    try:
        st = optuna.load_study(study_name=head_study_name(study, layer, head), storage=storage)
    except KeyError:
        raise ConfigError(f"no study {head_study_name(study, layer, head)!r} in {shown}; run the search "
                          "first") from None
    out = []
    for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        w, s, d, mass, _worker = t.user_attrs["point"]
        out.append(Point(Candidate(tuple(w), tuple(s), tuple(d)), float(t.values[0]), float(t.values[1]),
                         float(mass)))
    return out


def pareto(pts: Sequence[Point]) -> list[Point]:
    """The non-dominated points (lower ms and lower error), one per candidate, by ascending ms."""
    best: dict[Candidate, Point] = {p.candidate: p for p in pts}
    uniq = sorted(best.values(), key=lambda p: (p.ms, p.error))
    front: list[Point] = []
    for p in uniq:
        if not front or p.error < front[-1].error:
            front.append(p)
    return front
