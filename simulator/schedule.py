"""The tile schedule of box tiles: per axis and dilation group, which KV tiles each Q tile visits.

This is the one schedule of the package: the simulator counts it and the kernels pack it into
launch arrays (:mod:`sparsesim.kernels.gna_plan`) without re-deriving anything.

Box tiles run on token-permuted data, as NATTEN's fused kernels and ours do: each axis of length
``L`` and dilation ``d`` is first split into ``d`` groups (positions ``g, g + d, ...``, a group of
``ceil((L - g) / d)`` positions); each group is tiled on its own (padded to a multiple of the
tile), and a Q tile visits only KV tiles of its own group. So under dilation a "tile" is a box of
a group's sub-layout, and the padding of every group is counted.

Per axis and group the schedule is interval arithmetic on the pattern's ``lo``/``hi`` bounds
(non-decreasing, ``lo[i] <= i <= hi[i]``): the keys seen by the queries ``[a, b]`` of a Q tile form
the interval ``[lo(a), hi(b)]`` and the keys seen by every one of them ``[lo(b), hi(a)]``. So the
visited KV tiles of a Q tile are one contiguous range and the full ones a contiguous sub-range,
computed from the tile's two end points: O(Q tiles) time and memory, never Q tiles x KV tiles.
A box tile is visited (full) iff it is on every axis, so the multi-axis schedule is the outer
product of per-axis ranges.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from sparsesim.simulator.patterns import GNAPattern, group_bounds, group_length
from sparsesim.simulator.tiling import TileMap, freeze


@dataclass(frozen=True)
class GroupSchedule:
    """One dilation group of one axis: per Q tile, the visited and full KV tile ranges.

    ``first``/``count`` give the visited KV tiles of each Q tile, ``full_first``/``full_count`` the
    full ones (``full_count == 0``: none; then ``full_first`` is meaningless). ``kv_count`` and
    ``kv_full_count`` are the transposed counts: Q tiles that visit (fully) each KV tile.
    """

    length: int
    first: np.ndarray
    count: np.ndarray
    full_first: np.ndarray
    full_count: np.ndarray
    kv_count: np.ndarray
    kv_full_count: np.ndarray

    @property
    def q_tiles(self) -> int:
        return int(self.count.size)

    @property
    def kv_tiles(self) -> int:
        return int(self.kv_count.size)


def _range_counts(first: np.ndarray, count: np.ndarray, size: int) -> np.ndarray:
    """How many of the ranges ``[first, first + count)`` cover each of ``size`` slots (difference array)."""
    keep = count > 0
    diff = np.bincount(first[keep], minlength=size + 1)
    diff -= np.bincount((first + count)[keep], minlength=size + 1)
    return np.cumsum(diff)[:size]


def group_schedule(length: int, window: int, stride: int, causal: bool, q_tile: int,
                   kv_tile: int) -> GroupSchedule:
    """Schedule of one undilated axis (a dilation group) of ``length`` positions.

    Example:
        >>> s = group_schedule(16, window=5, stride=1, causal=False, q_tile=4, kv_tile=4)
        >>> s.first.tolist(), s.count.tolist(), s.full_count.tolist()
        ([0, 0, 1, 2], [2, 3, 3, 2], [0, 0, 0, 0])
    """
    a = np.arange(0, length, q_tile, dtype=np.int64)
    b = np.minimum(a + q_tile - 1, length - 1)
    lo_a, hi_a = group_bounds(length, window, stride, causal, a)
    lo_b, hi_b = group_bounds(length, window, stride, causal, b)
    first = lo_a // kv_tile
    count = hi_b // kv_tile - first + 1
    # Full: the KV tile lies inside [lo(b), hi(a)]; a padded last KV tile ends past L - 1 >= hi(a).
    full_first = -(-lo_b // kv_tile)
    full_count = np.maximum((hi_a + 1) // kv_tile - full_first, 0)
    kv_tiles = -(-length // kv_tile)
    return GroupSchedule(
        length=length, first=first, count=count, full_first=full_first, full_count=full_count,
        kv_count=_range_counts(first, count, kv_tiles), kv_full_count=_range_counts(full_first, full_count, kv_tiles))


@dataclass(frozen=True)
class AxisSchedule:
    """One axis of a box-tiled pattern: its rule, its tiles and one :class:`GroupSchedule` per dilation group."""

    length: int
    window: int
    stride: int
    dilation: int
    causal: bool
    q_tile: int
    kv_tile: int
    groups: tuple[GroupSchedule, ...]

    def bounds(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` of every position of a group, in group coordinates (the per-element mask rule)."""
        return group_bounds(self.groups[group].length, self.window, self.stride, self.causal)

    @property
    def partial(self) -> bool:
        """Whether any visited KV tile of this axis is partial (the kernels compile a mask for it)."""
        return any(bool((g.count != g.full_count).any()) for g in self.groups)


def axis_schedule(pattern: GNAPattern, axis: int, q_tile: int, kv_tile: int) -> AxisSchedule:
    """The schedule of one axis of ``pattern`` with the given per-axis tiles."""
    n, w, s = pattern.input_size[axis], pattern.window[axis], pattern.stride[axis]
    d, c = pattern.dilation[axis], pattern.causal[axis]
    groups = tuple(group_schedule(group_length(n, d, g), w, s, c, q_tile, kv_tile) for g in range(d))
    return AxisSchedule(length=n, window=w, stride=s, dilation=d, causal=c, q_tile=q_tile, kv_tile=kv_tile,
                        groups=groups)


def _outer(vectors: list[np.ndarray]) -> np.ndarray:
    out = np.ones(1, dtype=np.int64)
    for v in vectors:
        out = (out[:, None] * v.astype(np.int64)[None, :]).reshape(-1)
    return out


@dataclass(frozen=True)
class BoxSchedule:
    """The schedule of a GNA pattern on box tiles: one :class:`AxisSchedule` per axis.

    CTAs are (dilation group tuple, Q tile of that group's grid); group tuples are row-major over
    the axes, Q tiles row-major over the group's tile grid, as the kernels launch them.
    """

    pattern: GNAPattern
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    axes: tuple[AxisSchedule, ...]

    @property
    def group_tuples(self) -> list[tuple[int, ...]]:
        """Every dilation group tuple, row-major over the axes (``(0,)*rank`` alone without dilation)."""
        return list(itertools.product(*(range(a.dilation) for a in self.axes)))

    def q_grid(self, group: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(a.groups[g].q_tiles for a, g in zip(self.axes, group, strict=True))

    def kv_grid(self, group: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(a.groups[g].kv_tiles for a, g in zip(self.axes, group, strict=True))

    @property
    def dense_kv_tiles(self) -> int:
        """KV tiles of the dense baseline: the undilated layout tiled by the same KV tile."""
        return math.prod(-(-n // t) for n, t in zip(self.pattern.input_size, self.kv_tile, strict=True))

    @property
    def mask_axes(self) -> tuple[bool, ...]:
        """Per axis: whether some visited KV tile is partial on it."""
        return tuple(a.partial for a in self.axes)

    @cached_property
    def tilemap(self) -> TileMap:
        """Per-CTA visited/full counts (and the transposed per-KV-tile counts), for the cost model."""
        vis, full, kv_vis, kv_full = [], [], [], []
        for group in self.group_tuples:
            gs = [a.groups[g] for a, g in zip(self.axes, group, strict=True)]
            vis.append(_outer([s.count for s in gs]))
            full.append(_outer([s.full_count for s in gs]))
            kv_vis.append(_outer([s.kv_count for s in gs]))
            kv_full.append(_outer([s.kv_full_count for s in gs]))
        visited, full_c, kv_visited, kv_full_c = freeze(
            np.concatenate(vis)[None], np.concatenate(full)[None],
            np.concatenate(kv_vis)[None], np.concatenate(kv_full)[None])
        first = self.group_tuples[0]
        return TileMap(tiling="box", q_tile=self.q_tile, kv_tile=self.kv_tile, q_grid=self.q_grid(first),
                       kv_grid=self.kv_grid(first), visited=visited, full=full_c, kv_visited=kv_visited,
                       kv_full=kv_full_c, groups=len(self.group_tuples), dense_kv_tiles=self.dense_kv_tiles)

    def tile_classes(self, group: tuple[int, ...] | None = None,
                     max_pairs: int = 1 << 26) -> tuple[np.ndarray, np.ndarray]:
        """``(visited, full)`` bool ``[q_tiles, kv_tiles]`` of one group tuple (small layouts: pictures, tests).

        Tiles are flat indices, row-major over the group's Q and KV tile grids.
        """
        group = group or (0,) * len(self.axes)
        nq, nk = math.prod(self.q_grid(group)), math.prod(self.kv_grid(group))
        if nq * nk > max_pairs:
            raise ValueError(f"tile_classes: {nq} x {nk} tile pairs; allowed: at most {max_pairs}")
        visited = np.ones((1, 1), dtype=bool)
        full = np.ones((1, 1), dtype=bool)
        for axis, g in zip(self.axes, group, strict=True):
            s = axis.groups[g]
            k = np.arange(s.kv_tiles)[None, :]
            vis_a = (k >= s.first[:, None]) & (k < (s.first + s.count)[:, None])
            full_a = (k >= s.full_first[:, None]) & (k < (s.full_first + s.full_count)[:, None])
            visited = (visited[:, None, :, None] & vis_a[None, :, None, :]).reshape(visited.shape[0] * s.q_tiles, -1)
            full = (full[:, None, :, None] & full_a[None, :, None, :]).reshape(full.shape[0] * s.q_tiles, -1)
        return visited, full


def box_schedule(pattern: GNAPattern, q_tile: tuple[int, ...], kv_tile: tuple[int, ...]) -> BoxSchedule:
    """The box-tile schedule of ``pattern`` (tiles already checked: one positive int per axis).

    Example:
        >>> p = GNAPattern(input_size=(256, 256), window=(80, 80), stride=(16, 16))
        >>> tm = box_schedule(p, (16, 16), (16, 8)).tilemap
        >>> tm.dense_kv_tiles / int(tm.visited.max()), int(tm.partial.sum())
        (10.24, 0)
    """
    axes = tuple(axis_schedule(pattern, a, q_tile[a], kv_tile[a]) for a in range(pattern.rank))
    return BoxSchedule(pattern=pattern, q_tile=tuple(q_tile), kv_tile=tuple(kv_tile), axes=axes)
