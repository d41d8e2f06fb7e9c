"""Tile maps: for every Q tile, how many KV tiles it visits and how many of those are full.

A KV tile is *empty* for a Q tile (skipped) when no real query of the Q tile sees any real key
of the KV tile, *full* when every real query sees every key and the KV tile holds no padding,
and *partial* otherwise (it needs element masking). Padded queries are ignored: their rows are
computed and thrown away, which needs no mask.

Box tiles factorize over axes (full iff full on every axis, empty iff empty on some axis), so
box tiling works per axis and never builds an ``N x N`` mask. Flat tiles (runs of row-major
tokens) are split into at most ``2 * rank - 1`` boxes each and classified box pair by box pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import BlockSparsePattern, GNAPattern, group_bounds

TILINGS = ("box", "flat")

# Box pairs classified per chunk in flat tiling (bounds the memory of the pair matrices).
_PAIR_CHUNK = 1 << 22


@dataclass(frozen=True)
class TileMap:
    """Per-tile visit counts of a pattern under one tiling.

    ``visited`` and ``full`` are int64 ``[heads, q_tiles]`` (one row for patterns shared by all
    heads); ``kv_visited`` and ``kv_full`` are the transposed counts ``[heads, kv_tiles]`` (Q
    tiles that visit each KV tile), which the backward pass iterates over. ``q_grid`` and
    ``kv_grid`` give the tile grid's shape (box tiling) for pictures.
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

    @property
    def num_q_tiles(self) -> int:
        return int(self.visited.shape[1])

    @property
    def num_kv_tiles(self) -> int:
        return int(self.kv_visited.shape[1])

    @property
    def partial(self) -> np.ndarray:
        return self.visited - self.full

    @property
    def kv_partial(self) -> np.ndarray:
        return self.kv_visited - self.kv_full


def _freeze(*arrays: np.ndarray) -> list[np.ndarray]:
    out = []
    for a in arrays:
        a = np.ascontiguousarray(a, dtype=np.int64)
        a.setflags(write=False)
        out.append(a)
    return out


class AxisRule:
    """The visibility rule of one axis, evaluated on intervals of positions.

    ``classify(qa, qb, ka, kb)`` answers, for query interval ``[qa, qb]`` and key interval
    ``[ka, kb]`` (inclusive, broadcastable arrays), whether *some* pair is visible and whether
    *every* pair is. It relies on ``lo``/``hi`` being non-decreasing with ``lo[i] <= i <= hi[i]``
    within each dilation group, so the keys seen by an interval of queries form one interval.
    """

    def __init__(self, length: int, window: int, stride: int, dilation: int, causal: bool) -> None:
        self.length = length
        self.dilation = dilation
        self.groups = [group_bounds(len(range(g, length, dilation)), window, stride, causal)
                       for g in range(dilation)]

    def query_side(self, qa: np.ndarray, qb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per dilation group: (query interval non-empty, lowest and highest key seen), in group indices."""
        d = self.dilation
        out = []
        for g, (lo, hi) in enumerate(self.groups):
            m_lo = (qa - g + d - 1) // d
            m_hi = (qb - g) // d
            ok = m_lo <= m_hi
            last = len(lo) - 1
            out.append((ok, lo[np.clip(m_lo, 0, last)], hi[np.clip(m_hi, 0, last)]))
        return out

    def classify(self, qside: list, qa: np.ndarray, qb: np.ndarray,
                 ka: np.ndarray, kb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(any visible, all visible) for query intervals (via ``qside``) against key intervals."""
        d = self.dilation
        any_: np.ndarray | None = None
        for g, (q_ok, lo_seen, hi_seen) in enumerate(qside):
            k_lo = (ka - g + d - 1) // d
            k_hi = (kb - g) // d
            hit = q_ok & (k_lo <= k_hi) & (lo_seen <= k_hi) & (hi_seen >= k_lo)
            any_ = hit if any_ is None else (any_ | hit)
        if d == 1:
            _, lo_seen_hi_q, _ = self._point(qb)
            _, _, hi_seen_lo_q = self._point(qa)
            all_ = (lo_seen_hi_q <= ka) & (hi_seen_lo_q >= kb)
        else:
            # Two positions of an interval fall in different groups: only single positions can
            # see every key, and only a single key of their own group.
            all_ = any_ & (qa == qb) & (ka == kb)
        assert any_ is not None
        return any_, all_

    def _point(self, q: np.ndarray) -> tuple[None, np.ndarray, np.ndarray]:
        lo, hi = self.groups[0]
        return None, lo[q], hi[q]


def _interval_tiles(length: int, tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, inclusive real end and padded flag of the ``ceil(length / tile)`` tiles of an axis."""
    starts = np.arange(0, length, tile, dtype=np.int64)
    ends = starts + tile - 1
    return starts, np.minimum(ends, length - 1), ends > length - 1


def axis_tile_classes(pattern: GNAPattern, axis: int, q_tile: int,
                      kv_tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis classification ``(visited, full)``, bool ``[q_tiles, kv_tiles]`` along one axis."""
    n = pattern.input_size[axis]
    rule = AxisRule(n, pattern.window[axis], pattern.stride[axis], pattern.dilation[axis], pattern.causal[axis])
    qa, qb, _ = _interval_tiles(n, q_tile)
    ka, kb, k_pad = _interval_tiles(n, kv_tile)
    qside = rule.query_side(qa[:, None], qb[:, None])
    any_, all_ = rule.classify(qside, qa[:, None], qb[:, None], ka[None, :], kb[None, :])
    return any_, all_ & ~k_pad[None, :]


def _outer_product(vectors: Sequence[np.ndarray]) -> np.ndarray:
    out = np.ones(1, dtype=np.int64)
    for v in vectors:
        out = (out[:, None] * v.astype(np.int64)[None, :]).reshape(-1)
    return out


def box_tilemap(pattern: GNAPattern, q_tile: Sequence[int], kv_tile: Sequence[int]) -> TileMap:
    """Tile map with box tiles (token permutation), computed per axis and combined."""
    q_tile, kv_tile = tuple(q_tile), tuple(kv_tile)
    classes = [axis_tile_classes(pattern, a, q_tile[a], kv_tile[a]) for a in range(pattern.rank)]
    visited = _outer_product([v.sum(axis=1) for v, _ in classes])
    full = _outer_product([f.sum(axis=1) for _, f in classes])
    kv_visited = _outer_product([v.sum(axis=0) for v, _ in classes])
    kv_full = _outer_product([f.sum(axis=0) for _, f in classes])
    visited, full, kv_visited, kv_full = _freeze(visited[None], full[None], kv_visited[None], kv_full[None])
    return TileMap(tiling="box", q_tile=q_tile, kv_tile=kv_tile,
                   q_grid=tuple(v.shape[0] for v, _ in classes), kv_grid=tuple(v.shape[1] for v, _ in classes),
                   visited=visited, full=full, kv_visited=kv_visited, kv_full=kv_full)


def range_boxes(start: int, stop: int, shape: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Split the row-major token range ``[start, stop)`` into boxes of inclusive per-axis intervals."""
    if start >= stop:
        return []
    if len(shape) == 1:
        return [[(start, stop - 1)]]
    inner = math.prod(shape[1:])
    s0, s_rest = divmod(start, inner)
    e0, e_rest = divmod(stop - 1, inner)
    if s0 == e0:
        return [[(s0, s0)] + box for box in range_boxes(s_rest, e_rest + 1, shape[1:])]
    boxes = []
    first_full = s0
    if s_rest != 0:
        boxes += [[(s0, s0)] + box for box in range_boxes(s_rest, inner, shape[1:])]
        first_full = s0 + 1
    last_full = e0 if e_rest == inner - 1 else e0 - 1
    if first_full <= last_full:
        boxes.append([(first_full, last_full)] + [(0, n - 1) for n in shape[1:]])
    if e_rest != inner - 1:
        boxes += [[(e0, e0)] + box for box in range_boxes(0, e_rest + 1, shape[1:])]
    return boxes


def _flat_boxes(n: int, tile: int, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of every flat tile: owner tile index, lows ``[boxes, rank]``, highs ``[boxes, rank]``."""
    owners, lows, highs = [], [], []
    for t, start in enumerate(range(0, n, tile)):
        for box in range_boxes(start, min(start + tile, n), shape):
            owners.append(t)
            lows.append([lo for lo, _ in box])
            highs.append([hi for _, hi in box])
    return np.array(owners), np.array(lows, dtype=np.int64), np.array(highs, dtype=np.int64)


def flat_tilemap(pattern: GNAPattern, q_tile: int, kv_tile: int) -> TileMap:
    """Tile map with flat tiles (runs of consecutive row-major tokens), exact at any size."""
    n, shape = pattern.num_tokens, pattern.input_size
    rules = [AxisRule(shape[a], pattern.window[a], pattern.stride[a], pattern.dilation[a], pattern.causal[a])
             for a in range(pattern.rank)]
    q_owner, q_lo, q_hi = _flat_boxes(n, q_tile, shape)
    k_owner, k_lo, k_hi = _flat_boxes(n, kv_tile, shape)
    nq, nk = -(-n // q_tile), -(-n // kv_tile)
    k_starts = np.flatnonzero(np.r_[True, k_owner[1:] != k_owner[:-1]])
    q_sides = [rules[a].query_side(q_lo[:, a], q_hi[:, a]) for a in range(pattern.rank)]
    tile_any = np.zeros((nq, nk), dtype=bool)
    tile_all = np.ones((nq, nk), dtype=bool)
    chunk = max(1, _PAIR_CHUNK // max(1, len(k_owner)))
    for c0 in range(0, len(q_owner), chunk):
        sl = slice(c0, c0 + chunk)
        pair_any = np.ones((len(q_owner[sl]), len(k_owner)), dtype=bool)
        pair_all = np.ones_like(pair_any)
        for a, rule in enumerate(rules):
            qside = [(ok[sl, None], lo[sl, None], hi[sl, None]) for ok, lo, hi in q_sides[a]]
            a_any, a_all = rule.classify(qside, q_lo[sl, a, None], q_hi[sl, a, None],
                                         k_lo[None, :, a], k_hi[None, :, a])
            pair_any &= a_any
            pair_all &= a_all
        # Reduce box pairs to tile pairs: any over boxes, all over boxes.
        k_any = np.logical_or.reduceat(pair_any, k_starts, axis=1)
        k_all = np.logical_and.reduceat(pair_all, k_starts, axis=1)
        owners = q_owner[sl]
        q_starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        rows = owners[q_starts]  # unique and increasing; a tile may straddle two chunks
        tile_any[rows] |= np.logical_or.reduceat(k_any, q_starts, axis=0)
        tile_all[rows] &= np.logical_and.reduceat(k_all, q_starts, axis=0)
    k_pad = (np.arange(nk) + 1) * kv_tile > n
    tile_full = tile_all & tile_any & ~k_pad[None, :]
    visited, full, kv_visited, kv_full = _freeze(tile_any.sum(1)[None], tile_full.sum(1)[None],
                                                  tile_any.sum(0)[None], tile_full.sum(0)[None])
    return TileMap(tiling="flat", q_tile=(q_tile,), kv_tile=(kv_tile,), q_grid=(nq,), kv_grid=(nk,),
                   visited=visited, full=full, kv_visited=kv_visited, kv_full=kv_full)


def block_sparse_tilemap(pattern: BlockSparsePattern) -> TileMap:
    """Tile map of an explicit block map: visited blocks are full except where they hold padding."""
    bm = pattern.block_map
    n = pattern.seq_len
    k_pad = (np.arange(bm.shape[2]) + 1) * pattern.kv_tile > n
    full = bm & ~k_pad[None, None, :]
    visited, full_c, kv_visited, kv_full = _freeze(bm.sum(2), full.sum(2), bm.sum(1), full.sum(1))
    return TileMap(tiling="flat", q_tile=(pattern.q_tile,), kv_tile=(pattern.kv_tile,),
                   q_grid=(bm.shape[1],), kv_grid=(bm.shape[2],),
                   visited=visited, full=full_c, kv_visited=kv_visited, kv_full=kv_full)


def check_tiles(pattern: GNAPattern, q_tile: Sequence[int], kv_tile: Sequence[int], tiling: str) -> None:
    """Raise :class:`ConfigError` unless the tile shapes suit the layout and the tiling."""
    if tiling not in TILINGS:
        raise ConfigError(f"tiling={tiling!r}; allowed: {', '.join(TILINGS)}")
    for name, tile in (("q_tile", q_tile), ("kv_tile", kv_tile)):
        want = 1 if tiling == "flat" else pattern.rank
        if len(tile) != want:
            raise ConfigError(f"{name}={list(tile)} has {len(tile)} entries; {tiling} tiling of a rank-"
                              f"{pattern.rank} layout needs {want}")
        for t in tile:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
                raise ConfigError(f"{name}={list(tile)}: every entry must be a positive integer, got {t!r}")


def tilemap(pattern: GNAPattern, q_tile: Sequence[int], kv_tile: Sequence[int], tiling: str = "box") -> TileMap:
    """Tile map of a GNA pattern under box or flat tiling."""
    check_tiles(pattern, q_tile, kv_tile, tiling)
    if tiling == "flat":
        return flat_tilemap(pattern, int(q_tile[0]), int(kv_tile[0]))
    return box_tilemap(pattern, q_tile, kv_tile)
