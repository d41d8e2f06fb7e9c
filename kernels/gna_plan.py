"""Host side of the GNA kernel: the core's tile schedule packed into launch arrays.

Nothing here re-derives the schedule: :func:`sparsesim.simulator.box_schedule` gives, per axis and
dilation group, each Q tile's visited and full KV tile ranges and the per-position ``lo``/``hi``
bounds; this module only lays them out for the kernel:

- ``ranges[a, g, qt] = (first visited KV tile, visited count, first full KV tile, full count)``;
  with no full tile, ``first full`` is ``first visited + visited count`` so the kernel's complement
  arithmetic needs no branch. Rows past a group's own Q tiles are zeros (nothing visited).
- ``lohi[a, g, i] = (lo, hi)`` for every padded query position ``i`` of group ``g`` (padded
  positions repeat the last real one), the per-element rule used inside partial tiles. Padded keys
  need no extra test: ``hi <= len_g - 1`` for every row.

Everything is normalized to three axes by prepending unit axes (length 1, tile 1). The kernel
launches one grid over the longest group's tile grid; a group with fewer tiles leaves the extra
CTAs with nothing to do.

The backward's dK/dV kernel runs the transposed schedule (:attr:`GNAPlan.ranges_t`): per axis, group
and KV tile, the Q tiles that visit it. Because a Q tile's visited range ``[first, first + count)`` has
both ends non-decreasing in the Q tile (the core's ``lo``/``hi`` are), the Q tiles visiting one KV tile
form one contiguous range too, and so do the ones seeing it whole: two binary searches per KV tile over
the core's per-Q-tile ranges, computed once per plan (plans are cached). Their sizes are the core's own
transposed counts (``kv_count``, ``kv_full_count``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsesim.simulator import GNAPattern, box_schedule
from sparsesim.simulator.engine import resolve_tiles
from sparsesim.simulator.patterns import per_axis, positive_ints
from sparsesim.simulator.schedule import BoxSchedule

#: GPU whose default tiles apply when a call names none and no GPU is given (the interpreter, tests).
DEFAULT_GPU = "H200"


def pad3(values: Sequence[int], fill: int = 1) -> tuple[int, int, int]:
    """Prepend ``fill`` so a rank-1/2 quantity has three axes (outermost first)."""
    return (fill,) * (3 - len(values)) + tuple(values)  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class GNAPlan:
    """The launch arrays of one GNA configuration (int32, read-only) and the schedule they pack."""

    schedule: BoxSchedule
    ranges: np.ndarray  # [3, GMAX, NQMAX, 4]
    lohi: np.ndarray  # [3, GMAX, LPMAX, 2]

    @property
    def pattern(self) -> GNAPattern:
        return self.schedule.pattern

    @property
    def q_tile3(self) -> tuple[int, int, int]:
        return pad3(self.schedule.q_tile)

    @property
    def kv_tile3(self) -> tuple[int, int, int]:
        return pad3(self.schedule.kv_tile)

    @property
    def size3(self) -> tuple[int, int, int]:
        return pad3(self.pattern.input_size)

    @property
    def dilation3(self) -> tuple[int, int, int]:
        return pad3(self.pattern.dilation)

    @property
    def groups(self) -> int:
        return math.prod(self.pattern.dilation)

    @property
    def q_grid3(self) -> tuple[int, int, int]:
        """Q tiles per axis of the longest group (the launch grid)."""
        return pad3(tuple(a.groups[0].q_tiles for a in self.schedule.axes))

    @property
    def kv_grid3(self) -> tuple[int, int, int]:
        """KV tiles per axis of the longest group (the permuted K/V layout)."""
        return pad3(tuple(a.groups[0].kv_tiles for a in self.schedule.axes))

    @property
    def num_q_tiles(self) -> int:
        return math.prod(self.q_grid3)

    @property
    def q_volume(self) -> int:
        return math.prod(self.schedule.q_tile)

    @property
    def kv_volume(self) -> int:
        return math.prod(self.schedule.kv_tile)

    @property
    def mask_axes(self) -> tuple[bool, bool, bool]:
        """Per (padded) axis: whether the kernel compiles a mask for it."""
        return pad3(self.schedule.mask_axes, False)  # type: ignore[arg-type, return-value]

    @property
    def block_sparse(self) -> bool:
        """No partial tile anywhere: the kernel is compiled without any mask code."""
        return not any(self.mask_axes)

    @property
    def num_kv_tiles(self) -> int:
        """KV tiles of the longest group's grid (the dK/dV kernel's launch grid)."""
        return math.prod(self.kv_grid3)

    @functools.cached_property
    def ranges_t(self) -> np.ndarray:
        """The transposed schedule ``[3, GMAX, NKMAX, 4]`` (int32, read-only): per axis, group and KV tile,
        ``(first visiting Q tile, count, first Q tile seeing it whole, count)``, packed as :attr:`ranges`
        (no full Q tile: ``first full = first + count``; rows past a group's own KV tiles are zeros)."""
        return _pack_transposed(self.schedule)


def _pack(schedule: BoxSchedule) -> GNAPlan:
    axes = schedule.axes
    pad = 3 - len(axes)
    gmax = max(a.dilation for a in axes)
    nqmax = max(a.groups[0].q_tiles for a in axes)
    lpmax = max(a.groups[0].q_tiles * a.q_tile for a in axes)
    ranges = np.zeros((3, gmax, nqmax, 4), dtype=np.int32)
    lohi = np.zeros((3, gmax, lpmax, 2), dtype=np.int32)
    ranges[:pad, 0, 0] = (0, 1, 0, 1)  # unit axes: one KV tile, full
    for a, axis in enumerate(axes):
        for g, s in enumerate(axis.groups):
            ff = np.where(s.full_count > 0, s.full_first, s.first + s.count)
            ranges[a + pad, g, :s.q_tiles] = np.stack([s.first, s.count, ff, s.full_count], axis=1)
            lo, hi = axis.bounds(g)
            lp = axis.groups[0].q_tiles * axis.q_tile
            lohi[a + pad, g, :lp, 0] = np.concatenate([lo, np.full(lp - lo.size, lo[-1])])
            lohi[a + pad, g, :lp, 1] = np.concatenate([hi, np.full(lp - hi.size, hi[-1])])
    for arr in (ranges, lohi):
        arr.setflags(write=False)
    return GNAPlan(schedule=schedule, ranges=ranges, lohi=lohi)


def transposed_ranges(first: np.ndarray, count: np.ndarray, kv_tiles: int) -> tuple[np.ndarray, np.ndarray]:
    """Per KV tile ``t`` of one axis and group: the contiguous range ``[start, start + n)`` of the Q tiles ``q``
    with ``first[q] <= t < first[q] + count[q]`` (``first`` and ``first + count`` non-decreasing in ``q``).

    Example:
        >>> s, n = transposed_ranges(np.array([0, 0, 1, 2]), np.array([2, 3, 3, 2]), 4)
        >>> s.tolist(), n.tolist()
        ([0, 0, 1, 2], [2, 3, 3, 2])
    """
    t = np.arange(kv_tiles, dtype=np.int64)
    start = np.searchsorted(first + count, t, side="right")  # first q whose range ends past t
    stop = np.searchsorted(first, t, side="right")  # q's whose range starts at or before t
    return start, np.maximum(stop - start, 0)


def _pack_transposed(schedule: BoxSchedule) -> np.ndarray:
    axes = schedule.axes
    pad = 3 - len(axes)
    gmax = max(a.dilation for a in axes)
    nkmax = max(a.groups[0].kv_tiles for a in axes)
    ranges = np.zeros((3, gmax, nkmax, 4), dtype=np.int32)
    ranges[:pad, 0, 0] = (0, 1, 0, 1)
    for a, axis in enumerate(axes):
        for g, s in enumerate(axis.groups):
            first, count = transposed_ranges(s.first, s.count, s.kv_tiles)
            # full: full_first is non-decreasing and so is its end max((hi_a + 1) // kv, full_first)
            ffirst, fcount = transposed_ranges(s.full_first, s.full_count, s.kv_tiles)
            ff = np.where(fcount > 0, ffirst, first + count)
            ranges[a + pad, g, :s.kv_tiles] = np.stack([first, count, ff, fcount], axis=1)
    ranges.setflags(write=False)
    return ranges


@functools.lru_cache(maxsize=128)
def _plan_cached(pattern: GNAPattern, q_tile: tuple[int, ...], kv_tile: tuple[int, ...]) -> GNAPlan:
    return _pack(box_schedule(pattern, q_tile, kv_tile))


def plan_gna(input_size: Sequence[int], *, window: Any, stride: Any = 1, dilation: Any = 1, causal: Any = False,
             q_tile: Any = None, kv_tile: Any = None, gpu: Any = DEFAULT_GPU) -> GNAPlan:
    """Validate a GNA configuration and pack (or fetch from a cache) its launch arrays.

    Tiles follow the simulator's rules (:func:`sparsesim.simulator.engine.resolve_tiles`): a lone
    ``q_tile`` or ``kv_tile`` sets both; none gives ``gpu``'s default tiles. Raises ``ConfigError``
    (a ``ValueError``) for anything the simulator refuses.
    """
    from sparsesim.hwmodels import load_gpu
    from sparsesim.simulator.tiling import check_tiles

    pattern = GNAPattern(input_size=tuple(input_size), window=window, stride=stride, dilation=dilation,
                         causal=causal)
    rank = pattern.rank
    q, kv = resolve_tiles(load_gpu(gpu), pattern.input_size, q_tile, kv_tile)
    q_t = positive_ints(per_axis(q, rank, "q_tile"), "q_tile")
    kv_t = positive_ints(per_axis(kv, rank, "kv_tile"), "kv_tile")
    check_tiles(pattern, q_t, kv_t, "box")
    return _plan_cached(pattern, q_t, kv_t)


def block_lists(plan: GNAPlan) -> tuple[np.ndarray, np.ndarray]:
    """A perfectly block-sparse plan (:attr:`GNAPlan.block_sparse`, no dilation) as a block map's lists over its
    permuted layouts: ``kv_num [1, QB]`` and ``kv_idx [1, QB, W]`` (int32, ``W`` the longest list, so a long 1D
    layout's rows stay short; Q and KV tiles numbered row-major over
    their tile grids, as :func:`~sparsesim.kernels.permute.tile_permute` lays them out), each Q tile's KV tiles
    the product of its per-axis visited ranges, ascending: the schedule the block-sparse kernels run."""
    if not plan.block_sparse or plan.groups != 1:
        raise ValueError("block_lists: the plan has partial tiles or dilation groups; allowed: a perfectly "
                         "block-sparse plan without dilation")
    qg, kg = plan.q_grid3, plan.kv_grid3
    first, count = plan.ranges[:, 0, :, 0], plan.ranges[:, 0, :, 1]
    axes = [[np.arange(first[a, i], first[a, i] + count[a, i]) for i in range(qg[a])] for a in range(3)]
    kv_num = np.zeros((1, math.prod(qg)), dtype=np.int32)
    width = int(np.prod(count.max(axis=1)))  # the longest list: rows hold at most this many, not every KV tile
    kv_idx = np.zeros((1, math.prod(qg), width), dtype=np.int32)
    for flat, (i0, i1, i2) in enumerate(np.ndindex(*qg)):
        ids = ((axes[0][i0][:, None, None] * kg[1] + axes[1][i1][None, :, None]) * kg[2]
               + axes[2][i2][None, None, :]).ravel()
        kv_num[0, flat] = ids.size
        kv_idx[0, flat, :ids.size] = ids
    return kv_num, kv_idx


def packed_counts(plan: GNAPlan) -> tuple[np.ndarray, np.ndarray]:
    """Visited and full KV tiles per CTA as the launch arrays say, CTAs in the simulator's order.

    Group tuples row-major, each group's own Q tiles row-major: the layout of
    ``simulate(...).visits``. The tests hold the launch data to the simulator's record with it.
    """
    pad = 3 - plan.pattern.rank
    visited, full = [], []
    for group in plan.schedule.group_tuples:
        v = np.ones(1, dtype=np.int64)
        f = np.ones(1, dtype=np.int64)
        for a, (axis, g) in enumerate(zip(plan.schedule.axes, group, strict=True)):
            rows = plan.ranges[a + pad, g, :axis.groups[g].q_tiles].astype(np.int64)
            v = (v[:, None] * rows[None, :, 1]).reshape(-1)
            f = (f[:, None] * rows[None, :, 3]).reshape(-1)
        visited.append(v)
        full.append(f)
    return np.concatenate(visited), np.concatenate(full)


def launch_items(plan: GNAPlan, batch: int, heads: int) -> tuple[np.ndarray, np.ndarray]:
    """The forward kernel's work items in launch order and, per item, its CTA in the simulator's order.

    The kernel's grid is ``(Q tiles of the longest group, heads, batch * groups)``; an item's launch index is
    ``(bg * heads + h) * num_q_tiles + qt``. Items whose Q tile lies outside its group's own tile grid hold no
    query (a shorter dilation group) and are left out. The second array indexes the simulator's per-CTA counts
    (``schedule.tilemap``, :func:`packed_counts`: groups row-major, each group's own Q tiles row-major).

    Example:
        >>> ids, cta = launch_items(plan_gna((20,), window=5, dilation=2, q_tile=8), batch=1, heads=1)
        >>> ids.tolist(), cta.tolist()  # two groups of 10 tokens, two Q tiles each
        ([0, 1, 2, 3], [0, 1, 2, 3])
    """
    grid = plan.q_grid3
    nq = plan.num_q_tiles
    q0, q1, q2 = (x.ravel() for x in np.meshgrid(*(np.arange(n) for n in grid), indexing="ij"))
    per_group = []
    offset = 0
    for group in plan.schedule.group_tuples:
        own = pad3(plan.schedule.q_grid(group))
        inside = (q0 < own[0]) & (q1 < own[1]) & (q2 < own[2])
        per_group.append(np.where(inside, offset + (q0 * own[1] + q1) * own[2] + q2, -1))
        offset += math.prod(own)
    cta = np.broadcast_to(np.stack(per_group)[None, :, None, :], (batch, plan.groups, heads, nq)).ravel()
    ids = np.flatnonzero(cta >= 0)
    return ids, cta[ids]
