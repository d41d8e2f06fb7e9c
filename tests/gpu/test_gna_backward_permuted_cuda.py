"""The GNA backward's permuted stream layout compiled for a real GPU (TMA descriptors, and pointers with
``SPARSESIM_NO_TMA=1``): bf16/fp16 gradients against float64 autograd and against the gather layout, at the
backward's own GPU tiles (streamed tiles shrunk from the forward's). Skipped without a CUDA device or under
``TRITON_INTERPRET=1``; run alone: ``python -m pytest tests/gpu/test_gna_backward_permuted_cuda.py``.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("needs a CUDA GPU and compiled (not interpreted) Triton kernels", allow_module_level=True)

from sparsesim.kernels.gna import gna_forward  # noqa: E402
from sparsesim.kernels.gna_bwd import (  # noqa: E402
    DKV_PICK,
    DQ_PICK,
    BwdTuning,
    candidate_tuning,
    gna_backward,
)
from sparsesim.kernels.reference import gna_reference  # noqa: E402

#: Bound on ||grad - ref|| / ||ref|| against float64 autograd (as tests/gpu/test_gna_backward_cuda.py).
REL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


def rand(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32).to(dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all()
    return float((a - b).norm() / b.norm().clamp_min(0.1 * math.sqrt(b.numel())))


CASES = [
    # size, pattern, extras, tiles (None: the cost model's pick), heads, heads_kv, head_dim
    ((1000,), {"window": 129, "causal": True}, {}, None, 4, 2, 128),
    ((40, 36), {"window": (17, 9), "stride": (4, 1), "dilation": (1, 2), "causal": (False, True)}, {},
     ((16, 8), (16, 8)), 4, 4, 64),
    ((64, 64), {"window": (32, 32), "stride": (16, 16)}, {}, ((16, 8), (16, 8)), 2, 1, 128),  # block-sparse
    ((10, 20, 24), {"window": (6, 8, 8), "stride": (1, 4, 8), "causal": (True, False, False)}, {},
     ((2, 8, 8), (2, 8, 8)), 2, 2, 128),
    ((16, 16), {"window": (7, 7)}, {"extra_tokens": 77, "extra_at": "start"}, None, 4, 2, 128),
    ((8, 12, 12), {"window": (4, 6, 6)}, {"extra_tokens": 40, "extra_at": "end"}, None, 2, 2, 128),
]

#: The default settings permuted, and the first call's permuted candidates (dQ's i-th with dK/dV's i-th, cycling).
_DQ = [c for c, _ in DQ_PICK]
_DKV = [c for c, _ in DKV_PICK]
PERMUTED = [BwdTuning(dq_stream_layout="permute", dkv_stream_layout="permute"),
            *(candidate_tuning("dkv", _DKV[i % len(_DKV)], "permute", base=candidate_tuning("dq", c, "permute"))
              for i, c in enumerate(_DQ))]


@pytest.mark.parametrize("no_tma", [False, True], ids=["tma", "pointers"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + ("-extra" if c[2] else ""))
def test_permuted_gradients_cuda(case, dtype, no_tma, monkeypatch):
    if no_tma:
        monkeypatch.setenv("SPARSESIM_NO_TMA", "1")
    size, kw, xkw, tiles, h, hk, d = case
    n = math.prod(size)
    shape = (1, n + xkw["extra_tokens"]) if xkw else (1, *size)
    if xkw:
        xkw = {**xkw, "input_size": size}
    q, k, v, do = (rand(*shape, x, d, dtype=dtype, seed=s) for s, x in enumerate((h, hk, hk, h)))
    call = {**({} if tiles is None else {"q_tile": tiles[0], "kv_tile": tiles[1]}), **kw, **xkw}
    out, lse = gna_forward(q, k, v, **call)
    gathered = gna_backward(do, q, k, v, out, lse, tuning=BwdTuning(), **call)
    refs = [x.double().requires_grad_() for x in (q, k, v)]
    gna_reference(*refs, **kw, **xkw).backward(do.double())
    for tuning in PERMUTED:
        permuted = gna_backward(do, q, k, v, out, lse, tuning=tuning, **call)
        errors = {n_: (rel(p, r.grad), rel(p, g)) for n_, p, g, r in zip("qkv", permuted, gathered, refs, strict=True)}
        assert all(e[0] < REL[dtype] and e[1] < REL[dtype] for e in errors.values()), (tuning, errors)


#: Layouts the fused-dQ backward takes (2D/3D, no extra tokens): CASES' indices.
FUSED_CASES = [c for c in CASES if len(c[0]) > 1 and not c[2]]


@pytest.mark.parametrize("no_tma", [False, True], ids=["tma", "pointers"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_fused_dq_gradients_cuda(case, dtype, no_tma, monkeypatch):
    """dQ added by the dK/dV kernel (TMA reductions, or pointer atomics with ``SPARSESIM_NO_TMA=1``) at each
    setting of two: against float64 autograd and the split backward."""
    from sparsesim.kernels.gna_bwd import fused_tuning

    if no_tma:
        monkeypatch.setenv("SPARSESIM_NO_TMA", "1")
    size, kw, _, tiles, h, hk, d = case
    q, k, v, do = (rand(1, *size, x, d, dtype=dtype, seed=10 + s) for s, x in enumerate((h, hk, hk, h)))
    call = {**({} if tiles is None else {"q_tile": tiles[0], "kv_tile": tiles[1]}), **kw}
    out, lse = gna_forward(q, k, v, **call)
    split = gna_backward(do, q, k, v, out, lse, tuning=PERMUTED[0], **call)
    refs = [x.double().requires_grad_() for x in (q, k, v)]
    gna_reference(*refs, **kw).backward(do.double())
    for candidate in ((1 << 30, 64, 3), (64, 64, 2)):
        fused = gna_backward(do, q, k, v, out, lse, tuning=fused_tuning(candidate), **call)
        errors = {n_: (rel(f, r.grad), rel(f, s)) for n_, f, s, r in zip("qkv", fused, split, refs, strict=True)}
        assert all(e[0] < REL[dtype] and e[1] < REL[dtype] for e in errors.values()), (candidate, errors)


#: Layouts the tiles divide, no dilation: the ``box`` stream layout reads them in place.
BOX_CASES = [
    ((64, 64), {"window": (24, 20), "causal": (True, False)}, ((16, 8), (16, 8)), 4, 2, 128),
    ((8, 16, 32), {"window": (4, 6, 10), "stride": (1, 2, 4)}, ((2, 8, 8), (2, 8, 8)), 2, 2, 128),
    ((32, 48), {"window": (16, 16), "stride": (16, 16)}, ((16, 8), (16, 8)), 3, 1, 64),  # block-sparse
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", BOX_CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_box_gradients_cuda(case, dtype, monkeypatch):
    """The ``box`` stream layout (5D TMA boxes of the caller's tensors, no permutation pass) at the first call's
    candidate settings: against float64 autograd and the permuted layout; the boxes ran."""
    from sparsesim.kernels import gna_bwd

    size, kw, tiles, h, hk, d = case
    ran: list[bool] = []
    real = gna_bwd._box_descriptors
    monkeypatch.setattr(gna_bwd, "_box_descriptors", lambda *a: (ran.append(real(*a) is not None), real(*a))[1])
    q, k, v, do = (rand(1, *size, x, d, dtype=dtype, seed=60 + s) for s, x in enumerate((h, hk, hk, h)))
    call = {"q_tile": tiles[0], "kv_tile": tiles[1], **kw}
    out, lse = gna_forward(q, k, v, **call)
    permuted = gna_backward(do, q, k, v, out, lse, tuning=PERMUTED[0], **call)
    refs = [x.double().requires_grad_() for x in (q, k, v)]
    gna_reference(*refs, **kw).backward(do.double())
    for i, c in enumerate(_DQ):
        tuning = candidate_tuning("dkv", _DKV[i % len(_DKV)], "box", base=candidate_tuning("dq", c, "box"))
        boxed = gna_backward(do, q, k, v, out, lse, tuning=tuning, **call)
        errors = {n_: (rel(x, r.grad), rel(x, p)) for n_, x, p, r in zip("qkv", boxed, permuted, refs, strict=True)}
        assert all(e[0] < REL[dtype] and e[1] < REL[dtype] for e in errors.values()), (tuning, errors)
    assert ran and all(ran), ran
