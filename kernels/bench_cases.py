"""The benchmark's cases, FLOP/byte floors, simulator numbers and FlexAttention block masks.

Imports no torch at module level: ``python -m sparsesim.kernels.bench --dry-run`` lists the
cases with the simulator's numbers on any machine.

FLOP convention (DESIGN.md): dense attention forward = ``4 * B * H * N^2 * D``; effective
TFLOP/s = dense FLOPs / measured time, for dense and sparse kernels alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Measured ceilings on the H200 (KINDS.md / REFERENCE.md): bf16 GEMM on random data, D2D copy.
GEMM_TFLOPS = 790.0
COPY_TBPS = 4.3
BATCH, HEADS, HEAD_DIM = 1, 24, 128
ELT_BYTES = 2  # bf16
DENSE_NS = (16384, 65536, 115200)
QUICK_DENSE_NS = (16384,)


@dataclass(frozen=True)
class GNACase:
    """One GNA benchmark configuration and the tiles our kernel runs it with."""

    name: str
    input_size: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    quick: bool = False

    @property
    def tokens(self) -> int:
        return math.prod(self.input_size)

    def simulate(self, gpu: str = "H200") -> dict[str, Any]:
        """The simulator's record for this case with the same tiles (box tiling)."""
        from sparsesim.simulator import simulate

        return simulate(input_size=self.input_size, window=self.window, stride=self.stride,
                        q_tile=self.q_tile, kv_tile=self.kv_tile, gpu=gpu)


# Tiles: Q volume 128 (one 128-row CTA, 8 warps); KV volume 128 where a block-sparse choice
# exists, otherwise the KV tile with the least visited work by the simulator's tile map
# (full + 1.25 x partial tiles, weighted by KV volume; searched over power-of-two boxes).
# Block-sparse cases first: the benchmark writes its CSV row by row, so a cut-off run keeps them.
GNA_CASES = (
    GNACase("hunyuan_w18x24x24_s16x8x8", (30, 48, 80), (18, 24, 24), (16, 8, 8), (2, 8, 8), (2, 8, 8)),
    GNACase("flux_w80x80_s16x16", (256, 256), (80, 80), (16, 16), (16, 8), (16, 8), quick=True),
    GNACase("1d_w2048_s256", (32768,), (2048,), (256,), (128,), (128,), quick=True),
    GNACase("cosmos_w16x24x16_s1x8x16", (16, 44, 80), (16, 24, 16), (1, 8, 16), (2, 4, 16), (2, 4, 16)),
    GNACase("hunyuan_w18x24x24_s1", (30, 48, 80), (18, 24, 24), (1, 1, 1), (8, 4, 4), (2, 8, 4)),
    GNACase("flux_w80x80_s1", (256, 256), (80, 80), (1, 1), (16, 8), (8, 8)),
    GNACase("1d_w2048_s1", (32768,), (2048,), (1,), (128,), (128,), quick=True),
)
#: Other tiles timed for our kernel only (the Hopper FNA defaults and KV volume 128 alternatives).
ALT_TILES = (
    ("hunyuan_w18x24x24_s1", (4, 4, 8), (4, 4, 8)),
    ("hunyuan_w18x24x24_s1", (8, 4, 4), (4, 4, 8)),
    ("flux_w80x80_s1", (16, 8), (16, 8)),
)


def dense_flops(n: int, batch: int = BATCH, heads: int = HEADS, head_dim: int = HEAD_DIM) -> float:
    """Dense attention forward FLOPs: ``4 * B * H * N^2 * D``."""
    return 4.0 * batch * heads * float(n) ** 2 * head_dim


def qkvo_bytes(n: int, batch: int = BATCH, heads: int = HEADS, head_dim: int = HEAD_DIM) -> float:
    """Bytes of reading q, k, v once and writing o once (bf16)."""
    return 4.0 * batch * n * heads * head_dim * ELT_BYTES


def floors(case: GNACase | None, n: int, sim: dict[str, Any] | None = None) -> dict[str, float]:
    """Time floors (ms) on the H200 ceilings: FLOP floor (visited pairs), tile floor, byte floor."""
    flops = dense_flops(n)
    out = {"dense_flop_ms": flops / (GEMM_TFLOPS * 1e12) * 1e3, "byte_ms": qkvo_bytes(n) / (COPY_TBPS * 1e12) * 1e3}
    if case is not None and sim is not None:
        out["sparse_flop_ms"] = out["dense_flop_ms"] / sim["flop_speedup"]
        out["tile_ms"] = out["dense_flop_ms"] / sim["tile_speedup"]
        padded_q = math.prod(-(-s // t) * t for s, t in zip(case.input_size, case.q_tile, strict=True))
        padded_kv = math.prod(-(-s // t) * t for s, t in zip(case.input_size, case.kv_tile, strict=True))
        # q, k, v read + padded copies written, padded o read + o written.
        moved = (3 * n + padded_q + 2 * padded_kv + padded_q + n) * BATCH * HEADS * HEAD_DIM * ELT_BYTES
        out["permute_ms"] = moved / (COPY_TBPS * 1e12) * 1e3
    return out


def dry_run_rows(quick: bool = False) -> list[dict[str, Any]]:
    """What the benchmark would run, with the simulator's numbers and the floors (no GPU needed)."""
    rows = []
    for n in (QUICK_DENSE_NS if quick else DENSE_NS):
        f = floors(None, n)
        rows.append({"case": f"dense_N{n}", "tiles": "autotune", "tile_speedup": 1.0, "flop_speedup": 1.0,
                     "block_sparse": True, "dense_tflop": dense_flops(n) / 1e12, **f})
    for case in GNA_CASES:
        if quick and not case.quick:
            continue
        sim = case.simulate()
        f = floors(case, case.tokens, sim)
        rows.append({"case": case.name, "tiles": f"q{case.q_tile}/kv{case.kv_tile}",
                     "tile_speedup": sim["tile_speedup"], "flop_speedup": sim["flop_speedup"],
                     "block_sparse": bool(sim["block_sparse"]), "dense_tflop": dense_flops(case.tokens) / 1e12, **f})
    return rows


# --------------------------------------------------------------------------------------------
# FlexAttention: the same schedule as a BlockMask over the same token-permuted tensors.
# --------------------------------------------------------------------------------------------

def tile_classes_3d(plan: Any) -> tuple[np.ndarray, np.ndarray]:
    """(visited, full) bool ``[num_q_tiles, num_kv_tiles]`` of an undilated plan (outer product over axes)."""
    if plan.q_layout.groups != 1:
        raise ValueError("FlexAttention block masks are built for undilated plans only")
    nk3 = plan.kv_layout.padded3(plan.kv_layout.grid)
    nq3 = plan.q_layout.padded3(plan.q_layout.grid)
    visited = np.ones((1, 1), dtype=bool)
    full = np.ones((1, 1), dtype=bool)
    for a in range(3):
        vis_a = np.zeros((nq3[a], nk3[a]), dtype=bool)
        full_a = np.zeros_like(vis_a)
        for qt in range(nq3[a]):
            vf, nv, ff, nf = (int(x) for x in plan.ranges[a, 0, qt])
            vis_a[qt, vf:vf + nv] = True
            full_a[qt, ff:ff + nf] = True
        visited = (visited[:, None, :, None] & vis_a[None, :, None, :]).reshape(visited.shape[0] * nq3[a], -1)
        full = (full[:, None, :, None] & full_a[None, :, None, :]).reshape(full.shape[0] * nq3[a], -1)
    return visited, full


def _lists(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    num = sel.sum(axis=1).astype(np.int32)
    idx = np.argsort(~sel, axis=1, kind="stable").astype(np.int32)
    return num, idx


def flex_mask_mod(plan: Any, device: Any) -> Any:
    """A FlexAttention ``mask_mod`` on permuted token indices, from the plan's per-axis lo/hi tables."""
    import torch

    lohi = torch.from_numpy(plan.lohi[:, 0].astype(np.int64)).to(device)  # [3, LP, 2]
    qt3, kt3 = plan.q_tile3, plan.kv_tile3
    nq3 = plan.q_layout.padded3(plan.q_layout.grid)
    nk3 = plan.kv_layout.padded3(plan.kv_layout.grid)
    qv, kv = plan.q_layout.volume, plan.kv_layout.volume
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
    """``BlockMask.from_kv_blocks`` with our full/partial split: flex skips mask_mod on full blocks."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    visited, full = tile_classes_3d(plan)
    partial = visited & ~full
    kv_num, kv_idx = _lists(partial)
    full_num, full_idx = _lists(full)

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(a)[None, None].to(device)

    block = (plan.q_layout.volume, plan.kv_layout.volume)
    seq = (plan.q_layout.padded_tokens, plan.kv_layout.padded_tokens)
    kwargs = {"BLOCK_SIZE": block, "mask_mod": flex_mask_mod(plan, device)}
    try:
        return BlockMask.from_kv_blocks(t(kv_num), t(kv_idx), t(full_num), t(full_idx), seq_lengths=seq, **kwargs)
    except TypeError:  # older torch without seq_lengths
        return BlockMask.from_kv_blocks(t(kv_num), t(kv_idx), t(full_num), t(full_idx), **kwargs)
