"""Tile maps: for every Q tile (a CTA), how many KV tiles it visits and how many of those are full.

A KV tile is *empty* for a Q tile (skipped) when no real query of the Q tile sees any real key
of the KV tile, *full* when every real query sees every key and the KV tile holds no padding,
and *partial* otherwise (it needs element masking). Padded queries are ignored: their rows are
computed and thrown away, which needs no mask.

Box tiles come from the schedule (:mod:`sparsesim.simulator.schedule`, dilation groups tiled
separately as the kernels run them); flat tiles (runs of row-major tokens, no permutation) from
:mod:`sparsesim.simulator.flat`; explicit block maps are tiled as given. :func:`tile_stats` turns
any tile map into the bounds of a result.

Extra tokens (docs/DESIGN.md, Extra tokens) are tiled as a run of their own, in tiles of the Q and KV
tiles' volumes (:func:`with_extra_tiles`): every layout Q tile also visits the ``ceil(E / kv volume)``
extra KV tiles, and the ``ceil(E / q volume)`` extra Q tiles visit every KV tile (under a causal axis,
as sinks: only the extra KV tiles at or before them).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sparsesim.hwmodels.launch import MIN_TILE_VOLUME, backward_tiles
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import BlockSparsePattern, GNAPattern

TILINGS = ("box", "flat")
#: Tokens of the smallest tile the kernels take.
SMALL_TILE = MIN_TILE_VOLUME


@dataclass(frozen=True)
class TileMap:
    """Per-tile visit counts of a pattern under one tiling.

    ``visited`` and ``full`` are int64 ``[heads, q_tiles]`` (one row for patterns shared by all
    heads; under dilation the Q tiles of every group, group by group); ``kv_visited`` and
    ``kv_full`` are the transposed counts ``[heads, kv_tiles]`` (Q tiles that visit each KV tile),
    which the backward pass iterates over. ``q_grid`` and ``kv_grid`` give one group's tile grid
    (box tiling) for pictures; ``dense_kv_tiles`` is what a dense pass over the undilated layout
    visits per Q tile with the same KV tile.

    With extra tokens (:func:`with_extra_tiles`) the counts also hold the ``extra_q_tiles`` Q tiles and
    ``extra_kv_tiles`` KV tiles of the extra tokens: before the layout's tiles with ``extra_at="start"``, after
    them otherwise; ``dense_kv_tiles`` then counts the extra KV tiles too.
    """

    tiling: str
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    q_grid: tuple[int, ...]
    kv_grid: tuple[int, ...]
    visited: np.ndarray
    full: np.ndarray
    kv_visited: np.ndarray
    kv_full: np.ndarray
    groups: int = 1
    dense_kv_tiles: int = 0
    extra_q_tiles: int = 0
    extra_kv_tiles: int = 0
    extra_at: str = "end"

    @property
    def num_q_tiles(self) -> int:
        return int(self.visited.shape[1])

    @property
    def layout_q(self) -> slice:
        """The columns of ``visited``/``full`` that are the layout's Q tiles (all of them without extra tokens)."""
        n = self.num_q_tiles
        return slice(self.extra_q_tiles, n) if self.extra_at == "start" else slice(0, n - self.extra_q_tiles)

    @property
    def num_kv_tiles(self) -> int:
        return int(self.kv_visited.shape[1])

    @property
    def partial(self) -> np.ndarray:
        return self.visited - self.full

    @property
    def kv_partial(self) -> np.ndarray:
        return self.kv_visited - self.kv_full


def freeze(*arrays: np.ndarray) -> list[np.ndarray]:
    """Contiguous read-only int64 copies (tile maps are immutable)."""
    out = []
    for a in arrays:
        a = np.ascontiguousarray(a, dtype=np.int64)
        a.setflags(write=False)
        out.append(a)
    return out


def next_pow2(n: int) -> int:
    """Smallest power of two >= ``n``."""
    return 1 << max(0, (int(n) - 1).bit_length())


def shrink_tile(tile: Sequence[int], lengths: Sequence[int]) -> tuple[int, ...]:
    """A default tile fitted to a layout: each entry at most its axis rounded up to a power of two,
    then the last entries doubled back until the tile holds :data:`SMALL_TILE` tokens (or its own)."""
    out = [min(int(t), next_pow2(n)) for t, n in zip(tile, lengths, strict=True)]
    target = min(SMALL_TILE, math.prod(tile))
    a = len(out) - 1
    while math.prod(out) < target:
        if out[a] < tile[a] or a == 0:
            out[a] *= 2
        else:
            a -= 1
    return tuple(out)


def check_tiles(pattern: GNAPattern, q_tile: Sequence[int], kv_tile: Sequence[int], tiling: str) -> None:
    """Raise :class:`ConfigError` unless the tile shapes suit the layout and the tiling.

    Tiles are positive integers, one per axis (box) or one in all (flat), and no entry exceeds
    its axis (the token count for flat tiles) rounded up to a power of two (a larger tile only adds
    padding), unless the whole tile holds at most :data:`SMALL_TILE` tokens, the smallest tile the
    kernels take (so a tiny layout still runs).
    """
    if tiling not in TILINGS:
        raise ConfigError(f"tiling={tiling!r}; allowed: {', '.join(TILINGS)}")
    lengths = (pattern.num_tokens,) if tiling == "flat" else pattern.input_size
    for name, tile in (("q_tile", q_tile), ("kv_tile", kv_tile)):
        if len(tile) != len(lengths):
            raise ConfigError(f"{name}={list(tile)} has {len(tile)} entries; {tiling} tiling of a rank-"
                              f"{pattern.rank} layout needs {len(lengths)}")
        for axis, (t, n) in enumerate(zip(tile, lengths, strict=True)):
            if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or t < 1:
                raise ConfigError(f"{name}={list(tile)}: every entry must be a positive integer, got {t!r}")
            if t > next_pow2(n) and math.prod(tile) > SMALL_TILE:
                where = "the layout's" if tiling == "flat" else f"axis {axis}'s"
                raise ConfigError(f"{name}={list(tile)}: {t} is larger than {where} length {n} rounded up to a "
                                  f"power of two ({next_pow2(n)}); allowed: at most {next_pow2(n)}")


def tilemap(pattern: GNAPattern, q_tile: Sequence[int], kv_tile: Sequence[int], tiling: str = "box") -> TileMap:
    """Tile map of a GNA pattern under box tiling (the schedule the kernels run) or flat tiling, its extra
    tokens' tiles included (:func:`with_extra_tiles`)."""
    from sparsesim.simulator.flat import flat_tilemap
    from sparsesim.simulator.schedule import box_schedule

    check_tiles(pattern, q_tile, kv_tile, tiling)
    layout = pattern.layout_pattern() if pattern.extra_tokens else pattern
    if tiling == "flat":
        tm = flat_tilemap(layout, int(q_tile[0]), int(kv_tile[0]))
    else:
        tm = box_schedule(layout, tuple(int(t) for t in q_tile), tuple(int(t) for t in kv_tile)).tilemap
    return with_extra_tiles(tm, pattern)


@functools.lru_cache(maxsize=256)
def backward_tilemaps(pattern: GNAPattern, q_tile: tuple[int, ...], kv_tile: tuple[int, ...]
                      ) -> tuple[tuple[TileMap, ...], tuple[TileMap, ...]]:
    """Tile maps of the GNA backward's dQ and dK/dV kernels at each tile pair their first call's pick may run
    from a forward's box tiles (:func:`sparsesim.hwmodels.launch.backward_tiles`); a pair the layout cannot take
    runs at the forward's tiles, as the kernels fall back (one schedule: the model prices what the kernels run).
    Cached: a fit prices the same rows many times."""
    dq_pairs, dkv_pairs = backward_tiles(q_tile, kv_tile)

    def maps(pairs: tuple[tuple[tuple[int, ...], ...], ...]) -> tuple[TileMap, ...]:
        out = {}
        for q, kv in pairs:
            try:
                check_tiles(pattern, q, kv, "box")
            except ConfigError:
                q, kv = q_tile, kv_tile
            if (q, kv) not in out:
                out[(q, kv)] = tilemap(pattern, q, kv, "box")
        return tuple(out.values())

    return maps(dq_pairs), maps(dkv_pairs)


def kv_tiles_unpadded(pattern: GNAPattern, kv_tile: Sequence[int], tiling: str) -> np.ndarray:
    """Per layout KV tile (in the tile map's order: dilation groups row-major, then tiles row-major), whether it
    holds no padding."""
    if tiling == "flat":
        n, t = pattern.num_tokens, int(kv_tile[0])
        return (np.arange(-(-n // t)) + 1) * t <= n
    per_axis = []
    for n, t, d in zip(pattern.input_size, kv_tile, pattern.dilation, strict=True):
        lengths = [-(-(n - g) // d) for g in range(d)]
        per_axis.append([(np.arange(-(-m // t)) + 1) * t <= m for m in lengths])
    out = []
    for group in itertools.product(*(range(d) for d in pattern.dilation)):
        flags = np.ones(1, dtype=bool)
        for axis, g in enumerate(group):
            flags = (flags[:, None] & per_axis[axis][g][None, :]).reshape(-1)
        out.append(flags)
    return np.concatenate(out)


def with_extra_tiles(tm: TileMap, pattern: GNAPattern) -> TileMap:
    """``tm`` (the layout's tile map) with the tiles of ``pattern``'s extra tokens added (``tm`` itself without).

    The ``E`` extra tokens form a run of their own, cut into Q tiles and KV tiles of the tiles' volumes. Every
    layout Q tile visits the ``ceil(E / kv volume)`` extra KV tiles (full but the padded last one); each of the
    ``ceil(E / q volume)`` extra Q tiles visits every layout KV tile (full where it holds no padding) and every
    extra KV tile. Under a causal axis the extra tokens are sinks: extra Q tiles visit no layout KV tile and the
    extra KV tiles causally (the causal schedule of one axis of ``E`` tokens).
    """
    from sparsesim.simulator.schedule import group_schedule

    e = pattern.extra_tokens
    if not e:
        return tm
    q_vol, kv_vol = math.prod(tm.q_tile), math.prod(tm.kv_tile)
    tiling = "flat" if tm.tiling == "flat" else "box"
    unpadded = kv_tiles_unpadded(pattern, tm.kv_tile, tiling)
    causal = pattern.is_causal
    ext = group_schedule(e, e, 1, causal, q_vol, kv_vol)  # extra queries x extra keys
    n_kv, n_q = tm.num_kv_tiles, tm.num_q_tiles
    rows = tm.visited.shape[0]
    eq, ek, ek_full = ext.q_tiles, ext.kv_tiles, e // kv_vol
    # Layout Q tiles: the extra KV tiles on top of their own.
    visited = tm.visited + ek
    full = tm.full + ek_full
    # Extra Q tiles: every layout KV tile (none as sinks) and the extra KV tiles of their schedule.
    x_visited = np.broadcast_to(ext.count + (0 if causal else n_kv), (rows, eq))
    x_full = np.broadcast_to(ext.full_count + (0 if causal else int(unpadded.sum())), (rows, eq))
    # Layout KV tiles are visited by the extra Q tiles (not as sinks); extra KV tiles by every layout Q tile.
    kv_visited = tm.kv_visited + (0 if causal else eq)
    kv_full = tm.kv_full + (0 if causal else eq * unpadded[None, :])
    ek_unpadded = (np.arange(ek) + 1) * kv_vol <= e
    x_kv_visited = np.broadcast_to(ext.kv_count + n_q, (rows, ek))
    x_kv_full = np.broadcast_to(ext.kv_full_count + n_q * ek_unpadded, (rows, ek))

    def join(layout: np.ndarray, extra: np.ndarray) -> np.ndarray:
        return np.concatenate([extra, layout] if pattern.extra_at == "start" else [layout, extra], axis=1)

    v, f, kv, kf = freeze(join(visited, x_visited), join(full, x_full), join(kv_visited, x_kv_visited),
                          join(kv_full, x_kv_full))
    return dataclasses.replace(tm, visited=v, full=f, kv_visited=kv, kv_full=kf, dense_kv_tiles=tm.dense_kv_tiles + ek,
                               extra_q_tiles=eq, extra_kv_tiles=ek, extra_at=pattern.extra_at)


def block_sparse_tilemap(pattern: BlockSparsePattern) -> TileMap:
    """Tile map of an explicit block map: visited blocks are full except where they hold padding."""
    bm = pattern.block_map
    n = pattern.seq_len
    k_pad = (np.arange(bm.shape[2]) + 1) * pattern.kv_tile > n
    full = bm & ~k_pad[None, None, :]
    visited, full_c, kv_visited, kv_full = freeze(bm.sum(2), full.sum(2), bm.sum(1), full.sum(1))
    return TileMap(tiling="block", q_tile=(pattern.q_tile,), kv_tile=(pattern.kv_tile,),
                   q_grid=(bm.shape[1],), kv_grid=(bm.shape[2],), visited=visited, full=full_c,
                   kv_visited=kv_visited, kv_full=kv_full, dense_kv_tiles=int(bm.shape[2]))


@dataclass(frozen=True)
class TileStats:
    """The tile-level bounds of a tile map (docs/DESIGN.md, Tiles and bounds)."""

    tile_speedup: float
    tile_speedup_mean: float
    kv_tiles_dense: float
    max_kv_tiles: int
    mean_kv_tiles: float
    partial_fraction: float
    block_sparse: bool


def tile_stats(tm: TileMap, flop_speedup: float, dense: TileMap | None = None) -> TileStats:
    """Bounds of ``tm`` against its dense baseline.

    Non-causal (``dense`` None): the dense baseline visits ``tm.dense_kv_tiles`` KV tiles from every
    Q tile and the worst Q tile bounds the sparse kernel (the GNA paper's convention; with extra tokens
    the worst layout Q tile: the extra Q tiles visit every KV tile in the sparse kernel and the dense one
    alike). Causal (``dense`` the causal dense tile map): the dense triangle is load-balanced across SMs,
    so its worst Q tile is not its cost; both sides use the mean.
    """
    visited = tm.visited
    worst = int(visited[:, tm.layout_q].max())
    mean = float(visited.mean())
    dense_tiles = float(tm.dense_kv_tiles) if dense is None else float(dense.visited.mean())
    tile_speedup = dense_tiles / (worst if dense is None else mean)
    partial = float(tm.partial.sum())
    total = float(visited.sum())
    return TileStats(
        tile_speedup=tile_speedup, tile_speedup_mean=dense_tiles / mean,
        kv_tiles_dense=dense_tiles, max_kv_tiles=worst, mean_kv_tiles=mean,
        partial_fraction=partial / total if total else 0.0,
        block_sparse=partial == 0 and bool(np.isclose(tile_speedup, flop_speedup, rtol=1e-9)),
    )


def grid_tokens(grid: Sequence[int], tile: Sequence[int]) -> int:
    """Tokens of a tile grid including padding."""
    return math.prod(g * t for g, t in zip(grid, tile, strict=True))
