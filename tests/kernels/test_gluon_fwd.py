"""The warp-specialized Gluon forward's selection rule on CPU (the kernel itself: tests/gpu/test_gluon_fwd_cuda.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
gluon_fwd = pytest.importorskip("sparsesim.kernels.gluon_fwd")


def test_not_taken_on_cpu_or_under_the_interpreter():
    q = torch.randn(1, 64, 2, 128, dtype=torch.bfloat16)
    assert not gluon_fwd.supported(q, q, q)
    assert not gluon_fwd.use_ws(q, q, q, work=2 ** 40)


def test_cpu_calls_still_run_the_triton_kernels(monkeypatch):
    """With no size floor the dispatch still never picks the Gluon kernel off a Hopper GPU."""
    from sparsesim.kernels import attention, reference_attention

    monkeypatch.setattr(gluon_fwd, "MIN_WORK", 0)
    q, k, v = (torch.randn(1, 40, 2, 32) for _ in range(3))
    out = attention(q, k, v)
    assert float((out.double() - reference_attention(q, k, v)).abs().max()) < 1e-3
