"""A whole search: samples and workload in, Optuna studies run, the plan chosen, the baselines beside it.

:func:`search_plan` is what ``simulate search`` calls; each step is a module of its own (samples,
quality, space, latency, study, plan).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sparsesim.search.latency import LatencyModel, LayerShape
from sparsesim.search.plan import (
    BaselineOutcome,
    Choice,
    ErrorBudget,
    GpuPrediction,
    Model,
    Outcome,
    Plan,
    SearchInfo,
    baselines,
    build_plan,
    choose,
    outcome,
)
from sparsesim.search.space import Candidate, Space, build_space
from sparsesim.search.study import (
    HeadSource,
    Point,
    Progress,
    SearchReport,
    SearchSettings,
    head_study_name,
    open_storage,
    pareto,
    points,
    redact_url,
    run_parallel,
)
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.workloads import Workload, dense_step, load_workload

GPUS = ("A100", "H100", "H200", "B200")
#: What a head study records (trial user attributes, the uniform candidates' (error, mass)); a study of
#: another format is refused on resume rather than misread.
STUDY_FORMAT = 3


@dataclass(frozen=True)
class SearchResult:
    """The plan, its outcome and the baselines' on the target GPU, and the run's report."""

    plan: Plan
    outcomes: tuple[Outcome, ...]
    report: SearchReport


def layer_range(text: str | None, workload: Workload, available: int) -> list[int]:
    """Workload layers searched: ``A:B`` (0-based, B exclusive), default the first ``available``."""
    if text is None:
        return list(range(min(available, workload.layers)))
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"--layers {text!r}; allowed: A:B with 0 <= A < B <= {workload.layers}") from None
    if not 0 <= a < b <= workload.layers:
        raise ConfigError(f"--layers {text!r}; allowed: A:B with 0 <= A < B <= {workload.layers}")
    if b - a > available:
        raise ConfigError(f"--layers {text!r} asks for {b - a} layers; the samples hold {available}")
    return list(range(a, b))


def step_model(workload: Workload, latency: LatencyModel, searched: int) -> Model:
    """The step around the searched layers' self-attention, from the workload model on this GPU."""
    from sparsesim.hwmodels import load_gpu
    from sparsesim.hwmodels.profiles import load_profile

    gpu = load_gpu(latency.gpu)
    prof = load_profile(latency.kernel_profile, gpu)
    layout = latency.shape.layout
    dense = latency.result(Candidate(layout, (1,) * len(layout), (1,) * len(layout)), latency.shape.heads)
    step = dense_step(workload, gpu, prof, dense.dense_ms, dense.dense_TFLOPs)
    return Model(latency=latency, other_ms=step.total_ms - searched * dense.dense_ms)


def uniform_candidates(space: Space, workload: Workload) -> list[Candidate]:
    """One-pattern-for-all candidates: the workload's own patterns and tile-strided windows of 1/8 to 1/2."""
    out = []
    for pat in workload.patterns:
        rank = len(space.layout)
        win = pat.get("window")
        win = tuple(win) if isinstance(win, list) else (int(win),) * rank if win is not None else space.layout
        stride = pat.get("stride", 1)
        stride = tuple(stride) if isinstance(stride, list) else (int(stride),) * rank
        out.append(Candidate(win, stride, (1,) * rank))
    for frac in (8, 4, 2):
        window = tuple(max(t, (n // frac) // t * t) for n, t in zip(space.layout, space.kv_tile, strict=True))
        out.append(Candidate(window, tuple(min(q, w) for q, w in zip(space.q_tile, window, strict=True)),
                             (1,) * len(space.layout)))
    return list(dict.fromkeys(out))


def uniform_quality(storage: Any, study: str, layers: Sequence[int], heads: int,
                    cands: Sequence[Candidate]) -> dict[Candidate, list[list[tuple[float, float]]]]:
    """Per uniform candidate, every searched head's (error, mass) (recorded in each head's study)."""
    import optuna

    if isinstance(storage, str):
        storage = open_storage(storage)
    out: dict[Candidate, list[list[tuple[float, float]]]] = {c: [] for c in cands}
    for li in range(len(layers)):
        rows: dict[Candidate, list[tuple[float, float]]] = {c: [] for c in cands}
        for h in range(heads):
            st = optuna.load_study(study_name=head_study_name(study, li, h), storage=storage)
            for c in cands:
                err, mass = st.user_attrs[f"uniform {c.label()}"]
                rows[c].append((float(err), float(mass)))
        for c in cands:
            out[c].append(rows[c])
    return out


def search_plan(*, src: HeadSource, workload: str, gpu: str, settings: SearchSettings, layers: str | None = None,
                error_budget: float | None = None, max_error: float | None = None,
                target_speedup: float | None = None, kernel_profile: str = "triton", dense_profile: str = "cudnn",
                samples_label: str = "", progress: Progress | None = None, storage: Any = None) -> SearchResult:
    """Search every head of the chosen layers, choose the plan, and compare it with the baselines.

    ``storage``: the storage already opened on ``settings.storage`` (:func:`open_storage`), else it is
    opened here; ``progress(done, total)`` is called as trials finish."""
    w = load_workload(workload)
    if tuple(src.layout) != tuple(w.layout):
        raise ConfigError(f"the samples' layout {'x'.join(map(str, src.layout))} is not the workload's "
                          f"{'x'.join(map(str, w.layout))}")
    for li in range(src.num_layers):
        if src.layer_heads(li) != w.heads:
            raise ConfigError(f"samples layer {li} has {src.layer_heads(li)} heads; {w.name} has {w.heads}")
    chosen = layer_range(layers, w, src.num_layers)
    space = build_space(w.layout, gpu=gpu, head_dim=w.head_dim, dtype=w.dtype)
    shape = LayerShape(layout=w.layout, heads=w.heads, heads_kv=w.heads_kv, head_dim=w.head_dim, batch=w.batch,
                       dtype=w.dtype, causal=w.causal)
    latency = LatencyModel(shape=shape, gpu=gpu, q_tile=space.q_tile, kv_tile=space.kv_tile,
                           kernel_profile=kernel_profile, dense_profile=dense_profile)
    uniform = uniform_candidates(space, w)
    fingerprint = json.dumps({"format": STUDY_FORMAT, "workload": w.name, "gpu": gpu, "layers": chosen,
                              "samples": samples_label, "kernel_profile": kernel_profile,
                              "tiles": [space.q_tile, space.kv_tile]})
    settings = SearchSettings(**{**settings.__dict__, "fingerprint": fingerprint})
    sample_layers = list(range(len(chosen)))
    storage = storage if storage is not None else open_storage(settings.storage)
    report = run_parallel(src, sample_layers, space, latency, settings, progress=progress,
                          uniform=uniform, storage=storage)
    pts = [[points(storage, settings.study, li, h) for h in range(w.heads)] for li in sample_layers]
    uni = uniform_quality(storage, settings.study, sample_layers, w.heads, uniform)
    evaluated = []
    for li in range(len(sample_layers)):
        row = []
        for h in range(w.heads):
            tried = {p.candidate for p in pts[li][h]}
            row.append(pts[li][h] + [Point(c, latency.head_ms(c), *uni[c][li][h]) for c in uniform if c not in tried])
        evaluated.append(row)
    fronts = [[pareto(p) for p in layer] for layer in evaluated]
    model = step_model(w, latency, len(chosen))
    plan = choose(fronts, model, mean_error=error_budget, max_error=max_error, target_speedup=target_speedup,
                  evaluated=evaluated)
    budget = error_budget if error_budget is not None else plan.mean_error
    base = baselines(pts, {c: [[e for e, _ in row] for row in v] for c, v in uni.items()}, model, budget)
    matched = [choose(fronts, model, mean_error=b.mean_error, max_error=max_error, name=f"plan at {b.name}'s error",
                      evaluated=evaluated) for b in base]
    choices: list[Choice] = [plan, *[c for pair in zip(base, matched, strict=True) for c in pair]]
    outcomes = tuple(outcome(model, c) for c in choices)
    predicted = []
    for g in GPUS:
        try:
            other = build_space(w.layout, gpu=g, head_dim=w.head_dim, dtype=w.dtype)
        except ConfigError:
            continue
        lat = LatencyModel(shape=shape, gpu=g, q_tile=other.q_tile, kv_tile=other.kv_tile,
                           kernel_profile=kernel_profile, dense_profile=dense_profile)
        res = outcome(step_model(w, lat, len(chosen)), plan)
        predicted.append(GpuPrediction(g, float(res.attention_speedup), float(res.e2e_predicted_speedup)))
    info = SearchInfo(study=settings.study, storage=redact_url(settings.storage), trials=settings.trials,
                      seed=settings.seed, samples=samples_label or "-", sampler="TPESampler(multivariate)",
                      baselines=tuple(BaselineOutcome(o.name, float(o.mean_error), float(o.max_error),
                                                      float(o.e2e_predicted_speedup), float(o.attention_speedup))
                                      for o in outcomes[1:]))
    data = build_plan(choice=plan, model=model, layer_index=chosen, layer_names=[f"layer{li}" for li in chosen],
                      workload=w.name, gpu=gpu,
                      error_budget=ErrorBudget(error_budget, max_error, target_speedup), predicted=predicted,
                      search=info)
    return SearchResult(plan=data, outcomes=outcomes, report=report)


