"""One configuration in, one typed result out; many configurations in, a DataFrame out."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsesim.hwmodels import GPU, load_gpu
from sparsesim.hwmodels.profiles import KernelProfile, load_profile
from sparsesim.simulator.bands import load_bands, speedup_band, weakest
from sparsesim.simulator.config import SimConfig, as_config
from sparsesim.simulator.cost import PassTime, Problem
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.feasibility import kernel_problem
from sparsesim.simulator.patterns import BlockSparsePattern, GNAPattern, layout_tuple, load_block_map
from sparsesim.simulator.predict import Prediction, dense_pass, predict
from sparsesim.simulator.route import forward_profile
from sparsesim.simulator.tiling import (
    TileMap,
    TileStats,
    block_sparse_tilemap,
    check_tiles,
    shrink_tile,
    tile_stats,
    tilemap,
)

if TYPE_CHECKING:
    import pandas as pd

Shape = tuple[int, ...]


@dataclass(frozen=True)
class PatternColumns:
    """The configuration of a result: GPU, pattern (``None`` for block maps), tiles and FLOP-wise bound."""

    gpu: str
    input_size: Shape
    window: Shape | None
    stride: Shape | None
    dilation: Shape | None
    causal: tuple[bool, ...] | None
    q_tile: Shape
    kv_tile: Shape
    tiling: str
    density: float
    flop_speedup: float


@dataclass(frozen=True)
class ProblemColumns:
    """Whether our kernels run the tiles (and why not), and the problem sizes around the pattern."""

    feasible: bool
    infeasible_because: str
    heads: int
    heads_kv: int
    head_dim: int
    batch: int
    dtype: str
    backprop: bool


@dataclass(frozen=True)
class SimResult(Prediction, ProblemColumns, TileStats, PatternColumns):
    """Everything :func:`simulate` says about one configuration, in column order: the pattern
    (:class:`PatternColumns`), its tile-level bounds (:class:`~sparsesim.simulator.tiling.TileStats`),
    the problem (:class:`ProblemColumns`) and the cost model's prediction
    (:class:`~sparsesim.simulator.predict.Prediction`); docs/DESIGN.md, Tiles and bounds; README, columns.

    ``feasible`` says whether sparsesim's Triton kernels run these tiles at this head dim and dtype
    on this GPU (``infeasible_because`` says why not). ``pattern``, ``tilemap`` and ``problem`` are the
    objects the record came from (not columns; :meth:`to_dict` leaves them out).
    """

    pattern: GNAPattern | BlockSparsePattern = field(repr=False, compare=False)
    tilemap: TileMap = field(repr=False, compare=False)
    problem: Problem = field(repr=False, compare=False)
    #: ``dense`` or ``near-dense`` where the pattern keeps every key or most of them (:func:`dense_note`):
    #: then ``predicted_speedup`` mostly compares the modelled kernel with the dense baseline's; empty otherwise.
    note: str = ""
    #: The error band (:mod:`~sparsesim.simulator.bands`): where measured time fell for 90% of the profile's
    #: out-of-sample rows of this kernel and size, scaled to ``predicted_ms``, and the speedup's band from the
    #: kernel's and the dense baseline's; ``band_evidence`` the weaker of their evidence (``heldout``: the H200
    #: calibration split, ``published``: published figures, ``none``: a default +-35% band, not measured).
    predicted_ms_low: float = float("nan")
    predicted_ms_high: float = float("nan")
    predicted_speedup_low: float = float("nan")
    predicted_speedup_high: float = float("nan")
    band_evidence: str = ""

    @property
    def visits(self) -> np.ndarray:
        """Visited KV tiles per Q tile (for pictures)."""
        return self.tilemap.visited

    @property
    def full_visits(self) -> np.ndarray:
        """Fully visible (unmasked) KV tiles per Q tile."""
        return self.tilemap.full

    @property
    def q_grid(self) -> Shape:
        """The Q tile grid's shape."""
        return self.tilemap.q_grid

    def to_dict(self) -> dict[str, Any]:
        """The record as a dict of its columns (the pattern, tile map and problem objects left out)."""
        return {name: getattr(self, name) for name in COLUMNS}


#: Fields holding the objects a result came from; not columns.
SOURCE_KEYS = ("pattern", "tilemap", "problem")
#: Every column of a result, in order.
COLUMNS = [f.name for f in dataclasses.fields(SimResult) if f.name not in SOURCE_KEYS]
#: The tile-level columns (no cost model).
TILE_COLUMNS = COLUMNS[:COLUMNS.index("infeasible_because") + 1]


#: Below this FLOP-wise bound (the pattern keeps more than half the keys) a result is noted ``near-dense``.
NEAR_DENSE_FLOP_SPEEDUP = 2.0


def dense_note(flop_speedup: float) -> str:
    """``dense`` (every key kept), ``near-dense`` (a FLOP-wise bound under :data:`NEAR_DENSE_FLOP_SPEEDUP`) or ``""``.

    Example:
        >>> dense_note(1.0), dense_note(1.5), dense_note(4.0)
        ('dense', 'near-dense', '')
    """
    if flop_speedup <= 1.0 + 1e-9:
        return "dense"
    return "near-dense" if flop_speedup < NEAR_DENSE_FLOP_SPEEDUP else ""


def _tile_tuple(value: Any, name: str) -> Shape | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return (int(value),)
    if isinstance(value, (str, bytes, float, np.floating)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{name}={value!r}: allowed: an integer or a list of integers, one per axis")
    return tuple(value)


def resolve_tiles(gpu: GPU, lengths: Sequence[int], q_tile: Any, kv_tile: Any) -> tuple[Shape, Shape]:
    """The tiles to use: the given ones, or the GPU's default fused-kernel tiles for this rank.

    A lone ``q_tile`` also sets ``kv_tile`` and a lone ``kv_tile`` also sets ``q_tile``. Default tiles
    shrink to short axes (:func:`~sparsesim.simulator.tiling.shrink_tile`; ``lengths``: the axis
    lengths of box tiles, or the token count alone for flat tiles).
    """
    q, kv = _tile_tuple(q_tile, "q_tile"), _tile_tuple(kv_tile, "kv_tile")
    if q is None and kv is None:
        dq, dkv = gpu.tiles_for(len(lengths))
        return shrink_tile(dq, lengths), shrink_tile(dkv, lengths)
    q = q if q is not None else kv
    kv = kv if kv is not None else q
    assert q is not None and kv is not None
    return q, kv


def _int_arg(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name}={value!r}; allowed: a positive integer")
    return int(value)


@dataclass
class _Cache:
    """What a batch of simulations shares: GPUs, profiles and dense baselines, each built once."""

    gpus: dict[Any, GPU] = field(default_factory=dict)
    profiles: dict[Any, KernelProfile] = field(default_factory=dict)
    dense: dict[Any, Any] = field(default_factory=dict)

    def gpu(self, name: Any) -> GPU:
        key = name if isinstance(name, str) else id(name)
        if key not in self.gpus:
            self.gpus[key] = load_gpu(name)
        return self.gpus[key]

    def profile(self, name: Any, gpu: GPU) -> KernelProfile:
        key = (name if isinstance(name, str) else id(name), id(gpu))
        if key not in self.profiles:
            self.profiles[key] = load_profile(name, gpu)
        return self.profiles[key]

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self.dense:
            self.dense[key] = build()
        return self.dense[key]


def simulate(config: SimConfig | None = None, /, **settings: Any) -> SimResult:
    """Simulate one configuration: a :class:`~sparsesim.simulator.config.SimConfig`, or its fields as
    keywords (the CLI flags with underscores; defaults in ``SimConfig``).

    The record holds the tile-level bounds and the cost model's prediction on ``gpu`` with
    ``kernel_profile`` (``reference``: the best published kernel of the GPU's architecture), and the
    pattern, tile map and problem it came from.

    Example:
        >>> r = simulate(input_size=(256, 256), window=(80, 80), stride=(16, 16),
        ...              q_tile=(16, 16), kv_tile=(16, 8))
        >>> round(r.tile_speedup, 2), r.block_sparse
        (10.24, True)
    """
    if config is not None and settings:
        raise ConfigError("give a SimConfig or keyword settings, not both")
    return _simulate(config if config is not None else SimConfig.from_mapping(settings), _Cache())


def _simulate(c: SimConfig, cache: _Cache) -> SimResult:
    gpu = cache.gpu(c.gpu)
    backprop = bool(c.backprop)
    problem = Problem(batch=c.batch, heads=c.heads, heads_kv=c.heads_kv, head_dim=c.head_dim, dtype=c.dtype)
    prof = cache.profile(c.kernel_profile, gpu)
    dense_prof = cache.profile(c.dense_profile, gpu)
    if c.block_map is not None:
        return _block_sparse(c, gpu, prof, dense_prof, problem, backprop, cache)
    unset = {k: () if getattr(c, k) is None else getattr(c, k) for k in ("stride", "dilation", "causal")}
    pattern = GNAPattern(input_size=c.input_size, window=c.window, extra_tokens=c.extra_tokens, extra_at=c.extra_at,
                         **unset)
    tiling = c.tiling
    lengths = (pattern.num_tokens,) if tiling == "flat" else pattern.input_size
    q, kv = resolve_tiles(gpu, lengths, c.q_tile, c.kv_tile)
    check_tiles(pattern, q, kv, tiling)
    tm = tilemap(pattern, q, kv, tiling)
    dense_pattern = pattern.dense()
    dense_pairs = float(dense_pattern.visible_pairs())
    pairs = pattern.visible_pairs()
    flop_speedup = dense_pairs / pairs
    dense_tm = None
    if pattern.is_causal:
        dense_tm = cache.get(("dense-tilemap", dense_pattern, q, kv, tiling),
                             lambda: tilemap(dense_pattern, q, kv, tiling))
    stats = tile_stats(tm, flop_speedup, dense_tm)
    causal_key = (dense_pattern, q, kv, tiling) if pattern.is_causal else None
    tokens = pattern.seq_tokens  # the call's sequence: the layout's tokens and the extra ones
    dense = cache.get(("dense", id(gpu), id(dense_prof), problem, tokens, causal_key, backprop),
                      lambda: dense_pass(gpu, dense_prof, problem, pattern, tokens, tm, backprop))
    pred = predict(gpu=gpu, prof=prof, dense_prof=dense_prof, problem=problem, tm=tm, tokens=tokens,
                   pairs_per_head=float(pairs), dense_pairs_per_head=dense_pairs, dense=dense, backprop=backprop,
                   pattern=pattern)
    return _record(gpu, problem, backprop, pattern, tm, stats, pred, q, kv, tiling,
                   _bands(c, gpu, prof, _dense_forward(gpu, dense_prof, problem, tokens, pattern.is_causal, backprop),
                          "gna", tokens, pred), input_size=pattern.input_size,
                   window=pattern.window, stride=pattern.stride,
                   dilation=pattern.dilation, causal=pattern.causal, density=pattern.density(),
                   flop_speedup=flop_speedup)


def _builtin(name: Any) -> bool:
    """Whether a profile setting names a built-in profile (not a file or an object), whose bands apply."""
    return isinstance(name, str) and not (name.endswith(".toml") or "/" in name)


def _dense_forward(gpu: GPU, dense_prof: KernelProfile, problem: Problem, tokens: int, causal: bool,
                   backprop: bool) -> KernelProfile:
    """The profile whose band the dense baseline carries: the one pricing its forward (a non-causal forward-only
    call our kernels run on the warp-specialized forward: :func:`~sparsesim.simulator.route.forward_profile`)."""
    if causal or backprop:
        return dense_prof
    return forward_profile(gpu, dense_prof, problem, None, tokens)


def _bands(c: SimConfig, gpu: GPU, prof: KernelProfile, dense_prof: KernelProfile, kernel: str, tokens: int,
           pred: Prediction) -> dict[str, Any]:
    """The band columns of a prediction (:mod:`~sparsesim.simulator.bands`; computed once, never refitted)."""
    table = load_bands()
    # a forward priced by the profile's ws_profile (simulator/route.py) carries that profile's band
    name = pred.kernel_profile if not c.backprop else prof.name
    sparse = table.band(name, gpu.name, kernel, tokens, builtin=_builtin(c.kernel_profile))
    dense = table.band(dense_prof.name, gpu.name, "dense", tokens, builtin=_builtin(c.dense_profile))
    low, high = speedup_band(pred.predicted_speedup, sparse, dense)
    return {"predicted_ms_low": pred.predicted_ms * sparse.low, "predicted_ms_high": pred.predicted_ms * sparse.high,
            "predicted_speedup_low": low, "predicted_speedup_high": high,
            "band_evidence": weakest([sparse.evidence, dense.evidence])}


def _record(gpu: GPU, problem: Problem, backprop: bool, pattern: GNAPattern | BlockSparsePattern, tm: TileMap,
            stats: Any, pred: Prediction, q: Shape, kv: Shape, tiling: str, bands: dict[str, Any],
            **pattern_fields: Any) -> SimResult:
    why = kernel_problem(q_tile=q, kv_tile=kv, head_dim=problem.head_dim, dtype=problem.dtype, gpu=gpu)
    return SimResult(
        gpu=gpu.name, q_tile=q, kv_tile=kv, tiling=tiling, **pattern_fields, **dataclasses.asdict(stats),
        feasible=not why, infeasible_because=why, heads=problem.heads, heads_kv=int(problem.heads_kv or problem.heads),
        head_dim=problem.head_dim, batch=problem.batch, dtype=problem.dtype, backprop=backprop,
        **dataclasses.asdict(pred), pattern=pattern, tilemap=tm, problem=problem,
        note=dense_note(pattern_fields["flop_speedup"]), **bands)


def _block_sparse(c: SimConfig, gpu: GPU, prof: KernelProfile, dense_prof: KernelProfile, problem: Problem,
                  backprop: bool, cache: _Cache) -> SimResult:
    size = layout_tuple(c.input_size)
    if len(size) != 1:
        raise ConfigError(f"input_size={list(size)}: a block map takes one sequence length")
    q, kv = resolve_tiles(gpu, size, c.q_tile, c.kv_tile)
    if len(q) != 1 or len(kv) != 1:
        raise ConfigError(f"q_tile={list(q)}, kv_tile={list(kv)}: a block map takes one tile size each")
    q = (_int_arg(q[0], "q_tile"),)
    kv = (_int_arg(kv[0], "kv_tile"),)
    bm = c.block_map
    bm = load_block_map(bm) if isinstance(bm, (str, Path)) else bm
    pattern = BlockSparsePattern(block_map=bm, seq_len=size[0], q_tile=q[0], kv_tile=kv[0])
    if pattern.heads not in (1, problem.heads):
        raise ConfigError(f"the block map has {pattern.heads} heads but heads={problem.heads}; allowed: a map "
                          f"shared by all heads ([q_blocks, kv_blocks]) or one per head (pass --heads {pattern.heads})")
    tm = block_sparse_tilemap(pattern)
    density = pattern.density()
    flop_speedup = 1.0 / density
    stats = tile_stats(tm, flop_speedup)
    n = pattern.seq_len
    dense: PassTime = cache.get(("dense", id(gpu), id(dense_prof), problem, n, None, backprop),
                                lambda: dense_pass(gpu, dense_prof, problem, None, n, tm, backprop))
    pred = predict(gpu=gpu, prof=prof, dense_prof=dense_prof, problem=problem, tm=tm, tokens=n,
                   pairs_per_head=pattern.visible_pairs() / pattern.heads, dense_pairs_per_head=float(n) ** 2,
                   dense=dense, backprop=backprop)
    return _record(gpu, problem, backprop, pattern, tm, stats, pred, q, kv, "block",
                   _bands(c, gpu, prof, _dense_forward(gpu, dense_prof, problem, n, False, backprop), "block_sparse",
                          n, pred), input_size=size, window=None,
                   stride=None, dilation=None, causal=None, density=density, flop_speedup=flop_speedup)


@dataclass
class Simulator:
    """Repeated :func:`simulate` calls that share GPUs, profiles and dense baselines (each built once),
    e.g. a search asking for thousands of patterns of one layer.

    Example:
        >>> sim = Simulator()
        >>> sim.simulate(input_size=(64, 64), window=(16, 16)).tile_speedup > 1
        True
    """

    _cache: _Cache = field(default_factory=_Cache, repr=False)

    def simulate(self, config: SimConfig | None = None, /, **settings: Any) -> SimResult:
        """One configuration (as for :func:`simulate`)."""
        if config is not None and settings:
            raise ConfigError("give a SimConfig or keyword settings, not both")
        return _simulate(config if config is not None else SimConfig.from_mapping(settings), self._cache)


def simulate_records(configs: Iterable[SimConfig | Mapping[str, Any]], *,
                     progress: Callable[[int], None] | None = None) -> list[SimResult]:
    """Simulate many configurations (``SimConfig`` records or dicts of their fields) into typed results.

    GPUs, kernel profiles and dense baselines are built once for the whole batch.
    """
    cache = _Cache()
    out = []
    for i, cfg in enumerate(configs):
        out.append(_simulate(as_config(cfg), cache))
        if progress is not None:
            progress(i + 1)
    return out


def simulate_many(configs: Iterable[SimConfig | Mapping[str, Any]], *,
                  progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """:func:`simulate_records` as a DataFrame, one row per configuration (the columns of :data:`COLUMNS`)."""
    import pandas as pd

    rows = [r.to_dict() for r in simulate_records(configs, progress=progress)]
    return pd.DataFrame.from_records(rows, columns=COLUMNS)


__all__ = ["COLUMNS", "SimConfig", "SimResult", "Simulator", "TILE_COLUMNS", "resolve_tiles", "simulate",
           "simulate_many", "simulate_records"]
