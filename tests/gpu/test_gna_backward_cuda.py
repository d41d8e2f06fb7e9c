"""GNA backward compiled for a real GPU: bf16/fp16 gradients against float64 autograd, CUDA-graph capture of
forward + backward, ``torch.compile(fullgraph=True)``. Skipped without a CUDA device or under
``TRITON_INTERPRET=1``; run alone: ``python -m pytest tests/gpu/test_gna_backward_cuda.py``.
"""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("needs a CUDA GPU and compiled (not interpreted) Triton kernels", allow_module_level=True)

from sparsesim.kernels import gna_attention  # noqa: E402
from sparsesim.kernels.reference import gna_reference  # noqa: E402

#: Bound on ||grad - ref|| / ||ref|| against float64 autograd (bf16: P and dS rounded to 8 mantissa bits).
REL = {torch.bfloat16: 2e-2, torch.float16: 4e-3}


def rand(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32).to(dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all()
    return float((a - b).norm() / b.norm().clamp_min(0.1 * math.sqrt(b.numel())))


CASES = [
    # size, pattern, extras, tiles (None: the cost model's pick), heads, heads_kv, head_dim
    ((1000,), {"window": 129, "causal": True}, {}, None, 4, 2, 128),
    ((40, 36), {"window": (17, 9), "stride": (4, 1), "dilation": (1, 2), "causal": (False, True)}, {},
     ((16, 8), (16, 8)), 4, 4, 64),
    ((64, 64), {"window": (32, 32), "stride": (16, 16)}, {}, ((16, 8), (16, 8)), 2, 1, 128),  # block-sparse
    ((10, 20, 24), {"window": (6, 8, 8), "stride": (1, 4, 8), "causal": (True, False, False)}, {},
     ((2, 8, 8), (2, 8, 8)), 2, 2, 128),
    ((16, 16), {"window": (7, 7)}, {"extra_tokens": 77, "extra_at": "start"}, None, 4, 2, 128),
    ((600,), {"window": 65, "stride": 8, "causal": True}, {"extra_tokens": 64, "extra_at": "start"}, None, 2, 1, 64),
    ((8, 12, 12), {"window": (4, 6, 6)}, {"extra_tokens": 40, "extra_at": "end"}, None, 2, 2, 128),
]


def _grads(size, kw, xkw, tiles, h, hk, d, dtype, seed=1):
    n = math.prod(size)
    shape = (1, n + xkw["extra_tokens"]) if xkw else (1, *size)
    if xkw:
        xkw = {**xkw, "input_size": size}
    q, k, v = rand(*shape, h, d, dtype=dtype, seed=seed), rand(*shape, hk, d, dtype=dtype, seed=seed + 1), \
        rand(*shape, hk, d, dtype=dtype, seed=seed + 2)
    do = rand(*shape, h, d, dtype=dtype, seed=seed + 3)
    t = {} if tiles is None else {"q_tile": tiles[0], "kv_tile": tiles[1]}
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = gna_attention(*leaves, **t, **kw, **xkw)
    out.backward(do)
    refs = [x.double().requires_grad_() for x in (q, k, v)]
    gna_reference(*refs, **kw, **xkw).backward(do.double())
    return {n_: rel(a.grad, r.grad) for n_, a, r in zip("qkv", leaves, refs, strict=True)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])) + ("-extra" if c[2] else ""))
def test_gradients_cuda(case, dtype):
    errors = _grads(*case, dtype)
    assert all(e < REL[dtype] for e in errors.values()), errors


def test_cuda_graph_captures_forward_and_backward():
    size, kw = (32, 32), {"window": (9, 9), "stride": (2, 2)}
    q, k, v, do = (rand(1, *size, 4, 64, dtype=torch.bfloat16, seed=s) for s in (1, 2, 3, 4))
    sq, sk, sv = (x.clone().requires_grad_() for x in (q, k, v))

    def step():
        for x in (sq, sk, sv):
            x.grad = None
        o = gna_attention(sq, sk, sv, **kw)
        o.backward(do)
        return o

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm up: compile, cache the launches
            step()
    torch.cuda.current_stream().wait_stream(side)
    want = [x.grad.clone() for x in (sq, sk, sv)]
    graph = torch.cuda.CUDAGraph()
    for x in (sq, sk, sv):
        x.grad = None
    with torch.cuda.graph(graph):
        o = gna_attention(sq, sk, sv, **kw)
        o.backward(do)
    graph.replay()
    torch.cuda.synchronize()
    for x, w in zip((sq, sk, sv), want, strict=True):
        assert torch.equal(x.grad, w)


def test_compile_fullgraph_cuda():
    class Block(torch.nn.Module):
        def __init__(self, dim=256, heads=2):
            super().__init__()
            self.qkv = torch.nn.Linear(dim, 3 * dim, device="cuda", dtype=torch.bfloat16)
            self.proj = torch.nn.Linear(dim, dim, device="cuda", dtype=torch.bfloat16)
            self.heads = heads

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).unbind(2)
            o = gna_attention(q, k, v, window=(7, 7), extra_tokens=16, extra_at="start", input_size=(16, 16))
            return x + self.proj(o.reshape(b, t, c))

    torch.manual_seed(0)
    block = Block()
    x = rand(2, 16 * 16 + 16, 256, dtype=torch.bfloat16, seed=5)
    want = block(x)
    want.float().square().sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    torch._dynamo.reset()
    got = torch.compile(block, fullgraph=True)(x)
    got.float().square().sum().backward()
    assert rel(got, want) < 1e-2
    for p, g in zip(block.parameters(), grads, strict=True):
        assert rel(p.grad, g) < 2e-2
