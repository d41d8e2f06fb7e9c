"""The GNA backward's ``box`` stream layout under the Triton interpreter: dQ reads K/V and dK/dV reads Q/dO in
place, one 5D TMA box per tile over the tensors' ``[B, L0, L1, L2, H * D]`` views (no permutation pass; the
LSE/Delta rows gathered), where the layout has no dilation and the tile divides it; elsewhere it runs as
``permute``. Gradients against the gather layout's and float64 autograd; which path ran is asserted.
"""

from __future__ import annotations

import importlib
import math
import sys

import pytest
import torch
from kernel_testing import randn

if "sparsesim.kernels.gna_bwd" in sys.modules:  # imported before the interpreter was switched on
    importlib.reload(sys.modules["sparsesim.kernels.gna_bwd"])

from sparsesim.kernels import gna_bwd  # noqa: E402
from sparsesim.kernels.gna import gna_forward  # noqa: E402
from sparsesim.kernels.reference import gna_reference  # noqa: E402

REL = {torch.float32: 2e-5, torch.float16: 5e-3}
SAME = {torch.float32: 1e-6, torch.float16: 1e-3}
BOX = gna_bwd.BwdTuning(dq_stream_layout="box", dkv_stream_layout="box")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), f"{int((~torch.isfinite(a)).sum())} non-finite elements"
    return float((a - b).norm() / b.norm().clamp_min(0.1 * math.sqrt(b.numel())))


@pytest.fixture
def boxes(monkeypatch):
    """Per streamed pair the backward asked to box: whether it was read by boxes (True) or fell back (False)."""
    seen: list[bool] = []
    real = gna_bwd._box_descriptors

    def spy(*args):
        res = real(*args)
        seen.append(res is not None)
        return res

    monkeypatch.setattr(gna_bwd, "_box_descriptors", spy)
    return seen


def _kw(window, stride=1, dilation=1, causal=False):
    return {"window": window, "stride": stride, "dilation": dilation, "causal": causal}


def check(shape, kw, tiles, heads, heads_kv, dtype, seed, batch=1, tuning=BOX):
    dim = 16
    q = randn(batch, *shape, heads, dim, dtype=dtype, seed=seed)
    k = randn(batch, *shape, heads_kv, dim, dtype=dtype, seed=seed + 1)
    v = randn(batch, *shape, heads_kv, dim, dtype=dtype, seed=seed + 2)
    do = randn(*q.shape, dtype=dtype, seed=seed + 3)
    call = {**tiles, **kw}
    out, lse = gna_forward(q, k, v, **call)
    gathered = gna_bwd.gna_backward(do, q, k, v, out, lse, **call)
    boxed = gna_bwd.gna_backward(do, q, k, v, out, lse, tuning=tuning, **call)
    refs = [x.detach().double().requires_grad_() for x in (q, k, v)]
    gna_reference(*refs, **kw).backward(do.double())
    for name, x, g, r in zip(("dq", "dk", "dv"), boxed, gathered, refs, strict=True):
        assert x.shape == g.shape and x.dtype == dtype, name
        assert _rel(x, g) < SAME[dtype], (name, "against the gather layout", _rel(x, g))
        assert _rel(x, r.grad) < REL[dtype], (name, "against float64 autograd", _rel(x, r.grad))


CASES = [
    # id, shape, pattern, tiles, heads, heads_kv, dtype, batch
    ("2d-causal-gqa", (8, 12), _kw((3, 5), (1, 2), 1, (True, False)), {"q_tile": (4, 4)}, 4, 2, torch.float16, 1),
    ("2d-unequal-tiles-batch", (8, 16), _kw((5, 7), (2, 1)), {"q_tile": (4, 4), "kv_tile": (2, 8)}, 2, 1,
     torch.float32, 2),
    ("2d-block-sparse", (8, 8), _kw((4, 4), (4, 4)), {"q_tile": (4, 4)}, 2, 1, torch.float32, 1),
    ("3d-causal", (4, 4, 8), _kw((2, 3, 3), (1, 2, 1), 1, (False, False, True)), {"q_tile": (2, 2, 4)}, 2, 1,
     torch.float32, 1),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_box_matches_gathered_and_float64(case, boxes):
    _, shape, kw, tiles, heads, heads_kv, dtype, batch = case
    check(shape, kw, tiles, heads, heads_kv, dtype, seed=len(shape) + heads, batch=batch)
    assert boxes == [True, True], "dQ and dK/dV each read their streamed pair by boxes"


def test_box_falls_back_to_permuted_where_it_cannot_run(boxes, modes):
    """Dilation, or a layout the tile does not divide: the permuted path runs instead, with the same results."""
    check((9, 7), _kw((3, 3), (1, 2), (2, 1)), {"q_tile": (4, 4)}, 2, 1, torch.float32, seed=21)
    check((9, 8), _kw((3, 3), 1, 1), {"q_tile": (4, 4)}, 2, 1, torch.float32, seed=22)
    assert boxes == [False] * 4 and modes == [2] * 4


def test_one_kernel_boxed(boxes):
    for layouts in (("box", "gather"), ("gather", "box"), ("box", "permute")):
        tuning = gna_bwd.BwdTuning(dq_stream_layout=layouts[0], dkv_stream_layout=layouts[1])
        check((8, 8), _kw((3, 5)), {"q_tile": (4, 4)}, 2, 2, torch.float32, seed=23, tuning=tuning)
    assert boxes == [True, True, True]
