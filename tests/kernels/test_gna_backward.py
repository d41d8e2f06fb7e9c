"""GNA backward (dQ, dK, dV), the forward's log-sum-exp and the torch custom ops, under the Triton interpreter.

Gradients through ``gna_attention`` (autograd via ``sparsesim::gna_fwd`` / ``sparsesim::gna_bwd``) against torch
autograd of the float64 reference (``kernels/reference.py``'s masked attention built from the core's masks); the
log-sum-exp against ``torch.logsumexp`` of the same masked float64 scores; the transposed schedule against the
core's transposed counts and tile classes; op registration (``torch.library.opcheck``); ``torch.compile
(fullgraph=True)`` on CPU with ``backend="aot_eager"`` (Inductor would need a C++ toolchain for the rest of the
graph; the custom op is the same opaque node under every backend); the "no backward" raise path.
"""

from __future__ import annotations

import importlib
import math
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_testing import randn

if "sparsesim.kernels.gna_bwd" in sys.modules:  # imported before the interpreter was switched on
    importlib.reload(sys.modules["sparsesim.kernels.gna_bwd"])

from sparsesim.kernels import gna_attention  # noqa: E402
from sparsesim.kernels.gna import gna_forward  # noqa: E402
from sparsesim.kernels.gna_plan import plan_gna  # noqa: E402
from sparsesim.kernels.reference import gna_reference, sequence_mask  # noqa: E402
from sparsesim.simulator import GNAPattern  # noqa: E402
from sparsesim.simulator.patterns import visible_mask  # noqa: E402

#: Bound on ||grad - ref|| / ||ref|| per dtype (fp16: P and dS are rounded to fp16 before their matmuls).
REL = {torch.float32: 2e-5, torch.float16: 5e-3}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``, the norm floored at 0.1 per element (a gradient can be exactly zero: window 1)."""
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), f"{int((~torch.isfinite(a)).sum())} non-finite elements"
    return float((a - b).norm() / b.norm().clamp_min(0.1 * math.sqrt(b.numel())))


def _inputs(shape, heads, heads_kv, dtype, seed, dim=16):
    q = randn(*shape, heads, dim, dtype=dtype, seed=seed)
    k = randn(*shape, heads_kv, dim, dtype=dtype, seed=seed + 1)
    v = randn(*shape, heads_kv, dim, dtype=dtype, seed=seed + 2)
    do = randn(*shape, heads, dim, dtype=dtype, seed=seed + 3)
    return q, k, v, do


def _mask(q, kw, xkw):
    size = xkw.get("input_size") or tuple(q.shape[1:-2])
    pattern = GNAPattern(input_size=tuple(size), **kw)
    if xkw:
        return sequence_mask(pattern, xkw["extra_tokens"], xkw["extra_at"])
    return visible_mask(pattern)


def _lse_reference(q, k, mask):
    """logsumexp of the masked scores, float64 ``[B, H, T]`` (the quantity the forward saves)."""
    group = q.shape[-2] // k.shape[-2]
    qf = q.double().flatten(1, -3)
    kf = k.double().flatten(1, -3).repeat_interleave(group, dim=-2)
    s = torch.einsum("bihd,bjhd->bhij", qf, kf) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~torch.as_tensor(mask)[None, None], float("-inf"))
    return torch.logsumexp(s, dim=-1)


def check_grads(shape, kw, xkw, tile, heads, heads_kv, dtype, seed, batch=1, kv_tile=None):
    q, k, v, do = _inputs((batch, *shape), heads, heads_kv, dtype, seed)
    tiles = {"q_tile": tile, "kv_tile": tile if kv_tile is None else kv_tile}
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = gna_attention(*leaves, **tiles, **kw, **xkw)
    assert out.grad_fn is not None and out.dtype == dtype
    out.backward(do)
    refs = [x.double().requires_grad_() for x in (q, k, v)]
    want = gna_reference(*refs, **kw, **xkw)
    want.backward(do.double())
    errors = {"out": _rel(out, want), **{f"d{n}": _rel(a.grad, r.grad) for n, a, r in zip("qkv", leaves, refs,
                                                                                           strict=True)}}
    assert all(e < REL[dtype] for e in errors.values()), errors
    _, lse = gna_forward(q, k, v, **tiles, **kw, **xkw)
    assert lse.shape == (batch, heads, math.prod(shape)) and lse.dtype == torch.float32
    assert _rel(lse, _lse_reference(q, k, _mask(q, kw, xkw))) < 1e-6


def _kw(window, stride=1, dilation=1, causal=False):
    return {"window": window, "stride": stride, "dilation": dilation, "causal": causal}


CASES = [
    # id, shape, pattern, extras, tile, heads, heads_kv, dtype
    ("1d", (37,), _kw(9), {}, 16, 2, 1, torch.float32),
    ("1d-causal-stride-gqa", (40,), _kw(8, 4, 1, True), {}, 16, 4, 2, torch.float16),
    ("1d-dilation", (45,), _kw(5, 2, 3), {}, 16, 2, 1, torch.float32),
    ("2d-causal-axis", (7, 10), _kw((5, 7), (2, 3), 1, (False, True)), {}, (4, 4), 2, 1, torch.float32),
    ("2d-dilation-odd", (9, 7), _kw((3, 3), (1, 2), (2, 2), (True, False)), {}, (4, 4), 2, 2, torch.float16),
    ("2d-block-sparse", (8, 8), _kw((4, 4), (4, 4)), {}, (4, 4), 2, 1, torch.float32),
    ("3d", (3, 4, 5), _kw((2, 3, 3), (1, 2, 1), 1, (False, False, True)), {}, (2, 2, 4), 2, 1, torch.float32),
    ("1d-extra-end", (37,), _kw(9, 2), {"extra_tokens": 7, "extra_at": "end"}, 16, 2, 1, torch.float32),
    ("1d-extra-start-gqa", (30,), _kw(7), {"extra_tokens": 5, "extra_at": "start"}, 16, 4, 2, torch.float16),
    ("1d-causal-sinks", (40,), _kw(8, 4, 1, True), {"extra_tokens": 5, "extra_at": "start"}, 16, 2, 1,
     torch.float32),
    ("2d-extra-tiles", (8, 6), _kw((3, 3), (1, 2)), {"extra_tokens": 19, "extra_at": "start"}, (4, 4), 2, 1,
     torch.float32),
    ("2d-sinks", (6, 5), _kw((3, 3), 1, 1, (True, False)), {"extra_tokens": 3, "extra_at": "start"}, (4, 4), 2, 1,
     torch.float16),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradients_match_float64_autograd(case):
    _, shape, kw, xkw, tile, heads, heads_kv, dtype = case
    if xkw:
        xkw = {**xkw, "input_size": shape}
        shape = (math.prod(shape) + xkw["extra_tokens"],)
    check_grads(shape, kw, xkw, tile, heads, heads_kv, dtype, seed=len(CASES[0][0]) + len(shape))


def test_gradients_unequal_tiles_batch_default_tiles():
    check_grads((9, 6), _kw((4, 3), (2, 1), (1, 2)), {}, (4, 4), 2, 1, torch.float32, seed=3, kv_tile=(2, 8))
    check_grads((40,), _kw(11, 3), {}, None, 2, 2, torch.float32, seed=4, batch=2)


def test_gradients_of_strided_views():
    """q, k, v as views of one fused qkv tensor; the gradient flows back into it."""
    qkv = randn(1, 7, 9, 3, 2, 16, dtype=torch.float32, seed=5).requires_grad_()
    kw = _kw((3, 5), (1, 2))
    out = gna_attention(qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2], q_tile=(4, 4), **kw)
    do = randn(*out.shape, dtype=torch.float32, seed=6)
    out.backward(do)
    ref = qkv.detach().double().requires_grad_()
    gna_reference(ref[:, :, :, 0], ref[:, :, :, 1], ref[:, :, :, 2], **kw).backward(do.double())
    assert _rel(qkv.grad, ref.grad) < REL[torch.float32]


@st.composite
def small_configs(draw):
    rank = draw(st.integers(1, 2))
    size, window, stride, dilation, causal = [], [], [], [], []
    for _ in range(rank):
        n = draw(st.integers(3, {1: 33, 2: 9}[rank]))
        d = draw(st.integers(1, min(2, n)))
        w = draw(st.integers(1, n // d))
        size.append(n)
        dilation.append(d)
        window.append(w)
        stride.append(draw(st.integers(1, w)))
        causal.append(draw(st.booleans()))
    tile = draw(st.sampled_from({1: [(16,)], 2: [(4, 4), (2, 8)]}[rank]))
    return tuple(size), _kw(tuple(window), tuple(stride), tuple(dilation), tuple(causal)), tile


@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(small_configs())
def test_gradients_property(config):
    size, kw, tile = config
    check_grads(size, kw, {}, tile, 2, 1, torch.float32, seed=21)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(small_configs(), st.sampled_from([(4, 4), (2, 8), (8, 2)]))
def test_transposed_schedule_is_the_cores(config, kv2):
    """Per KV tile, the Q tiles the dK/dV kernel visits (and sees whole) are the core's transposed counts and,
    as sets, the transpose of the core's tile classes."""
    size, kw, tile = config
    kv_tile = tile if len(size) == 1 else kv2
    plan = plan_gna(size, q_tile=tile, kv_tile=kv_tile, **kw)
    pad = 3 - len(size)
    for a, axis in enumerate(plan.schedule.axes):
        for g, s in enumerate(axis.groups):
            rows = plan.ranges_t[a + pad, g, :s.kv_tiles]
            assert np.array_equal(rows[:, 1], s.kv_count) and np.array_equal(rows[:, 3], s.kv_full_count)
            assert not rows[s.kv_tiles:].any() if rows.shape[0] > s.kv_tiles else True
    for group in plan.schedule.group_tuples:
        visited, full = plan.schedule.tile_classes(group)
        vis_t, full_t = np.ones((1, 1), bool), np.ones((1, 1), bool)
        for a, (axis, g) in enumerate(zip(plan.schedule.axes, group, strict=True)):
            s = axis.groups[g]
            first, count, ff, fc = (plan.ranges_t[a + pad, g, :s.kv_tiles, i][:, None] for i in range(4))
            qi = np.arange(s.q_tiles)[None, :]
            va = (qi >= first) & (qi < first + count)
            fa = (qi >= ff) & (qi < ff + fc)
            vis_t = (vis_t[:, None, :, None] & va[None, :, None, :]).reshape(vis_t.shape[0] * s.kv_tiles, -1)
            full_t = (full_t[:, None, :, None] & fa[None, :, None, :]).reshape(full_t.shape[0] * s.kv_tiles, -1)
        assert np.array_equal(vis_t, visited.T) and np.array_equal(full_t, full.T)


def test_saving_the_lse_changes_nothing_else():
    q, k, v, _ = _inputs((1, 9, 8), 2, 1, torch.float16, seed=8)
    kw = _kw((3, 5), (1, 2), 1, (True, False))
    fast = gna_attention(q, k, v, q_tile=(4, 4), **kw)
    out, _ = gna_forward(q, k, v, q_tile=(4, 4), **kw)
    assert torch.equal(fast, out)


def test_no_grad_keeps_the_fast_path_and_in_place_calls():
    q, k, v, _ = _inputs((1, 20), 2, 1, torch.float32, seed=9)
    leaf = q.clone().requires_grad_()
    buf = torch.empty_like(q)
    with torch.no_grad():
        got = gna_attention(leaf, k, v, window=5, q_tile=16, out=buf)
    assert got is buf and got.grad_fn is None
    assert gna_attention(q, k, v, window=5, q_tile=16).grad_fn is None


@pytest.mark.parametrize("kwargs", [{"out": "buffer"}, {"heads": [0, 1]}])
def test_in_place_calls_raise_when_grad_is_required(kwargs):
    q, k, v, _ = _inputs((1, 20), 2, 1, torch.float32, seed=10)
    if "out" in kwargs:
        kwargs = {"out": torch.empty_like(q)}
    with pytest.raises(ValueError, match="has no backward") as info:
        gna_attention(q.requires_grad_(), k, v, window=5, q_tile=16, **kwargs)
    assert "\n" not in str(info.value)


def test_opcheck_forward_and_backward_ops():
    q, k, v, do = _inputs((1, 20), 2, 1, torch.float32, seed=11)
    pattern = ([5], [2], [1], [True], [16], None, None, None, 3, "start", [17])
    fwd = torch.ops.sparsesim.gna_fwd.default
    torch.library.opcheck(fwd, (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), *pattern))
    out, lse = fwd(q.detach(), k.detach(), v.detach(), *pattern)
    torch.library.opcheck(torch.ops.sparsesim.gna_bwd.default, (do, q.detach(), k.detach(), v.detach(), out, lse,
                                                                 *pattern))


class _Block(torch.nn.Module):
    """A tiny DiT-like block: projections, GNA on a 2D layout with text tokens first, an output projection."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.qkv = torch.nn.Parameter(torch.randn(dim, 3 * dim, generator=gen) / math.sqrt(dim))
        self.proj = torch.nn.Parameter(torch.randn(dim, dim, generator=gen) / math.sqrt(dim))
        self.heads = heads

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (x @ self.qkv).view(b, t, 3, self.heads, c // self.heads).unbind(2)
        o = gna_attention(q, k, v, window=(3, 3), q_tile=(4, 4), extra_tokens=4, extra_at="start",
                          input_size=(4, 5))
        return x + o.reshape(b, t, c) @ self.proj


def test_compile_fullgraph_matches_eager():
    block = _Block()
    x = randn(1, 24, 32, dtype=torch.float32, seed=12)
    want = block(x)
    want.square().sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    got.square().sum().backward()
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)
    for p, g in zip(block.parameters(), grads, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-6)
