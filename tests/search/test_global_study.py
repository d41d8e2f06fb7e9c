"""The global study end to end on CPU: a tiny DiT-like denoiser (QK RMSNorm, 3D RoPE, SDPA, random weights) runs
an Euler sampling loop; its attention is captured, the exact per-head fronts enumerated, and the global study
(layer budgets, dense warm-up steps, two step ranges) judges each trial's plan on the loop's own final latent
under ``apply_plan`` (torch reference backend) against the dense loop's.

``benchmarks/global_study_demo.py`` prints the front of this demo model (it loads :func:`demo` from this file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("optuna")
F = torch.nn.functional
nn = torch.nn

from sparsesim.kernels.apply import apply_plan  # noqa: E402
from sparsesim.search.capture import capture_attention  # noqa: E402
from sparsesim.search.exact import ExactFronts, run_exhaustive  # noqa: E402
from sparsesim.search.global_study import GlobalSettings, GlobalStudy  # noqa: E402
from sparsesim.search.latency import LatencyModel, LayerShape  # noqa: E402
from sparsesim.search.plan import Model, load_plan, save_plan  # noqa: E402
from sparsesim.search.space import build_space  # noqa: E402
from sparsesim.simulator.errors import ConfigError  # noqa: E402
from sparsesim.simulator.plan import Plan  # noqa: E402

LAYOUT = (2, 16, 16)  # T, H, W latent tokens
N = math.prod(LAYOUT)
CHANNELS, DIM, HEADS, HD, LAYERS, STEPS = 4, 64, 4, 32, 3, 6
ROPE_SPLIT = (8, 12, 12)  # head_dim channels rotated by the T, H, W coordinates
#: Per layer and head, how strongly q and k share a per-head direction: large = a local head under RoPE (q.k peaks
#: at zero offset and falls with distance), small = content-driven, global.
LOCALITY = ((4.0, 3.0, 1.0, 0.3), (3.0, 2.0, 0.5, 4.0), (2.0, 4.0, 3.0, 0.2))
GPU = "H200"
PRIORS = Path(__file__).resolve().parents[2] / "hwmodels" / "profiles"


def rope_tables(layout: tuple[int, ...] = LAYOUT) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [1, N, 1, HD/2] of 3D RoPE: each axis rotates its own channel pairs by its coordinate."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in layout], indexing="ij"), -1).reshape(-1, 3)
    angles = []
    for axis, width in enumerate(ROPE_SPLIT):
        freq = 1.0 / (8.0 ** (torch.arange(0, width, 2, dtype=torch.float32) / width))
        angles.append(coords[:, axis, None].float() * freq)
    ang = torch.cat(angles, -1)
    return ang.cos()[None, :, None], ang.sin()[None, :, None]


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)


class Block(nn.Module):
    """A DiT block: adaLN-style shift and gate from the timestep, QK RMSNorm, 3D RoPE, SDPA, MLP."""

    def __init__(self, locality: tuple[float, ...]) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.qkv = nn.Linear(DIM, 3 * HEADS * HD)
        self.q_norm, self.k_norm = nn.RMSNorm(HD), nn.RMSNorm(HD)
        with torch.no_grad():
            shared = (torch.randn(HEADS, HD) * torch.tensor(locality)[:, None]).flatten()
            self.qkv.bias[:HEADS * HD] = shared
            self.qkv.bias[HEADS * HD:2 * HEADS * HD] = shared
            self.q_norm.weight.fill_(2.0)
            self.k_norm.weight.fill_(2.0)
        self.proj = nn.Linear(HEADS * HD, DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))
        self.ada = nn.Linear(DIM, 2 * DIM)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shift, gate = self.ada(temb)[:, None].chunk(2, -1)
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm1(x) + shift).split(HEADS * HD, -1)
        q = rope(self.q_norm(q.view(b, n, HEADS, HD)), cos, sin).transpose(1, 2)
        k = rope(self.k_norm(k.view(b, n, HEADS, HD)), cos, sin).transpose(1, 2)
        v = v.view(b, n, HEADS, HD).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)
        x = x + gate * self.proj(o.transpose(1, 2).reshape(b, n, HEADS * HD))
        return x + self.mlp(self.norm2(x))


class Denoiser(nn.Module):
    """Patch embedding, timestep MLP, DiT blocks, output projection: the velocity of latent tokens [B, N, C]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(CHANNELS, DIM)
        self.t_mlp = nn.Sequential(nn.Linear(DIM, DIM), nn.SiLU(), nn.Linear(DIM, DIM))
        self.blocks = nn.ModuleList(Block(loc) for loc in LOCALITY[:LAYERS])
        self.out = nn.Linear(DIM, CHANNELS)
        cos, sin = rope_tables()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        half = DIM // 2
        freq = torch.exp(-math.log(1000.0) * torch.arange(half) / half) * t * 1000
        temb = self.t_mlp(torch.cat([freq.sin(), freq.cos()])[None].expand(z.shape[0], -1))
        x = self.embed(z)
        for blk in self.blocks:
            x = blk(x, temb, self.cos, self.sin)
        return self.out(x)


def sample(model: Denoiser, noise: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """Euler steps of a flow-matching sampler from t = 1 to 0: one forward pass per step."""
    z = noise
    with torch.no_grad():
        for i in range(steps):
            z = z - (1.0 / steps) * model(z, torch.tensor(1.0 - i / steps))
    return z


@dataclass
class Demo:
    model: Denoiser
    noise: torch.Tensor
    dense: torch.Tensor
    exact: ExactFronts
    latency: LatencyModel
    judged: int = 0

    def judge(self, plan: Plan) -> float:
        """Relative L2 of the final latent with ``plan`` applied, against the dense loop's."""
        self.judged += 1
        with apply_plan(self.model, plan, backend="reference") as run:
            out = sample(self.model, self.noise)
        assert run.passes == STEPS
        return float((out - self.dense).norm() / self.dense.norm())

    def study(self, **options: Any) -> GlobalStudy:
        return GlobalStudy(self.exact, Model(self.latency, other_ms=0.0), steps=STEPS, max_warmup=3,
                           workload="tiny-dit", samples=f"demo step {STEPS // 2}", **options)


def demo(seed: int = 0) -> Demo:
    """The demo model, its dense run, the samples of its middle step and the exact fronts on the H200 model."""
    torch.manual_seed(seed)
    model = Denoiser().eval()
    noise = torch.randn(1, N, CHANNELS)
    with capture_attention(model, layout=LAYOUT, rows=64, seed=seed, steps=[STEPS // 2]) as cap:
        dense = sample(model, noise)
    samples = cap.samples(step=STEPS // 2)
    space = build_space(LAYOUT, gpu=GPU, head_dim=HD, dtype="bf16")
    shape = LayerShape(layout=LAYOUT, heads=HEADS, heads_kv=HEADS, head_dim=HD, batch=1, dtype="bf16")
    # Priced with the hand-set priors, which no refit moves: on a 512-token, 4-head layer the fitted profiles price
    # every sparse pattern slower than dense (launch- and CTA-overhead-bound), and the study would have nothing to
    # buy; this test checks the study, not the fit.
    latency = LatencyModel(shape=shape, gpu=GPU, q_tile=space.q_tile, kv_tile=space.kv_tile,
                           kernel_profile=str(PRIORS / "triton.toml"), dense_profile=str(PRIORS / "cudnn-hopper.toml"))
    exact = run_exhaustive(samples, list(range(LAYERS)), space, latency)
    return Demo(model=model, noise=noise, dense=dense, exact=exact, latency=latency)


@pytest.fixture(scope="module")
def built() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is faster than two shared ones
    try:
        yield demo()
    finally:
        torch.set_num_threads(threads)


BUDGET = 0.008  # the fastest plan of the demo judges about 0.009: the budget binds


def test_global_study_end_to_end_and_resume(built: Demo, tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'global.db'}"
    study = built.study()
    first = study.run(built.judge, error_budget=BUDGET,
                      settings=GlobalSettings(study="demo", storage=storage, trials=10, startup=4, seed=1))
    assert first.ran == 10 and len(first.trials) == 10 > first.startup == 4  # TPE ran on 6 trials
    assert built.judged <= 10  # equal plans are judged once
    chosen, plan = first.chosen, first.plan
    assert chosen is not None and plan is not None
    assert chosen.judged_error <= BUDGET
    assert chosen.predicted_ms <= first.dense_ms == pytest.approx(STEPS * LAYERS * built.latency.dense_layer_ms())
    # the budget buys a sparse plan (at least the anchor: 3 dense steps, then the fastest) but not the fastest
    assert chosen.predicted_ms < first.dense_ms and first.trials[1].judged_error > BUDGET
    assert chosen.predicted_ms == min(t.predicted_ms for t in first.trials if t.judged_error <= BUDGET)
    # the written plan runs as judged, and predicts the trial's time from its own layers' launches
    path = save_plan(plan, tmp_path / "steps.plan.json")
    back = load_plan(path)
    assert back == plan
    assert built.judge(back) == pytest.approx(chosen.judged_error, rel=1e-9, abs=1e-12)
    assert predicted_from_file(back) == pytest.approx(chosen.predicted_ms, rel=1e-9)
    assert plan.search is not None and "TPESampler(multivariate, n_startup_trials=4)" in plan.search.sampler
    # the Pareto trials: none dominates another, every trial is dominated by or equal to one of them
    for t in first.trials:
        assert any(p.judged_error <= t.judged_error and p.predicted_ms <= t.predicted_ms for p in first.pareto)
    assert [p.predicted_ms for p in first.pareto] == sorted(p.predicted_ms for p in first.pareto)
    assert all(a.judged_error > b.judged_error for a, b in zip(first.pareto, first.pareto[1:], strict=False))
    # resume: the same study in the same storage gets 3 more trials, the first 10 unchanged
    again = built.study().run(built.judge, error_budget=BUDGET,
                              settings=GlobalSettings(study="demo", storage=storage, trials=13, startup=4, seed=1))
    assert again.ran == 3 and len(again.trials) == 13
    assert [(t.number, t.params, t.judged_error) for t in again.trials[:10]] == \
        [(t.number, t.params, t.judged_error) for t in first.trials]
    assert again.chosen is not None and again.chosen.predicted_ms <= chosen.predicted_ms
    # a study made for another space is refused, not misread
    with pytest.raises(ConfigError, match="was made for"):
        built.study(split=False).run(built.judge, error_budget=BUDGET,
                                     settings=GlobalSettings(study="demo", storage=storage, trials=14, startup=4))


def predicted_from_file(plan: Plan) -> float:
    """A whole run's predicted ms from the plan file alone: per step, the layers that run (dense layers' dense_ms)."""
    total = 0.0
    dense_step = sum(la.dense_ms for la in plan.layers)
    for step in range(STEPS):
        layers = plan.layers_at(step)
        total += sum(la.predicted_ms for la in layers) if layers else dense_step
    return total


def test_warm_up_steps_are_a_dense_range(built: Demo) -> None:
    study = built.study()
    params = {"budget": study.budget_range[1], **{f"scale_L{i}": 1.0 for i in range(LAYERS)}, "warmup": 2,
              "split": 4, "early_scale": 0.1}
    b = study.build(params)
    plan = b.plan
    assert plan.steps[0].dense and (plan.steps[0].start, plan.steps[0].stop) == (0, 2)
    assert plan.layers_at(0) == plan.layers_at(1) == ()
    assert plan.steps[-1].stop is None and plan.layers_at(STEPS - 1) == plan.layers
    assert [(r.start, r.stop, r.dense) for r in b.ranges] == [(r.start, r.stop, r.dense) for r in plan.steps]
    assert b.predicted_ms == pytest.approx(predicted_from_file(plan), rel=1e-9)
    # the dense steps change nothing: a plan whose every step is dense is the dense model
    all_dense = study.build({**params, "warmup": STEPS}).plan
    assert [(r.start, r.stop, r.dense) for r in all_dense.steps] == [(0, None, True)]
    assert built.judge(all_dense) == 0.0
    # fewer warm-up steps, same budgets: more error, less predicted time (the sparse plan is faster than dense)
    warm = study.build({**params, "split": 0})
    fewer = study.build({**params, "warmup": 0, "split": 0})
    assert [(r.start, r.stop, r.dense) for r in warm.plan.steps] == [(0, 2, True), (2, None, False)]
    assert fewer.plan.steps == () and fewer.predicted_ms < warm.predicted_ms < study.dense_ms
    assert built.judge(fewer.plan) > built.judge(warm.plan) > 0


def test_refusals_in_one_line(built: Demo) -> None:
    study = built.study()
    for settings, needle in ((GlobalSettings(trials=5, startup=5), "TPE would never run"),
                             (GlobalSettings(trials=0), "trials=0")):
        with pytest.raises(ConfigError, match=needle):
            study.run(built.judge, error_budget=BUDGET, settings=settings)
    with pytest.raises(ConfigError, match="error_budget=0"):
        study.run(built.judge, error_budget=0, settings=GlobalSettings(trials=3, startup=2))
    with pytest.raises(ConfigError, match="judge returned nan"):
        study.run(lambda plan: math.nan, error_budget=BUDGET, settings=GlobalSettings(trials=3, startup=2))
    with pytest.raises(ConfigError, match="steps=0"):
        GlobalStudy(built.exact, Model(built.latency, 0.0), steps=0)
    with pytest.raises(ConfigError, match="max_warmup=9"):
        GlobalStudy(built.exact, Model(built.latency, 0.0), steps=STEPS, max_warmup=9)
