"""Dense and block-sparse backward compiled for a real GPU: bf16/fp16 gradients against float64 autograd,
CUDA-graph capture of forward + backward, torch.compile(fullgraph=True) with Inductor. Skipped without a CUDA
device or under ``TRITON_INTERPRET=1``; run alone: ``python -m pytest tests/gpu/test_block_backward_cuda.py``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("needs a CUDA GPU and compiled (not interpreted) Triton kernels", allow_module_level=True)

from sparsesim.kernels import attention, block_sparse_attention, prepare_block_map  # noqa: E402

#: Bound on ||grad - ref|| / ||ref|| against float64 (outputs: tests/gpu/test_kernels_cuda.py's 1e-2 / 2e-3).
GRAD_REL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
DTYPES = [torch.bfloat16, torch.float16]


def rand(*shape: int, dtype: Any, seed: int) -> Any:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32).to(dtype)


def reference64(q, k, v, mask=None):
    """Masked softmax attention in float64 (torch autograd differentiates it); rows that see nothing: zeros."""
    group = q.shape[2] // k.shape[2]
    kf, vf = (x.double().repeat_interleave(group, 2) for x in (k, v))
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), kf) * q.shape[-1] ** -0.5
    if mask is not None:
        m = (mask[None] if mask.dim() == 2 else mask)[None]
        empty = ~m.any(-1, keepdim=True)
        s = s.masked_fill(~m, float("-inf")).masked_fill(empty, 0.0)
        p = torch.softmax(s, -1).masked_fill(empty, 0.0)
    else:
        p = torch.softmax(s, -1)
    return torch.einsum("bhqk,bkhd->bqhd", p, vf)


def check_grads(fn, q, k, v, mask=None, seed=0):
    qa, ka, va = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    qr, kr, vr = (x.detach().double().requires_grad_(True) for x in (q, k, v))
    out = fn(qa, ka, va)
    ref = reference64(qr, kr, vr, mask)
    do = rand(*ref.shape, dtype=torch.float32, seed=seed)
    out.backward(do.to(out.dtype))
    ref.backward(do.double())
    for name, got, want in (("out", out, ref), ("dq", qa.grad, qr.grad), ("dk", ka.grad, kr.grad),
                            ("dv", va.grad, vr.grad)):
        assert torch.isfinite(got).all(), name
        rel = float((got.double() - want.double()).norm() / want.double().norm())
        assert rel < GRAD_REL[q.dtype], f"{name}: rel_err={rel:.3g} >= {GRAD_REL[q.dtype]}"


def token_mask(bm: np.ndarray, n: int, tile: int) -> Any:
    return torch.from_numpy(np.repeat(np.repeat(bm, tile, axis=1), tile, axis=2)[:, :n, :n]).cuda()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "heads", "heads_kv", "head_dim", "causal"), [
    (1000, 4, 4, 128, False), (777, 8, 2, 64, True), (1024, 2, 1, 128, True), (300, 2, 2, 256, False)])
def test_dense_grads_cuda(dtype, n, heads, heads_kv, head_dim, causal):
    q = rand(2, n, heads, head_dim, dtype=dtype, seed=1)
    k = rand(2, n, heads_kv, head_dim, dtype=dtype, seed=2)
    v = rand(2, n, heads_kv, head_dim, dtype=dtype, seed=3)
    mask = torch.ones(n, n, dtype=torch.bool, device="cuda").tril() if causal else None
    check_grads(lambda q, k, v: attention(q, k, v, causal=causal), q, k, v, mask, seed=n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "tile", "map_heads", "heads", "heads_kv"), [
    (1000, 128, 4, 4, 2), (2048, 64, 1, 8, 8), (777, 128, 2, 2, 1)])
def test_block_sparse_grads_cuda(dtype, n, tile, map_heads, heads, heads_kv):
    nb = -(-n // tile)
    rng = np.random.default_rng(n)
    bm = rng.random((map_heads, nb, nb)) < 0.4
    bm[:, -1, -1] = True
    bm[:, 0, :] = False  # a Q block that visits nothing
    prepared = prepare_block_map(bm, seq_len=n, q_tile=tile, kv_tile=tile, device="cuda")
    q = rand(1, n, heads, 128, dtype=dtype, seed=4)
    k = rand(1, n, heads_kv, 128, dtype=dtype, seed=5)
    v = rand(1, n, heads_kv, 128, dtype=dtype, seed=6)
    check_grads(lambda q, k, v: block_sparse_attention(q, k, v, prepared), q, k, v, token_mask(bm, n, tile), seed=n)


def _graph_matches_eager(fn, q, k, v):
    qg, kg, vg = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    do = rand(*q.shape, dtype=q.dtype, seed=9)

    def step():
        return torch.autograd.grad(fn(qg, kg, vg), (qg, kg, vg), do)

    eager = step()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(static, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_cuda_graph_captures_forward_and_backward():
    q, k, v = (rand(1, 1024, 4, 128, dtype=torch.bfloat16, seed=s) for s in (1, 2, 3))
    _graph_matches_eager(lambda q, k, v: attention(q, k, v, causal=True), q, k, v)
    bm = np.random.default_rng(0).random((4, 8, 8)) < 0.5
    bm[:, :, 0] = True
    prepared = prepare_block_map(bm, seq_len=1024, q_tile=128, kv_tile=128, device="cuda")
    _graph_matches_eager(lambda q, k, v: block_sparse_attention(q, k, v, prepared), q, k, v)


def test_compile_fullgraph_dit_block_matches_eager():
    """A small DiT-like block (qkv projection, attention, output projection) compiled with Inductor and
    fullgraph=True: same outputs and gradients as eager, dense and block-sparse."""
    torch._dynamo.reset()
    n, heads, head_dim = 1024, 4, 64
    dim = heads * head_dim
    bm = np.random.default_rng(1).random((heads, 8, 8)) < 0.5
    bm[:, :, 0] = True
    prepared = prepare_block_map(bm, seq_len=n, q_tile=128, kv_tile=128, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    w_qkv = (torch.randn(3 * dim, dim, generator=g, device="cuda") / dim ** 0.5).to(torch.bfloat16)
    w_out = (torch.randn(dim, dim, generator=g, device="cuda") / dim ** 0.5).to(torch.bfloat16)
    x = torch.randn(1, n, dim, generator=g, device="cuda").to(torch.bfloat16)

    def block(x, w_qkv, w_out, sparse):
        q, k, v = (x @ w_qkv.t()).unflatten(-1, (3, heads, head_dim)).unbind(2)
        o = block_sparse_attention(q, k, v, prepared) if sparse else attention(q, k, v)
        return x + o.flatten(-2) @ w_out.t()

    for sparse in (False, True):
        compiled = torch.compile(block, fullgraph=True)
        results = []
        for fn in (block, compiled):
            xs, wq, wo = (t.detach().clone().requires_grad_(True) for t in (x, w_qkv, w_out))
            y = fn(xs, wq, wo, sparse)
            y.float().square().mean().backward()
            results.append((y, xs.grad, wq.grad, wo.grad))
        for got, want in zip(results[1], results[0], strict=True):
            rel = float((got.double() - want.double()).norm() / want.double().norm())
            assert rel < 2e-2, f"sparse={sparse}: rel={rel:.3g}"


def test_out_buffer_with_grad_raises_cuda():
    q = rand(1, 256, 2, 64, dtype=torch.bfloat16, seed=1).requires_grad_(True)
    with pytest.raises(ValueError, match="out="):
        attention(q, q, q, out=torch.empty_like(q))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "n", "heads"), [(2, 1000, 4), (1, 640, 3)])
def test_dense_grads_fused_default_cuda(monkeypatch, dtype, batch, n, heads):
    """The fused backward (dQ by TMA reductions) as the default picks it for large calls, forced at small ones."""
    from sparsesim.kernels import dense_bwd

    monkeypatch.setattr(dense_bwd, "FUSED_MIN_WORK", 0)
    picked: list[dict] = []
    real = dense_bwd.default_config

    def spy(*args):
        picked.append(real(*args))
        return picked[-1]

    monkeypatch.setattr(dense_bwd, "default_config", spy)
    q = rand(batch, n, heads, 128, dtype=dtype, seed=31)
    k = rand(batch, n, heads, 128, dtype=dtype, seed=32)
    v = rand(batch, n, heads, 128, dtype=dtype, seed=33)
    check_grads(attention, q, k, v, seed=n)
    assert picked and picked[0].get("FUSED_DQ") and picked[0]["DQ_ATOMIC"] == "tma"
