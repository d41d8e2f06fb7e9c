"""The eager autograd path of ``gna_attention`` (kernels/gna_ops.py ``_EagerGNA``) against the custom ops.

An eager call with grad on plain tensors skips the ops' dispatch; the same call under a torch function mode goes
through ``sparsesim::gna_fwd`` / ``sparsesim::gna_bwd``: outputs and gradients must be identical, double backward
must still raise, an undefined output gradient must give zero gradients, and the per-argument-set cache of the
op arguments must keep ``True`` and ``1`` apart. Under the Triton interpreter (tests/kernels/conftest.py).
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import randn
from torch.overrides import TorchFunctionMode

from sparsesim.kernels import gna_attention

KW = {"window": (3, 3), "q_tile": (4, 4), "causal": (True, False)}


class _Passthrough(TorchFunctionMode):
    """Any active torch function mode routes the call to the custom ops."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _qkvg(seed: int, extra: bool = False):
    shape = (1, 4 + 20, 2, 16) if extra else (1, 6, 5, 2, 16)
    return tuple(randn(*shape, dtype=torch.float32, seed=seed + i) for i in range(4))


def _grads(q, k, v, g, kw, through_ops: bool):
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    if through_ops:
        with _Passthrough():
            o = gna_attention(*leaves, **kw)
    else:
        o = gna_attention(*leaves, **kw)
    return o, torch.autograd.grad(o, leaves, g)


@pytest.mark.parametrize("extra", [False, True])
def test_eager_path_equals_the_ops(extra):
    q, k, v, g = _qkvg(1, extra)
    kw = ({"window": 3, "q_tile": (4, 4), "extra_tokens": 4, "extra_at": "start", "input_size": (4, 5)} if extra
          else KW)
    o_eager, g_eager = _grads(q, k, v, g, kw, through_ops=False)
    o_ops, g_ops = _grads(q, k, v, g, kw, through_ops=True)
    assert type(o_eager.grad_fn).__name__ == "_EagerGNABackward"
    assert "sparsesim_gna_fwd" in type(o_ops.grad_fn).__name__
    assert torch.equal(o_eager, o_ops)
    for a, b in zip(g_eager, g_ops, strict=True):
        assert torch.equal(a, b)


def test_eager_path_double_backward_raises_as_the_ops_do():
    q, k, v, g = _qkvg(5)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o = gna_attention(*leaves, **KW)
    (dq,) = torch.autograd.grad(o, leaves[:1], g, create_graph=True)
    _, (want, _, _) = _grads(q, k, v, g, KW, through_ops=True)
    assert torch.equal(dq, want)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        torch.autograd.grad(dq.sum(), leaves[:1])


def test_undefined_output_gradient_gives_zeros():
    class Drop(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return None

    q, k, v, _ = _qkvg(9)
    leaf = q.clone().requires_grad_()
    o = gna_attention(leaf, k, v, **KW)
    (dq,) = torch.autograd.grad(Drop.apply(o).sum() + leaf.sum() * 0, (leaf,))
    assert torch.equal(dq, torch.zeros_like(q))


def test_cached_op_arguments_keep_bool_and_int_apart():
    q, k, v, _ = _qkvg(13)
    leaf = q.clone().requires_grad_()
    gna_attention(leaf, k, v, scale=1, **KW)  # cached for scale=1
    with pytest.raises(ValueError, match="scale=True"):
        gna_attention(leaf, k, v, scale=True, **KW)
