"""The persistent GNA forward compiled for a real GPU: bf16 against the float64 reference on every pattern family
of the GNA GPU tests, bit-identical to the launch order, with extra tokens, the LSE, a head subset and a CUDA
graph. Skipped without a CUDA device or under ``TRITON_INTERPRET=1``; run alone: ``python -m pytest tests/gpu``.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("needs a CUDA GPU and compiled (not interpreted) Triton kernels", allow_module_level=True)

from test_kernels_cuda import EXTRA_CASES, GNA_CASES, _layouts, check, rand  # noqa: E402

from sparsesim.kernels import gna_attention  # noqa: E402
from sparsesim.kernels.gna import gna_forward  # noqa: E402
from sparsesim.kernels.reference import gna_reference  # noqa: E402

#: Programs of the persistent runs: one per slot (True) and a few (long lists per program).
PROGRAMS = [True, 5]


@pytest.mark.parametrize("case", GNA_CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_persistent_gna_cuda(case):
    size, window, stride, dilation, causal, q_tile, kv_tile = case
    dtype = torch.bfloat16
    q = rand(2, *size, 4, 128, dtype=dtype, seed=4)
    k = rand(2, *size, 2, 128, dtype=dtype, seed=5)
    v = rand(2, *size, 2, 128, dtype=dtype, seed=6)
    kw = {"window": window, "stride": stride, "dilation": dilation, "causal": causal, "q_tile": q_tile,
          "kv_tile": kv_tile}
    ref = gna_reference(q, k, v, window=window, stride=stride, dilation=dilation, causal=causal)
    for kv_layout in [None, *_layouts(size, dilation)]:
        base = gna_attention(q, k, v, kv_layout=kv_layout, persistent=False, **kw)
        for persistent in PROGRAMS:
            out = torch.full_like(q, float("nan"))
            gna_attention(q, k, v, out=out, kv_layout=kv_layout, persistent=persistent, **kw)
            check(out, ref, dtype)
            assert torch.equal(out, base), f"kv_layout={kv_layout}, persistent={persistent}: not bit-identical"


@pytest.mark.parametrize("case", EXTRA_CASES, ids=lambda c: f"{'x'.join(map(str, c[0]))}-E{c[7]}")
def test_persistent_extra_tokens_lse_and_head_subset_cuda(case):
    size, window, stride, dilation, causal, q_tile, kv_tile, extra, at = case
    tokens = 1
    for n in size:
        tokens *= n
    tokens += extra
    q, k, v = (rand(2, tokens, h, 128, dtype=torch.bfloat16, seed=s) for h, s in ((4, 30), (2, 31), (2, 32)))
    kw = {"window": window, "stride": stride, "dilation": dilation, "causal": causal, "extra_tokens": extra,
          "extra_at": at, "input_size": size, "q_tile": q_tile, "kv_tile": kv_tile}
    ref = gna_reference(q, k, v, **{x: y for x, y in kw.items() if x not in ("q_tile", "kv_tile")})
    o0, l0 = gna_forward(q, k, v, persistent=False, **kw)
    o1, l1 = gna_forward(q, k, v, persistent=3, **kw)
    check(o1, ref, torch.bfloat16)
    assert torch.equal(o0, o1) and torch.equal(l0, l1)
    out = torch.full_like(q, 7.0)
    gna_attention(q, k, v, out=out, heads=[2, 3], persistent=True, **kw)
    check(out[..., 2:, :], ref[..., 2:, :], torch.bfloat16)
    assert bool((out[..., :2, :] == 7.0).all())


def test_persistent_cuda_graph_capture_and_replay():
    size, kw = (32, 32), {"window": (32, 32), "causal": (True, True), "q_tile": (8, 8), "kv_tile": (8, 8)}
    q, k, v = (rand(1, *size, 8, 128, dtype=torch.bfloat16, seed=s) for s in (10, 11, 12))
    out = torch.empty_like(q)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up: compiles, builds the table, caches the launch
        gna_attention(q, k, v, out=out, persistent=True, **kw)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gna_attention(q, k, v, out=out, persistent=True, **kw)
    for seed in (13, 14):
        for x, s in zip((q, k, v), (seed, seed + 10, seed + 20), strict=True):
            x.copy_(rand(*x.shape, dtype=x.dtype, seed=s))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        check(out, gna_reference(q, k, v, window=kw["window"], causal=kw["causal"]), torch.bfloat16)
