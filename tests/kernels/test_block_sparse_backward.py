"""Block-sparse attention backward (Triton interpreter): gradients against float64 autograd on random maps,
the custom op, torch.compile with a prepared BlockMap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from grad_testing import check_grads, leaves
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_testing import randn

from sparsesim.kernels import block_sparse_attention, prepare_block_map


def token_mask(bm: np.ndarray, n: int, q_tile: int, kv_tile: int) -> np.ndarray:
    """``[H, n, n]`` visibility of a ``[H, QB, KB]`` block map."""
    return np.repeat(np.repeat(bm, q_tile, axis=1), kv_tile, axis=2)[:, :n, :n]


def random_map(rng: np.random.Generator, heads: int, n: int, q_tile: int, kv_tile: int,
               density: float = 0.5) -> np.ndarray:
    bm = rng.random((heads, -(-n // q_tile), -(-n // kv_tile))) < density
    bm[:, -1, -1] = True
    return bm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("n", "q_tile", "kv_tile", "map_heads", "heads", "heads_kv"), [
    (70, 32, 16, 2, 2, 1),     # padded last KV block (tail), per-head maps, MQA; Q tile split in two for dK/dV
    (64, 16, 32, 1, 4, 2),     # shared map, GQA, no tail
    (100, 64, 32, 2, 2, 2),    # partial last Q block, dQ over two KV slices per block
])
def test_block_sparse_grads_match_float64(dtype, n, q_tile, kv_tile, map_heads, heads, heads_kv):
    rng = np.random.default_rng(n)
    bm = random_map(rng, map_heads, n, q_tile, kv_tile)
    bm[:, 0, :] = False  # a Q block that visits nothing: zeros out, LSE -inf, no gradient
    q = randn(2, n, heads, 16, dtype=dtype, seed=1)
    k = randn(2, n, heads_kv, 16, dtype=dtype, seed=2)
    v = randn(2, n, heads_kv, 16, dtype=dtype, seed=3)
    prepared = prepare_block_map(bm if map_heads > 1 else bm[0], seq_len=n, q_tile=q_tile, kv_tile=kv_tile)
    check_grads(lambda q, k, v: block_sparse_attention(q, k, v, prepared, return_lse=True), q, k, v,
                token_mask(bm, n, q_tile, kv_tile), seed=n)


@settings(max_examples=5, deadline=None)
@given(n=st.integers(17, 80), q_tile=st.sampled_from([16, 32]), kv_tile=st.sampled_from([16, 32]),
       map_heads=st.sampled_from([1, 2]), group=st.sampled_from([1, 2]), density=st.floats(0.1, 0.9),
       seed=st.integers(0, 2**31))
def test_block_sparse_grads_random_maps(n, q_tile, kv_tile, map_heads, group, density, seed):
    rng = np.random.default_rng(seed)
    bm = random_map(rng, map_heads, n, q_tile, kv_tile, density)
    heads = 2 * group if map_heads == 1 else map_heads
    heads_kv = max(1, heads // group)
    q = randn(1, n, heads, 16, dtype=torch.float32, seed=seed % 1000)
    k = randn(1, n, heads_kv, 16, dtype=torch.float32, seed=seed % 1000 + 1)
    v = randn(1, n, heads_kv, 16, dtype=torch.float32, seed=seed % 1000 + 2)
    raw = torch.from_numpy(bm)  # a raw torch map, prepared on the first call
    check_grads(lambda q, k, v: block_sparse_attention(q, k, v, raw, q_tile=q_tile, kv_tile=kv_tile,
                                                       return_lse=True),
                q, k, v, token_mask(bm, n, q_tile, kv_tile), seed=seed % 97)


def test_raw_numpy_map_same_grads_as_prepared():
    n, tile = 48, 16
    bm = random_map(np.random.default_rng(5), 1, n, tile, tile)[0]
    q, k, v = (randn(1, n, 2, 16, dtype=torch.float32, seed=s) for s in (4, 5, 6))
    grads = []
    for block_map in (bm, prepare_block_map(bm, seq_len=n, q_tile=16, kv_tile=16)):
        qa, ka, va = leaves(q, k, v)
        block_sparse_attention(qa, ka, va, block_map, q_tile=16, kv_tile=16).sum().backward()
        grads.append((qa.grad, ka.grad, va.grad))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_block_sparse_out_buffer_with_grad_raises():
    q, k, v = leaves(*(randn(1, 32, 2, 16, dtype=torch.float32, seed=s) for s in (1, 2, 3)))
    with pytest.raises(ValueError, match="out="):
        block_sparse_attention(q, k, v, np.ones((2, 2), dtype=bool), q_tile=16, kv_tile=16,
                               out=torch.empty(1, 32, 2, 16))


def test_block_map_tiles_must_agree():
    q = randn(1, 32, 2, 16, dtype=torch.float32, seed=1)
    prepared = prepare_block_map(np.ones((2, 2), dtype=bool), seq_len=32, q_tile=16, kv_tile=16)
    with pytest.raises(ValueError, match="q_tile"):
        block_sparse_attention(q, q, q, prepared, q_tile=32)
    with pytest.raises(ValueError, match="seq_len"):
        block_sparse_attention(q[:, :20], q[:, :20], q[:, :20], prepared)


def test_block_sparse_opcheck():
    n = 40
    bm = prepare_block_map(random_map(np.random.default_rng(2), 2, n, 16, 16), seq_len=n, q_tile=16, kv_tile=16)
    q, k, v = leaves(*(randn(1, n, 2, 16, dtype=torch.float32, seed=s) for s in (1, 2, 3)))
    lists = (bm.kv_num, bm.kv_idx, bm.tail, bm.q_num, bm.q_idx)
    torch.library.opcheck(torch.ops.sparsesim.block_sparse_fwd.default, (q, k, v, *lists, 16, 16, 0.25, None))
    out, lse = torch.ops.sparsesim.block_sparse_fwd(q.detach(), k.detach(), v.detach(), *lists, 16, 16, 0.25, None)
    torch.library.opcheck(torch.ops.sparsesim.block_sparse_bwd.default,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, None, *lists, 16, 16,
                           0.25))


def test_block_sparse_compile_fullgraph_matches_eager():
    """fullgraph compile with a prepared BlockMap (backend aot_eager, as in test_dense_backward); a raw map
    under compile raises (it would need host work inside the graph)."""
    torch._dynamo.reset()
    n = 48
    bm = random_map(np.random.default_rng(3), 2, n, 16, 16)
    prepared = prepare_block_map(bm, seq_len=n, q_tile=16, kv_tile=16)
    q, k, v = (randn(1, n, 2, 16, dtype=torch.float32, seed=s) for s in (7, 8, 9))

    def block(q, k, v, block_map):
        return block_sparse_attention(torch.sin(q), k, v, block_map).square().sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    qa, ka, va = leaves(q, k, v)
    qe, ke, ve = leaves(q, k, v)
    compiled(qa, ka, va, prepared).backward()
    block(qe, ke, ve, prepared).backward()
    for got, want in ((qa, qe), (ka, ke), (va, ve)):
        assert torch.allclose(got.grad, want.grad, rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="BlockMap prepared outside"):
        torch.compile(block, fullgraph=True, backend="aot_eager")(q, k, v, torch.from_numpy(bm))
