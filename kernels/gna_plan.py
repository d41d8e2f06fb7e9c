"""Host side of the GNA kernel: the tile schedule and mask tables, derived from the simulator core.

Dilation groups are folded into the batch (see :mod:`sparsesim.kernels.permute`), so the kernel
only runs undilated patterns. Each axis ``a`` and dilation group ``g`` is the undilated 1D
pattern of the group's own length ``len_g = ceil((L - g) / d)`` (DESIGN.md, Semantics); the core
classifies its tiles (:func:`sparsesim.simulator.tiling.axis_tile_classes`) and gives its bounds
(:func:`sparsesim.simulator.patterns.axis_bounds`). Per axis and group the kernel gets:

- ``ranges[a, g, qt] = (first visited KV tile, visited count, first full KV tile, full count)``:
  the visited KV tiles of a Q tile form one contiguous range and the full ones a contiguous
  sub-range (``lo``/``hi`` are monotone; checked here). With no full tile, ``first full`` is
  ``first visited + visited count`` so the kernel's complement arithmetic needs no branch.
- ``lohi[a, g, i] = (lo, hi)`` for every padded query position ``i`` (padded positions repeat
  the last real one), the per-element rule used inside partial tiles. Padded keys need no extra
  test: ``hi <= len_g - 1`` for every row.

Everything is normalized to three axes by prepending unit axes (length 1, tile 1).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsesim.kernels._launch import check_tile_volume
from sparsesim.kernels.permute import TileLayout
from sparsesim.simulator import GNAPattern, tilemap
from sparsesim.simulator.patterns import axis_bounds
from sparsesim.simulator.tiling import axis_tile_classes

#: Default tiles when the caller gives none: the H100/H200 Hopper FNA defaults (hwmodels data file).
DEFAULT_GPU = "H200"


@dataclass(frozen=True, eq=False)
class GNAPlan:
    """The schedule of one GNA configuration; arrays are int32 and read-only."""

    pattern: GNAPattern
    q_layout: TileLayout
    kv_layout: TileLayout
    ranges: np.ndarray  # [3, GMAX, NQMAX, 4]
    lohi: np.ndarray  # [3, GMAX, LPMAX, 2]
    mask_axes: tuple[bool, bool, bool]
    visited: np.ndarray  # [G, num_q_tiles] visited KV tiles per folded group and Q tile

    @property
    def block_sparse(self) -> bool:
        """No partial tile anywhere: the kernel is compiled without any mask code."""
        return not any(self.mask_axes)

    @property
    def q_tile3(self) -> tuple[int, int, int]:
        return self.q_layout.padded3(self.q_layout.tile)

    @property
    def kv_tile3(self) -> tuple[int, int, int]:
        return self.kv_layout.padded3(self.kv_layout.tile)

    @property
    def tile_speedup(self) -> float:
        """KV tiles of a dense pass over this schedule's KV tiles / max visited (the simulator's rule)."""
        return self.kv_layout.num_tiles / float(self.visited.max())


def _as_rank(value: Any, rank: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * rank
    try:
        vals = tuple(value)
    except TypeError:
        raise ValueError(f"{name}={value!r}; allowed: a positive int or {rank} positive ints") from None
    if len(vals) == 1:
        vals = vals * rank
    if len(vals) != rank or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in vals):
        raise ValueError(f"{name}={value!r}; allowed: a positive int or {rank} positive ints (one per axis)")
    return tuple(int(v) for v in vals)


def default_tiles(rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The Hopper FNA default (Q tile, KV tile) for a rank, read from the GPU data file."""
    from sparsesim.hwmodels import load_gpu

    return load_gpu(DEFAULT_GPU).tiles_for(rank)


def _contiguous(row: np.ndarray, what: str) -> tuple[int, int]:
    idx = np.flatnonzero(row)
    if idx.size == 0:
        return 0, 0
    if idx[-1] - idx[0] + 1 != idx.size:
        raise RuntimeError(f"internal: {what} KV tiles are not contiguous: {idx.tolist()}")
    return int(idx[0]), int(idx.size)


def _axis_tables(n: int, window: int, stride: int, dilation: int, causal: bool, qt: int, kt: int,
                 nq: int, lp: int) -> tuple[np.ndarray, np.ndarray, bool, list[np.ndarray]]:
    """Ranges ``[d, nq, 4]``, bounds ``[d, lp, 2]``, whether any tile is partial, visited counts per group."""
    ranges = np.zeros((dilation, nq, 4), dtype=np.int32)
    lohi = np.zeros((dilation, lp, 2), dtype=np.int32)
    partial = False
    counts = []
    for g in range(dilation):
        len_g = len(range(g, n, dilation))
        pat = GNAPattern(input_size=(len_g,), window=(window,), stride=(stride,), causal=(causal,))
        visited, full = axis_tile_classes(pat, 0, qt, kt)
        partial |= bool((visited & ~full).any())
        cnt = np.zeros(nq, dtype=np.int64)
        for row in range(visited.shape[0]):
            vf, nv = _contiguous(visited[row], "visited")
            ff, nf = _contiguous(full[row], "full")
            if nf == 0:
                ff = vf + nv
            elif not (vf <= ff and ff + nf <= vf + nv):
                raise RuntimeError("internal: full KV tiles outside the visited range")
            ranges[g, row] = (vf, nv, ff, nf)
            cnt[row] = nv
        counts.append(cnt)
        lo, hi = axis_bounds(len_g, window, stride, 1, causal)
        pad = lp - len_g
        lohi[g, :, 0] = np.concatenate([lo, np.full(pad, lo[-1])])
        lohi[g, :, 1] = np.concatenate([hi, np.full(pad, hi[-1])])
    return ranges, lohi, partial, counts


def _build(size: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
           causal: tuple[bool, ...], q_tile: tuple[int, ...], kv_tile: tuple[int, ...]) -> GNAPlan:
    pattern = GNAPattern(input_size=size, window=window, stride=stride, dilation=dilation, causal=causal)
    rank = pattern.rank
    q_layout = TileLayout(input_size=pattern.input_size, tile=q_tile, dilation=pattern.dilation)
    kv_layout = TileLayout(input_size=pattern.input_size, tile=kv_tile, dilation=pattern.dilation)
    pad = 3 - rank
    nq3 = q_layout.padded3(q_layout.grid)
    lp3 = tuple(n * t for n, t in zip(nq3, q_layout.padded3(q_tile), strict=True))
    gmax, nqmax, lpmax = max(pattern.dilation), max(nq3), max(lp3)
    ranges = np.zeros((3, gmax, nqmax, 4), dtype=np.int32)
    lohi = np.zeros((3, gmax, lpmax, 2), dtype=np.int32)
    ranges[:pad, 0, 0] = (0, 1, 0, 1)  # unit axes: one KV tile, full
    mask_axes = [False] * 3
    group_counts = []
    for a in range(rank):
        A = a + pad
        r, lh, partial, counts = _axis_tables(pattern.input_size[a], pattern.window[a], pattern.stride[a],
                                              pattern.dilation[a], pattern.causal[a], q_tile[a], kv_tile[a],
                                              nq3[A], lp3[A])
        ranges[A, : r.shape[0], : r.shape[1]] = r
        lohi[A, : lh.shape[0], : lh.shape[1]] = lh
        mask_axes[A] = partial
        group_counts.append(counts)
    # Visited KV tiles per (folded group, Q tile): the outer product of per-axis counts.
    visited = np.ones((1, 1), dtype=np.int64)
    for counts in group_counts:
        per = np.stack(counts)  # [d_a, nq_a]
        visited = (visited[:, None, :, None] * per[None, :, None, :]).reshape(visited.shape[0] * per.shape[0], -1)
    if all(d == 1 for d in pattern.dilation):
        # Cross-check with the core's tile map (same tiles, same layout): no partial tile iff no axis masks.
        tm = tilemap(pattern, q_tile, kv_tile)
        if (int(tm.partial.sum()) == 0) != (not any(mask_axes)) or not np.array_equal(tm.visited[0], visited[0]):
            raise RuntimeError("internal: kernel schedule disagrees with the simulator's tile map")
    for arr in (ranges, lohi, visited):
        arr.setflags(write=False)
    return GNAPlan(pattern=pattern, q_layout=q_layout, kv_layout=kv_layout, ranges=ranges, lohi=lohi,
                   mask_axes=tuple(mask_axes), visited=visited)  # type: ignore[arg-type]


_build_cached = functools.lru_cache(maxsize=64)(_build)


def plan_gna(input_size: Sequence[int], *, window: Any, stride: Any = 1, dilation: Any = 1, causal: Any = False,
             q_tile: Any = None, kv_tile: Any = None) -> GNAPlan:
    """Validate a GNA configuration and build (or fetch from a small cache) its kernel schedule.

    Raises ValueError (``ConfigError`` from the core for window/stride/dilation/causal; tiles
    must have a power-of-two volume in [16, 256]).
    """
    size = tuple(int(s) for s in input_size)
    probe = GNAPattern(input_size=size, window=window, stride=stride, dilation=dilation, causal=causal)
    rank = probe.rank
    if q_tile is None and kv_tile is None:
        q_t, kv_t = default_tiles(rank)
    else:
        q_t = _as_rank(q_tile if q_tile is not None else kv_tile, rank, "q_tile")
        kv_t = _as_rank(kv_tile if kv_tile is not None else q_tile, rank, "kv_tile")
    check_tile_volume(q_t, "q_tile")
    check_tile_volume(kv_t, "kv_tile")
    return _build_cached(probe.input_size, probe.window, probe.stride, probe.dilation, probe.causal,
                         tuple(q_t), tuple(kv_t))


def plan_summary(plan: GNAPlan) -> dict[str, Any]:
    """Numbers for reports: tiles, grid sizes, visited tiles, block sparsity."""
    return {
        "q_tile": plan.q_layout.tile, "kv_tile": plan.kv_layout.tile,
        "q_tiles": plan.q_layout.num_tiles, "kv_tiles": plan.kv_layout.num_tiles,
        "groups": plan.q_layout.groups, "max_kv_tiles": int(plan.visited.max()),
        "mean_kv_tiles": float(plan.visited.mean()), "tile_speedup": plan.tile_speedup,
        "block_sparse": plan.block_sparse, "mask_axes": plan.mask_axes,
        "padded_q_tokens": plan.q_layout.padded_tokens * plan.q_layout.groups,
        "tokens": math.prod(plan.pattern.input_size),
    }
