"""Block-sparse kernel vs the reference built from BlockSparsePattern.dense_mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_testing import assert_close, randn

from sparsesim.kernels import block_sparse_attention
from sparsesim.kernels.block_sparse import block_lists
from sparsesim.kernels.reference import block_sparse_reference


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize(("n", "q_tile", "kv_tile", "map_heads"), [
    (70, 32, 16, 2),   # padded last KV block (tail), per-head maps
    (64, 16, 32, 1),   # 2D map shared by heads, no tail
    (50, 16, 16, 2),
])
def test_block_sparse_matches_reference(dtype, n, q_tile, kv_tile, map_heads):
    rng = np.random.default_rng(n)
    q = randn(1, n, 2, 16, dtype=dtype, seed=1)
    k = randn(1, n, 1, 16, dtype=dtype, seed=2)
    v = randn(1, n, 1, 16, dtype=dtype, seed=3)
    qb, kb = -(-n // q_tile), -(-n // kv_tile)
    bm = rng.random((map_heads, qb, kb)) < 0.5
    bm[:, 0, :] = False  # a Q block that visits nothing -> zeros
    bm[:, -1, -1] = True
    block_map = bm[0] if map_heads == 1 else torch.from_numpy(bm)
    out = block_sparse_attention(q, k, v, block_map, q_tile=q_tile, kv_tile=kv_tile)
    ref = block_sparse_reference(q, k, v, bm[0] if map_heads == 1 else bm, q_tile=q_tile, kv_tile=kv_tile)
    assert_close(out, ref, dtype)
    assert torch.count_nonzero(out[:, :q_tile]) == 0


def test_block_lists_sorted_with_tail():
    bm = np.array([[[True, False, True, True], [False, False, False, True]]])
    num, idx, tail = block_lists(bm, seq_len=50, kv_tile=16)  # 4 blocks, the last padded
    assert num.tolist() == [[2, 0]] and tail.tolist() == [[1, 1]]
    assert idx[0, 0, :2].tolist() == [0, 2]


def test_block_map_shape_checked():
    q = randn(1, 40, 2, 16, dtype=torch.float16, seed=0)
    with pytest.raises(ValueError, match="blocks"):
        block_sparse_attention(q, q, q, np.ones((3, 2), dtype=bool), q_tile=16, kv_tile=16)
    with pytest.raises(ValueError, match="heads"):
        block_sparse_attention(q, q, q, np.ones((3, 3, 3), dtype=bool), q_tile=16, kv_tile=16)
    with pytest.raises(ValueError, match="kv_tile"):
        block_sparse_attention(q, q, q, np.ones((3, 4), dtype=bool), q_tile=16, kv_tile=12)
