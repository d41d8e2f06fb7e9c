"""One configuration in, one result record out; many configurations in, a DataFrame out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sparsesim.hwmodels import GPU, load_gpu
from sparsesim.hwmodels.profiles import KernelProfile, load_profile
from sparsesim.simulator.cost import Problem
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import BlockSparsePattern, GNAPattern, load_block_map
from sparsesim.simulator.predict import COST_COLUMNS, predict
from sparsesim.simulator.tiling import TileMap, block_sparse_tilemap, check_tiles, tilemap

#: Columns of the tile-level result, in order (the record also carries array fields).
TILE_COLUMNS = [
    "gpu", "input_size", "window", "stride", "dilation", "causal", "q_tile", "kv_tile", "tiling",
    "density", "flop_speedup", "tile_speedup", "tile_speedup_mean", "kv_tiles_dense", "max_kv_tiles",
    "mean_kv_tiles", "partial_fraction", "block_sparse",
]
#: Every column of a result, in order.
COLUMNS = [*TILE_COLUMNS, "heads", "heads_kv", "head_dim", "batch", "dtype", "backprop", *COST_COLUMNS]
#: Record keys holding arrays (per-Q-tile counts for pictures); left out of tables.
ARRAY_KEYS = ("visits", "full_visits", "q_grid")


def _tile_tuple(value: int | Sequence[int] | None, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),)
    try:
        return tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"{name}={value!r}: must be an integer or a list of integers") from None


def resolve_tiles(gpu: GPU, rank: int, tiling: str, q_tile: Any, kv_tile: Any) -> tuple[tuple[int, ...], ...]:
    """The tiles to use: the given ones, or the GPU's default fused-kernel tiles for this rank.

    A lone ``q_tile`` also sets ``kv_tile``. Flat tiling defaults to the GPU's 1D tiles.
    """
    q, kv = _tile_tuple(q_tile, "q_tile"), _tile_tuple(kv_tile, "kv_tile")
    if q is None and kv is None:
        return gpu.tiles_for(1 if tiling == "flat" else rank)
    if q is None:
        raise ConfigError(f"kv_tile={list(kv or ())} given without q_tile; give both, or q_tile alone")
    return q, (kv if kv is not None else q)


def tile_stats(tm: TileMap, dense: TileMap | None, flop_speedup: float) -> dict[str, Any]:
    """The tile-level columns of a result from a tile map and its dense baseline's tile map."""
    visited = tm.visited.astype(np.float64)
    worst = float(visited.max())
    mean = float(visited.mean())
    # Non-causal: the dense baseline visits every KV tile from every Q tile, and the worst Q tile
    # bounds the sparse kernel (the GNA paper's convention). Causal: the dense triangle is
    # load-balanced across SMs, so its worst Q tile is not its cost; both sides use the mean.
    if dense is None:
        dense_tiles = float(tm.num_kv_tiles)
        tile_speedup = dense_tiles / worst
    else:
        dense_tiles = float(dense.visited.mean())
        tile_speedup = dense_tiles / mean
    partial = float(tm.partial.sum())
    total = float(tm.visited.sum())
    block_sparse = partial == 0 and bool(np.isclose(tile_speedup, flop_speedup, rtol=1e-9))
    return {
        "tile_speedup": tile_speedup,
        "tile_speedup_mean": dense_tiles / mean,
        "kv_tiles_dense": dense_tiles if dense is not None else int(dense_tiles),
        "max_kv_tiles": int(worst),
        "mean_kv_tiles": mean,
        "partial_fraction": partial / total if total else 0.0,
        "block_sparse": block_sparse,
        "visits": tm.visited,
        "full_visits": tm.full,
        "q_grid": tm.q_grid,
    }


def simulate(*, input_size: int | Sequence[int], window: int | Sequence[int] | None = None,
             stride: int | Sequence[int] = 1, dilation: int | Sequence[int] = 1,
             causal: bool | Sequence[bool] = False, q_tile: int | Sequence[int] | None = None,
             kv_tile: int | Sequence[int] | None = None, tiling: str = "box", gpu: str | GPU = "H100",
             block_map: str | Path | np.ndarray | None = None, heads: int = 24, heads_kv: int | None = None,
             head_dim: int = 128, batch: int = 1, dtype: str = "bf16", backprop: bool = False,
             kernel_profile: str | KernelProfile = "reference") -> dict[str, Any]:
    """Simulate one configuration; keyword names are the CLI flags with underscores.

    Without ``block_map`` the pattern is GNA over ``input_size``; with it, ``input_size`` is the
    sequence length and the map (array or ``.npy``/``.npz`` path) is tiled by ``q_tile``/``kv_tile``.
    The record holds the tile-level bounds and the cost model's prediction on ``gpu`` with
    ``kernel_profile`` (``reference``: the best published kernel of the GPU's architecture).

    Example:
        >>> r = simulate(input_size=(256, 256), window=(80, 80), stride=(16, 16),
        ...              q_tile=(16, 16), kv_tile=(16, 8))
        >>> round(r["tile_speedup"], 2), r["block_sparse"]
        (10.24, True)
    """
    gpu_spec = load_gpu(gpu)
    problem = Problem(batch=batch, heads=heads, heads_kv=heads_kv, head_dim=head_dim, dtype=dtype)
    prof = load_profile(kernel_profile, gpu_spec)
    extra = {"heads": heads, "heads_kv": problem.heads_kv, "head_dim": head_dim, "batch": batch, "dtype": dtype,
             "backprop": bool(backprop)}
    if block_map is not None:
        bs_record = _simulate_block_sparse(input_size, block_map, q_tile, kv_tile, gpu_spec, extra)
        bm = bs_record.pop("_pattern")
        bs_record.update(predict(gpu=gpu_spec, prof=prof, problem=problem, tm=bs_record.pop("_tilemap"),
                                 pattern=None, tokens=bm.seq_len, pairs_per_head=bm.visible_pairs() / bm.heads,
                                 dense_pairs_per_head=float(bm.seq_len) ** 2, backprop=bool(backprop)))
        return bs_record
    if window is None:
        raise ConfigError("window is required for a GNA pattern (or give block_map)")
    pattern = GNAPattern(input_size=input_size, window=window, stride=stride, dilation=dilation, causal=causal)
    q, kv = resolve_tiles(gpu_spec, pattern.rank, tiling, q_tile, kv_tile)
    check_tiles(pattern, q, kv, tiling)
    tm = tilemap(pattern, q, kv, tiling)
    dense_pattern = pattern.dense()
    dense_tm = tilemap(dense_pattern, q, kv, tiling) if pattern.is_causal else None
    pairs = pattern.visible_pairs()
    flop_speedup = dense_pattern.visible_pairs() / pairs
    record: dict[str, Any] = {
        "gpu": gpu_spec.name, "input_size": pattern.input_size, "window": pattern.window,
        "stride": pattern.stride, "dilation": pattern.dilation, "causal": pattern.causal,
        "q_tile": q, "kv_tile": kv, "tiling": tiling,
        "density": pairs / float(pattern.num_tokens) ** 2, "flop_speedup": flop_speedup,
    }
    record.update(tile_stats(tm, dense_tm, flop_speedup))
    record.update(extra)
    record.update(predict(gpu=gpu_spec, prof=prof, problem=problem, tm=tm, pattern=pattern,
                          tokens=pattern.num_tokens, pairs_per_head=float(pairs),
                          dense_pairs_per_head=float(dense_pattern.visible_pairs()), backprop=bool(backprop)))
    return record


def _simulate_block_sparse(input_size: Any, block_map: Any, q_tile: Any, kv_tile: Any, gpu: GPU,
                           extra: Mapping[str, Any]) -> dict[str, Any]:
    size = _tile_tuple(input_size, "input_size")
    if size is None or len(size) != 1:
        raise ConfigError(f"input_size={input_size!r}: a block map takes one sequence length")
    q, kv = resolve_tiles(gpu, 1, "flat", q_tile, kv_tile)
    if len(q) != 1 or len(kv) != 1:
        raise ConfigError(f"q_tile={list(q)}, kv_tile={list(kv)}: a block map takes one tile size each")
    bm = load_block_map(block_map) if isinstance(block_map, (str, Path)) else block_map
    pattern = BlockSparsePattern(block_map=bm, seq_len=int(size[0]), q_tile=int(q[0]), kv_tile=int(kv[0]))
    tm = block_sparse_tilemap(pattern)
    flop_speedup = 1.0 / pattern.density()
    record: dict[str, Any] = {
        "gpu": gpu.name, "input_size": size, "window": None, "stride": None, "dilation": None,
        "causal": None, "q_tile": q, "kv_tile": kv, "tiling": "block",
        "density": pattern.density(), "flop_speedup": flop_speedup,
    }
    record.update(tile_stats(tm, None, flop_speedup))
    record.update(extra)
    record["_pattern"], record["_tilemap"] = pattern, tm
    return record


def simulate_many(configs: Iterable[Mapping[str, Any]], *, include_arrays: bool = False,
                  progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Simulate many configurations (each a dict of :func:`simulate` keywords) into a DataFrame."""
    rows = []
    for i, cfg in enumerate(configs):
        record = simulate(**cfg)
        if not include_arrays:
            for key in ARRAY_KEYS:
                record.pop(key, None)
        rows.append(record)
        if progress is not None:
            progress(i + 1)
    return pd.DataFrame.from_records(rows)
