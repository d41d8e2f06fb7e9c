"""The warp-specialized Gluon dense forward (kernels/gluon_fwd.py) against the float64 reference on a Hopper GPU.

Gluon has no interpreter path, so this file is the kernel's only correctness check. Skipped without a Hopper
GPU or under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
if (not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
        or torch.cuda.get_device_capability()[0] != 9):
    pytest.skip("needs a Hopper GPU and compiled Triton kernels", allow_module_level=True)

from sparsesim.kernels.gluon_fwd import gluon_dense_forward  # noqa: E402
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


@pytest.fixture
def ws_calls(monkeypatch):
    """Every eligible call takes the warp-specialized kernel (no size floor, fresh launch caches); yields the
    list of its launches (``sparse`` flags) so a test can check it ran."""
    from sparsesim.kernels import block_sparse, dense, gluon_fwd, gna

    calls: list[bool] = []
    real = gluon_fwd.ws_forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("lists") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(gluon_fwd, "MIN_WORK", 0)
    monkeypatch.setattr(gluon_fwd, "ws_forward", spy)
    monkeypatch.setattr(dense, "_LAUNCHES", type(dense._LAUNCHES)())
    monkeypatch.setattr(block_sparse, "_LAUNCHES", type(block_sparse._LAUNCHES)())
    monkeypatch.setattr(gna, "_LAUNCHES", type(gna._LAUNCHES)())
    monkeypatch.delenv("SPARSESIM_FWD_KERNEL", raising=False)
    return calls


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("batch", "n", "heads", "heads_kv", "head_dim"), [(2, 1000, 4, 2, 128), (1, 777, 2, 2, 64)])
def test_attention_runs_ws_kernel_with_gradients(ws_calls, dtype, batch, n, heads, heads_kv, head_dim):
    """``attention`` forward (twice: the cached launch too) and its backward on the forward's LSE."""
    from test_block_backward_cuda import check_grads

    from sparsesim.kernels import attention

    q = rand(batch, n, heads, head_dim, dtype=dtype, seed=4)
    k = rand(batch, n, heads_kv, head_dim, dtype=dtype, seed=5)
    v = rand(batch, n, heads_kv, head_dim, dtype=dtype, seed=6)
    for _ in range(2):
        out = attention(q, k, v)
        ref = reference_attention(q, k, v)
        assert float((out.double() - ref.double()).norm() / ref.double().norm()) < REL[dtype]
    check_grads(attention, q, k, v, seed=n)
    assert ws_calls == [False] * 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "kv_tile", "map_heads", "heads", "heads_kv"), [
    (1000, 128, 4, 4, 2), (2048, 64, 1, 8, 8), (777, 128, 2, 2, 1), (4096, 128, 3, 3, 3)])
def test_block_sparse_runs_ws_kernel_with_gradients(ws_calls, dtype, n, kv_tile, map_heads, heads, heads_kv):
    """Random maps with a Q block that visits nothing and the padded last block; forward and gradients."""
    import numpy as np
    from test_block_backward_cuda import check_grads

    from sparsesim.kernels import block_sparse_attention, prepare_block_map

    qb, kb = -(-n // 128), -(-n // kv_tile)
    rng = np.random.default_rng(n)
    bm = rng.random((map_heads, qb, kb)) < 0.3
    bm[:, -1, -1] = True
    bm[:, 0, :] = False
    prepared = prepare_block_map(bm, seq_len=n, q_tile=128, kv_tile=kv_tile, device="cuda")
    q = rand(1, n, heads, 128, dtype=dtype, seed=7)
    k = rand(1, n, heads_kv, 128, dtype=dtype, seed=8)
    v = rand(1, n, heads_kv, 128, dtype=dtype, seed=9)
    mask = torch.from_numpy(np.repeat(np.repeat(bm, 128, axis=1), kv_tile, axis=2)[:, :n, :n]).cuda()
    out = block_sparse_attention(q, k, v, prepared)
    ref = reference_attention(q, k, v, mask[0] if map_heads == 1 else mask)
    assert float((out.double() - ref.double()).norm() / ref.double().norm()) < REL[dtype]
    assert float(out[:, :128].abs().max()) == 0.0  # the Q block that visits nothing
    check_grads(lambda q, k, v: block_sparse_attention(q, k, v, prepared), q, k, v, mask, seed=n)
    assert ws_calls == [True, True]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("batch", "size", "window", "stride", "q_tile", "kv_tile", "heads", "heads_kv", "head_dim"), [
    (2, (8, 16, 32), (2, 8, 8), (2, 8, 8), (2, 8, 8), (2, 8, 8), 4, 2, 128),
    (1, (6, 24, 40), (6, 8, 8), (2, 8, 8), (2, 8, 8), (2, 8, 8), 3, 3, 128),
    (2, (4, 16, 24), (4, 8, 8), (2, 8, 8), (2, 8, 8), (1, 8, 8), 2, 1, 64),
    (1, (64, 64), (48, 48), (16, 16), (16, 8), (16, 8), 2, 1, 128),
    (1, (64, 64), (32, 32), (16, 16), (16, 8), (8, 8), 2, 2, 128),
    (1, (32, 96), (16, 48), (16, 16), (8, 16), (4, 16), 3, 3, 64),
    (2, (4096,), (1024,), (128,), (128,), (64,), 2, 2, 128)])
def test_gna_block_sparse_runs_ws_kernel(ws_calls, dtype, batch, size, window, stride, q_tile, kv_tile, heads,
                                         heads_kv, head_dim):
    """A perfectly block-sparse GNA call (no dilation, tiles dividing the layout): each tile read in place as a
    TMA box of the layout, the output rows written to their tokens."""
    from sparsesim.kernels import gna_attention
    from sparsesim.kernels.reference import gna_reference

    q = rand(batch, *size, heads, head_dim, dtype=dtype, seed=11)
    k = rand(batch, *size, heads_kv, head_dim, dtype=dtype, seed=12)
    v = rand(batch, *size, heads_kv, head_dim, dtype=dtype, seed=13)
    kw = {"window": window, "stride": stride}
    for _ in range(2):
        out = gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, **kw)
        ref = gna_reference(q, k, v, **kw)
        assert torch.isfinite(out).all()
        assert float((out.double() - ref.double()).norm() / ref.double().norm()) < REL[dtype]
    assert ws_calls == [True, True]


@pytest.fixture
def ws_lse(ws_calls, monkeypatch):
    """:func:`ws_calls`, plus the list of its launches' LSE flags (whether an LSE buffer was passed: the training
    forward); the sparse flags stay in ``ws_calls``."""
    from sparsesim.kernels import gluon_fwd

    flags: list[bool] = []
    spy = gluon_fwd.ws_forward

    def lse_spy(q, k, v, out, lse, *args, **kwargs):
        flags.append(lse is not None)
        return spy(q, k, v, out, lse, *args, **kwargs)

    monkeypatch.setattr(gluon_fwd, "ws_forward", lse_spy)
    return flags


GNA_WS_TRAIN = [  # batch, size, window, stride, q_tile, kv_tile, heads, heads_kv (block-sparse, tiles divide)
    (2, (8, 16, 32), (2, 8, 8), (2, 8, 8), (2, 8, 8), (2, 8, 8), 4, 2),
    (1, (6, 24, 40), (6, 8, 8), (2, 8, 8), (2, 8, 8), (2, 8, 8), 3, 3),
    (1, (64, 64), (32, 32), (16, 16), (16, 8), (8, 8), 2, 2),
    (2, (4096,), (1024,), (128,), (128,), (64,), 2, 2)]


def _gna_lse64(q, k, v, size, window, stride):
    """Float64 log-sum-exp ``[B, H, N]`` of the GNA scores (the simulator's mask), token order."""
    from sparsesim.simulator import GNAPattern
    from sparsesim.simulator.patterns import visible_mask

    mask = torch.from_numpy(visible_mask(GNAPattern(input_size=size, window=window, stride=stride))).cuda()
    qf, kf = q.flatten(1, -3).double(), k.flatten(1, -3).double()
    kf = kf.repeat_interleave(int(q.shape[-2]) // int(k.shape[-2]), -2)
    s = torch.einsum("bnhd,bmhd->bhnm", qf, kf) * int(q.shape[-1]) ** -0.5
    return s.masked_fill(~mask, float("-inf")).logsumexp(-1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("batch", "size", "window", "stride", "q_tile", "kv_tile", "heads", "heads_kv"),
                         GNA_WS_TRAIN)
def test_gna_training_forward_ws_lse_matches_triton(ws_calls, ws_lse, monkeypatch, dtype, batch, size, window,
                                                    stride, q_tile, kv_tile, heads, heads_kv):
    """``gna_forward`` (the training forward: output and LSE) on the ws route, twice (the cached launch too),
    against the Triton GNA kernel's (``SPARSESIM_FWD_KERNEL=triton``) and the float64 reference."""
    from sparsesim.kernels import gna_forward
    from sparsesim.kernels.reference import gna_reference

    q = rand(batch, *size, heads, 128, dtype=dtype, seed=21)
    k = rand(batch, *size, heads_kv, 128, dtype=dtype, seed=22)
    v = rand(batch, *size, heads_kv, 128, dtype=dtype, seed=23)
    kw = {"window": window, "stride": stride}
    ref = gna_reference(q, k, v, **kw).double()
    lse_ref = _gna_lse64(q, k, v, size, window, stride)
    for _ in range(2):
        out, lse = gna_forward(q, k, v, q_tile=q_tile, kv_tile=kv_tile, **kw)
        assert lse.shape == (batch, heads, math.prod(size)) and lse.dtype == torch.float32
        assert float((out.double() - ref).norm() / ref.norm()) < REL[dtype]
        assert float((lse.double() - lse_ref).abs().max()) < 1e-2
    assert ws_calls == [True, True] and ws_lse == [True, True]  # the ws route ran, with an LSE buffer
    monkeypatch.setenv("SPARSESIM_FWD_KERNEL", "triton")
    out_t, lse_t = gna_forward(q, k, v, q_tile=q_tile, kv_tile=kv_tile, **kw)
    assert ws_calls == [True, True]  # the Triton GNA kernel ran this one
    assert float((out.double() - out_t.double()).norm() / out_t.double().norm()) < REL[dtype]
    assert float((lse - lse_t).abs().max()) < 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("size", "window", "stride", "q_tile", "kv_tile", "heads", "heads_kv"),
                         [case[1:] for case in GNA_WS_TRAIN[:3]])
def test_gna_gradients_with_ws_training_forward(ws_calls, ws_lse, dtype, size, window, stride, q_tile, kv_tile,
                                                heads, heads_kv):
    """``gna_attention`` with requires_grad: forward on the ws route (its LSE written in token order),
    the GNA backward on it; gradients against float64 autograd (test_gna_backward_cuda's helper and bounds)."""
    from test_gna_backward_cuda import REL as GRAD_REL
    from test_gna_backward_cuda import _grads

    errors = _grads(size, {"window": window, "stride": stride}, {}, (q_tile, kv_tile), heads, heads_kv, 128, dtype)
    assert all(e < GRAD_REL[dtype] for e in errors.values()), errors
    assert ws_calls == [True] and ws_lse == [True]


@pytest.mark.parametrize(("overlap", "pingpong", "stages"), [(True, True, 3), (False, False, 2)])
@pytest.mark.parametrize(("batch", "n", "heads", "heads_kv", "head_dim"), [(2, 8192, 4, 2, 128), (2, 6000, 4, 4, 64)])
def test_persistent_dense_matches_reference(batch, n, heads, heads_kv, head_dim, overlap, pingpong, stages):
    """Persistent (a program per SM, several work items each: the K/V ring, the Q buffer and the ping-pong
    turns carried across items) against the float64 reference, and equal to one program per item."""
    from sparsesim.kernels import gluon_fwd

    q = rand(batch, n, heads, head_dim, dtype=torch.bfloat16, seed=31)
    k = rand(batch, n, heads_kv, head_dim, dtype=torch.bfloat16, seed=32)
    v = rand(batch, n, heads_kv, head_dim, dtype=torch.bfloat16, seed=33)
    knobs = {"overlap": overlap, "pingpong": pingpong, "stages": stages}
    items = -(-n // 128) * heads * batch
    assert items > 2 * gluon_fwd._sm_count(q.device.index)  # several items per program
    out, lse = gluon_dense_forward(q, k, v, return_lse=True, persistent=True, **knobs)
    ref = reference_attention(q, k, v)
    assert float((out.double() - ref.double()).norm() / ref.double().norm()) < REL[torch.bfloat16]
    out1, lse1 = gluon_dense_forward(q, k, v, return_lse=True, persistent=False, **knobs)
    assert torch.equal(out, out1) and torch.equal(lse, lse1)


@pytest.mark.parametrize(("batch", "size", "window", "stride", "q_tile", "kv_tile", "heads", "heads_kv"), [
    (2, (8, 32, 64), (2, 8, 8), (2, 8, 8), (2, 8, 8), (2, 8, 8), 4, 2),
    (1, (128, 128), (32, 32), (16, 16), (16, 8), (8, 8), 3, 3)])
def test_persistent_gna_box_matches_reference(monkeypatch, batch, size, window, stride, q_tile, kv_tile, heads,
                                              heads_kv):
    """The box route run persistent (``ws_forward(persistent=True)``) against the float64 reference."""
    import functools

    from sparsesim.kernels import gluon_fwd, gna, gna_attention
    from sparsesim.kernels.reference import gna_reference

    calls: list[bool] = []
    real = gluon_fwd.ws_forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("box") is not None)
        return functools.partial(real, persistent=True)(*args, **kwargs)

    monkeypatch.setattr(gluon_fwd, "MIN_WORK", 0)
    monkeypatch.setattr(gluon_fwd, "ws_forward", spy)
    monkeypatch.setattr(gna, "_LAUNCHES", type(gna._LAUNCHES)())
    q = rand(batch, *size, heads, 128, dtype=torch.bfloat16, seed=41)
    k = rand(batch, *size, heads_kv, 128, dtype=torch.bfloat16, seed=42)
    v = rand(batch, *size, heads_kv, 128, dtype=torch.bfloat16, seed=43)
    kw = {"window": window, "stride": stride}
    out = gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, **kw)
    ref = gna_reference(q, k, v, **kw).double()
    assert float((out.double() - ref).norm() / ref.norm()) < REL[torch.bfloat16]
    assert calls == [True]


@pytest.mark.parametrize("head_dim", [128, 64])
def test_persistent_block_sparse_with_empty_rows(monkeypatch, head_dim):
    """Persistent programs (several items each: the K/V ring, the Q buffer and the turns carried across items) on
    a map with Q blocks that visit nothing (alone, in runs, the last one) and a padded last KV block: equal bit
    for bit to a program per item, and right against float64."""
    import functools

    import numpy as np

    from sparsesim.kernels import block_sparse, block_sparse_attention, gluon_fwd, prepare_block_map

    n, heads, kv_tile = 8000, 8, 128
    qb, kb = -(-n // 128), -(-n // kv_tile)
    rng = np.random.default_rng(head_dim)
    bm = rng.random((heads, qb, kb)) < 0.2
    bm[:, -1, -1] = True
    bm[:, 3, :] = False
    bm[:, 10:14, :] = False
    bm[1:, -1, :] = False
    prepared = prepare_block_map(bm, seq_len=n, q_tile=128, kv_tile=kv_tile, device="cuda")
    q, k, v = (rand(1, n, heads, head_dim, dtype=torch.bfloat16, seed=50 + i) for i in range(3))
    assert qb * heads > 2 * gluon_fwd._sm_count(q.device.index)  # several items per program
    real = gluon_fwd.ws_forward
    monkeypatch.setattr(gluon_fwd, "MIN_WORK", 0)
    outs = []
    for knobs in ({"persistent": True}, {"persistent": False}):
        monkeypatch.setattr(gluon_fwd, "ws_forward", functools.partial(real, **knobs))
        monkeypatch.setattr(block_sparse, "_LAUNCHES", type(block_sparse._LAUNCHES)())
        outs.append(block_sparse_attention(q, k, v, prepared))
    mask = torch.from_numpy(np.repeat(np.repeat(bm, 128, axis=1), kv_tile, axis=2)[:, :n, :n]).cuda()
    ref = reference_attention(q, k, v, mask)
    assert float((outs[0].double() - ref.double()).norm() / ref.double().norm()) < REL[torch.bfloat16]
    assert torch.equal(outs[0], outs[1])
    assert float(outs[0][:, 3 * 128:4 * 128].abs().max()) == 0.0
