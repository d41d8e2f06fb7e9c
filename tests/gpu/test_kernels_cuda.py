"""Kernels compiled for a real GPU, bf16 and fp16 (the interpreter's bf16 ``tl.dot`` is unreliable,
so bf16 is checked here). Skipped without a CUDA device or under ``TRITON_INTERPRET=1``.

Run alone (the interpreter conftest of ``tests/kernels`` sets ``TRITON_INTERPRET=1`` for the
whole process): ``python -m pytest tests/gpu``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("needs a CUDA GPU and compiled (not interpreted) Triton kernels", allow_module_level=True)

from sparsesim.kernels import attention, block_sparse_attention, gna_attention  # noqa: E402
from sparsesim.kernels.reference import block_sparse_reference, gna_reference, reference_attention  # noqa: E402

#: Bound on ||out - ref|| / ||ref|| against the float64 reference (METHOD.md: bf16 ~ 8 mantissa bits).
REL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
DTYPES = [torch.bfloat16, torch.float16]


def rand(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32).to(dtype)


def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert torch.isfinite(out).all()
    rel = float((out.double() - ref.double()).norm() / ref.double().norm())
    assert rel < REL[dtype], f"rel_err={rel:.3g} >= {REL[dtype]}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "heads", "heads_kv", "head_dim"), [(1000, 4, 4, 128), (777, 8, 2, 64)])
def test_dense_cuda(dtype, n, heads, heads_kv, head_dim):
    q = rand(2, n, heads, head_dim, dtype=dtype, seed=1)
    k = rand(2, n, heads_kv, head_dim, dtype=dtype, seed=2)
    v = rand(2, n, heads_kv, head_dim, dtype=dtype, seed=3)
    check(attention(q, k, v), reference_attention(q, k, v), dtype)


GNA_CASES = [
    # size, window, stride, dilation, causal, q_tile, kv_tile
    ((1000,), 129, 1, 1, True, 128, 128),
    ((1000,), 256, 64, 2, False, 128, 64),
    ((40, 36), (17, 9), (4, 1), (1, 2), (False, True), (16, 8), (16, 8)),
    ((64, 64), (32, 32), (16, 16), 1, False, (16, 8), (16, 8)),  # perfectly block-sparse
    ((10, 20, 24), (6, 8, 8), (1, 4, 8), 1, (True, False, False), (2, 8, 8), (2, 8, 8)),
    ((12, 16, 16), (5, 7, 9), (1, 2, 3), (2, 1, 1), False, (4, 4, 8), (4, 4, 8)),
]


def _layouts(size, dilation):
    one_d = len(size) == 1 and dilation == 1
    return ["gather", "permute"] + (["direct"] if one_d else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", GNA_CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_gna_cuda(dtype, case):
    size, window, stride, dilation, causal, q_tile, kv_tile = case
    q = rand(2, *size, 4, 128, dtype=dtype, seed=4)
    k = rand(2, *size, 2, 128, dtype=dtype, seed=5)
    v = rand(2, *size, 2, 128, dtype=dtype, seed=6)
    kw = {"window": window, "stride": stride, "dilation": dilation, "causal": causal}
    ref = gna_reference(q, k, v, **kw)
    for kv_layout in [None, *_layouts(size, dilation)]:
        out = torch.full_like(q, float("nan"))
        gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, out=out, kv_layout=kv_layout, **kw)
        check(out, ref, dtype)


def test_gna_cuda_graph_capture_and_replay():
    """The repeated call path has no host sync and no host-to-device copy: it captures in a CUDA graph."""
    size, kw = (24, 40), {"window": (9, 13), "stride": (2, 3)}
    q, k, v = (rand(1, *size, 8, 128, dtype=torch.bfloat16, seed=s) for s in (10, 11, 12))
    for kv_layout in ("gather", "permute"):
        out = torch.empty_like(q)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up: compiles and caches the launch
            gna_attention(q, k, v, out=out, kv_layout=kv_layout, **kw)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            gna_attention(q, k, v, out=out, kv_layout=kv_layout, **kw)
        for seed in (13, 14):  # new data in the captured buffers, then replay
            for x, s in zip((q, k, v), (seed, seed + 10, seed + 20), strict=True):
                x.copy_(rand(*x.shape, dtype=x.dtype, seed=s))
            out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            check(out, gna_reference(q, k, v, **kw), torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_sparse_cuda(dtype):
    n, tile = 1000, 128  # 8 blocks, the last one padded
    rng = np.random.default_rng(0)
    bm = rng.random((4, 8, 8)) < 0.4
    bm[:, np.arange(8), np.arange(8)] = True
    q = rand(1, n, 4, 128, dtype=dtype, seed=7)
    k = rand(1, n, 2, 128, dtype=dtype, seed=8)
    v = rand(1, n, 2, 128, dtype=dtype, seed=9)
    out = block_sparse_attention(q, k, v, bm, q_tile=tile, kv_tile=tile)
    check(out, block_sparse_reference(q, k, v, bm, q_tile=tile, kv_tile=tile), dtype)


def test_repeated_calls_stay_correct():
    """Repeated calls take the cached (and, where enabled, compiled-kernel) path: new data, same answers."""
    import numpy as np

    bm = np.eye(8, dtype=bool) | np.eye(8, k=-1, dtype=bool)
    for seed in (20, 21, 22):
        q, k, v = (rand(1, 1000, 8, 128, dtype=torch.bfloat16, seed=seed + s) for s in (0, 100, 200))
        check(attention(q, k, v), reference_attention(q, k, v), torch.bfloat16)
        check(block_sparse_attention(q, k, v, bm, q_tile=128, kv_tile=128),
              block_sparse_reference(q, k, v, bm, q_tile=128, kv_tile=128), torch.bfloat16)
        q2, k2, v2 = (x.reshape(1, 40, 25, 8, 128) for x in (q, k, v))
        kw = {"window": (9, 7), "stride": (2, 1)}
        check(gna_attention(q2, k2, v2, **kw), gna_reference(q2, k2, v2, **kw), torch.bfloat16)


EXTRA_CASES = [
    # size, window, stride, dilation, causal, q_tile, kv_tile, extra tokens, where
    ((32, 40), (9, 13), (2, 3), 1, False, (8, 16), (8, 16), 77, "start"),     # FLUX-like text tokens first
    ((6, 16, 16), (3, 8, 8), (1, 4, 4), 1, False, (2, 8, 8), (2, 8, 8), 256, "end"),  # HunyuanVideo-like
    ((1000,), 129, 1, 1, True, 128, 128, 4, "start"),                           # causal with 4 sinks
    ((1000,), 256, 64, 2, False, 128, 64, 200, "end"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", EXTRA_CASES, ids=lambda c: f"{'x'.join(map(str, c[0]))}-E{c[7]}")
def test_gna_extra_tokens_cuda(dtype, case):
    """Extra tokens (joint text, sinks) in the GNA kernel's softmax and extra queries through the dense kernel,
    every K/V layout, against the float64 reference of the agreed rule; then a head subset in place."""
    size, window, stride, dilation, causal, q_tile, kv_tile, extra, at = case
    tokens = int(np.prod(size)) + extra
    q = rand(2, tokens, 4, 128, dtype=dtype, seed=30)
    k = rand(2, tokens, 2, 128, dtype=dtype, seed=31)
    v = rand(2, tokens, 2, 128, dtype=dtype, seed=32)
    kw = {"window": window, "stride": stride, "dilation": dilation, "causal": causal, "extra_tokens": extra,
          "extra_at": at, "input_size": size}
    ref = gna_reference(q, k, v, **kw)
    for kv_layout in [None, *_layouts(size, dilation)]:
        out = torch.full_like(q, float("nan"))
        gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, out=out, kv_layout=kv_layout, **kw)
        check(out, ref, dtype)
    out = torch.full_like(q, 7.0)
    gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, out=out, heads=[2, 3], **kw)
    check(out[..., 2:, :], ref[..., 2:, :], dtype)
    assert bool((out[..., :2, :] == 7.0).all())


@pytest.mark.parametrize(("size", "window", "stride", "causal"),
                         [((32, 32), (8, 8), 1, False), ((1024,), 129, 1, True), ((4, 8, 16), (3, 5, 7), (1, 2, 2),
                                                                                   False)])
def test_small_layer_measured_pick_cuda(monkeypatch, size, window, stride, causal):
    """A small layer with no tiles given times the model's best pair per tile class on its first call and keeps
    the fastest: the output is the reference's, the tiles are one of the candidates, the pick is reused, and
    ``SPARSESIM_TILE_PICK=model`` runs the model's pick instead."""
    from sparsesim.kernels import gna as gna_mod
    from sparsesim.simulator import GNAPattern
    from sparsesim.simulator.tile_choice import choose_tiles, class_candidates

    dtype = torch.bfloat16
    q = rand(1, *size, 8, 128, dtype=dtype, seed=31)
    k = rand(1, *size, 8, 128, dtype=dtype, seed=32)
    v = rand(1, *size, 8, 128, dtype=dtype, seed=33)
    kw = {"window": window, "stride": stride, "causal": causal}
    ref = gna_reference(q, k, v, **kw)
    check(gna_attention(q, k, v, **kw), ref, dtype)
    key = (kw["window"], kw["stride"], 1, causal, None, None, None, None)
    launch = gna_mod.cached_launch(q, k, v, key, 0)
    pattern = GNAPattern(input_size=size, window=window, stride=stride, causal=causal)
    gpu = gna_mod.device_gpu(q.device)[0].name
    pairs = class_candidates(pattern, gpu, 8, 8, 128, 1, "bf16")
    assert len(pairs) >= 2
    assert (launch.plan.schedule.q_tile, launch.plan.schedule.kv_tile) in pairs
    assert gna_mod.cached_launch(q, k, v, key, 0) is launch  # reused, not picked again
    gna_mod._LAUNCHES.items.clear()
    monkeypatch.setenv("SPARSESIM_TILE_PICK", "model")
    model = gna_mod.cached_launch(q, k, v, key, 0)
    assert (model.plan.schedule.q_tile, model.plan.schedule.kv_tile) == choose_tiles(pattern, gpu, 8, 8, 128, 1,
                                                                                     "bf16")
    check(gna_attention(q, k, v, **kw), ref, dtype)
