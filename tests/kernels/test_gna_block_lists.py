"""A perfectly block-sparse GNA plan as block lists (:func:`sparsesim.kernels.gna_plan.block_lists`), against the
(Q tile, KV tile) pairs the simulator's token mask makes visible, tiles numbered as ``tile_permute`` lays them."""

from __future__ import annotations

import numpy as np
import pytest

from sparsesim.kernels.gna_plan import block_lists, plan_gna
from sparsesim.simulator import GNAPattern
from sparsesim.simulator.patterns import visible_mask

CASES = [
    ((8, 16, 32), (2, 8, 8), (2, 8, 8), (2, 8, 8), (2, 8, 8)),
    ((6, 24, 40), (6, 8, 8), (2, 8, 8), (2, 8, 8), (2, 8, 8)),
    ((10, 16, 24), (6, 8, 8), (2, 8, 8), (2, 8, 8), (2, 8, 8)),
    ((64, 64), (48, 48), (16, 16), (16, 8), (16, 8)),
    ((64, 64), (32, 32), (16, 16), (16, 8), (8, 8)),
    ((4096,), (1024,), (128,), (128,), (64,)),
]


def tile_of(size: tuple[int, ...], tile: tuple[int, ...]) -> np.ndarray:
    """Row-major token -> row-major tile index."""
    coords = np.indices(size).reshape(len(size), -1)
    grid = [n // t for n, t in zip(size, tile, strict=True)]
    flat = np.zeros(coords.shape[1], dtype=np.int64)
    for a in range(len(size)):
        flat = flat * grid[a] + coords[a] // tile[a]
    return flat


@pytest.mark.parametrize(("size", "window", "stride", "q_tile", "kv_tile"), CASES)
def test_block_lists_are_the_visible_tile_pairs(size, window, stride, q_tile, kv_tile):
    plan = plan_gna(size, window=window, stride=stride, q_tile=q_tile, kv_tile=kv_tile)
    assert plan.block_sparse
    kv_num, kv_idx = block_lists(plan)
    assert kv_num.max() <= kv_idx.shape[2] <= plan.num_kv_tiles
    mask = visible_mask(GNAPattern(input_size=size, window=window, stride=stride))
    qt, kt = tile_of(size, q_tile), tile_of(size, kv_tile)
    want = np.zeros((qt.max() + 1, kt.max() + 1), dtype=bool)
    rows, cols = np.nonzero(mask)
    want[qt[rows], kt[cols]] = True
    for q in range(want.shape[0]):
        listed = kv_idx[0, q, :kv_num[0, q]]
        assert list(listed) == sorted(set(listed.tolist())), "ascending, no repeats"
        assert set(listed.tolist()) == set(np.nonzero(want[q])[0].tolist())
        # perfectly block-sparse: every listed tile pair is visible in full
        for kvt in listed:
            assert mask[np.ix_(qt == q, kt == kvt)].all()


def test_block_lists_refuse_partial_tiles():
    plan = plan_gna((8, 16, 32), window=(6, 8, 16), stride=(2, 8, 8), q_tile=(2, 8, 8), kv_tile=(2, 8, 8))
    with pytest.raises(ValueError, match="block-sparse"):
        block_lists(plan)


def test_block_lists_rows_are_as_long_as_the_longest_list():
    """A long 1D layout: 1,024 KV tiles, each Q tile visits 17 (rows of every KV tile would be 1,024 wide)."""
    plan = plan_gna((131072,), window=(2176,), stride=(128,), q_tile=(128,), kv_tile=(128,))
    kv_num, kv_idx = block_lists(plan)
    assert plan.num_kv_tiles == 1024
    assert kv_idx.shape == (1, 1024, 17) and int(kv_num.max()) == 17
