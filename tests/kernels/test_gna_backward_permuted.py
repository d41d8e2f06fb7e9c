"""The GNA backward's permuted stream layout (``BwdTuning(dq_stream_layout="permute", dkv_stream_layout=...)``)
under the Triton interpreter: dQ streams K/V and dK/dV streams Q/dO (and their LSE/Delta rows) from buffers
permuted once per call into contiguous tiles, loaded one block per tile (TMA descriptors where
``descriptors_ok`` allows, pointers with ``SPARSESIM_NO_TMA=1``). Under the interpreter both kernels keep the
forward's tiles, so the permuted buffers have the forward's tile shapes.

Gradients against the gather layout's (same arithmetic: equal up to rounding) and against torch autograd of the
float64 reference (``kernels/reference.py``), on 1D/2D/3D layouts with stride, dilation, causal axes, GQA, odd
sizes (padded tiles), unequal Q/KV tiles, batch, block-sparse patterns and extra tokens.
"""

from __future__ import annotations

import importlib
import math
import sys

import pytest
import torch
from kernel_testing import check_backward_tuning, gna_kw, randn

if "sparsesim.kernels.gna_bwd" in sys.modules:  # imported before the interpreter was switched on
    importlib.reload(sys.modules["sparsesim.kernels.gna_bwd"])

from sparsesim.kernels import gna_bwd  # noqa: E402
from sparsesim.kernels.gna import gna_forward  # noqa: E402
from sparsesim.kernels.gna_bwd import BwdTuning, gna_backward  # noqa: E402

#: Bound on ||permuted - gathered|| / ||gathered|| (the same products and sums; padded rows add exact zeros).
SAME = {torch.float32: 1e-6, torch.float16: 1e-3}

PERMUTED = BwdTuning(dq_stream_layout="permute", dkv_stream_layout="permute")
_kw = gna_kw


def check(shape, kw, tiles, heads, heads_kv, dtype, seed, *, xkw=None, batch=1, tuning=PERMUTED, views=None):
    """Permuted against gathered and against float64 autograd; ``views``: (q, k, v) given instead of random."""
    check_backward_tuning(shape, kw, tiles, heads, heads_kv, dtype, seed, tuning=tuning, same=SAME, xkw=xkw,
                          batch=batch, views=views)


CASES = [
    # id, shape, pattern, tiles, heads, heads_kv, dtype, batch
    ("1d-causal-stride-gqa", (40,), _kw(8, 4, 1, True), {"q_tile": 16, "kv_tile": 16}, 4, 2, torch.float16, 1),
    ("1d-dilation-odd-batch", (45,), _kw(5, 2, 3), {"q_tile": 16, "kv_tile": 16}, 2, 1, torch.float32, 2),
    ("2d-dilation-odd-causal", (9, 7), _kw((3, 3), (1, 2), (2, 2), (True, False)), {"q_tile": (4, 4)}, 2, 2,
     torch.float16, 1),
    ("2d-unequal-tiles", (9, 6), _kw((4, 3), (2, 1), (1, 2)), {"q_tile": (4, 4), "kv_tile": (2, 8)}, 2, 1,
     torch.float32, 1),
    ("2d-block-sparse", (8, 8), _kw((4, 4), (4, 4)), {"q_tile": (4, 4)}, 2, 1, torch.float32, 1),
    # several full tiles per axis: KV tiles per Q tile (dQ) and Q tiles per KV tile (dK/dV) on both axes
    ("2d-wide", (8, 24), _kw((5, 17)), {"q_tile": (4, 4)}, 2, 1, torch.float32, 1),
    ("1d-wide-causal", (100,), _kw(63, 1, 1, True), {"q_tile": 16}, 2, 2, torch.float16, 1),
    ("3d-causal", (3, 4, 5), _kw((2, 3, 3), (1, 2, 1), 1, (False, False, True)), {"q_tile": (2, 2, 4)}, 2, 1,
     torch.float32, 1),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_permuted_matches_gathered_and_float64(case, modes):
    _, shape, kw, tiles, heads, heads_kv, dtype, batch = case
    check(shape, kw, tiles, heads, heads_kv, dtype, seed=len(shape) + heads, batch=batch)
    assert modes == [2, 2], "dQ and dK/dV each permute once per call, through TMA descriptors"


EXTRA_CASES = [
    # id, layout, pattern, extras, tile, heads, heads_kv, dtype
    ("1d-extra-end", (37,), _kw(9, 2), {"extra_tokens": 7, "extra_at": "end"}, 16, 2, 1, torch.float32),
    ("2d-extra-start-gqa", (8, 6), _kw((3, 3), (1, 2)), {"extra_tokens": 19, "extra_at": "start"}, (4, 4), 4, 2,
     torch.float16),
    ("1d-causal-sinks", (40,), _kw(8, 4, 1, True), {"extra_tokens": 5, "extra_at": "start"}, 16, 2, 1,
     torch.float32),
]


@pytest.mark.parametrize("case", EXTRA_CASES, ids=[c[0] for c in EXTRA_CASES])
def test_permuted_with_extra_tokens(case, modes):
    _, size, kw, xkw, tile, heads, heads_kv, dtype = case
    xkw = {**xkw, "input_size": size}
    check((math.prod(size) + xkw["extra_tokens"],), kw, {"q_tile": tile}, heads, heads_kv, dtype, seed=7, xkw=xkw)
    assert modes == [2, 2]


@pytest.mark.parametrize("layouts", [("permute", "gather"), ("gather", "permute")])
def test_pointer_loads_and_one_kernel_permuted(layouts, modes, monkeypatch):
    """Without TMA descriptors the permuted buffers are read through pointers; each kernel's layout is its own."""
    monkeypatch.setenv("SPARSESIM_NO_TMA", "1")
    tuning = BwdTuning(dq_stream_layout=layouts[0], dkv_stream_layout=layouts[1])
    check((9, 7), _kw((3, 5), (2, 1), (2, 1), (False, True)), {"q_tile": (4, 4)}, 4, 2, torch.float32, seed=3,
          tuning=tuning)
    assert modes == [1]


def test_views_with_unequal_strides(modes):
    """q, k, v as views of one fused qkv tensor (k and v share strides, dO does not share q's): the pairs whose
    strides differ are permuted by two passes."""
    qkv = randn(1, 7, 9, 3, 2, 16, dtype=torch.float32, seed=5)
    views = (qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2])
    check((7, 9), _kw((3, 5), (1, 2)), {"q_tile": (4, 4)}, 2, 2, torch.float32, seed=5, views=views)
    assert modes == [2, 2]


def test_layout_is_validated_and_gather_stays_the_default():
    q = randn(1, 20, 2, 16, dtype=torch.float32, seed=9)
    out, lse = gna_forward(q, q, q, window=5, q_tile=16)
    with pytest.raises(ValueError, match="dkv_stream_layout='tma'; allowed: gather, permute"):
        gna_backward(out, q, q, q, out, lse, window=5, q_tile=16, tuning=BwdTuning(dkv_stream_layout="tma"))
    assert BwdTuning().dq_stream_layout == BwdTuning().dkv_stream_layout == "gather"
    picked = gna_bwd.candidate_tuning("dkv", gna_bwd.DKV_CANDIDATES[1],
                                      base=gna_bwd.candidate_tuning("dq", gna_bwd.DQ_CANDIDATES[0], "permute"))
    # gna_bwd.BwdTuning, not the name imported above: another test file may reload the module at collection.
    assert picked == gna_bwd.BwdTuning(dq_resident=1 << 30, dq_stream=64, dq_stages=3, dkv_resident=1 << 30,
                                       dkv_stream=32, dkv_stages=3, dq_stream_layout="permute")
    # The first call's pick tries each pair once, boxed where it can (permuted otherwise), with valid settings.
    for pick, valid in ((gna_bwd.DQ_PICK, gna_bwd.DQ_PERMUTED_CANDIDATES),
                        (gna_bwd.DKV_PICK, gna_bwd.DKV_PERMUTED_CANDIDATES)):
        assert len(set(pick)) == len(pick) >= 3 and {lay for _, lay in pick} == {"box"}
        assert {c for c, _ in pick} <= set(valid)
    # 1D layouts: their tiles are contiguous rows already; the pick tries every gathered candidate, nothing permuted.
    assert gna_bwd.DQ_PICK_1D == tuple((c, "gather") for c in gna_bwd.DQ_CANDIDATES)
    assert gna_bwd.DKV_PICK_1D == tuple((c, "gather") for c in gna_bwd.DKV_CANDIDATES)
