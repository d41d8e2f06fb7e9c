"""apply_plan: a model's SDPA calls run as a plan says (GNA kernels under the interpreter, the torch reference),
checked head by head against the float64 reference on the model's own q, k, v."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
F = torch.nn.functional
nn = torch.nn

from sparsesim.kernels._launch import interpret  # noqa: E402
from sparsesim.kernels.apply import apply_plan  # noqa: E402
from sparsesim.kernels.reference import gna_reference, reference_attention, rel_error  # noqa: E402
from sparsesim.simulator.errors import ConfigError  # noqa: E402
from sparsesim.simulator.plan import FORMAT, VERSION, Plan, parse_plan  # noqa: E402

if not interpret():  # pragma: no cover - tests/kernels/conftest.py sets it
    pytest.skip("the Triton interpreter is not enabled", allow_module_level=True)

LAYOUT = (8, 4)
N = math.prod(LAYOUT)
HEADS, HD, DIM = 4, 16, 32
SCALE = 0.3
SPARSE = {"window": [3, 2], "stride": [1, 2], "dilation": [1, 2]}
DENSE = {"window": list(LAYOUT), "stride": [1, 1], "dilation": [1, 1]}
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def make_plan(layers: dict[int, dict[int, dict]], heads_kv: int = HEADS, head_dim: int = HD) -> Plan:
    """A plan whose layer ``i`` runs ``layers[i][h]`` (SPARSE or DENSE) on head ``h``, one launch per pattern."""
    entries = []
    for index, pats in layers.items():
        heads = [{"head": h, **pats[h], "dense": pats[h] is DENSE, "error": 0.0, "mass": 1.0} for h in range(HEADS)]
        launches = []
        for pat in (SPARSE, DENSE):
            ids = [h for h in range(HEADS) if pats[h] is pat]
            if ids:
                launches.append({"heads": ids, **pat, "dense": pat is DENSE, "predicted_ms": 0.01})
        entries.append({"layer": index, "name": f"layer{index}", "heads": heads, "launches": launches,
                        "predicted_ms": 0.02, "dense_ms": 0.04})
    return parse_plan({
        "format": FORMAT, "version": VERSION, "workload": "tiny", "gpu": "H200", "kernel_profile": "triton",
        "dense_profile": "cudnn", "layout": list(LAYOUT), "causal": [False, False], "heads": HEADS,
        "heads_kv": heads_kv, "head_dim": head_dim, "batch": 1, "dtype": "fp32", "q_tile": [4, 4], "kv_tile": [4, 4],
        "error_budget": {"mean": 0.1, "max": None, "target_speedup": None}, "mean_error": 0.0, "max_error": 0.0,
        "attention_speedup": 1.0, "e2e_predicted_speedup": 1.0, "predicted": {}, "search": None, "layers": entries},
        "test plan")


class Attn(nn.Module):
    """qkv projection and SDPA; keeps its own q, k, v and attention output for the checks."""

    def __init__(self, heads_kv: int) -> None:
        super().__init__()
        self.hkv = heads_kv
        self.qkv = nn.Linear(DIM, (HEADS + 2 * heads_kv) * HD)
        self.proj = nn.Linear(HEADS * HD, DIM)
        self.seen: tuple[torch.Tensor, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).split([HEADS * HD, self.hkv * HD, self.hkv * HD], -1)
        q, k, v = (t.reshape(b, n, -1, HD).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, scale=SCALE, enable_gqa=self.hkv < HEADS)
        self.seen = (q.detach(), k.detach(), v.detach(), o.detach())
        return x + self.proj(o.transpose(1, 2).reshape(b, n, HEADS * HD))


class Model(nn.Module):
    def __init__(self, layers: int = 2, heads_kv: int = HEADS) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Attn(heads_kv) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def model_and_input(heads_kv: int = HEADS, dtype: torch.dtype = torch.float32, batch: int = 2):
    torch.manual_seed(0)
    return Model(heads_kv=heads_kv).to(dtype).eval(), torch.randn(batch, N, DIM, dtype=dtype)


def natten(x: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] -> [B, *LAYOUT, H, D]."""
    return x.transpose(1, 2).reshape(x.shape[0], *LAYOUT, x.shape[1], x.shape[3])


def expected_head(seen: tuple[torch.Tensor, ...], h: int, pat: dict) -> torch.Tensor:
    """Head ``h`` of the layer's output in float64 from the model's own q, k, v: GNA or dense reference."""
    q, k, v, _ = seen
    kv = h // (HEADS // k.shape[1])
    qh, kh, vh = (natten(t[:, i:i + 1]) for t, i in ((q, h), (k, kv), (v, kv)))
    if pat is DENSE:
        return reference_attention(qh, kh, vh, scale=SCALE)[..., 0, :].reshape(q.shape[0], N, HD)
    o = gna_reference(qh, kh, vh, window=pat["window"], stride=pat["stride"], dilation=pat["dilation"], scale=SCALE)
    return o[..., 0, :].reshape(q.shape[0], N, HD)


@pytest.mark.parametrize("heads_kv,dtype,backend", [(HEADS, torch.float32, "auto"), (2, torch.float32, "auto"),
                                                     (HEADS, torch.float16, "auto"), (2, torch.bfloat16, "auto"),
                                                     (2, torch.float32, "reference")])
def test_sparse_heads_match_the_float64_reference(heads_kv: int, dtype: torch.dtype, backend: str) -> None:
    model, x = model_and_input(heads_kv, dtype)
    pats = {0: SPARSE, 1: DENSE, 2: SPARSE, 3: DENSE}
    plan = make_plan({1: pats}, heads_kv=heads_kv)
    with torch.no_grad():
        dense_out = model(x)
        dense_layer0 = model.layers[0].seen[3]
        with apply_plan(model, plan, backend=backend) as run:
            out = model(x)
    assert run.planned_calls == 1 and run.dense_calls == 1 and run.passes == 1
    # on CPU, bf16 runs the reference: the interpreter gets bf16 wrong
    assert run.last_backend == ("kernels" if backend == "auto" and dtype != torch.bfloat16 else "reference")
    torch.testing.assert_close(model.layers[0].seen[3], dense_layer0, rtol=0, atol=0)  # not in the plan: as before
    seen = model.layers[1].seen
    for h, pat in pats.items():
        got = seen[3][:, h]
        assert got.dtype == dtype
        assert rel_error(got, expected_head(seen, h, pat)) < TOL[dtype], (h, pat)
    assert rel_error(out, dense_out) > 0.03  # the sparse heads changed the model's output (by about 0.09)


def test_all_dense_plan_equals_the_model() -> None:
    model, x = model_and_input(2)
    plan = make_plan({0: dict.fromkeys(range(HEADS), DENSE), 1: dict.fromkeys(range(HEADS), DENSE)}, heads_kv=2)
    with torch.no_grad():
        want = model(x)
        with apply_plan(model, plan) as run:
            got = model(x)
            model(x)
    assert run.planned_calls == 4 and run.passes == 2
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_original_restored_and_refusals_in_one_line() -> None:
    original = F.scaled_dot_product_attention
    model, x = model_and_input()
    plan = make_plan({0: dict.fromkeys(range(HEADS), SPARSE)})
    with pytest.raises(RuntimeError, match="boom"), apply_plan(model, plan):
        raise RuntimeError("boom")
    assert F.scaled_dot_product_attention is original and not model._forward_pre_hooks

    def refused(plan: Plan, call=lambda: model(x)) -> str:
        with pytest.raises(ConfigError) as exc, torch.no_grad(), apply_plan(model, plan):
            call()
        assert F.scaled_dot_product_attention is original
        assert "\n" not in str(exc.value)
        return str(exc.value)

    assert "head_dim 32: q [batch, 4, 32, 32]" in refused(make_plan({0: dict.fromkeys(range(HEADS), SPARSE)},
                                                                   head_dim=32))
    assert "the plan has layer 5" in refused(make_plan({5: dict.fromkeys(range(HEADS), SPARSE)}))
    q = torch.randn(1, HEADS, N, HD)
    assert "attn_mask given" in refused(plan, lambda: F.scaled_dot_product_attention(
        q, q, q, attn_mask=torch.ones(N, N, dtype=torch.bool)))
    assert "is_causal=True" in refused(plan, lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert "q [1, 4, 12, 16]" in refused(plan, lambda: F.scaled_dot_product_attention(q[:, :, :12], q, q))
    assert "one replacement" in refused(plan, lambda: apply_plan(model, plan).__enter__())
    with pytest.raises(ConfigError, match="backend='gpu'"), apply_plan(model, plan, backend="gpu"):
        pass


# --------------------------------------------------------------------------------------------
# Plans per range of denoising steps (format version 3)
# --------------------------------------------------------------------------------------------

MIXED = {0: SPARSE, 1: DENSE, 2: SPARSE, 3: DENSE}


def step_plans() -> tuple[Plan, Plan, Plan]:
    """A plan of three ranges: steps 0-1 dense, step 2 its own layers (layer 0 all sparse), 3 on the plan's
    layers (layer 1 mixed); and the plain plans of the two sparse ranges."""
    early = make_plan({0: dict.fromkeys(range(HEADS), SPARSE)})
    late = make_plan({1: MIXED})
    data = late.to_dict()
    data["steps"] = [{"start": 0, "stop": 2, "dense": True, "layers": []},
                     {"start": 2, "stop": 3, "dense": False, "layers": early.to_dict()["layers"]},
                     {"start": 3, "stop": None, "dense": False, "layers": []}]
    return parse_plan(data, "step plan"), early, late


def test_step_ranges_run_dense_warm_up_then_each_range_plan() -> None:
    model, x = model_and_input()
    plan, early, late = step_plans()
    with torch.no_grad():
        dense = model(x)
        with apply_plan(model, early, backend="reference"):
            want_early = model(x)
        with apply_plan(model, late, backend="reference"):
            want_late = model(x)
        with apply_plan(model, plan, backend="reference") as run:
            outs = [model(x) for _ in range(5)]
    assert rel_error(want_early, dense) > 0.03 and rel_error(want_late, dense) > 0.03 \
        and rel_error(want_early, want_late) > 0.03
    for i in (0, 1):  # dense warm-up: the original SDPA on every call, bit for bit
        torch.testing.assert_close(outs[i], dense, rtol=0, atol=0)
    torch.testing.assert_close(outs[2], want_early, rtol=0, atol=0)
    for i in (3, 4):  # the last range runs to the end, on the plan's own layers
        torch.testing.assert_close(outs[i], want_late, rtol=0, atol=0)
    assert run.passes == 5 and run.dense_passes == 2
    assert run.planned_calls == 3 and run.dense_calls == 2 * 2 + 1 + 2 * 1


def test_passes_per_step_and_a_step_the_caller_sets() -> None:
    model, x = model_and_input(batch=1)
    plan, early, late = step_plans()
    with torch.no_grad():
        dense = model(x)
        with apply_plan(model, early, backend="reference"):
            want_early = model(x)
        with apply_plan(model, late, backend="reference"):
            want_late = model(x)
        with apply_plan(model, plan, backend="reference", passes_per_step=2) as run:  # CFG: two passes a step
            steps, outs = [], []
            for _ in range(8):
                outs.append(model(x))
                steps.append(run.step)
        assert steps == [0, 0, 1, 1, 2, 2, 3, 3]
        for i, want in enumerate([dense] * 4 + [want_early] * 2 + [want_late] * 2):
            torch.testing.assert_close(outs[i], want, rtol=0, atol=0)
        with apply_plan(model, plan, backend="reference") as run:
            got = []
            for step in (3, 0, 2, 2):  # a sampling loop that sets the step; it holds until set again
                run.step = step
                got.append(model(x))
            got.append(model(x))
        for out, want in zip(got, [want_late, dense, want_early, want_early, want_early], strict=True):
            torch.testing.assert_close(out, want, rtol=0, atol=0)
        assert run.step == 2 and run.passes == 5
    with pytest.raises(ConfigError, match="passes_per_step=0"), apply_plan(model, plan, passes_per_step=0):
        pass
    with apply_plan(model, plan) as run, pytest.raises(ConfigError, match="runner.step = -1"):
        run.step = -1
