"""Dense attention backward (Triton interpreter): gradients against float64 autograd, the custom op, compile; the
fused path (dQ by atomics) against float64 too."""

from __future__ import annotations

import pytest
import torch
from grad_testing import check_grads, leaves, reference64
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_testing import randn

from sparsesim.kernels import attention, dense_bwd
from sparsesim.kernels.dense import dense_forward
from sparsesim.kernels.dense_bwd import bwd_config, dense_backward


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


# --------------------------------------------------------------------------------------------
# The fused path (config FUSED_DQ): dK/dV and dQ in one kernel, dQ added by atomics.
# --------------------------------------------------------------------------------------------

class _PinnedBackward(torch.autograd.Function):
    """``attention(..., return_lse=True)`` whose backward runs :func:`dense_backward` with a pinned config."""

    @staticmethod
    def forward(ctx, q, k, v, causal, config):
        out, lse = dense_forward(q, k, v, causal=causal, want_lse=True)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.config = causal, config
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = dense_backward(dout, q, k, v, out, lse, dlse, q.shape[-1] ** -0.5, ctx.causal,
                                    config=ctx.config)
        return dq, dk, dv, None, None


@pytest.fixture
def launched(monkeypatch) -> list[tuple[str, dict]]:
    """(kernel name, constexprs) of every backward launch."""
    seen: list[tuple[str, dict]] = []
    real = dense_bwd.launch

    def spy(kernel, grid, args, constexprs, options):
        seen.append((kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__, dict(constexprs)))
        return real(kernel, grid, args, constexprs, options)

    monkeypatch.setattr(dense_bwd, "launch", spy)
    return seen


def _fused(bm: int, bn: int, atomic: str = "ptr") -> dict:
    return {**bwd_config(16), "FUSED_DQ": 1, "DQ_ATOMIC": atomic, "BLOCK_M1": bm, "BLOCK_N1": bn}


def _check_fused(dtype, n_q, n_kv, heads, heads_kv, head_dim, causal, config, seed=0):
    q = randn(2, n_q, heads, head_dim, dtype=dtype, seed=seed + 1)
    k = randn(2, n_kv, heads_kv, head_dim, dtype=dtype, seed=seed + 2)
    v = randn(2, n_kv, heads_kv, head_dim, dtype=dtype, seed=seed + 3)
    check_grads(lambda q, k, v: _PinnedBackward.apply(q, k, v, causal, config), q, k, v,
                _causal(n_q, n_kv) if causal else None, seed=seed + n_q)


def _kernels(launched) -> list[str]:
    return [name for name, _ in launched if name != "_bwd_preprocess_kernel"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("n_q", "n_kv", "heads", "heads_kv", "head_dim", "causal", "bm", "bn"), [
    (50, 50, 2, 2, 16, False, 16, 32),   # ragged last Q and KV tiles
    (70, 45, 4, 2, 32, True, 16, 32),    # causal cross attention, GQA, more queries than keys
    (37, 70, 3, 1, 16, True, 32, 16),    # MQA, causal with fewer queries than keys, Q tiles taller than KV tiles
    (64, 64, 2, 1, 16, True, 16, 32),    # whole tiles (no KV mask), the diagonal across tile boundaries
    (33, 96, 2, 2, 16, False, 32, 32),   # whole KV tiles, ragged Q tile
])
def test_fused_grads_match_float64(launched, dtype, n_q, n_kv, heads, heads_kv, head_dim, causal, bm, bn):
    _check_fused(dtype, n_q, n_kv, heads, heads_kv, head_dim, causal, _fused(bm, bn), seed=n_kv)
    assert _kernels(launched) == ["_dense_bwd_fused_kernel"]
    assert launched[-1][1]["EVEN_N"] == (n_kv % bn == 0) and launched[-1][1]["DQ_TMA"] is False


@settings(max_examples=10, deadline=None, derandomize=True)
@given(n_q=st.integers(17, 99), n_kv=st.integers(17, 99), heads_kv=st.sampled_from([1, 2]),
       group=st.sampled_from([1, 3]), causal=st.booleans(), tiles=st.sampled_from([(16, 32), (32, 16), (16, 16)]))
def test_fused_random_odd_sizes(n_q, n_kv, heads_kv, group, causal, tiles):
    _check_fused(torch.float32, n_q | 1, n_kv | 1, heads_kv * group, heads_kv, 16, causal, _fused(*tiles),
                 seed=n_q * n_kv)


@pytest.mark.parametrize("causal", [False, True])
def test_fused_padded_keys_with_very_negative_scores(causal):
    """Every score near -120: ``exp(-lse)`` overflows float32, so a padded key row (K = 0, score 0) left unmasked
    gives ``P = inf`` there and ``inf * 0 = nan`` in dQ."""
    q = 30.0 + 0.1 * randn(1, 50, 2, 16, dtype=torch.float32, seed=1)  # causal: rows 41.. reach the padded keys
    k = -1.0 + 0.1 * randn(1, 41, 2, 16, dtype=torch.float32, seed=2)
    v = randn(1, 41, 2, 16, dtype=torch.float32, seed=3)
    check_grads(lambda q, k, v: _PinnedBackward.apply(q, k, v, causal, _fused(16, 32)), q, k, v,
                _causal(50, 41) if causal else None)


@pytest.fixture
def descriptor_reduce(monkeypatch):
    """The interpreter taught TMA reductions (``desc.atomic_add``): masked pointer atomics over the descriptor's
    block, rows outside the tensor dropped as the hardware drops them."""
    import triton.runtime.interpreter as interp

    builder = interp.interpreter_builder
    ir = interp._ir

    def reduce(kind, desc, value, indices):
        assert kind == ir.DESCRIPTOR_REDUCE_KIND.ADD
        ptrs, mask = desc.materialize_pointers(indices)
        return builder.create_atomic_rmw(ir.ATOMIC_OP.FADD, ptrs, value, mask, ir.MEM_SEMANTIC.RELAXED,
                                         ir.MEM_SYNC_SCOPE.GPU)

    monkeypatch.setattr(builder, "create_descriptor_reduce", reduce, raising=False)


@pytest.mark.parametrize(("n_q", "n_kv", "heads", "heads_kv", "causal", "bm", "bn"), [
    (45, 70, 4, 2, True, 16, 32),    # ragged last Q tile of every (batch, head) block: TMA drops its rows
    (64, 50, 3, 3, False, 32, 16),
])
def test_fused_tma_reduction(launched, descriptor_reduce, n_q, n_kv, heads, heads_kv, causal, bm, bn):
    assert dense_bwd.tma_reduce_ok(torch.device("cpu"))
    _check_fused(torch.float32, n_q, n_kv, heads, heads_kv, 16, causal, _fused(bm, bn, "tma"), seed=n_q)
    assert _kernels(launched) == ["_dense_bwd_fused_kernel"] and launched[-1][1]["DQ_TMA"] is True


def test_fused_tma_without_interpreter_support_uses_pointer_atomics(launched):
    _check_fused(torch.float32, 40, 40, 2, 1, 16, True, _fused(16, 32, "tma"))
    assert launched[-1][1]["DQ_TMA"] is False


def test_fused_bad_atomic_raises():
    q, k, v, do = (randn(1, 20, 2, 16, dtype=torch.float32, seed=s) for s in (1, 2, 3, 4))
    out, lse = dense_forward(q, k, v, want_lse=True)
    with pytest.raises(ValueError, match="DQ_ATOMIC='cas'"):
        dense_backward(do, q, k, v, out, lse, None, 0.25, config=_fused(16, 32, "cas"))
