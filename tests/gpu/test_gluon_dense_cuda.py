"""The warp-specialized Gluon dense forward (kernels/gluon_dense.py) against the float64 reference on a Hopper GPU.

Gluon has no interpreter path, so this file is the kernel's only correctness check. Skipped without a Hopper
GPU or under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if (not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
        or torch.cuda.get_device_capability()[0] != 9):
    pytest.skip("needs a Hopper GPU and compiled Triton kernels", allow_module_level=True)

from sparsesim.kernels.gluon_dense import gluon_dense_forward  # noqa: E402
from sparsesim.kernels.reference import reference_attention  # noqa: E402

REL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


def rand(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("batch", "n_q", "n_kv", "heads", "heads_kv", "head_dim"),
                         [(1, 1000, 1000, 4, 4, 128), (2, 777, 1300, 4, 4, 128), (1, 2048, 2048, 8, 2, 128),
                          (1, 513, 513, 4, 4, 64), (1, 64, 200, 2, 2, 128)])
@pytest.mark.parametrize(("overlap", "pingpong", "stages"), [(False, False, 2), (True, False, 2), (True, True, 2),
                                                             (True, True, 3)])
def test_gluon_dense_matches_reference(dtype, batch, n_q, n_kv, heads, heads_kv, head_dim, overlap, pingpong,
                                       stages):
    q = rand(batch, n_q, heads, head_dim, dtype=dtype, seed=1)
    k = rand(batch, n_kv, heads_kv, head_dim, dtype=dtype, seed=2)
    v = rand(batch, n_kv, heads_kv, head_dim, dtype=dtype, seed=3)
    out, lse = gluon_dense_forward(q, k, v, overlap=overlap, pingpong=pingpong, stages=stages, return_lse=True)
    ref = reference_attention(q, k, v)  # float64
    assert torch.isfinite(out).all()
    rel = float((out.double() - ref.double()).norm() / ref.double().norm())
    assert rel < REL[dtype], f"rel_err={rel:.3g}"
    group = heads // heads_kv
    s = q.double().transpose(1, 2) @ k.double().transpose(1, 2).repeat_interleave(group, 1).transpose(-1, -2)
    assert float((lse.double() - torch.logsumexp(s * head_dim ** -0.5, -1)).abs().max()) < 1e-2
