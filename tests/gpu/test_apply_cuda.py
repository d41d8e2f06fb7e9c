"""``apply_plan`` on a CUDA GPU, bf16: a model's SDPA calls run as a plan says, sparse heads in place through the
kernels' head map on views of SDPA's tensors (no copies), checked per head against the float64 reference.
Skipped without a CUDA device or under ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("needs a CUDA GPU and compiled (not interpreted) Triton kernels", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402

from sparsesim.kernels import apply_plan  # noqa: E402
from sparsesim.kernels.reference import gna_reference, rel_error  # noqa: E402
from sparsesim.simulator.plan import FORMAT, VERSION, parse_plan  # noqa: E402

LAYOUT, HEADS, HD = (16, 16), 4, 64
N = math.prod(LAYOUT)
SPARSE = {"window": [5, 8], "stride": [1, 4], "dilation": [1, 1]}


def _plan(heads_kv: int, sparse_heads: list[int]):
    dense = {"window": list(LAYOUT), "stride": [1, 1], "dilation": [1, 1]}
    rest = [h for h in range(HEADS) if h not in sparse_heads]
    heads = [{"head": h, **(SPARSE if h in sparse_heads else dense), "dense": h not in sparse_heads, "error": 0.0,
              "mass": 1.0} for h in range(HEADS)]
    launches = [{"heads": sparse_heads, **SPARSE, "dense": False, "predicted_ms": 0.01}]
    if rest:
        launches.append({"heads": rest, **dense, "dense": True, "predicted_ms": 0.01})
    return parse_plan({
        "format": FORMAT, "version": VERSION, "workload": "tiny", "gpu": "H200", "kernel_profile": "triton",
        "dense_profile": "cudnn", "layout": list(LAYOUT), "causal": [False, False], "heads": HEADS,
        "heads_kv": heads_kv, "head_dim": HD, "batch": 1, "dtype": "bf16", "q_tile": [8, 8], "kv_tile": [8, 8],
        "error_budget": {"mean": 0.1, "max": None, "target_speedup": None}, "mean_error": 0.0, "max_error": 0.0,
        "attention_speedup": 1.0, "e2e_predicted_speedup": 1.0, "predicted": {}, "search": None,
        "layers": [{"layer": 0, "name": "l0", "heads": heads, "launches": launches, "predicted_ms": 0.02,
                    "dense_ms": 0.04}]}, "gpu test plan")


@pytest.mark.parametrize(("heads_kv", "sparse_heads"), [(HEADS, [1, 3]), (2, [2, 3]), (HEADS, [0, 1, 2, 3])])
def test_apply_plan_bf16_matches_reference(heads_kv, sparse_heads):
    g = torch.Generator(device="cuda").manual_seed(heads_kv + len(sparse_heads))
    q = torch.randn(2, HEADS, N, HD, device="cuda", generator=g).to(torch.bfloat16)
    k = torch.randn(2, heads_kv, N, HD, device="cuda", generator=g).to(torch.bfloat16)
    v = torch.randn(2, heads_kv, N, HD, device="cuda", generator=g).to(torch.bfloat16)
    with apply_plan(None, _plan(heads_kv, sparse_heads)) as run:
        run.begin_pass()
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=heads_kv < HEADS)
    assert run.last_backend == "kernels"
    group = HEADS // heads_kv
    for h in sparse_heads:
        nat = [x[:, i:i + 1].transpose(1, 2).unflatten(1, LAYOUT).double() for x, i in
               ((q, h), (k, h // group), (v, h // group))]
        ref = gna_reference(*nat, **SPARSE)[..., 0, :].reshape(2, N, HD)
        assert rel_error(out[:, h], ref) < 1e-2, h
