"""Predicted milliseconds of a sparse kernel and of its dense baseline, as result columns."""

from __future__ import annotations

from typing import Any

import numpy as np

from sparsesim.hwmodels.gpus import GPU
from sparsesim.hwmodels.profiles import KernelProfile
from sparsesim.simulator.cost import BREAKDOWN, PassTime, Problem, backward_time, combine, forward_time, permute_ms
from sparsesim.simulator.patterns import GNAPattern
from sparsesim.simulator.tiling import TileMap, tilemap

#: Columns the cost model adds to a result, in order.
COST_COLUMNS = [
    "kernel_profile", "predicted_ms", "permute_ms", "dense_ms", "predicted_speedup",
    "predicted_speedup_with_permute", "bound", "wave_efficiency", "achieved_TFLOPs", "effective_TFLOPs",
    "dense_TFLOPs", *BREAKDOWN,
]

BWD_FLOP_FACTOR = 2.5  # convention: backward FLOPs = 2.5 x forward


def full_tilemap(tokens: int, q_tile: int, kv_tile: int) -> TileMap:
    """Tile map of dense non-causal attention over ``tokens`` flat tokens (built directly)."""
    nq, nk = -(-tokens // q_tile), -(-tokens // kv_tile)
    padded = int(nk * kv_tile > tokens)
    visited = np.full((1, nq), nk, dtype=np.int64)
    full = visited - padded
    kv_visited = np.full((1, nk), nq, dtype=np.int64)
    kv_full = kv_visited.copy()
    if padded:
        kv_full[0, -1] = 0
    for a in (visited, full, kv_visited, kv_full):
        a.setflags(write=False)
    return TileMap(tiling="flat", q_tile=(q_tile,), kv_tile=(kv_tile,), q_grid=(nq,), kv_grid=(nk,),
                   visited=visited, full=full, kv_visited=kv_visited, kv_full=kv_full)


def dense_baseline_tilemap(pattern: GNAPattern | None, tokens: int, sparse_tm: TileMap,
                           prof: KernelProfile) -> TileMap:
    """The dense kernel's tile map: the profile's dense tiles, causal axes kept causal."""
    q, kv = prof.forward.dense_q_tile, prof.forward.dense_kv_tile
    if pattern is None or not pattern.is_causal:
        return full_tilemap(tokens, q, kv)
    dense = pattern.dense()
    if dense.rank == 1:
        return tilemap(dense, (q,), (kv,), "box")
    return tilemap(dense, sparse_tm.q_tile, sparse_tm.kv_tile, sparse_tm.tiling)


def run_passes(gpu: GPU, prof: KernelProfile, problem: Problem, tm: TileMap, tokens: int, pairs: float,
               backprop: bool) -> PassTime:
    """Forward, plus backward when ``backprop``."""
    fwd = forward_time(gpu, prof, problem, tm, tokens, pairs)
    return combine(fwd, backward_time(gpu, prof, problem, tm, tokens, pairs)) if backprop else fwd


def predict(*, gpu: GPU, prof: KernelProfile, problem: Problem, tm: TileMap, pattern: GNAPattern | None,
            tokens: int, pairs_per_head: float, dense_pairs_per_head: float, backprop: bool = False) -> dict[str, Any]:
    """Cost-model columns for one configuration (``pattern`` is None for block maps)."""
    sparse = run_passes(gpu, prof, problem, tm, tokens, pairs_per_head, backprop)
    dense_tm = dense_baseline_tilemap(pattern, tokens, tm, prof)
    dense = run_passes(gpu, prof, problem, dense_tm, tokens, dense_pairs_per_head, backprop)
    needs_permute = tm.tiling == "box" and len(tm.q_tile) > 1
    perm = permute_ms(gpu, prof, problem, tokens, backprop) if needs_permute else 0.0
    flop_factor = (1 + BWD_FLOP_FACTOR) if backprop else 1.0
    bh = problem.batch * problem.heads * problem.head_dim * 4 * flop_factor
    useful_flops, dense_flops = bh * pairs_per_head, bh * dense_pairs_per_head
    out: dict[str, Any] = {
        "kernel_profile": prof.name,
        "predicted_ms": sparse.ms,
        "permute_ms": perm,
        "dense_ms": dense.ms,
        "predicted_speedup": dense.ms / sparse.ms,
        "predicted_speedup_with_permute": dense.ms / (sparse.ms + perm),
        "bound": sparse.bound,
        "wave_efficiency": sparse.wave_efficiency,
        "achieved_TFLOPs": useful_flops / sparse.ms / 1e9,
        "effective_TFLOPs": dense_flops / sparse.ms / 1e9,
        "dense_TFLOPs": dense_flops / dense.ms / 1e9,
    }
    out.update(sparse.breakdown)
    return out
