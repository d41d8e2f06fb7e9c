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


