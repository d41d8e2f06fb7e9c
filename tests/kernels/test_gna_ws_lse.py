"""The GNA training forward on the warp-specialized route: its log-sum-exp comes back from tile order.

:func:`sparsesim.kernels.permute.tile_unpermute_rows` against a brute-force tile numbering and against
``tile_permute`` of the rows seen as ``[B, *spatial, H, 1]``; then :meth:`GNALaunch.run` with an LSE buffer on
the ws route, the Gluon kernel (GPU only) replaced by a torch stand-in that honours its contract (heads-major
permuted rows, block lists, LSE in tile order), against the Triton GNA kernel's output, LSE and gradients.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from kernel_testing import randn

from sparsesim.kernels.permute import make_layout, tile_permute, tile_unpermute_rows

LAYOUTS = [
    ((37,), (16,), (1,)),
    ((23,), (16,), (3,)),
    ((8, 16), (4, 8), (1, 1)),
    ((5, 7), (4, 4), (1, 2)),
    ((2, 16, 16), (2, 8, 8), (1, 1, 1)),
    ((6, 5, 9), (2, 2, 4), (2, 1, 2)),
]


def tile_rows_brute(rows: torch.Tensor, size: tuple, tile: tuple, dilation: tuple) -> torch.Tensor:
    """``[B, H, N]`` token-order rows -> ``[B * G, H, padded]`` tile order, by plain loops (zero padding)."""
    layout = make_layout(size, tile, dilation)
    batch, heads = rows.shape[:2]
    out = torch.zeros(batch * layout.groups, heads, layout.padded_tokens, dtype=rows.dtype)
    groups = list(itertools.product(*(range(d) for d in dilation)))
    for gi, g in enumerate(groups):
        for t, t_idx in enumerate(itertools.product(*(range(n) for n in layout.grid))):
            for r, r_idx in enumerate(itertools.product(*(range(s) for s in tile))):
                coord = [(ti * s + ri) * d + ga for ti, s, ri, d, ga in zip(t_idx, tile, r_idx, dilation, g,
                                                                            strict=True)]
                if all(c < n for c, n in zip(coord, size, strict=True)):
                    tok = int(np.ravel_multi_index(coord, size))
                    for b in range(batch):
                        out[b * layout.groups + gi, :, t * layout.volume + r] = rows[b, :, tok]
    return out


@pytest.mark.parametrize(("size", "tile", "dilation"), LAYOUTS)
def test_rows_back_to_token_order_brute_force(size, tile, dilation):
    rows = randn(2, 3, math.prod(size), dtype=torch.float32, seed=sum(size))
    rp = tile_rows_brute(rows, size, tile, dilation)
    assert torch.equal(tile_unpermute_rows(rp, size, tile, dilation=dilation), rows)


@pytest.mark.parametrize(("size", "tile", "dilation"), LAYOUTS)
def test_rows_round_trip_through_tile_permute(size, tile, dilation):
    """The rows as ``[B, *spatial, H, 1]`` through ``tile_permute`` (tested on its own), then back."""
    rows = randn(2, 3, math.prod(size), dtype=torch.float32, seed=7 + sum(size))
    x = rows.transpose(1, 2).reshape(2, *size, 3, 1)
    rp = tile_permute(x, tile, dilation=dilation)[..., 0]
    assert torch.equal(tile_unpermute_rows(rp, size, tile, dilation=dilation), rows)


def test_rows_into_a_strided_view_write_only_its_tokens():
    """``out`` a slice of a longer sequence's buffer ``[B, H, E + N]`` (the forward's layout rows after sinks)."""
    size, tile = (8, 16), (4, 8)
    n = math.prod(size)
    rows = randn(2, 3, n, dtype=torch.float32, seed=5)
    buf = torch.full((2, 3, 5 + n + 2), float("nan"))
    view = buf[:, :, 5:5 + n]
    got = tile_unpermute_rows(tile_rows_brute(rows, size, tile, (1, 1)), size, tile, out=view)
    assert got is view
    assert torch.equal(buf[:, :, 5:5 + n], rows)
    assert buf[:, :, :5].isnan().all() and buf[:, :, 5 + n:].isnan().all()


def test_rows_refuse_wrong_shapes():
    rp = torch.zeros(2, 3, 100)
    with pytest.raises(ValueError, match="tile_unpermute_rows: rp has shape"):
        tile_unpermute_rows(rp, (37,), (16,))
    with pytest.raises(ValueError, match="tile_unpermute_rows: out has shape"):
        tile_unpermute_rows(torch.zeros(2, 3, 48), (37,), (16,), out=torch.zeros(2, 3, 36))


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_rows_any_layout(data):
    rank = data.draw(st.integers(1, 3))
    size = tuple(data.draw(st.integers(1, 40 if rank == 1 else 12)) for _ in range(rank))
    tile = tuple(data.draw(st.sampled_from([1, 2, 4, 8, 16])) for _ in range(rank))
    assume(16 <= math.prod(tile) <= 256)  # the tile volumes the kernels take
    dilation = tuple(data.draw(st.integers(1, min(n, 3))) for n in size)
    rows = randn(1, 2, math.prod(size), dtype=torch.float32, seed=data.draw(st.integers(0, 99)))
    rp = tile_rows_brute(rows, size, tile, dilation)
    assert torch.equal(tile_unpermute_rows(rp, size, tile, dilation=dilation), rows)


# ---- GNALaunch.run with an LSE buffer on the ws route (the Gluon kernel stood in for by torch) ----


def fake_ws_forward(calls):
    """``gluon_fwd.ws_forward``'s contract in torch: heads-major ``[B, H, N, D]`` permuted tensors, 128-row Q
    tiles visiting the listed KV tiles, the LSE (natural log) at ``[b, h, permuted row]``."""

    def ws_forward(q, k, v, out, lse, scale, *, lists, map_heads, block_n, heads_major, cache):
        assert heads_major and map_heads == 1 and (lse is None or lse.shape == q.shape[:3])
        kv_num, kv_idx, _ = (x.long() for x in lists)
        n_q, n_kv = int(q.shape[2]), int(k.shape[2])
        allowed = torch.zeros(kv_num.shape[1], n_kv // block_n, dtype=torch.bool)
        for t in range(kv_num.shape[1]):
            allowed[t, kv_idx[0, t, :kv_num[0, t]]] = True
        mask = allowed[torch.arange(n_q) // 128][:, torch.arange(n_kv) // block_n]
        group = int(q.shape[1]) // int(k.shape[1])
        kk, vv = (x.double().repeat_interleave(group, 1) for x in (k, v))
        s = (q.double() @ kk.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
        out.copy_((s.softmax(-1) @ vv).to(out.dtype))
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
        monkeypatch.setattr(gna, "ws_kernel", lambda: SimpleNamespace(ws_forward=fake_ws_forward(calls)))

    monkeypatch.setattr(gna, "_LAUNCHES", type(gna._LAUNCHES)())
    return on, calls


WS_CASES = [  # size, window, stride, q_tile (128 tokens), kv_tile (64/128), heads, heads_kv
    ((2, 16, 16), (2, 8, 8), (2, 8, 8), (2, 8, 8), (2, 8, 8), 2, 1),
    ((4, 16, 16), (4, 8, 8), (2, 8, 8), (2, 8, 8), (2, 8, 8), 2, 2),
    ((32, 32), (16, 16), (16, 16), (16, 8), (8, 8), 2, 2),
]


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
