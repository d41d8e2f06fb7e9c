"""The GNA forward+backward's repeated-call host path (launch arguments, permuted pairs, K/V preparation and
the LSE/Delta rows cached per call key): a repeated call reuses its cached state, and a call that changes any
key field (strides, window, tuning, stream layout) gets fresh state whose results match the float64 reference.
Under the Triton interpreter (tests/kernels/conftest.py).
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

from sparsesim.kernels import gna, gna_bwd  # noqa: E402
from sparsesim.kernels.gna import gna_attention, gna_forward  # noqa: E402
from sparsesim.kernels.reference import gna_reference  # noqa: E402

PERMUTED = gna_bwd.BwdTuning(dq_stream_layout="permute", dkv_stream_layout="permute")
REL = 2e-5  # float32 against float64 autograd (as tests/kernels/test_gna_backward.py)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(0.1 * math.sqrt(b.numel())))


def _check(q, k, v, do, kw, tuning=None):
    """Forward and backward against the float64 reference; returns the backward's (dq, dk, dv)."""
    out, lse = gna_forward(q, k, v, **kw)
    grads = gna_bwd.gna_backward(do, q, k, v, out, lse, tuning=tuning, **kw)
    refs = [x.detach().double().requires_grad_() for x in (q, k, v)]
    pattern = {name: kw[name] for name in ("window", "stride", "dilation", "causal") if name in kw}
    ref = gna_reference(*refs, **pattern)
    ref.backward(do.double())
    assert _rel(out, ref) < REL
    for name, g, r in zip(("dq", "dk", "dv"), grads, refs, strict=True):
        assert _rel(g, r.grad) < REL, (name, _rel(g, r.grad))
    return grads


def _qkvg(shape, seed):
    return tuple(randn(1, *shape, 2, 16, dtype=torch.float32, seed=seed + i) for i in range(4))


def _backward_of(q, k, v, kw, tuning):
    fwd = gna.cached_launch(q, k, v, (kw["window"], kw.get("stride", 1), kw.get("dilation", 1),
                                      kw.get("causal", False), kw.get("q_tile"), kw.get("kv_tile"), None, None), 0)
    return gna_bwd._BACKWARDS.get((gna.tensors_key(q, k, v), fwd, tuning))


@pytest.mark.parametrize("tuning", [None, PERMUTED], ids=["gather", "permute"])
def test_repeated_call_reuses_its_launch_state(tuning):
    q, k, v, do = _qkvg((9, 7), seed=1)
    kw = {"window": (3, 5), "stride": (1, 2), "q_tile": (4, 4)}
    first = _check(q, k, v, do, kw, tuning)
    bwd = _backward_of(q, k, v, kw, tuning)
    assert bwd is not None and len(bwd.launch_args) == 2  # dQ's and dK/dV's arguments, built once
    args = dict(bwd.launch_args)
    second = _check(q, k, v, do, kw, tuning)
    assert _backward_of(q, k, v, kw, tuning) is bwd
    assert bwd.launch_args == args and all(bwd.launch_args[s] is args[s] for s in args)  # reused, not rebuilt
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_changed_strides_window_and_tuning_give_fresh_results():
    q, k, v, do = _qkvg((9, 7), seed=3)
    kw = {"window": (3, 5), "q_tile": (4, 4)}
    _check(q, k, v, do, kw, PERMUTED)
    bwd = _backward_of(q, k, v, kw, PERMUTED)
    # dO with other strides (a transposed copy seen through a view): a new argument signature of the same backward
    do_t = do.transpose(1, 2).contiguous().transpose(1, 2)
    assert do_t.stride() != do.stride()
    _check(q, k, v, do_t, kw, PERMUTED)
    # dQ reads dO in place (a new signature); dK/dV reads it permuted into buffers of the same strides (the same)
    assert len(bwd.launch_args) == 3 and len({s[0] for s in bwd.launch_args}) == 2
    # q/k/v with other strides: another forward launch and backward
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    _check(qt, kt, vt, do, kw, PERMUTED)
    assert _backward_of(qt, kt, vt, kw, PERMUTED) is not bwd
    # another window, the same tensors: another forward launch, another backward
    _check(q, k, v, do, {**kw, "window": (5, 3)}, PERMUTED)
    assert _backward_of(q, k, v, {**kw, "window": (5, 3)}, PERMUTED) is not bwd
    # another tuning and the gather layout on the same call
    for tuning in (None, gna_bwd.BwdTuning(dq_stream_layout="permute")):
        _check(q, k, v, do, kw, tuning)
        assert _backward_of(q, k, v, kw, tuning) is not bwd


def test_pointer_loads_after_descriptors_on_the_same_key(monkeypatch, modes):
    """``SPARSESIM_NO_TMA=1`` between two calls of one key: the cached pair falls back to pointer loads."""
    q, k, v, do = _qkvg((8, 6), seed=5)
    kw = {"window": (3, 3), "q_tile": (4, 4), "kv_layout": "permute"}
    first = _check(q, k, v, do, kw, PERMUTED)
    monkeypatch.setenv("SPARSESIM_NO_TMA", "1")
    second = _check(q, k, v, do, kw, PERMUTED)
    assert modes == [2, 2, 1, 1]
    for a, b in zip(first, second, strict=True):
        assert _rel(a, b) < 1e-6


def test_permuted_rows_match_stacked_rows():
    """The LSE/Delta rows permuted from Delta's two-row buffer equal the stacked rows permuted."""
    from sparsesim.kernels.permute import tile_permute

    lse = randn(2, 3, 9 * 7, dtype=torch.float32, seed=11)
    delta = randn(2, 3, 9 * 7, dtype=torch.float32, seed=12)
    pair = torch.empty(2, 2, 3, 63)
    pair[1] = delta
    layouts: dict = {}
    for _ in range(2):  # the second call through the cached layout
        rows = gna_bwd._permuted_rows(lse, pair, (9, 7), (4, 4), (2, 1), layouts)
        stacked = torch.stack((lse * gna_bwd.LOG2E, delta), dim=-1).permute(0, 2, 1, 3).unflatten(1, (9, 7))
        assert torch.equal(rows, tile_permute(stacked, (4, 4), dilation=(2, 1)))
    assert len(layouts) == 1


def test_eager_autograd_repeated_matches_reference():
    """Through gna_attention with grad (the eager autograd path hands the forward's launch to the backward)."""
    q, k, v, do = _qkvg((6, 5), seed=7)
    kw = {"window": (3, 3), "q_tile": (4, 4), "causal": (True, False)}
    refs = [x.detach().double().requires_grad_() for x in (q, k, v)]
    gna_reference(*refs, **{n: kw[n] for n in ("window", "causal")}).backward(do.double())
    for _ in range(2):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        o = gna_attention(*leaves, **kw)
        grads = torch.autograd.grad(o, leaves, do)
        for g, r in zip(grads, refs, strict=True):
            assert _rel(g, r.grad) < REL


def test_measured_pick_key_is_hashable_and_tells_calls_apart():
    # The small-layer pick's cache key (kernels/gna.py pick_key): list-valued arguments are fine, and any change
    # of pattern argument, scale or persistent option gives another key.
    import torch

    from sparsesim.kernels.gna import pick_key
    from sparsesim.simulator import GNAPattern

    q = torch.randn(1, 8, 8, 2, 16)
    pattern = GNAPattern(input_size=(8, 8), window=(3, 3))
    kw = {"window": [3, 3], "stride": 1, "dilation": 1, "causal": False, "scale": None, "kv_layout": None,
          "extra": 0}
    keys = {pick_key(pattern, q, q, q, kw, None), pick_key(pattern, q, q, q, {**kw, "window": [3, 5]}, None),
            pick_key(pattern, q, q, q, {**kw, "scale": 0.5}, None), pick_key(pattern, q, q, q, kw, True),
            pick_key(pattern, q, q, q, kw, 4)}
    assert len(keys) == 5
    assert pick_key(pattern, q, q, q, dict(reversed(list(kw.items()))), None) in keys
