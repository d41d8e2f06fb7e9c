"""Dense attention backward (Triton interpreter): gradients against float64 autograd, the custom op, compile."""

from __future__ import annotations

import pytest
import torch
from grad_testing import check_grads, leaves, reference64
from kernel_testing import randn

from sparsesim.kernels import attention


def _causal(n_q: int, n_kv: int) -> torch.Tensor:
    return torch.ones(n_q, n_kv, dtype=torch.bool).tril()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("n_q", "n_kv", "heads", "heads_kv", "head_dim", "causal"), [
    (50, 50, 2, 2, 16, False),   # ragged last tiles
    (70, 45, 4, 2, 32, True),    # causal cross attention, GQA, more queries than keys
    (37, 70, 3, 1, 16, True),    # MQA, causal with fewer queries than keys
    (64, 64, 2, 1, 16, True),    # whole tiles, the diagonal across tile boundaries
])
def test_dense_grads_match_float64(dtype, n_q, n_kv, heads, heads_kv, head_dim, causal):
    q = randn(2, n_q, heads, head_dim, dtype=dtype, seed=1)
    k = randn(2, n_kv, heads_kv, head_dim, dtype=dtype, seed=2)
    v = randn(2, n_kv, heads_kv, head_dim, dtype=dtype, seed=3)
    check_grads(lambda q, k, v: attention(q, k, v, causal=causal, return_lse=True), q, k, v,
                _causal(n_q, n_kv) if causal else None, seed=n_q)


def test_dense_grads_strided_inputs_and_scale():
    # [B, H, N, D] storage viewed as [B, N, H, D]; only k requires grad.
    q = randn(1, 2, 40, 16, dtype=torch.float32, seed=4).transpose(1, 2)
    k = randn(1, 2, 40, 16, dtype=torch.float32, seed=5).transpose(1, 2)
    v = randn(1, 2, 40, 16, dtype=torch.float32, seed=6).transpose(1, 2)
    check_grads(lambda q, k, v: attention(q, k, v, scale=0.3, return_lse=True), q, k, v, scale=0.3, with_lse=False)
    kk = k.detach().clone().requires_grad_(True)
    attention(q, kk, v).sum().backward()
    assert kk.grad is not None and kk.grad.shape == k.shape


def test_dense_no_grad_keeps_the_direct_path():
    q, k, v = leaves(*(randn(1, 33, 2, 16, dtype=torch.float32, seed=s) for s in (7, 8, 9)))
    with torch.no_grad():
        out = attention(q, k, v)
    assert out.grad_fn is None
    assert attention(q.detach(), k.detach(), v.detach()).grad_fn is None
    assert attention(q, k, v).grad_fn is not None


def test_dense_out_buffer_with_grad_raises():
    q, k, v = leaves(*(randn(1, 20, 2, 16, dtype=torch.float32, seed=s) for s in (1, 2, 3)))
    with pytest.raises(ValueError, match="out="):
        attention(q, k, v, out=torch.empty(1, 20, 2, 16))
    with torch.no_grad():  # no grad wanted: the buffer is fine
        buf = torch.empty(1, 20, 2, 16)
        assert attention(q, k, v, out=buf) is buf


def test_dense_opcheck():
    q, k, v = leaves(*(randn(1, 24, 2, 16, dtype=torch.float32, seed=s) for s in (1, 2, 3)))
    torch.library.opcheck(torch.ops.sparsesim.dense_fwd.default, (q, k, v, 0.25, True, []))
    out, lse = torch.ops.sparsesim.dense_fwd(q.detach(), k.detach(), v.detach(), 0.25, False, [])
    do = torch.randn_like(out)
    torch.library.opcheck(torch.ops.sparsesim.dense_bwd.default,
                          (do, q.detach(), k.detach(), v.detach(), out, lse, None, 0.25, False))


def test_dense_compile_fullgraph_matches_eager():
    """torch.compile(fullgraph=True) traces the wrapper to the custom op (no graph break). Backend aot_eager:
    Inductor would compile the graph around the op to C++ for the CPU, which adds nothing to what this
    checks and costs a compiler run; tests/gpu runs Inductor."""
    torch._dynamo.reset()
    q, k, v = (randn(1, 40, 2, 16, dtype=torch.float32, seed=s) for s in (11, 12, 13))

    def block(q, k, v):
        o = attention(q * 1.5, k, v, causal=True)
        return (o.square() + o).sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    qa, ka, va = leaves(q, k, v)
    qe, ke, ve = leaves(q, k, v)
    compiled(qa, ka, va).backward()
    block(qe, ke, ve).backward()
    for got, want in ((qa, qe), (ka, ke), (va, ve)):
        assert torch.allclose(got.grad, want.grad, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # compiled, no grad: through the op too
        ref, _ = reference64(q * 1.5, k, v, _causal(40, 40))
        out = torch.compile(lambda q, k, v: attention(q * 1.5, k, v, causal=True), fullgraph=True,
                            backend="aot_eager")(q, k, v)
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-5
