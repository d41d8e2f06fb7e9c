"""Flat tiling: tiles are runs of consecutive row-major tokens (no token permutation).

A flat tile of a multi-axis layout is a union of at most ``2 * rank - 1`` boxes. Without
dilation, the keys a box of queries sees form a box (per axis ``[lo(a), hi(b)]``), and the keys
every one of them sees another (``[lo(b), hi(a)]``); a box is a set of token runs in row-major
order, and a run ``[s, e]`` touches the KV tiles ``s // t .. e // t`` and holds the KV tiles
entirely inside it. Counting those tile intervals (merged per Q tile) is exact interval
arithmetic: time and memory grow with the runs of the visible boxes, never with Q tiles x KV
tiles, and Q tiles are processed in chunks so memory stays bounded.

With dilation the visible keys of an interval of queries are no longer an interval; then tiles
are classified box pair by box pair per axis (:class:`AxisRule`), in chunks of Q tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sparsesim.simulator.patterns import GNAPattern, group_bounds, group_length
from sparsesim.simulator.tiling import TileMap, freeze

#: Token runs generated per chunk of Q tiles (bounds the working memory: ~10 arrays of int64).
_RUN_CHUNK = 1 << 18
#: Box pairs classified per chunk in the dilated fallback.
_PAIR_CHUNK = 1 << 22


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
    return np.array(owners, dtype=np.int64), np.array(lows, dtype=np.int64), np.array(highs, dtype=np.int64)


def _box_runs(lows: np.ndarray, highs: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Row-major token runs of boxes: ``(box index, start, end)`` per run, runs of a box in order.

    A box covering whole trailing axes is fewer, longer runs: its runs are indexed by the axes
    before the last one it does not cover whole.
    """
    rank = len(shape)
    strides = np.array([math.prod(shape[a + 1:]) for a in range(rank)], dtype=np.int64)
    whole = (lows == 0) & (highs == np.asarray(shape)[None, :] - 1)
    # k = the last axis not covered whole (0 when every axis after the first is whole).
    k = np.zeros(len(lows), dtype=np.int64)
    for a in range(1, rank):
        k = np.where(~whole[:, a:].all(axis=1), a, k)
    extents = np.where(np.arange(rank)[None, :] < k[:, None], highs - lows + 1, 1)
    per_box = extents.prod(axis=1)
    box = np.repeat(np.arange(len(lows)), per_box)
    r = np.arange(box.size) - np.repeat(np.cumsum(per_box) - per_box, per_box)
    base = np.zeros(box.size, dtype=np.int64)
    for a in range(rank - 1, -1, -1):
        e = extents[box, a]
        base += (lows[box, a] + r % e) * strides[a] * (a < k[box])
        r //= e
    kb = k[box]
    start = base + lows[box, kb] * strides[kb]
    end = base + (highs[box, kb] + 1) * strides[kb] - 1
    return box, start, end


def _run_counts(lows: np.ndarray, highs: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Number of runs :func:`_box_runs` makes per box (to size the chunks)."""
    rank = len(shape)
    whole = (lows == 0) & (highs == np.asarray(shape)[None, :] - 1)
    k = np.zeros(len(lows), dtype=np.int64)
    for a in range(1, rank):
        k = np.where(~whole[:, a:].all(axis=1), a, k)
    return np.where(np.arange(rank)[None, :] < k[:, None], highs - lows + 1, 1).prod(axis=1)


def _bounds_at(pattern: GNAPattern, axis: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return group_bounds(pattern.input_size[axis], pattern.window[axis], pattern.stride[axis],
                        pattern.causal[axis], positions)


def _chunks(weights: np.ndarray, owners: np.ndarray, budget: int) -> list[slice]:
    """Slices of boxes, cut only between Q tiles, each holding about ``budget`` runs."""
    cuts = [0]
    total = 0
    tile_starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    tile_weights = np.add.reduceat(weights, tile_starts)
    for start, w in zip(tile_starts, tile_weights, strict=True):
        if total and total + w > budget:
            cuts.append(int(start))
            total = 0
        total += int(w)
    cuts.append(len(owners))
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _flat_undilated(pattern: GNAPattern, q_tile: int, kv_tile: int) -> tuple[np.ndarray, ...]:
    shape = pattern.input_size
    n, rank = pattern.num_tokens, pattern.rank
    nq, nk = -(-n // q_tile), -(-n // kv_tile)
    owner, q_lo, q_hi = _flat_boxes(n, q_tile, shape)
    # Visible box of each Q box; the box every query of the Q tile sees (intersection over its boxes).
    vis_lo = np.empty_like(q_lo)
    vis_hi = np.empty_like(q_hi)
    all_lo = np.empty_like(q_lo)
    all_hi = np.empty_like(q_hi)
    for a in range(rank):
        vis_lo[:, a], all_hi[:, a] = _bounds_at(pattern, a, q_lo[:, a])
        all_lo[:, a], vis_hi[:, a] = _bounds_at(pattern, a, q_hi[:, a])
    tile_starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    t_lo = np.maximum.reduceat(all_lo, tile_starts, axis=0)
    t_hi = np.minimum.reduceat(all_hi, tile_starts, axis=0)
    visited = np.zeros(nq, dtype=np.int64)
    full = np.zeros(nq, dtype=np.int64)
    kv_diff = np.zeros(nk + 1, dtype=np.int64)
    kv_full_diff = np.zeros(nk + 1, dtype=np.int64)
    for sl in _chunks(_run_counts(vis_lo, vis_hi, shape), owner, _RUN_CHUNK):
        box, start, end = _box_runs(vis_lo[sl], vis_hi[sl], shape)
        tile = owner[sl][box]
        first, last = start // kv_tile, end // kv_tile
        order = np.lexsort((first, tile))
        tile, first, last = tile[order], first[order], last[order]
        # Union of tile intervals per Q tile: running max of last within each tile (offset per tile).
        off = tile * (nk + 1)
        run_max = np.maximum.accumulate(last + off)
        prev = np.r_[-1, run_max[:-1]]
        first_of_tile = np.r_[True, tile[1:] != tile[:-1]]
        prev = np.where(first_of_tile, off - 1, prev) - off
        lo = np.maximum(first, prev + 1)
        new = np.maximum(last - lo + 1, 0)
        visited += np.bincount(tile, weights=new, minlength=nq).astype(np.int64)
        keep = new > 0
        kv_diff += np.bincount(lo[keep], minlength=nk + 1)
        kv_diff -= np.bincount(last[keep] + 1, minlength=nk + 1)
    ok = (t_lo <= t_hi).all(axis=1)
    tiles = owner[tile_starts][ok]
    if tiles.size:
        box, start, end = _box_runs(t_lo[ok], t_hi[ok], shape)
        first = -(-start // kv_tile)
        count = np.maximum((end + 1) // kv_tile - first, 0)
        full += np.bincount(tiles[box], weights=count, minlength=nq).astype(np.int64)
        keep = count > 0
        kv_full_diff += np.bincount(first[keep], minlength=nk + 1)
        kv_full_diff -= np.bincount((first + count)[keep], minlength=nk + 1)
    return visited, full, np.cumsum(kv_diff)[:nk], np.cumsum(kv_full_diff)[:nk]


class AxisRule:
    """The visibility rule of one (dilated) axis, evaluated on intervals of positions.

    ``classify`` answers, for query intervals ``[qa, qb]`` and key intervals ``[ka, kb]``
    (inclusive, broadcastable arrays), whether *some* pair is visible and whether *every* pair is.
    """

    def __init__(self, length: int, window: int, stride: int, dilation: int, causal: bool) -> None:
        self.dilation = dilation
        self.groups = [group_bounds(group_length(length, dilation, g), window, stride, causal)
                       for g in range(dilation)]

    def query_side(self, qa: np.ndarray, qb: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per dilation group: (query interval non-empty, lowest and highest key seen), in group indices."""
        d = self.dilation
        out = []
        for g, (lo, hi) in enumerate(self.groups):
            m_lo = (qa - g + d - 1) // d
            m_hi = (qb - g) // d
            last = len(lo) - 1
            out.append((m_lo <= m_hi, lo[np.clip(m_lo, 0, last)], hi[np.clip(m_hi, 0, last)]))
        return out

    def classify(self, qside: list, qa: np.ndarray, qb: np.ndarray,
                 ka: np.ndarray, kb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(any visible, all visible) for query intervals (via ``qside``) against key intervals."""
        d = self.dilation
        any_ = np.zeros(np.broadcast_shapes(np.shape(qa), np.shape(ka)), dtype=bool)
        for g, (q_ok, lo_seen, hi_seen) in enumerate(qside):
            k_lo = (ka - g + d - 1) // d
            k_hi = (kb - g) // d
            any_ |= q_ok & (k_lo <= k_hi) & (lo_seen <= k_hi) & (hi_seen >= k_lo)
        if d == 1:
            lo, hi = self.groups[0]
            all_ = (lo[qb] <= ka) & (hi[qa] >= kb)
        else:
            # Two positions of an interval fall in different groups: only a single position can
            # see every key, and only a single key of its own group.
            all_ = any_ & (qa == qb) & (ka == kb)
        return any_, all_


def _flat_dilated(pattern: GNAPattern, q_tile: int, kv_tile: int) -> tuple[np.ndarray, ...]:
    n, shape = pattern.num_tokens, pattern.input_size
    rules = [AxisRule(shape[a], pattern.window[a], pattern.stride[a], pattern.dilation[a], pattern.causal[a])
             for a in range(pattern.rank)]
    q_owner, q_lo, q_hi = _flat_boxes(n, q_tile, shape)
    k_owner, k_lo, k_hi = _flat_boxes(n, kv_tile, shape)
    nq, nk = -(-n // q_tile), -(-n // kv_tile)
    k_starts = np.flatnonzero(np.r_[True, k_owner[1:] != k_owner[:-1]])
    k_pad = (np.arange(nk) + 1) * kv_tile > n
    q_sides = [rules[a].query_side(q_lo[:, a], q_hi[:, a]) for a in range(pattern.rank)]
    visited = np.zeros(nq, dtype=np.int64)
    full = np.zeros(nq, dtype=np.int64)
    kv_visited = np.zeros(nk, dtype=np.int64)
    kv_full = np.zeros(nk, dtype=np.int64)
    for sl in _chunks(np.full(len(q_owner), len(k_owner)), q_owner, _PAIR_CHUNK):
        pair_any = np.ones((sl.stop - sl.start, len(k_owner)), dtype=bool)
        pair_all = np.ones_like(pair_any)
        for a, rule in enumerate(rules):
            qside = [(ok[sl, None], lo[sl, None], hi[sl, None]) for ok, lo, hi in q_sides[a]]
            a_any, a_all = rule.classify(qside, q_lo[sl, a, None], q_hi[sl, a, None],
                                         k_lo[None, :, a], k_hi[None, :, a])
            pair_any &= a_any
            pair_all &= a_all
        # Box pairs -> tile pairs (any over boxes, all over boxes); chunks hold whole Q tiles.
        k_any = np.logical_or.reduceat(pair_any, k_starts, axis=1)
        k_all = np.logical_and.reduceat(pair_all, k_starts, axis=1)
        owners = q_owner[sl]
        q_starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        t_any = np.logical_or.reduceat(k_any, q_starts, axis=0)
        t_full = np.logical_and.reduceat(k_all, q_starts, axis=0) & t_any & ~k_pad[None, :]
        rows = owners[q_starts]
        visited[rows] = t_any.sum(axis=1)
        full[rows] = t_full.sum(axis=1)
        kv_visited += t_any.sum(axis=0)
        kv_full += t_full.sum(axis=0)
    return visited, full, kv_visited, kv_full


def flat_tilemap(pattern: GNAPattern, q_tile: int, kv_tile: int) -> TileMap:
    """Tile map with flat tiles (runs of consecutive row-major tokens), exact at any size.

    Example:
        >>> p = GNAPattern(input_size=(30, 48, 80), window=(18, 24, 24))
        >>> tm = flat_tilemap(p, 128, 128)
        >>> tm.num_q_tiles, int(tm.visited.max())
        (900, 288)
    """
    n = pattern.num_tokens
    if any(d > 1 for d in pattern.dilation):
        visited, full, kv_visited, kv_full = _flat_dilated(pattern, q_tile, kv_tile)
    else:
        visited, full, kv_visited, kv_full = _flat_undilated(pattern, q_tile, kv_tile)
    visited, full, kv_visited, kv_full = freeze(visited[None], full[None], kv_visited[None], kv_full[None])
    nq, nk = -(-n // q_tile), -(-n // kv_tile)
    return TileMap(tiling="flat", q_tile=(q_tile,), kv_tile=(kv_tile,), q_grid=(nq,), kv_grid=(nk,),
                   visited=visited, full=full, kv_visited=kv_visited, kv_full=kv_full, dense_kv_tiles=nk)
