"""Repeated warp-specialized calls through Triton's C launcher with their TMA descriptors encoded once
(kernels/_launch.py ``DirectLaunch``), against the float64 reference on a Hopper GPU.

Skipped without a Hopper GPU or under ``TRITON_INTERPRET=1``; CPU tests stub the launch itself.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if (not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
        or torch.cuda.get_device_capability()[0] != 9):
    pytest.skip("needs a Hopper GPU and compiled Triton kernels", allow_module_level=True)

import numpy as np  # noqa: E402

from sparsesim.kernels import _launch, block_sparse, dense, gluon_fwd  # noqa: E402
from sparsesim.kernels.reference import reference_attention  # noqa: E402


def rand(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32).to(torch.bfloat16)


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


@pytest.fixture
def fresh(monkeypatch):
    """Fresh launch caches, no size floor; yields the ws launches' cache dicts as they are used."""
    caches: list[dict] = []
    real = gluon_fwd.ws_forward

    def spy(*args, **kwargs):
        caches.append(kwargs.get("cache"))
        return real(*args, **kwargs)

    monkeypatch.setattr(gluon_fwd, "MIN_WORK", 0)
    monkeypatch.setattr(gluon_fwd, "ws_forward", spy)
    monkeypatch.setattr(dense, "_LAUNCHES", type(dense._LAUNCHES)())
    monkeypatch.setattr(block_sparse, "_LAUNCHES", type(block_sparse._LAUNCHES)())
    monkeypatch.delenv("SPARSESIM_FWD_KERNEL", raising=False)
    return caches


def directs(cache: dict) -> list:
    return [v for k, v in cache.items() if isinstance(k, tuple) and k[:1] == ("direct",)]


@pytest.mark.parametrize(("n", "heads", "heads_kv"), [(1000, 4, 2), (2048, 2, 2)])
def test_repeated_dense_calls_take_the_direct_launch(fresh, n, heads, heads_kv):
    """The third call launches through the C launcher; every call, and one with new tensors at new addresses,
    matches the reference; the direct launch is what the cache holds."""
    from sparsesim.kernels import attention

    tensors = [tuple(rand(1, n, h, 128, seed=10 * s + i) for i, h in enumerate((heads, heads_kv, heads_kv)))
               for s in range(2)]
    for q, k, v in (tensors[0], tensors[0], tensors[0], tensors[1], tensors[0]):
        assert rel(attention(q, k, v), reference_attention(q, k, v)) < 1e-2
    found = directs(fresh[-1])
    assert len(found) == 1 and isinstance(found[0], _launch.DirectLaunch)
    assert len(next(v for k, v in fresh[-1].items() if k[:1] == ("expanded",))) == 2  # two address triples


def test_repeated_block_sparse_call_is_captured_by_a_cuda_graph(fresh):
    """A prepared block map's repeated call (the direct launch) captured in a CUDA graph; replays after the
    inputs change in place give the reference's output for the new contents."""
    from sparsesim.kernels import block_sparse_attention, prepare_block_map

    n, heads = 2048, 4
    rng = np.random.default_rng(3)
    bm = rng.random((heads, n // 128, n // 128)) < 0.3
    bm[:, np.arange(n // 128), np.arange(n // 128)] = True
    prepared = prepare_block_map(bm, seq_len=n, q_tile=128, kv_tile=128, device="cuda")
    mask = torch.from_numpy(np.repeat(np.repeat(bm, 128, axis=1), 128, axis=2)).cuda()
    q, k, v = (rand(1, n, heads, 128, seed=20 + i) for i in range(3))
    for _ in range(3):
        out = block_sparse_attention(q, k, v, prepared)
    assert isinstance(directs(fresh[-1])[0], _launch.DirectLaunch)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        block_sparse_attention(q, k, v, prepared)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = block_sparse_attention(q, k, v, prepared)
    for seed in (30, 40):
        for i, x in enumerate((q, k, v)):
            x.copy_(rand(*x.shape, seed=seed + i))
        graph.replay()
        torch.cuda.synchronize()
        assert rel(out, reference_attention(q, k, v, mask)) < 1e-2


def test_repeated_triton_kernel_calls_take_the_direct_launch(monkeypatch):
    """The Triton kernels' repeated launches (no host descriptors) go through the C launcher too: a GNA layout the
    ws kernel does not take, called three times, launches directly and matches the reference each time (the
    repeated and CUDA-graph tests of tests/gpu/test_kernels_cuda.py then run this path)."""
    from sparsesim.kernels import gna, gna_attention
    from sparsesim.kernels.reference import gna_reference

    launched: list[bool] = []
    real = _launch.DirectLaunch.__call__

    def spy(self, grid, expanded, args):
        launched.append(real(self, grid, expanded, args))
        return launched[-1]

    monkeypatch.setattr(_launch.DirectLaunch, "__call__", spy)
    monkeypatch.setattr(gna, "_LAUNCHES", type(gna._LAUNCHES)())
    kw = {"window": (9, 13), "stride": (2, 3)}
    for seed in (1, 2, 3):
        q, k, v = (rand(1, 24, 40, 4, 128, seed=seed + s) for s in (0, 10, 20))
        assert rel(gna_attention(q, k, v, **kw), gna_reference(q, k, v, **kw)) < 1e-2
    assert launched and all(launched)
