"""The kernel benchmark's cases, floors, simulator numbers and FlexAttention block masks.

Imports no torch at module level: ``python benchmarks/kernel_bench.py --dry-run`` lists the cases
with the simulator's numbers on any machine. FLOPs come from the core's one rule
(:func:`sparsesim.simulator.flops.dense_flops`: ``4 * B * H * N^2 * D`` forward), bytes from
``Problem.io_bytes``, and the ceilings (GEMM rate, copy bandwidth) from the newest measurement file
under ``hwmodels/measurements`` (:func:`sparsesim.hwmodels.measurements.load_ceilings`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsesim.hwmodels.measurements import load_ceilings
from sparsesim.simulator import SimResult, simulate
from sparsesim.simulator.cost import Problem
from sparsesim.simulator.flops import dense_flops

BATCH, HEADS, HEAD_DIM, DTYPE = 1, 24, 128, "bf16"


def rewrite_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Every row so far, written to a temporary file then renamed over ``path`` (a run cut off at its time limit
    keeps its rows; a missing column is written empty)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
DENSE_NS = (16384, 65536, 115200)
QUICK_DENSE_NS = (16384,)
GPU = "H200"


@dataclass(frozen=True)
class GNACase:
    """One GNA benchmark configuration and the tiles our kernel runs it with."""

    name: str
    input_size: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    dilation: tuple[int, ...] | None = None
    quick: bool = False

    @property
    def tokens(self) -> int:
        return math.prod(self.input_size)

    @property
    def pattern(self) -> dict[str, Any]:
        """The pattern keywords of :func:`simulate` and :func:`gna_attention`."""
        return {"window": self.window, "stride": self.stride, "dilation": self.dilation or 1}

    def simulate(self, gpu: str = GPU, **profiles: str) -> SimResult:
        """The simulator's record for this case with the same tiles (box tiling); ``profiles``: the
        ``kernel_profile`` and ``dense_profile`` keywords of `simulate`."""
        return simulate(input_size=self.input_size, q_tile=self.q_tile, kv_tile=self.kv_tile, gpu=gpu,
                        heads=HEADS, head_dim=HEAD_DIM, batch=BATCH, dtype=DTYPE, **self.pattern, **profiles)


# Tiles: Q volume 128 (one 128-row CTA, 8 warps); KV volume 128 where a block-sparse choice
# exists, otherwise the KV tile with the least visited work by the simulator's tile map.
# Block-sparse cases first: the benchmark writes its CSV row by row, so a cut-off run keeps them.
GNA_CASES = (
    GNACase("hunyuan_w18x24x24_s16x8x8", (30, 48, 80), (18, 24, 24), (16, 8, 8), (2, 8, 8), (2, 8, 8)),
    GNACase("flux_w80x80_s16x16", (256, 256), (80, 80), (16, 16), (16, 8), (16, 8), quick=True),
    GNACase("1d_w2048_s256", (32768,), (2048,), (256,), (128,), (128,), quick=True),
    GNACase("cosmos_w16x24x16_s1x8x16", (16, 44, 80), (16, 24, 16), (1, 8, 16), (2, 4, 16), (2, 4, 16)),
    GNACase("hunyuan_w18x24x24_s1", (30, 48, 80), (18, 24, 24), (1, 1, 1), (8, 4, 4), (2, 8, 4)),
    GNACase("flux_w80x80_s1", (256, 256), (80, 80), (1, 1), (16, 8), (8, 8)),
    GNACase("1d_w2048_s1", (32768,), (2048,), (1,), (128,), (128,), quick=True),
    GNACase("2d_128x128_w32x32_d2x2", (128, 128), (32, 32), (1, 1), (16, 8), (16, 8), dilation=(2, 2), quick=True),
)
#: Other tiles timed for our kernel only (the Hopper FNA defaults and KV volume 128 alternatives).
ALT_TILES = (
    ("hunyuan_w18x24x24_s1", (4, 4, 8), (4, 4, 8)),
    ("hunyuan_w18x24x24_s1", (8, 4, 4), (4, 4, 8)),
    ("flux_w80x80_s1", (16, 8), (16, 8)),
)


def case_flops(n: int) -> float:
    """Dense attention forward FLOPs of the benchmark's problem at ``n`` tokens."""
    return dense_flops(n, heads=HEADS, head_dim=HEAD_DIM, batch=BATCH)


def floors(case: GNACase | None, n: int, sim: SimResult | None = None) -> dict[str, float]:
    """Time floors (ms) on the measured ceilings: dense FLOP floor, tile and FLOP floors, byte floors."""
    c = load_ceilings(GPU)
    problem = Problem(batch=BATCH, heads=HEADS, head_dim=HEAD_DIM, dtype=DTYPE)
    copy = c.hbm_copy_TBps * 1e12
    out = {"dense_flop_ms": case_flops(n) / (c.gemm_bf16_TFLOPs * 1e12) * 1e3,
           "byte_ms": problem.io_bytes(n, 2, 2) / copy * 1e3}
    if case is not None and sim is not None:
        out["sparse_flop_ms"] = out["dense_flop_ms"] / sim.flop_speedup
        out["tile_ms"] = out["dense_flop_ms"] / sim.tile_speedup
        dil = case.dilation or (1,) * len(case.input_size)
        padded_kv = math.prod(d * math.ceil(math.ceil(s / d) / t) * t
                              for s, t, d in zip(case.input_size, case.kv_tile, dil, strict=True))
        # The K/V permutation reads k and v and writes their padded tiles.
        out["permute_ms"] = (problem.io_bytes(n, 0, 2) + problem.io_bytes(padded_kv, 0, 2)) / copy * 1e3
    return out


def dry_run_rows(quick: bool = False) -> list[dict[str, Any]]:
    """What the benchmark would run, with the simulator's numbers and the floors (no GPU needed)."""
    rows = []
    for n in (QUICK_DENSE_NS if quick else DENSE_NS):
        rows.append({"case": f"dense_N{n}", "tiles": "autotune", "tile_speedup": 1.0, "flop_speedup": 1.0,
                     "block_sparse": True, "dense_tflop": case_flops(n) / 1e12, **floors(None, n)})
    for case in GNA_CASES:
        if quick and not case.quick:
            continue
        sim = case.simulate()
        rows.append({"case": case.name, "tiles": f"q{case.q_tile}/kv{case.kv_tile}",
                     "tile_speedup": sim.tile_speedup, "flop_speedup": sim.flop_speedup,
                     "block_sparse": bool(sim.block_sparse), "dense_tflop": case_flops(case.tokens) / 1e12,
                     **floors(case, case.tokens, sim)})
    return rows


def topk_block_map(n: int, tile: int, keep: int, seed: int | None = None) -> np.ndarray:
    """A top-k-style block map shared by all heads: each Q block keeps its diagonal and ``keep - 1``
    random other KV blocks (seed: ``n`` unless given), the benchmark's block-sparse case."""
    nb = -(-n // tile)
    rng = np.random.default_rng(n if seed is None else seed)
    bm = np.zeros((nb, nb), dtype=bool)
    for i in range(nb):
        bm[i, i] = True
        bm[i, rng.choice(np.delete(np.arange(nb), i), keep - 1, replace=False)] = True
    return bm


# --------------------------------------------------------------------------------------------
# FlexAttention: the same schedule as a BlockMask over the same token-permuted tensors.
# --------------------------------------------------------------------------------------------

def _lists(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    num = sel.sum(axis=1).astype(np.int32)
    idx = np.argsort(~sel, axis=1, kind="stable").astype(np.int32)
    return num, idx


def flex_mask_mod(plan: Any, device: Any) -> Any:
    """A FlexAttention ``mask_mod`` on permuted token indices, from the plan's per-axis lo/hi tables."""
    import torch

    lohi = torch.from_numpy(plan.lohi[:, 0].astype(np.int64)).to(device)  # [3, LP, 2]
    qt3, kt3 = plan.q_tile3, plan.kv_tile3
    nq3, nk3 = plan.q_grid3, plan.kv_grid3
    qv, kv = plan.q_volume, plan.kv_volume
    axes = [a for a in range(3) if plan.mask_axes[a]]

    def coord(idx: Any, a: int, tile: tuple, grid: tuple, vol: int) -> Any:
        t, r = idx // vol, idx % vol
        t_a = (t // math.prod(grid[a + 1:])) % grid[a]
        r_a = (r // math.prod(tile[a + 1:])) % tile[a]
        return t_a * tile[a] + r_a

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        ok = q_idx >= 0
        for a in axes:
            qc = coord(q_idx, a, qt3, nq3, qv)
            kc = coord(kv_idx, a, kt3, nk3, kv)
            ok = ok & (kc >= lohi[a, qc, 0]) & (kc <= lohi[a, qc, 1])
        return ok

    return mask_mod


def flex_block_mask(plan: Any, device: Any) -> Any:
    """``BlockMask.from_kv_blocks`` with the core's full/partial split: Flex skips mask_mod on full blocks."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    if plan.groups != 1:
        raise ValueError("FlexAttention block masks are built for undilated plans only")
    visited, full = plan.schedule.tile_classes()
    kv_num, kv_idx = _lists(visited & ~full)
    full_num, full_idx = _lists(full)

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(a)[None, None].to(device)

    block = (plan.q_volume, plan.kv_volume)
    seq = (plan.num_q_tiles * plan.q_volume, math.prod(plan.kv_grid3) * plan.kv_volume)
    kwargs = {"BLOCK_SIZE": block, "mask_mod": flex_mask_mod(plan, device)}
    try:
        return BlockMask.from_kv_blocks(t(kv_num), t(kv_idx), t(full_num), t(full_idx), seq_lengths=seq, **kwargs)
    except TypeError:  # older torch without seq_lengths
        return BlockMask.from_kv_blocks(t(kv_num), t(kv_idx), t(full_num), t(full_idx), **kwargs)


# --------------------------------------------------------------------------------------------
# FlexAttention on tokens in natural (row-major) order: the GNA predicate as a mask_mod on token indices.
# --------------------------------------------------------------------------------------------

def flex_natural_mask_mod(layout: Sequence[int], window: Any, stride: Any = 1, dilation: Any = 1, causal: Any = False,
                          device: Any = "cpu") -> Any:
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` on natural-order (row-major) token indices of ``layout``.

    The core's predicate (:func:`sparsesim.simulator.patterns.rows_mask`): key ``j`` is visible from query ``i``
    iff on every axis ``lo_a[i_a] <= j_a <= hi_a[i_a]`` and ``j_a % d_a == i_a % d_a``, with ``(lo_a, hi_a)`` the
    core's :meth:`GNAPattern.axis_bounds` tables (stride, dilation and causal included) indexed by the query's
    coordinate ``i_a = (i // prod(layout[a+1:])) % layout[a]``. Axes that restrict nothing are left out.
    """
    import torch

    from sparsesim.simulator.patterns import GNAPattern

    pattern = GNAPattern(input_size=tuple(layout), window=window, stride=stride, dilation=dilation, causal=causal)
    size = pattern.input_size
    lmax = max(size)
    table = np.zeros((pattern.rank, lmax, 2), dtype=np.int64)
    axes = []  # (axis, pitch, length, dilation)
    for a, length in enumerate(size):
        lo, hi = pattern.axis_bounds(a)
        table[a, :length, 0], table[a, :length, 1] = lo, hi
        d = pattern.dilation[a]
        if d > 1 or lo.any() or (hi != length - 1).any():
            axes.append((a, math.prod(size[a + 1:]), length, d))
    lohi = torch.from_numpy(table).to(device)

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        ok = None
        for a, pitch, length, d in axes:
            qc = (q_idx // pitch) % length
            kc = (kv_idx // pitch) % length
            on_axis = (kc >= lohi[a, qc, 0]) & (kc <= lohi[a, qc, 1])
            if d > 1:
                on_axis = on_axis & (kc % d == qc % d)
            ok = on_axis if ok is None else ok & on_axis
        return (q_idx >= 0) & (kv_idx >= 0) if ok is None else ok  # no restricted axis: dense

    return mask_mod


def flex_natural_block_mask(mask_mod: Any, n: int, device: Any, block: int = 128, max_elements: int = 2**30) -> Any:
    """``create_block_mask(mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, BLOCK_SIZE=block)``; when ``n * n`` exceeds
    ``max_elements`` (the dense ``[n, n]`` mask Flex materializes), the same call on row ranges of whole Q blocks,
    their block lists concatenated (the same BlockMask, memory bounded)."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    rows = max(1, max_elements // (n * block)) * block
    if rows >= n:
        return create_block_mask(mask_mod, None, None, n, n, device=device, BLOCK_SIZE=block)
    parts = []
    for start in range(0, n, rows):
        def shifted(b: Any, h: Any, q_idx: Any, kv_idx: Any, start: int = start) -> Any:
            return mask_mod(b, h, q_idx + start, kv_idx)

        parts.append(create_block_mask(shifted, None, None, min(rows, n - start), n, device=device, BLOCK_SIZE=block))
    kv_num, kv_idx, full_num, full_idx = (torch.cat([getattr(p, f) for p in parts], dim=2)
                                          for f in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks",
                                                    "full_kv_indices"))
    try:
        return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=(block, block),
                                        mask_mod=mask_mod, seq_lengths=(n, n))
    except TypeError:  # older torch without seq_lengths
        return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=(block, block),
                                        mask_mod=mask_mod)
