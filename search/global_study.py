"""Optuna where it pays: one multi-objective study over the global choices no per-head rule settles.

The per-head fronts are exact (:func:`~sparsesim.search.exact.run_exhaustive`); what they leave open is global:
how much error each layer may spend, how many denoising steps run dense first, and whether the early steps
(after the warm-up) want another budget than the late ones. :class:`GlobalStudy` searches these with Optuna's
TPE on two objectives, both minimized:

- the **judged error**: a caller-supplied ``judge(plan) -> float`` runs the model's own sampling loop with the
  plan applied (:func:`~sparsesim.kernels.apply.apply_plan`) and returns the relative L2 error of its final
  output (e.g. the latent after all steps) against the dense model's;
- the **predicted time** of the whole sampling run (ms): dense warm-up steps at the dense step's time, the
  other steps at their range's plan (the core's simulated launches, plus :attr:`~sparsesim.search.plan.Model.
  other_ms` per step).

Parameters of a trial, all ordered (TPE sees their order): ``budget`` (log-float, the per-head mean error budget
that :func:`~sparsesim.search.plan.choose` meets per layer), ``scale_L<i>`` (log-float, a multiplier of layer
``i``'s budget; ``per_layer=True``), ``warmup`` (int, dense steps at the start), ``split`` (int, the step where the
late range starts; the steps from the warm-up to it use ``budget * early_scale``, ``split=True``) and
``early_scale`` (log-float). Tiles stay fixed: the fronts are for one tile pair (the latency model's ``q_tile`` /
``kv_tile``; the space's windows and tile strides are multiples of it), which the plan records; another pair needs
fronts of its own.

A trial builds its plan from the fronts (``choose`` per layer at the trial's budgets; quality is never measured
again), so the same parameters give the same plan on resume; equal plans are judged once. The sampler is
``TPESampler(multivariate=True, n_startup_trials=startup)``, seeded, with ``trials > startup`` enforced (TPE
runs on every trial after the startup). Storage: Optuna's ``InMemoryStorage`` by default (fast), or a URL opened
by :func:`~sparsesim.search.study.open_storage` (an SQLite file, a PostgreSQL server shared by workers); the same
study name resumes the study (``trials`` is the total it reaches). The result holds every trial, the Pareto
trials and, under ``error_budget`` on the judged error, the fastest trial within it as a plan with step ranges
(:class:`~sparsesim.simulator.plan.PlanSteps`).

Example:
    >>> exact = run_exhaustive(samples, range(layers), space, latency)  # doctest: +SKIP
    >>> study = GlobalStudy(exact, Model(latency, other_ms=0.0), steps=20)  # doctest: +SKIP
    >>> res = study.run(judge, error_budget=0.02, settings=GlobalSettings(trials=40))  # doctest: +SKIP
    >>> save_plan(res.plan, "steps.plan.json")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sparsesim.search.exact import ExactFronts
from sparsesim.search.plan import Choice, ErrorBudget, Model, Plan, SearchInfo, build_plan, choose, outcome
from sparsesim.search.study import Point, _optuna, open_storage
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.plan import PlanSteps, parse_plan, redact_url

#: What a global study records per trial; a study of another format is refused on resume rather than misread.
STUDY_FORMAT = 1

Judge = Callable[[Plan], float]


@dataclass(frozen=True)
class GlobalSettings:
    """How to run the study: its name and storage (None: in memory), total trials, TPE's startup, seed."""

    study: str = "global"
    storage: str | None = None
    trials: int = 40
    startup: int = 10
    seed: int = 0


@dataclass(frozen=True)
class StepRange:
    """One range of a trial's plan: steps ``start <= step < stop`` (None: to the end), dense or at ``budget``."""

    start: int
    stop: int | None
    dense: bool
    budget: float | None


@dataclass(frozen=True)
class GlobalTrial:
    """One finished trial: its parameters, the ranges they make, judged error and predicted time (ms)."""

    number: int
    params: dict[str, Any]
    ranges: tuple[StepRange, ...]
    judged_error: float
    predicted_ms: float
    speedup: float  # the dense run's predicted ms / this trial's


@dataclass(frozen=True)
class GlobalResult:
    """Every finished trial, the Pareto trials (by ascending ms), the fastest within the budget and its plan."""

    study: str
    storage: str
    trials: tuple[GlobalTrial, ...]
    pareto: tuple[GlobalTrial, ...]
    chosen: GlobalTrial | None
    plan: Plan | None
    error_budget: float
    dense_ms: float
    startup: int
    ran: int  # trials this call ran (the others were in the storage)


@dataclass(frozen=True)
class _Built:
    plan: Plan
    ranges: tuple[StepRange, ...]
    predicted_ms: float
    key: str


class GlobalStudy:
    """The global choices of one model over exact per-head fronts (module docstring).

    ``fronts``: every candidate's error on every searched head (:func:`~sparsesim.search.exact.run_exhaustive`;
    its layer rows are the plan layers ``layer_index``, default 0, 1, ...: the i-th attention call of a pass).
    ``model``: the latency model and the rest of a step (:class:`~sparsesim.search.plan.Model`). ``steps``: the
    denoising steps of one sampling run. ``max_warmup``: most dense warm-up steps (default ``steps // 2``).
    ``split``: search a second step range with its own budget. ``per_layer``: a budget multiplier per layer.
    ``budget_range``: the per-head mean budget's range (default: from the least error of a sparse point on any
    front divided by the heads, below which every layer stays dense, to the mean error of the fastest choice).
    ``layer_scale`` / ``early_scale``: the multipliers' ranges.
    """

    def __init__(self, fronts: ExactFronts, model: Model, *, steps: int, layer_index: Sequence[int] | None = None,
                 layer_names: Sequence[str] | None = None, workload: str = "model", max_warmup: int | None = None,
                 split: bool = True, per_layer: bool = True, budget_range: tuple[float, float] | None = None,
                 layer_scale: tuple[float, float] = (0.25, 4.0), early_scale: tuple[float, float] = (0.1, 10.0),
                 samples: str = "-") -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps={steps!r}; allowed: the denoising steps of a run, an integer >= 1")
        layers = int(fronts.error.shape[0])
        if layers < 1:
            raise ConfigError("the fronts hold no layer; allowed: run_exhaustive over at least one layer")
        self.layer_index = list(range(layers)) if layer_index is None else [int(i) for i in layer_index]
        self.layer_names = [f"layer{i}" for i in self.layer_index] if layer_names is None else list(layer_names)
        if len(self.layer_index) != layers or len(self.layer_names) != layers:
            raise ConfigError(f"layer_index / layer_names give {len(self.layer_index)} / {len(self.layer_names)} "
                              f"layers; the fronts hold {layers}")
        if max_warmup is None:
            max_warmup = steps // 2
        if isinstance(max_warmup, bool) or not isinstance(max_warmup, int) or not 0 <= max_warmup <= steps:
            raise ConfigError(f"max_warmup={max_warmup!r}; allowed: an integer from 0 to steps = {steps}")
        for name, rng in (("layer_scale", layer_scale), ("early_scale", early_scale)):
            if len(rng) != 2 or not 0 < rng[0] <= rng[1] or not math.isfinite(rng[1]):
                raise ConfigError(f"{name}={rng!r}; allowed: (low, high) with 0 < low <= high")
        self.fronts = fronts
        self.model = model
        self.steps = steps
        self.workload = workload
        self.max_warmup = max_warmup
        self.split = split
        self.per_layer = per_layer and layers > 1
        self.layer_scale = (float(layer_scale[0]), float(layer_scale[1]))
        self.early_scale = (float(early_scale[0]), float(early_scale[1]))
        self.samples = samples
        heads = model.latency.shape.heads
        self._pts = [[fronts.points(li, h) for h in range(heads)] for li in range(layers)]
        self._fr = [[fronts.front(li, h) for h in range(heads)] for li in range(layers)]
        if model.latency.group > 1:  # GQA: a KV head's front is not made of its query heads' fronts
            self._ev: list[list[list[Point]]] = self._pts
        else:  # what choose's local search may move a head to: the patterns on any front of its layer
            self._ev = []
            for li in range(layers):
                shared = list(dict.fromkeys(p.candidate for f in self._fr[li] for p in f))
                self._ev.append([[fronts.point(li, h, fronts.index[c]) for c in shared] for h in range(heads)])
        if budget_range is None:  # from one head of a layer on its most accurate sparse point to every head fastest
            fastest = max(sum(f[0].error for f in layer) / len(layer) for layer in self._fr)
            hi = max(fastest, 1e-6)
            least = min((p.error for layer in self._fr for f in layer for p in f if p.error > 0), default=hi)
            budget_range = (min(hi, max(least / heads, hi * 1e-4)), hi)
        if len(budget_range) != 2 or not 0 < budget_range[0] <= budget_range[1] or not math.isfinite(budget_range[1]):
            raise ConfigError(f"budget_range={budget_range!r}; allowed: (low, high) with 0 < low <= high")
        self.budget_range = (float(budget_range[0]), float(budget_range[1]))
        self._choices: dict[tuple[int, float], tuple[Point, ...]] = {}
        lat = model.latency
        self.dense_step_ms = model.other_ms + layers * lat.dense_layer_ms()
        self.dense_ms = steps * self.dense_step_ms

    # ----------------------------------------------------------------------------------------- the space
    def suggest(self, trial: Any) -> dict[str, Any]:
        """The trial's parameters (fixed distributions, all ordered: multivariate TPE models them jointly)."""
        p: dict[str, Any] = {"budget": trial.suggest_float("budget", *self.budget_range, log=True)}
        if self.per_layer:
            for li in range(len(self.layer_index)):
                p[f"scale_L{li}"] = trial.suggest_float(f"scale_L{li}", *self.layer_scale, log=True)
        p["warmup"] = trial.suggest_int("warmup", 0, self.max_warmup)
        if self.split:
            p["split"] = trial.suggest_int("split", 0, self.steps)
            p["early_scale"] = trial.suggest_float("early_scale", *self.early_scale, log=True)
        return p

    def anchors(self) -> list[dict[str, Any]]:
        """Points every fresh study tries first: the lowest and the highest budget without warm-up, and the highest
        after the most warm-up steps (the published methods' rule: first steps dense); one budget for all steps."""
        out = []
        for budget, warmup in ((self.budget_range[0], 0), (self.budget_range[1], 0),
                               (self.budget_range[1], self.max_warmup)):
            p: dict[str, Any] = {"budget": budget}
            if self.per_layer:
                p.update({f"scale_L{li}": 1.0 for li in range(len(self.layer_index))})
            p["warmup"] = warmup
            if self.split:
                p.update({"split": 0, "early_scale": 1.0})
            if p not in out:
                out.append(p)
        return out

    def fingerprint(self) -> str:
        """What the study's parameters mean; a study made for another is refused on resume."""
        lat = self.model.latency
        return json.dumps({"format": STUDY_FORMAT, "layers": self.layer_index, "heads": lat.shape.heads,
                           "candidates": len(self.fronts.candidates), "steps": self.steps, "gpu": lat.gpu,
                           "tiles": [list(lat.q_tile), list(lat.kv_tile)], "max_warmup": self.max_warmup,
                           "split": self.split, "per_layer": self.per_layer, "budget": list(self.budget_range),
                           "layer_scale": list(self.layer_scale), "early_scale": list(self.early_scale)})

    # ----------------------------------------------------------------------------------------- plans
    def layer_choice(self, li: int, budget: float) -> tuple[Point, ...]:
        """Layer ``li``'s heads at a per-head mean error budget (``choose``, memoized)."""
        key = (li, budget)
        hit = self._choices.get(key)
        if hit is None:
            one = choose([self._fr[li]], self.model, mean_error=budget, evaluated=[self._ev[li]])
            hit = self._choices[key] = one.layers[0]
        return hit

    def choice(self, budget: float, params: dict[str, Any]) -> Choice:
        """Every layer's heads at ``budget`` times the layer's multiplier."""
        return Choice("plan", tuple(self.layer_choice(li, budget * float(params.get(f"scale_L{li}", 1.0)))
                                    for li in range(len(self.layer_index))))

    def ranges(self, params: dict[str, Any]) -> tuple[StepRange, ...]:
        """The step ranges of a trial's parameters: dense warm-up, early range, late range (empty ones dropped,
        the last one open-ended)."""
        budget = float(params["budget"])
        w = min(int(params["warmup"]), self.steps)
        b = min(max(int(params.get("split", w)), w), self.steps)
        early = budget * float(params.get("early_scale", 1.0))
        raw = [(0, w, True, None), (w, b, False, early), (b, self.steps, False, budget)]
        out = [StepRange(a, z, d, g) for a, z, d, g in raw if z > a]
        last = out[-1]
        return (*out[:-1], replace(last, stop=None))

    def build(self, params: dict[str, Any], search: SearchInfo | None = None,
              error_budget: float | None = None) -> _Built:
        """The plan of a trial's parameters (step ranges), its predicted ms for a whole run and its key."""
        ranges = self.ranges(params)
        lat = self.model.latency
        layers_of: list[Choice | None] = []
        total = 0.0
        attn = 0.0
        for r in ranges:
            n = (self.steps if r.stop is None else r.stop) - r.start
            if r.dense:
                layers_of.append(None)
                total += n * self.dense_step_ms
                attn += n * (self.dense_step_ms - self.model.other_ms)
                continue
            assert r.budget is not None
            ch = self.choice(r.budget, params)
            layers_of.append(ch)
            res = outcome(self.model, ch)
            total += n * (self.model.other_ms + res.attention_ms)
            attn += n * res.attention_ms
        # adjacent sparse ranges that chose the same heads are one range
        merged: list[tuple[StepRange, Choice | None]] = []
        for r, ch in zip(ranges, layers_of, strict=True):
            if merged and ch is not None and merged[-1][1] is not None and _cands(merged[-1][1]) == _cands(ch):
                merged[-1] = (replace(merged[-1][0], stop=r.stop), merged[-1][1])
            else:
                merged.append((r, ch))
        sparse = [ch for _, ch in merged if ch is not None]
        main = sparse[-1] if sparse else self.choice(float(params["budget"]), params)
        key = json.dumps([[r.start, r.stop, None if ch is None else _cands(ch)] for r, ch in merged])
        budget = ErrorBudget(mean=float(params["budget"]))
        base = build_plan(choice=main, model=self.model, layer_index=self.layer_index, layer_names=self.layer_names,
                          workload=self.workload, gpu=lat.gpu, error_budget=budget, predicted=(), search=search)
        steps: tuple[PlanSteps, ...] = ()
        if not (len(merged) == 1 and merged[0][1] is not None):
            out = []
            for r, ch in merged:
                own = () if ch is None or ch is main else build_plan(
                    choice=ch, model=self.model, layer_index=self.layer_index, layer_names=self.layer_names,
                    workload=self.workload, gpu=lat.gpu, error_budget=budget, predicted=(), search=None).layers
                out.append(PlanSteps(start=r.start, stop=r.stop, dense=ch is None, layers=own))
            steps = tuple(out)
        dense_attn = self.steps * (self.dense_step_ms - self.model.other_ms)
        plan = replace(base, steps=steps, attention_speedup=dense_attn / attn if attn > 0 else 1.0,
                       e2e_predicted_speedup=self.dense_ms / total if total > 0 else 1.0)
        plan = parse_plan(plan.to_dict(), "the plan being built")  # the loader's checks: what is built loads
        return _Built(plan=plan, ranges=tuple(r for r, _ in merged), predicted_ms=float(total), key=key)

    # ----------------------------------------------------------------------------------------- the study
    def run(self, judge: Judge, *, error_budget: float, settings: GlobalSettings | None = None,
            storage: Any = None) -> GlobalResult:
        """Run the trials the study still lacks (``settings.trials`` in all), then pick the fastest trial whose
        judged error is within ``error_budget``. ``storage``: an Optuna storage already opened (else
        ``settings.storage``: None in memory, or a URL)."""
        settings = settings or GlobalSettings()
        for name in ("trials", "startup", "seed"):
            value = getattr(settings, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "trials" else 0):
                raise ConfigError(f"{name}={value!r}; allowed: an integer >= {1 if name == 'trials' else 0}")
        if settings.trials < settings.startup + 1:
            raise ConfigError(f"trials={settings.trials} with startup={settings.startup}: TPE would never run; "
                              f"allowed: trials >= startup + 1 = {settings.startup + 1} (or a smaller startup)")
        if not (isinstance(error_budget, (int, float)) and math.isfinite(error_budget) and error_budget > 0):
            raise ConfigError(f"error_budget={error_budget!r}; allowed: a judged error > 0 (relative L2 of the "
                              "model's output against dense)")
        optuna = _optuna()
        shown = "memory" if settings.storage is None else redact_url(settings.storage)
        if storage is None:
            storage = optuna.storages.InMemoryStorage() if settings.storage is None else open_storage(settings.storage)
        study = optuna.create_study(study_name=settings.study, storage=storage, directions=["minimize", "minimize"],
                                    load_if_exists=True)
        made = study.user_attrs.get("fingerprint")
        fingerprint = self.fingerprint()
        if made is None:
            study.set_user_attr("fingerprint", fingerprint)
        elif made != fingerprint:
            raise ConfigError(f"study {settings.study!r} in {shown} was made for {made}; this run is "
                              f"{fingerprint}: pass another study name or storage")
        complete = optuna.trial.TrialState.COMPLETE
        finished = study.get_trials(deepcopy=False, states=(complete,))
        judged = {t.user_attrs["key"]: float(t.values[0]) for t in finished}  # equal plans are judged once
        done = len(finished)
        if not study.get_trials(deepcopy=False):
            for p in self.anchors():
                study.enqueue_trial(p)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.sampler = optuna.samplers.TPESampler(seed=settings.seed + done, multivariate=True,
                                                       n_startup_trials=settings.startup)

        def objective(trial: Any) -> tuple[float, float]:
            params = self.suggest(trial)
            built = self.build(params)
            err = judged.get(built.key)
            if err is None:
                value = judge(built.plan)
                try:
                    err = float(value)
                except (TypeError, ValueError):
                    err = math.nan
                if not math.isfinite(err) or err < 0:
                    raise ConfigError(f"judge returned {value!r} for trial {trial.number}; allowed: a finite error "
                                      ">= 0 (relative L2 of the model's output against dense)")
                judged[built.key] = err
            trial.set_user_attr("key", built.key)
            return err, built.predicted_ms

        ran = 0
        if done < settings.trials:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                before = len(study.get_trials(deepcopy=False, states=(complete,)))
                study.optimize(objective, n_trials=settings.trials - done, catch=())
                ran = len(study.get_trials(deepcopy=False, states=(complete,))) - before
        trials = tuple(self._trial(t) for t in study.get_trials(deepcopy=False, states=(complete,)))
        front: list[GlobalTrial] = []
        for t in sorted((self._trial(t) for t in study.best_trials), key=lambda t: (t.predicted_ms,
                                                                                    t.judged_error, t.number)):
            if not front or t.judged_error < front[-1].judged_error:  # equal points (an equal plan): the first
                front.append(t)
        within = [t for t in trials if t.judged_error <= error_budget]
        chosen = min(within, key=lambda t: (t.predicted_ms, t.judged_error, t.number)) if within else None
        plan = None
        if chosen is not None:
            sampler = (f"global study: TPESampler(multivariate, n_startup_trials={settings.startup}) over layer "
                       f"budgets, warm-up steps and step ranges; trial {chosen.number}, judged error "
                       f"{chosen.judged_error:.4g} (budget {error_budget:g}) on the model's output, predicted "
                       f"{chosen.predicted_ms:.4g} ms for {self.steps} steps (dense {self.dense_ms:.4g})")
            info = SearchInfo(study=settings.study, storage=shown, trials=len(trials), seed=settings.seed,
                              samples=self.samples, sampler=sampler)
            plan = self.build(chosen.params, search=info).plan
        return GlobalResult(study=settings.study, storage=shown, trials=trials, pareto=tuple(front), chosen=chosen,
                            plan=plan, error_budget=float(error_budget), dense_ms=self.dense_ms,
                            startup=settings.startup, ran=ran)

    def _trial(self, t: Any) -> GlobalTrial:
        ms = float(t.values[1])
        return GlobalTrial(number=t.number, params=dict(t.params), ranges=self.ranges(t.params),
                           judged_error=float(t.values[0]), predicted_ms=ms,
                           speedup=self.dense_ms / ms if ms > 0 else math.inf)


def _cands(ch: Choice) -> list[list[str]]:
    return [[p.candidate.label() for p in row] for row in ch.layers]


def global_study(fronts: ExactFronts, model: Model, judge: Judge, *, steps: int, error_budget: float,
                 settings: GlobalSettings | None = None, **options: Any) -> GlobalResult:
    """:class:`GlobalStudy` ``(fronts, model, steps=steps, **options).run(judge, error_budget=..., settings=...)``."""
    return GlobalStudy(fronts, model, steps=steps, **options).run(judge, error_budget=error_budget,
                                                                  settings=settings)


__all__ = ["GlobalResult", "GlobalSettings", "GlobalStudy", "GlobalTrial", "Judge", "StepRange", "global_study"]
