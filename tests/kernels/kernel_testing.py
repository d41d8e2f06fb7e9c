"""Shared helpers of the kernel tests: the per-dtype tolerance table and a reporting comparison."""

from __future__ import annotations

import numpy as np
import pytest
import torch

#: (atol, rtol, bound on ||out - ref|| / ||ref||) per dtype.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5, 1e-5),
    torch.float16: (3e-3, 3e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2, 1e-2),
}


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """Elementwise (atol, rtol) check plus the relative-error bound; on failure, say how many
    elements mismatch and where the worst one is."""
    atol, rtol, rel_bound = TOLERANCES[dtype]
    o = out.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    assert o.shape == r.shape, f"shape {tuple(o.shape)} != reference {tuple(r.shape)}"
    assert torch.isfinite(o).all(), f"{int((~torch.isfinite(o)).sum())} non-finite elements in the output"
    err = (o - r).abs()
    bad = err > atol + rtol * r.abs()
    rel = float((o - r).norm() / r.norm().clamp_min(1e-300))
    if bad.any() or rel >= rel_bound:
        worst = np.unravel_index(int(err.argmax()), tuple(err.shape))
        pytest.fail(f"{int(bad.sum())} of {bad.numel()} elements mismatch (atol={atol}, rtol={rtol}); "
                    f"worst at {tuple(int(i) for i in worst)}: got {float(o[worst]):.6g}, "
                    f"want {float(r[worst]):.6g}; rel_err={rel:.3g} (bound {rel_bound})")


def randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype)




#: Bound on ||grad - ref|| / ||ref|| against float64 autograd (as tests/kernels/test_gna_backward.py).
GRAD_REL = {torch.float32: 2e-5, torch.float16: 5e-3}


def grad_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``, the norm floored at 0.1 per element (a gradient can be exactly zero)."""
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), f"{int((~torch.isfinite(a)).sum())} non-finite elements"
    return float((a - b).norm() / b.norm().clamp_min(0.1 * (b.numel() ** 0.5)))


def gna_kw(window, stride=1, dilation=1, causal=False) -> dict:
    """A GNA pattern's keywords."""
    return {"window": window, "stride": stride, "dilation": dilation, "causal": causal}


def check_backward_tuning(shape, kw, tiles, heads, heads_kv, dtype, seed, *, tuning, same, xkw=None, batch=1,
                          views=None) -> None:
    """The GNA backward with ``tuning`` against the default one (gathered streams, the same products: within
    ``same[dtype]``) and against float64 autograd (``GRAD_REL``), on random inputs of head dim 16 (``views``:
    ``(q, k, v)`` given instead). The modules are looked up per call: the interpreter tests reload them."""
    from sparsesim.kernels import gna_bwd
    from sparsesim.kernels.gna import gna_forward
    from sparsesim.kernels.reference import gna_reference

    xkw = xkw or {}
    dim = 16
    if views is None:
        q = randn(batch, *shape, heads, dim, dtype=dtype, seed=seed)
        k = randn(batch, *shape, heads_kv, dim, dtype=dtype, seed=seed + 1)
        v = randn(batch, *shape, heads_kv, dim, dtype=dtype, seed=seed + 2)
    else:
        q, k, v = views
    do = randn(*q.shape, dtype=dtype, seed=seed + 3)
    call = {**tiles, **kw, **xkw}
    out, lse = gna_forward(q, k, v, **call)
    default = gna_bwd.gna_backward(do, q, k, v, out, lse, **call)
    tuned = gna_bwd.gna_backward(do, q, k, v, out, lse, tuning=tuning, **call)
    refs = [x.detach().double().requires_grad_() for x in (q, k, v)]
    gna_reference(*refs, **kw, **xkw).backward(do.double())
    for name, t, g, r in zip(("dq", "dk", "dv"), tuned, default, refs, strict=True):
        assert t.shape == g.shape and t.dtype == dtype, name
        assert grad_rel(t, g) < same[dtype], (name, "against the default backward", grad_rel(t, g))
        assert grad_rel(t, r.grad) < GRAD_REL[dtype], (name, "against float64 autograd", grad_rel(t, r.grad))
