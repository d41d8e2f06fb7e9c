"""A whole search: samples and workload in, every head's front found (exhaustive, or Optuna studies), the
plan chosen, the baselines beside it.

:func:`search_plan` is what ``simulate search`` calls; each step is a module of its own (samples,
quality, space, latency, study, plan).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sparsesim.search.baselines import RULES, Table, tuned
from sparsesim.search.exact import run_exhaustive
from sparsesim.search.latency import LatencyModel, LayerShape
from sparsesim.search.plan import (
    BaselineOutcome,
    Choice,
    ErrorBudget,
    GpuPrediction,
    Model,
    Outcome,
    Plan,
    Rows,
    SearchInfo,
    build_plan,
    choose,
    outcome,
    rule_info,
)
from sparsesim.search.samples import extras_of
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
#: ``search_plan``'s samplers: every candidate of the space (exact fronts), or Optuna's TPE per head.
SAMPLERS = ("exhaustive", "tpe")
#: What a head study records (trial user attributes, the uniform candidates' (error, mass)); a study of
#: another format is refused on resume rather than misread.
STUDY_FORMAT = 3


@dataclass(frozen=True)
class SearchResult:
    """The plan, its outcome and the baselines' on the target GPU, and the run's report."""

    plan: Plan
    outcomes: tuple[Outcome, ...]
    report: SearchReport
    #: the tuned baselines (uniform, sparse-vdit, sta) by name, each as a plan (``--baselines-out``)
    baselines: Mapping[str, Plan] = field(default_factory=dict)


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


def search_plan(*, src: HeadSource, workload: str, gpu: str, settings: SearchSettings | None = None,
                sampler: str = "exhaustive", layers: str | None = None, error_budget: float | None = None,
                max_error: float | None = None, target_speedup: float | None = None, kernel_profile: str = "triton",
                dense_profile: str = "cudnn", samples_label: str = "", progress: Progress | None = None,
                storage: Any = None) -> SearchResult:
    """Search every head of the chosen layers, choose the plan, and compare it with the baselines.

    ``sampler``: ``"exhaustive"`` (default) evaluates every candidate of the space on every head
    (:mod:`~sparsesim.search.exact`: exact fronts, no storage; ``settings`` is optional and only its seed is
    recorded); ``"tpe"`` runs one Optuna study per head with ``settings`` (study, storage URL, trials,
    workers) and resumes from the storage. ``storage``: the storage already opened on ``settings.storage``
    (:func:`open_storage`, TPE only), else it is opened here; ``progress(done, total)`` is called as heads
    (exhaustive) or trials (TPE) finish."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if sampler == "tpe" and settings is None:
        raise ConfigError("--sampler tpe needs search settings (study, storage, trials)")
    w = load_workload(workload)
    if tuple(src.layout) != tuple(w.layout):
        raise ConfigError(f"the samples' layout {'x'.join(map(str, src.layout))} is not the workload's "
                          f"{'x'.join(map(str, w.layout))}")
    for li in range(src.num_layers):
        if src.layer_heads(li) != w.heads:
            raise ConfigError(f"samples layer {li} has {src.layer_heads(li)} heads; {w.name} has {w.heads}")
    chosen = layer_range(layers, w, src.num_layers)
    space = build_space(w.layout, gpu=gpu, head_dim=w.head_dim, dtype=w.dtype)
    extra_tokens, extra_at = extras_of(src)  # the samples' extra tokens (joint text tokens, sinks) are costed
    shape = LayerShape(layout=w.layout, heads=w.heads, heads_kv=w.heads_kv, head_dim=w.head_dim, batch=w.batch,
                       dtype=w.dtype, causal=w.causal, extra_tokens=extra_tokens, extra_at=extra_at)
    latency = LatencyModel(shape=shape, gpu=gpu, q_tile=space.q_tile, kv_tile=space.kv_tile,
                           kernel_profile=kernel_profile, dense_profile=dense_profile)
    uniform = uniform_candidates(space, w)
    sample_layers = list(range(len(chosen)))
    if sampler == "exhaustive":
        exact = run_exhaustive(src, sample_layers, space, latency, extra=uniform, progress=progress)
        report = exact.report
        pts = [[exact.points(li, h) for h in range(w.heads)] for li in sample_layers]
        fronts = [[exact.front(li, h) for h in range(w.heads)] for li in sample_layers]
        # what the plan's local search may move a head to: the patterns on any front of its layer (so that
        # heads can share a launch) and the uniform ones
        evaluated = []
        for li in sample_layers:
            shared = list(dict.fromkeys([*(p.candidate for f in fronts[li] for p in f), *uniform]))
            evaluated.append([[exact.point(li, h, exact.index[c]) for c in shared] for h in range(w.heads)])
        run_info = ("-", "-", len(exact.candidates), settings.seed if settings is not None else 0,
                    "exhaustive (every candidate of the space)")
    else:
        assert settings is not None
        fingerprint = json.dumps({"format": STUDY_FORMAT, "workload": w.name, "gpu": gpu, "layers": chosen,
                                  "samples": samples_label, "kernel_profile": kernel_profile,
                                  "tiles": [space.q_tile, space.kv_tile]})
        settings = SearchSettings(**{**settings.__dict__, "fingerprint": fingerprint})
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
                row.append(pts[li][h] + [Point(c, latency.head_ms(c), *uni[c][li][h]) for c in uniform
                                         if c not in tried])
            evaluated.append(row)
        fronts = [[pareto(p) for p in layer] for layer in evaluated]
        run_info = (settings.study, redact_url(settings.storage), settings.trials, settings.seed,
                    "TPESampler(multivariate)")
    every = pts if sampler == "exhaustive" else evaluated  # the baselines choose from every evaluated point
    table = Table(exact.candidates, exact.error, exact.point) if sampler == "exhaustive" else Table.of_points(every)
    if latency.group > 1:  # GQA: a KV head's front is not made of its query heads' fronts (plan.Units)
        evaluated = every
    study_name, shown, trials, seed, sampler_name = run_info
    data, outcomes, base_plans = plan_search(
        w, latency, chosen, [f"layer{li}" for li in chosen], fronts, evaluated, table, gpu=gpu,
        error_budget=error_budget, max_error=max_error, target_speedup=target_speedup,
        kernel_profile=kernel_profile, dense_profile=dense_profile,
        info=SearchInfo(study=study_name, storage=shown, trials=trials, seed=seed, samples=samples_label or "-",
                        sampler=sampler_name, baselines=()))
    return SearchResult(plan=data, outcomes=outcomes, report=report, baselines=base_plans)




def plan_search(w: Workload, latency: LatencyModel, chosen: Sequence[int], names: Sequence[str], fronts: Rows,
                evaluated: Rows, table: Table, *, gpu: str, error_budget: float | None, max_error: float | None,
                target_speedup: float | None, kernel_profile: str, dense_profile: str,
                info: SearchInfo) -> tuple[Plan, tuple[Outcome, ...], dict[str, Plan]]:
    """The rest of a search once every head's points are known (from samples or from statistics): the plan
    (seeded with the baselines tuned to the same budget), each baseline and the plan at its error, the
    predictions on every GPU, and the plan files (``info``: the search's record, its baselines filled here)."""
    model = step_model(w, latency, len(chosen))
    if error_budget is not None:  # the tuned baselines as seeds: the plan is never slower than one of them
        base = tuned(table, model, error_budget, max_error=max_error)
        plan = choose(fronts, model, mean_error=error_budget, max_error=max_error, evaluated=evaluated, seeds=base)
    else:
        plan = choose(fronts, model, max_error=max_error, target_speedup=target_speedup, evaluated=evaluated)
        base = tuned(table, model, plan.mean_error, max_error=max_error)
    budget = error_budget if error_budget is not None else plan.mean_error
    matched = [choose(fronts, model, mean_error=b.mean_error, max_error=max_error, name=f"plan at {b.name}'s error",
                      evaluated=evaluated, seeds=[b]) for b in base]
    choices: list[Choice] = [plan, *[c for pair in zip(base, matched, strict=True) for c in pair]]
    outcomes = tuple(outcome(model, c) for c in choices)
    predicted = []
    for g in GPUS:
        try:
            other = build_space(w.layout, gpu=g, head_dim=w.head_dim, dtype=w.dtype)
        except ConfigError:
            continue
        lat = LatencyModel(shape=latency.shape, gpu=g, q_tile=other.q_tile, kv_tile=other.kv_tile,
                           kernel_profile=kernel_profile, dense_profile=dense_profile)
        res = outcome(step_model(w, lat, len(chosen)), plan)
        predicted.append(GpuPrediction(g, float(res.attention_speedup), float(res.e2e_predicted_speedup)))
    info = replace(info, baselines=tuple(BaselineOutcome(o.name, float(o.mean_error), float(o.max_error),
                                                         float(o.e2e_predicted_speedup), float(o.attention_speedup))
                                         for o in outcomes[1:]))
    data = build_plan(choice=plan, model=model, layer_index=chosen, layer_names=list(names), workload=w.name, gpu=gpu,
                      error_budget=ErrorBudget(error_budget, max_error, target_speedup), predicted=predicted,
                      search=info)
    base_plans = {b.name: build_plan(choice=b, model=model, layer_index=chosen, layer_names=list(names),
                                     workload=w.name, gpu=gpu, error_budget=ErrorBudget(budget, max_error, None),
                                     predicted=(), search=rule_info(info, b, RULES[b.name])) for b in base}
    return data, outcomes, base_plans
