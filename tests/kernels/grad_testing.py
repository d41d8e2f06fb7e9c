"""Gradient checks of the attention kernels: a float64 torch-autograd reference and the comparison.

The reference is plain masked softmax attention differentiated by torch in float64 (no backward formula of
ours in it). A query row that sees no key outputs zeros (as the kernels do) and gets no gradient.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Bound on ||grad - ref|| / ||ref|| per dtype (forward: kernel_testing.TOLERANCES).
GRAD_REL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def reference64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None,
                scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, N_q, H, D], lse [B, H, N_q])`` in float64, differentiable; ``mask`` bool ``[N_q, N_kv]`` or
    ``[H or 1, N_q, N_kv]`` (True = visible). Rows that see nothing: out 0, lse -inf."""
    group = q.shape[2] // k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kf = k.double().repeat_interleave(group, 2)
    vf = v.double().repeat_interleave(group, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), kf) * scale
    if mask is None:
        return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), vf), torch.logsumexp(s, -1)
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask, device=q.device)
    m = (m[None] if m.dim() == 2 else m)[None].bool()  # [1, H or 1, N_q, N_kv]
    empty = ~m.any(-1, keepdim=True)
    s = s.masked_fill(~m, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.softmax(s.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, vf), lse


def leaves(*xs: torch.Tensor) -> list[torch.Tensor]:
    """Fresh leaf copies that require grad."""
    return [x.detach().clone().requires_grad_(True) for x in xs]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a64).all(), f"{int((~torch.isfinite(a64)).sum())} non-finite elements"
    return float((a64 - b64).norm() / b64.norm().clamp_min(1e-300))


def check_grads(run: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None,
                scale: float | None = None, *, with_lse: bool = True, seed: int = 0) -> None:
    """``run(q, k, v) -> (out, lse)`` differentiated against :func:`reference64`: output, LSE (finite rows)
    and the gradients of q, k, v for a random ``dO`` (and a random ``dLSE`` when ``with_lse``)."""
    dtype = q.dtype
    g = torch.Generator(device="cpu").manual_seed(seed)
    qa, ka, va = leaves(q, k, v)
    qr, kr, vr = leaves(q.double(), k.double(), v.double())
    out, lse = run(qa, ka, va)
    ref_out, ref_lse = reference64(qr, kr, vr, mask, scale)
    do = torch.randn(ref_out.shape, generator=g, dtype=torch.float64).to(q.device)
    dl = torch.randn(ref_lse.shape, generator=g, dtype=torch.float64).to(q.device) if with_lse else None
    finite = torch.isfinite(ref_lse)
    loss = (out.double() * do).sum()
    ref_loss = (ref_out * do).sum()
    if dl is not None:
        loss = loss + (lse.double().masked_fill(~finite, 0.0) * dl).sum()
        ref_loss = ref_loss + (ref_lse.masked_fill(~finite, 0.0) * dl).sum()
    loss.backward()
    ref_loss.backward()
    assert rel_err(out, ref_out) < GRAD_REL[dtype], "output"
    assert torch.equal(torch.isfinite(lse), finite), "rows with no visible key have LSE -inf, the others finite"
    assert rel_err(lse[finite], ref_lse[finite]) < 1e-5, "lse"
    for name, got, want in (("dq", qa.grad, qr.grad), ("dk", ka.grad, kr.grad), ("dv", va.grad, vr.grad)):
        assert got is not None and want is not None, f"{name}: no gradient"
        assert got.dtype == dtype and got.shape == want.shape
        err = rel_err(got, want)
        assert err < GRAD_REL[dtype], f"{name}: rel_err={err:.3g} >= {GRAD_REL[dtype]}"
