"""The GNA training forward on the warp-specialized route: output and log-sum-exp in token order.

:meth:`GNALaunch.run` with an LSE buffer on the ws route, the Gluon kernel (GPU only) replaced by a torch stand-in
that honours its contract (tensors in place, each plan tile a box of the layout numbered row-major over the tile
grid, block lists, LSE in token order), against the Triton GNA kernel's output, LSE and gradients. The GPU tests
check the kernel itself against the float64 reference.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from kernel_testing import randn


def box_tiles(layout: tuple[int, ...], tile: tuple[int, ...]) -> torch.Tensor:
    """Each token's box tile (row-major tokens; tiles row-major over the tile grid), by plain loops."""
    grid = [n // t for n, t in zip(layout, tile, strict=True)]
    ids = []
    for coord in itertools.product(*(range(n) for n in layout)):
        t = 0
        for c, s, g in zip(coord, tile, grid, strict=True):
            t = t * g + c // s
        ids.append(t)
    return torch.tensor(ids)


def fake_ws_forward(calls):
    """``gluon_fwd.ws_forward``'s box contract in torch: ``[B, *layout, H, D]`` tensors read in place, Q box
    tiles of 128 tokens visiting the listed KV box tiles, the LSE (natural log) into a contiguous ``[B, H, N]``."""

    def ws_forward(q, k, v, out, lse, scale, *, lists, map_heads, block_n, box, cache, persistent):
        # the launch is persistent by the rule on the Q tiles' mean visited KV tiles (the stand-in rule: <= 1)
        assert persistent is bool(lists[0].double().mean() <= 1)
        layout, q_tile, kv_tile = box
        assert map_heads == 1 and math.prod(q_tile) == 128 and math.prod(kv_tile) == block_n
        assert tuple(q.shape[1:-2]) == layout[3 - (q.dim() - 3):] and all(n == 1 for n in layout[:3 - (q.dim() - 3)])
        assert lse is None or (lse.is_contiguous() and lse.shape == (q.shape[0], q.shape[-2], math.prod(layout)))
        kv_num, kv_idx, _ = (x.long() for x in lists)
        allowed = torch.zeros(kv_num.shape[1], math.prod(layout) // block_n, dtype=torch.bool)
        for t in range(kv_num.shape[1]):
            allowed[t, kv_idx[0, t, :kv_num[0, t]]] = True
        mask = allowed[box_tiles(layout, q_tile)][:, box_tiles(layout, kv_tile)]
        batch, heads, dim = q.shape[0], q.shape[-2], q.shape[-1]
        group = heads // k.shape[-2]
        qq, kk, vv = (x.double().reshape(batch, -1, x.shape[-2], dim).transpose(1, 2) for x in (q, k, v))
        kk, vv = (x.repeat_interleave(group, 1) for x in (kk, vv))
        s = (qq @ kk.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
        out.copy_((s.softmax(-1) @ vv).transpose(1, 2).reshape(out.shape).to(out.dtype))
        if lse is not None:
            lse.copy_(s.logsumexp(-1))
        calls.append(lse is not None)
        return out

    return ws_forward


@pytest.fixture
def ws_route(monkeypatch):
    """A switch: ``on()`` sends every GNA launch down the ws route to the torch stand-in; yields its calls."""
    from types import SimpleNamespace

    from sparsesim.kernels import gna

    calls: list[bool] = []

    def on():
        monkeypatch.setattr(gna.GNALaunch, "ws_route", lambda self, q, k, v, out: True)
        monkeypatch.setattr(gna, "ws_kernel", lambda: SimpleNamespace(ws_forward=fake_ws_forward(calls),
                                                                       persistent_for=lambda tiles: tiles <= 1))

    monkeypatch.setattr(gna, "_LAUNCHES", type(gna._LAUNCHES)())
    return on, calls


WS_CASES = [  # size, window, stride, q_tile (128 tokens), kv_tile (64/128), heads, heads_kv
    ((2, 16, 16), (2, 8, 8), (2, 8, 8), (2, 8, 8), (2, 8, 8), 2, 1),
    ((4, 16, 16), (4, 8, 8), (2, 8, 8), (2, 8, 8), (2, 8, 8), 2, 2),
    ((32, 32), (16, 16), (16, 16), (16, 8), (8, 8), 2, 2),
]


def test_ws_cases_launch_both_ways():
    """The cases below reach both launches under the stand-in's rule (mean visited KV tiles per Q tile <= 1)."""
    from sparsesim.kernels.gna_plan import block_lists, plan_gna

    means = [float(block_lists(plan_gna(size, window=w, stride=s, q_tile=q, kv_tile=kv))[0].mean())
             for size, w, s, q, kv, _, _ in WS_CASES]
    assert min(means) <= 1 < max(means)


@pytest.mark.parametrize(("size", "window", "stride", "q_tile", "kv_tile", "heads", "heads_kv"), WS_CASES)
def test_training_forward_on_ws_route_matches_triton(ws_route, size, window, stride, q_tile, kv_tile, heads,
                                                     heads_kv):
    from sparsesim.kernels.gna import gna_forward

    on, calls = ws_route
    q = randn(2, *size, heads, 32, dtype=torch.float32, seed=1)
    k = randn(2, *size, heads_kv, 32, dtype=torch.float32, seed=2)
    v = randn(2, *size, heads_kv, 32, dtype=torch.float32, seed=3)
    kw = {"window": window, "stride": stride, "q_tile": q_tile, "kv_tile": kv_tile}
    out_t, lse_t = gna_forward(q, k, v, **kw)  # the Triton GNA kernel (interpreter)
    on()
    for _ in range(2):  # the cached launch's second call too
        out_w, lse_w = gna_forward(q, k, v, **kw)
        torch.testing.assert_close(out_w, out_t, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse_w, lse_t, atol=1e-5, rtol=1e-5)
    assert calls == [True, True]


def test_gradients_on_ws_route_match_triton(ws_route):
    """The backward reads the ws route's LSE (token order) like the Triton kernel's."""
    from sparsesim.kernels import gna_attention

    on, calls = ws_route
    size, heads = (2, 16, 16), 2
    kw = {"window": (2, 8, 8), "stride": (2, 8, 8), "q_tile": (2, 8, 8), "kv_tile": (2, 8, 8)}
    base = [randn(1, *size, heads, 32, dtype=torch.float32, seed=s) for s in (4, 5, 6)]
    do = randn(1, *size, heads, 32, dtype=torch.float32, seed=7)
    grads = []
    for route in ("triton", "ws"):
        if route == "ws":
            on()
        leaves = [x.clone().requires_grad_() for x in base]
        gna_attention(*leaves, **kw).backward(do)
        grads.append([x.grad for x in leaves])
    for name, got, want in zip("qkv", grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"d{name}")
    assert calls == [True]
