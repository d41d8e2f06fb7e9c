"""End to end on a small DiT-like stack with QK RMSNorm, 3D RoPE and joint text tokens (MM-DiT): captured at the
attention call, searched into a plan that carries the text tokens, and run with ``apply_plan``; every head of
every planned call checked against float64 attention under a mask written here from the rule (layout queries:
their GNA neighbourhood plus every text key; text queries: every key)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
F = torch.nn.functional
nn = torch.nn

from sparsesim.kernels.apply import apply_plan  # noqa: E402
from sparsesim.kernels.reference import rel_error  # noqa: E402
from sparsesim.search import capture_attention, search_plan  # noqa: E402
from sparsesim.simulator.patterns import dense_mask  # noqa: E402
from sparsesim.simulator.plan import Plan, PlanLaunch  # noqa: E402

HEADS, HD, DIM, TEXT = 4, 32, 64, 16


def rope_3d(x: torch.Tensor, layout: tuple[int, ...]) -> torch.Tensor:
    """3D rotary embedding on ``[B, N, H, D]`` layout tokens: a third of the pairs per axis."""
    d = x.shape[-1]
    pairs = d // 2
    per = [pairs // 3, pairs // 3, pairs - 2 * (pairs // 3)]
    pos = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in layout], indexing="ij"),
                      -1).reshape(-1, 3)
    angles = []
    for axis, m in enumerate(per):
        freq = 1.0 / (100.0 ** (torch.arange(m, dtype=torch.float64) / max(1, m)))
        angles.append(pos[:, axis:axis + 1] * freq[None])
    ang = torch.cat(angles, -1).to(x.dtype)  # [N, D/2]
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class JointBlock(nn.Module):
    """Image tokens (QK RMSNorm, 3D RoPE) and text tokens (QK RMSNorm) in one joint SDPA call, text last."""

    def __init__(self, layout: tuple[int, ...]) -> None:
        super().__init__()
        self.layout = layout
        self.qkv_img = nn.Linear(DIM, 3 * HEADS * HD)
        self.qkv_txt = nn.Linear(DIM, 3 * HEADS * HD)
        self.norm_q, self.norm_k = nn.RMSNorm(HD), nn.RMSNorm(HD)
        self.proj = nn.Linear(HEADS * HD, DIM)
        self.seen: tuple[torch.Tensor, ...] = ()

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = x.shape[0], x.shape[1]

        def split(t: torch.Tensor, lin: nn.Linear) -> list[torch.Tensor]:
            q, k, v = (y.view(b, t.shape[1], HEADS, HD) for y in lin(t).split(HEADS * HD, -1))
            return [self.norm_q(q), self.norm_k(k), v]

        img, txt = split(x, self.qkv_img), split(text, self.qkv_txt)
        img[0], img[1] = rope_3d(img[0], self.layout), rope_3d(img[1], self.layout)
        q, k, v = (torch.cat([i, t], 1).transpose(1, 2) for i, t in zip(img, txt, strict=True))
        o = F.scaled_dot_product_attention(q, k, v)
        self.seen = (q.detach(), k.detach(), v.detach(), o.detach())
        o = self.proj(o.transpose(1, 2).reshape(b, n + text.shape[1], HEADS * HD))
        return x + o[:, :n], text + o[:, n:]


class JointStack(nn.Module):
    def __init__(self, layout: tuple[int, ...], layers: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(JointBlock(layout) for _ in range(layers))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x, text = blk(x, text)
        return x


def workload_file(tmp_path, layout: tuple[int, ...]):
    path = tmp_path / "joint.toml"
    path.write_text(f"""
name = "joint"
layout = {list(layout)}
heads = {HEADS}
head_dim = {HD}
hidden = {DIM}
mlp = {4 * DIM}
steps = 4
dtype = "bf16"
[[blocks]]
kind = "block"
count = 2
gemms = [[{3 * DIM}, {DIM}], [{DIM}, {DIM}]]
[[patterns]]
window = [2, 8, 8]
stride = [1, 1, 1]
""")
    return path


def rule_mask(plan: Plan, launch: PlanLaunch) -> np.ndarray:
    """[N+E, N+E] bool: the layout block from the GNA mask, every text row and column on (text after the layout)."""
    n = math.prod(plan.layout)
    m = np.ones((n + plan.extra_tokens,) * 2, dtype=bool)
    m[:n, :n] = dense_mask(input_size=plan.layout, window=launch.window, stride=launch.stride,
                           dilation=launch.dilation)
    return m


def expected(seen: tuple[torch.Tensor, ...], h: int, mask: np.ndarray | None) -> torch.Tensor:
    q, k, v, _ = (t[:, h].double() for t in seen)
    s = q @ k.transpose(-1, -2) / math.sqrt(HD)
    if mask is not None:
        s = s.masked_fill(~torch.as_tensor(mask), float("-inf"))
    return torch.softmax(s, -1) @ v


def check_heads(model: JointStack, plan: Plan, tol: float) -> int:
    sparse = 0
    for entry in plan.layers:
        seen = model.blocks[entry.layer].seen
        for launch in entry.launches:
            mask = None if launch.dense else rule_mask(plan, launch)
            sparse += 0 if launch.dense else len(launch.heads)
            for h in launch.heads:
                assert rel_error(seen[3][:, h], expected(seen, h, mask)) < tol, (entry.layer, h, launch.window)
    return sparse


def test_searched_plan_with_text_tokens_runs_the_model(tmp_path) -> None:
    layout = (4, 16, 16)
    n = math.prod(layout)
    torch.manual_seed(0)
    model = JointStack(layout).eval()
    x, text = torch.randn(1, n, DIM), torch.randn(1, TEXT, DIM)
    with torch.no_grad(), capture_attention(model, layout=layout, rows=24, extra_tokens=TEXT) as cap:
        dense_out = model(x, text)
    samples = cap.samples()
    res = search_plan(src=samples, workload=str(workload_file(tmp_path, layout)), gpu="H200", error_budget=0.3)
    plan = res.plan
    assert (plan.extra_tokens, plan.extra_at, plan.seq_tokens) == (TEXT, "end", n + TEXT)
    assert Plan.from_json(plan.to_json()) == plan  # the text tokens travel in the file
    # At 1,024 tokens the H200 model keeps every head dense (one dense call is the fastest), so the searched
    # plan's launches are replaced by sparse ones: the text tokens then run through sparse attention.
    sparse = PlanLaunch(heads=tuple(range(HEADS)), window=(2, 8, 8), stride=(1, 4, 4), dilation=(1, 1, 1),
                        dense=False, predicted_ms=0.01)
    plan = dataclasses.replace(plan, layers=tuple(dataclasses.replace(e, launches=(sparse,)) for e in plan.layers))
    with torch.no_grad(), apply_plan(model, plan, backend="reference") as run:
        out = model(x, text)
    assert run.planned_calls == len(plan.layers)
    assert check_heads(model, plan, 1e-5) > 0
    assert 0 < rel_error(out, dense_out) < 1.0


@pytest.mark.parametrize("at", ["end"])
def test_kernels_run_joint_calls_in_place(at: str) -> None:
    layout = (2, 8, 8)
    n = math.prod(layout)
    torch.manual_seed(1)
    model = JointStack(layout, layers=1).eval()
    x, text = torch.randn(2, n, DIM), torch.randn(2, TEXT, DIM)
    launches = (PlanLaunch(heads=(0, 1), window=(1, 4, 4), stride=(1, 2, 2), dilation=(1, 1, 1), dense=False,
                           predicted_ms=0.01),
                PlanLaunch(heads=(2,), window=layout, stride=(1, 1, 1), dilation=(1, 1, 1), dense=True,
                           predicted_ms=0.01),
                PlanLaunch(heads=(3,), window=(2, 4, 8), stride=(1, 4, 1), dilation=(1, 2, 1), dense=False,
                           predicted_ms=0.01))
    plan = _plan(layout, launches, TEXT, at)
    with torch.no_grad(), apply_plan(model, plan, backend="kernels") as run:
        model(x, text)
    assert run.last_backend == "kernels"
    assert check_heads(model, plan, 1e-4) == 3


def _plan(layout: tuple[int, ...], launches: tuple[PlanLaunch, ...], extra: int, at: str) -> Plan:
    from sparsesim.simulator.plan import FORMAT, VERSION, parse_plan

    heads = []
    for la in launches:
        heads += [{"head": h, "window": list(la.window), "stride": list(la.stride), "dilation": list(la.dilation),
                   "dense": la.dense, "error": 0.0, "mass": 1.0} for h in la.heads]
    heads.sort(key=lambda d: d["head"])
    return parse_plan({
        "format": FORMAT, "version": VERSION, "workload": "joint", "gpu": "H200", "kernel_profile": "triton",
        "dense_profile": "cudnn", "layout": list(layout), "causal": [False] * 3, "heads": HEADS,
        "heads_kv": HEADS, "head_dim": HD, "batch": 2, "dtype": "fp32", "q_tile": [1, 4, 4], "kv_tile": [1, 4, 4],
        "error_budget": {"mean": 0.1, "max": None, "target_speedup": None}, "mean_error": 0.0, "max_error": 0.0,
        "attention_speedup": 1.0, "e2e_predicted_speedup": 1.0, "predicted": {}, "search": None,
        "extra_tokens": extra, "extra_at": at,
        "layers": [{"layer": 0, "name": "block0", "heads": heads,
                    "launches": [{"heads": list(la.heads), "window": list(la.window), "stride": list(la.stride),
                                  "dilation": list(la.dilation), "dense": la.dense, "predicted_ms": 0.01}
                                 for la in launches], "predicted_ms": 0.03, "dense_ms": 0.04}]}, "joint plan")
