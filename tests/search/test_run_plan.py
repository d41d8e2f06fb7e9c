"""run_plan: a plan layer's launches (sparse heads through GNA, dense heads dense) against the torch reference.

Runs under the Triton interpreter on CPU tensors, set up as tests/kernels/conftest.py does: the variable is
set before the kernels are decorated, and kernel modules imported earlier in the process are reloaded.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys

import pytest

os.environ["TRITON_INTERPRET"] = "1"
for _name in ("_common", "permute", "dense", "gna", "block_sparse"):
    _mod = sys.modules.get(f"sparsesim.kernels.{_name}")
    if _mod is not None:
        importlib.reload(_mod)

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from sparsesim.kernels._launch import interpret  # noqa: E402
from sparsesim.kernels.plan_run import run_plan  # noqa: E402
from sparsesim.kernels.reference import gna_reference, reference_attention  # noqa: E402
from sparsesim.search.plan import FORMAT, VERSION, Plan, parse_plan  # noqa: E402
from sparsesim.simulator.errors import ConfigError  # noqa: E402

if not interpret():  # pragma: no cover - the lines above set it
    pytest.skip("the Triton interpreter is not enabled", allow_module_level=True)

LAYOUT = (8, 8)
HEADS, DIM = 4, 16
SPARSE = {"window": [3, 5], "stride": [1, 2], "dilation": [2, 1]}
SPARSE_2 = {"window": [4, 4], "stride": [4, 4], "dilation": [1, 1]}
DENSE = {"window": list(LAYOUT), "stride": [1, 1], "dilation": [1, 1]}


def plan_data(heads_kv: int = HEADS, causal: tuple[bool, bool] = (False, False)) -> dict:
    """A plan file's data: layer 3 runs SPARSE on heads 0 and 2 and dense on 1 and 3; layer 5 runs SPARSE_2 on
    every head (one launch)."""
    def head(h, pat, dense):
        return {"head": h, **pat, "dense": dense, "error": 0.1 * (not dense), "mass": 1.0}

    layer3 = {"layer": 3, "name": "layer3",
              "heads": [head(h, SPARSE if h % 2 == 0 else DENSE, h % 2 == 1) for h in range(HEADS)],
              "launches": [{"heads": [0, 2], **SPARSE, "dense": False, "predicted_ms": 0.01},
                           {"heads": [1, 3], **DENSE, "dense": True, "predicted_ms": 0.02}],
              "predicted_ms": 0.03, "dense_ms": 0.04}
    layer5 = {"layer": 5, "name": "layer5", "heads": [head(h, SPARSE_2, False) for h in range(HEADS)],
              "launches": [{"heads": list(range(HEADS)), **SPARSE_2, "dense": False, "predicted_ms": 0.01}],
              "predicted_ms": 0.01, "dense_ms": 0.04}
    plan = {"format": FORMAT, "version": VERSION, "workload": "tiny", "gpu": "H200", "kernel_profile": "triton",
            "dense_profile": "cudnn", "layout": list(LAYOUT), "causal": list(causal), "heads": HEADS,
            "heads_kv": heads_kv, "head_dim": DIM, "batch": 1, "dtype": "fp32", "q_tile": [4, 4],
            "kv_tile": [4, 4], "error_budget": {"mean": 0.1, "max": None, "target_speedup": None},
            "mean_error": 0.05, "max_error": 0.1, "attention_speedup": 1.3, "e2e_predicted_speedup": 1.1,
            "predicted": {}, "search": None, "layers": [layer3, layer5]}
    return plan


def make_plan(heads_kv: int = HEADS, causal: tuple[bool, bool] = (False, False)) -> Plan:
    return parse_plan(plan_data(heads_kv, causal), "test plan")


def qkv(heads_kv: int, seed: int = 0, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, *LAYOUT, HEADS, DIM, generator=g)
    k = torch.randn(batch, *LAYOUT, heads_kv, DIM, generator=g)
    v = torch.randn(batch, *LAYOUT, heads_kv, DIM, generator=g)
    return q, k, v


def reference_head(q, k, v, h: int, pattern: dict, causal) -> torch.Tensor:
    """Head ``h`` alone, float64, through the reference (its K/V head under GQA)."""
    kv = h // (q.shape[-2] // k.shape[-2])
    qh, kh, vh = q[..., h:h + 1, :], k[..., kv:kv + 1, :], v[..., kv:kv + 1, :]
    if pattern is DENSE and not any(causal):
        return reference_attention(qh, kh, vh)
    return gna_reference(qh, kh, vh, causal=list(causal), **pattern)


def check(plan, layer, heads_kv, patterns, causal=(False, False), batch=1):
    q, k, v = qkv(heads_kv, seed=layer + heads_kv, batch=batch)
    out = torch.full_like(q, float("nan"))  # poisoned: every head must be written
    got = run_plan(plan, layer, q, k, v, out=out)
    assert got is out and got.shape == q.shape
    assert torch.isfinite(got).all()
    for h in range(HEADS):
        ref = reference_head(q, k, v, h, patterns[h], causal)
        torch.testing.assert_close(got[..., h:h + 1, :].double(), ref, atol=1e-5, rtol=1e-5,
                                   msg=lambda m, h=h: f"head {h}: {m}")


@pytest.mark.parametrize("heads_kv", [4, 2, 1])
def test_two_launches_match_reference(heads_kv):
    check(make_plan(heads_kv), 3, heads_kv, [SPARSE, DENSE, SPARSE, DENSE])


@pytest.mark.parametrize("heads_kv", [4, 2])
def test_one_launch_over_all_heads(heads_kv):
    q, k, v = qkv(heads_kv)
    got = run_plan(make_plan(heads_kv), 5, q, k, v)
    ref = gna_reference(q, k, v, **SPARSE_2)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_batch_of_two():
    check(make_plan(), 3, HEADS, [SPARSE, DENSE, SPARSE, DENSE], batch=2)


def test_causal_sparse_heads():
    """A causal plan whose layer has only sparse launches: the causal flags reach the kernel."""
    data = plan_data(causal=(True, False))
    data["layers"][0]["launches"] = [{"heads": [0, 2], **SPARSE, "dense": False, "predicted_ms": 0.01},
                                     {"heads": [1, 3], **SPARSE_2, "dense": False, "predicted_ms": 0.01}]
    for h in (1, 3):
        data["layers"][0]["heads"][h].update(SPARSE_2, dense=False)
    plan = parse_plan(data, "test plan")
    check(plan, 3, HEADS, [SPARSE, SPARSE_2, SPARSE, SPARSE_2], causal=(True, False))


def test_causal_dense_heads():
    check(make_plan(causal=(True, False)), 3, HEADS, [SPARSE, DENSE, SPARSE, DENSE], causal=(True, False))


def test_bad_calls():
    plan = make_plan()
    q, k, v = qkv(HEADS)
    with pytest.raises(ConfigError, match="layer 4"):
        run_plan(plan, 4, q, k, v)
    with pytest.raises(ConfigError, match="layout"):
        run_plan(plan, 3, q[:, :4], k[:, :4], v[:, :4])
    with pytest.raises(ConfigError, match="heads"):
        run_plan(plan, 3, q[..., :2, :], k[..., :2, :], v[..., :2, :])


def test_plan_not_modified():
    plan = make_plan()
    before = copy.deepcopy(plan)
    q, k, v = qkv(HEADS)
    run_plan(plan, 3, q, k, v)
    assert plan == before


def test_plan_round_trips_through_json():
    plan = make_plan(2, causal=(True, False))
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.to_dict()["format"] == FORMAT and plan.to_dict()["version"] == VERSION
