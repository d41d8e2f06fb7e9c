"""What a report holds: sections built from patterns, GPUs, a plan, measurements and an Optuna study.

:func:`build_sections` is what ``simulate report`` calls; each section appears when its input is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsesim.reports import figures as F
from sparsesim.reports.html import Card, FigureItem, Section

if TYPE_CHECKING:  # the type only: reports take a loaded plan, they do not import the search package
    from sparsesim.simulator.engine import SimResult
    from sparsesim.simulator.plan import Plan


@dataclass(frozen=True)
class StudyData:
    """What the report shows of an Optuna study (read by the caller, so reports need not import search):
    per head, every trial's (ms, error, on the Pareto front), and the errors in trial order."""

    name: str
    points: Mapping[str, Sequence[tuple[float, float, bool]]]
    errors: Sequence[Sequence[float]]


@dataclass(frozen=True)
class ReportInputs:
    """Everything a report can be built from (each part optional but the patterns)."""

    configs: tuple[Mapping[str, Any], ...]  # simulate() keywords, plus "preset" for workload patterns
    gpus: tuple[str, ...]
    kernel_profile: str = "reference"
    dense_profile: str = "cudnn"
    presets: tuple[str, ...] = ()
    plan: Plan | None = None  # from sparsesim.simulator.plan.load_plan
    plan_path: str = ""
    measurements: tuple[str, ...] = ()
    study: StudyData | None = None


def _dims(v: Any) -> str:
    return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _gpu(name: str, inp: ReportInputs | None = None) -> Any:
    """The GPU a record names: one of the report's GPUs (names or .toml files) by its name, else a built-in."""
    from sparsesim.hwmodels import load_gpu

    for g in inp.gpus if inp is not None else ():
        spec = load_gpu(g)
        if spec.name == name:
            return spec
    return load_gpu(name)


def _simulate_all(inp: ReportInputs) -> list[tuple[dict[str, Any], SimResult]]:
    from sparsesim.simulator.engine import Simulator

    sim = Simulator()
    out = []
    for cfg in inp.configs:
        kw = {k: v for k, v in cfg.items() if k != "preset"}
        for gpu in inp.gpus:
            r = sim.simulate(**{**kw, "gpu": gpu, "kernel_profile": inp.kernel_profile,
                                "dense_profile": inp.dense_profile})
            rec = r.to_dict()
            rec["preset"] = cfg.get("preset", "")
            out.append((rec, r))
    return out


def _error_card(error: ModelError) -> Card:
    """The model-error card: held-out error where the measurements hold configurations the fit did not see."""
    if error.heldout is not None:
        more = f"; on the {error.n_fitted} fitted ones it is {error.fitted:.1%}" if error.fitted is not None else ""
        return Card(f"{error.heldout:.1%}", "held-out model error",
                    f"Mean absolute error on the {error.n_heldout} measured calls of configurations the fitted "
                    f"profiles were not fitted to ({error.split}){more}.")
    if error.fitted is not None:
        return Card(f"{error.fitted:.1%}", "in-sample model error",
                    f"Every measured call given is of a configuration the profiles were fitted to ({error.split}): "
                    "this is the fit, not validation.")
    return Card(f"{error.unknown:.1%}", "model error on the measurements",
                "The fitted profiles record no split this report can reproduce, so these calls may include the "
                "data they were fitted to.")


def summary_section(recs: Sequence[Mapping[str, Any]], inp: ReportInputs, mape: ModelError | None) -> Section:
    best = max(recs, key=lambda r: r["predicted_speedup"])
    gap = float(np.mean([r["predicted_speedup"] / r["tile_speedup"] for r in recs]))
    cards = [Card(f"{best['predicted_speedup']:.2f}x", "best predicted speedup",
                  f"{best['preset'] or _dims(best['input_size'])} w{_dims(best['window'])} s{_dims(best['stride'])} "
                  f"on the {best['gpu']}, over dense attention ({inp.dense_profile} as modelled)."),
             Card(f"{gap:.0%}", "of the tile-level bound, on average",
                  "What the cost model keeps of the tile-level bound once waves, masking, softmax and "
                  "overheads are counted.")]
    if inp.plan is not None:
        p = inp.plan
        cards.append(Card(f"{p.e2e_predicted_speedup:.3f}x", "end to end with the plan",
                          f"{p.workload} on the {p.gpu}: attention {p.attention_speedup:.2f}x at mean "
                          f"error {p.mean_error:.3f} over the searched heads."))
    if mape is not None:
        cards.append(_error_card(mape))
    if inp.plan is None and mape is None:
        worst = min(recs, key=lambda r: r["predicted_speedup"])
        cards.append(Card(f"{worst['predicted_speedup']:.2f}x", "lowest predicted speedup",
                          f"{worst['preset'] or _dims(worst['input_size'])} w{_dims(worst['window'])} on the "
                          f"{worst['gpu']}: where sparsity pays least."))
    return Section("Summary", cards=tuple(cards))


def speedup_section(recs: Sequence[Mapping[str, Any]]) -> Section:
    header = ("configuration", "GPU", "tiles", "FLOP bound", "tile bound", "predicted", "sparse ms", "dense ms",
              "bound by")
    rows = [header] + [(f"{r['preset'] + ': ' if r['preset'] else ''}{_dims(r['input_size'])} w{_dims(r['window'])} "
                        f"s{_dims(r['stride'])}", r["gpu"], f"{_dims(r['q_tile'])}/{_dims(r['kv_tile'])}",
                        f"{r['flop_speedup']:.2f}x", f"{r['tile_speedup']:.2f}x", f"{r['predicted_speedup']:.2f}x",
                        f"{r['call_ms']:.3g}", f"{r['dense_ms']:.3g}", str(r["bound"])) for r in recs]
    fig = F.speedup_bars(recs)
    return Section("Speedups", "FLOP-wise bound (1 / density), tile-level bound (dense KV tiles over the most "
                   "any Q tile visits) and the cost model's prediction of a whole call over dense attention.",
                   table=tuple(rows), figures=(FigureItem("speedups.png", fig, "Each group of bars is one pattern "
                   "on one GPU; the distance from the tile bound to the prediction is what the hardware takes: "
                   "waves, masking, softmax and overheads."),))


def window_section(cfg: Mapping[str, Any], inp: ReportInputs) -> Section:
    from sparsesim.hwmodels import load_gpu
    from sparsesim.simulator.engine import Simulator, resolve_tiles

    size = tuple(cfg["input_size"]) if isinstance(cfg["input_size"], (list, tuple)) else (int(cfg["input_size"]),)
    fracs = (16, 8, 4, 2)
    sim = Simulator()
    recs = []
    windows = sorted({max(1, size[-1] // f) for f in fracs})
    for gpu in inp.gpus:
        q, _ = resolve_tiles(load_gpu(gpu), size, None, None)
        for f in fracs:
            win = tuple(max(1, n // f) for n in size)
            for kind, stride in (("stride 1", (1,) * len(size)), ("stride = Q tile",
                                                                  tuple(min(a, b) for a, b in zip(q, win,
                                                                                                  strict=True)))):
                r = sim.simulate(input_size=size, window=win, stride=stride, gpu=gpu,
                                 kernel_profile=inp.kernel_profile, dense_profile=inp.dense_profile)
                recs.append({"gpu": gpu, "w": win[-1], "stride_kind": kind, "predicted_speedup": r.predicted_speedup,
                             "tile_speedup": r.tile_speedup})
    fig = F.speedup_vs_window(recs, windows)
    return Section(f"Speedup against window ({_dims(size)})", figures=(FigureItem(
        "speedup_vs_window.png", fig, "The same window fraction on every axis, on the x axis its size along the "
        "last axis. Solid: sliding window; dashed: stride equal to the Q tile (fewer partial tiles). Smaller "
        "windows save more work, but the prediction falls behind the tile bound (faint) as tiles go partial."),))


def tiles_section(items: Sequence[tuple[Mapping[str, Any], Any]]) -> Section:
    figs = []
    for i, (rec, r) in enumerate(items):
        title = (f"{rec['preset'] + ': ' if rec['preset'] else ''}{_dims(rec['input_size'])} w{_dims(rec['window'])} "
                 f"s{_dims(rec['stride'])}, tiles {_dims(rec['q_tile'])}/{_dims(rec['kv_tile'])} ({rec['gpu']})")
        figs.append(FigureItem(f"tile_map_{i}.png", F.tile_visit_map(r.visits, r.full_visits, r.q_grid, title),
                               "Left: how many KV tiles each Q tile visits (the largest sets the tile bound). Right: "
                               "the share of those that need element masking; bright edges are where windows "
                               "cut tiles."))
    return Section("Tile-visit maps", figures=tuple(figs))


def breakdown_section(recs: Sequence[Mapping[str, Any]]) -> Section:
    return Section("Where the time goes", figures=(FigureItem(
        "time_breakdown.png", F.time_breakdown(recs), "Useful work is what the FLOP bound counts; masking, "
        "softmax and loads, overheads, imbalance (idle SMs in the last wave) and memory are what the hardware "
        "adds. A long imbalance bar means the launch leaves SMs idle at its tail."),))


#: Most CTAs the SM timeline schedules one by one (a larger launch is summarised, not drawn).
TIMELINE_MAX_CTAS = 200_000


def timeline_section(item: tuple[Mapping[str, Any], SimResult], inp: ReportInputs) -> Section:
    """The SM timeline of one result, from the tile map and problem the result was computed from."""
    from sparsesim.hwmodels.profiles import load_profile
    from sparsesim.simulator.cost import forward_ctas

    rec, result = item
    gpu = _gpu(rec["gpu"], inp)
    prof = load_profile(inp.kernel_profile, gpu)
    c = forward_ctas(gpu, prof, result.problem, result.tilemap, result.kv_layout)
    costs = c.seconds()
    if costs.size > TIMELINE_MAX_CTAS:
        return Section("SM timeline", text=f"Left out: one head pass of this launch has {costs.size:,} CTAs, more "
                       f"than the timeline draws ({TIMELINE_MAX_CTAS:,}); see the time breakdown above.")
    passes = max(1, min(c.repeat, 4, TIMELINE_MAX_CTAS // costs.size))
    title = (f"{rec['preset'] or _dims(rec['input_size'])} w{_dims(rec['window'])} on the {rec['gpu']}: "
             f"{passes} of {c.repeat} head passes")
    return Section("SM timeline", figures=(FigureItem("sm_timeline.png", F.sm_timeline(
        costs, gpu.sm_count, c.ctas_per_sm, title, passes), "CTAs placed greedily on the SMs as the cost "
        "model does: flat stretches are full waves, the slope at the end is the tail where SMs run out of work "
        "(the first head passes of one launch)."),))


def roofline_points(recs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each record with ``io_bytes`` (Q, K, V and O as the cost model counts them: the record's dtype, K and
    V at ``heads_kv``; :meth:`sparsesim.simulator.cost.Problem.io_bytes`) and ``intensity`` (useful FLOPs
    over those bytes)."""
    from sparsesim.simulator.cost import Problem

    pts = []
    for r in recs:
        problem = Problem(batch=r["batch"], heads=r["heads"], heads_kv=r["heads_kv"], head_dim=r["head_dim"],
                          dtype=r["dtype"])
        io_bytes = problem.io_bytes(int(np.prod(r["input_size"])), 2, 2)  # Q and O; K and V
        flops = r["achieved_TFLOPs"] * r["predicted_ms"] * 1e9
        pts.append({**r, "io_bytes": io_bytes, "intensity": flops / io_bytes})
    return pts


def roofline_section(recs: Sequence[Mapping[str, Any]], inp: ReportInputs | None = None) -> Section:
    peaks = {}
    for r in recs:
        g = _gpu(r["gpu"], inp)
        peaks[r["gpu"]] = (g.tensor_TFLOPs.get(r["dtype"], g.tensor_TFLOPs["bf16"]), g.hbm_TBps)
    pts = roofline_points(recs)
    return Section("Roofline", figures=(FigureItem("roofline.png", F.roofline(pts, peaks), "Each point is one "
                   "pattern: its useful FLOPs over the bytes of Q, K, V and O. Sparse attention stays "
                   "compute-bound (far right of the ridge); the distance below the roof is efficiency lost."),))


@dataclass(frozen=True)
class ModelError:
    """The cost model's mean absolute error on measured calls, apart by whether the fitted profile saw the
    call's configuration: ``heldout`` (not fitted to), ``fitted`` (in-sample), ``unknown`` (the profile records
    no split this report can reproduce). ``None`` where no call falls in a part."""

    heldout: float | None
    n_heldout: int
    fitted: float | None
    n_fitted: int
    unknown: float | None
    n_unknown: int
    split: str  # the split the profiles record, e.g. "30% of configurations held out, split seed 0"


def _training_configs(prof: Any, spec: Any) -> set[str] | None:
    """The configuration ids a calibrated profile was fitted to: its ``[fit]`` record's measurements, kernels,
    holdout and seed, split as ``simulate calibrate`` split them (:func:`sparsesim.simulator.calibrate.split`).
    ``None`` where the profile records no fit or its measurement files are not at hand (an installed package)."""
    from sparsesim.simulator.calibrate import load_rows, split

    fit = prof.fit
    if not fit or not prof.path or any(k not in fit for k in ("measurements", "kernels", "holdout", "seed")):
        return None
    root = Path(prof.path).resolve().parents[2]  # <root>/hwmodels/calibration/<name>.toml
    paths = [root / m for m in fit["measurements"]]
    if not all(p.is_file() for p in paths):
        return None
    train, _ = split(load_rows(paths, spec, tuple(fit["kernels"])), float(fit["holdout"]), int(fit["seed"]))
    return {r.config_id for r in train}


def _mean(errs: Sequence[float]) -> float | None:
    return float(np.mean(errs)) if errs else None


def measured_section(paths: Sequence[str]) -> tuple[Section, ModelError]:
    from sparsesim.hwmodels import load_gpu
    from sparsesim.hwmodels.profiles import load_profile
    from sparsesim.simulator.calibrate import load_rows, predicted_ms

    spec = load_gpu("H200")
    triton, cudnn = load_profile("triton", spec), load_profile("cudnn", spec)
    trained = {id(p): _training_configs(p, spec) for p in (triton, cudnn)}
    rows = []
    for r in load_rows(paths, spec, ("gna", "block_sparse", "dense", "cudnn")):
        prof = cudnn if r.kernel == "cudnn" else triton
        train = trained[id(prof)]
        part = "unknown" if train is None else "fitted" if r.config_id in train else "heldout"
        rows.append({"kernel": r.kernel, "measured_ms": r.measured_ms, "predicted_ms": predicted_ms(r, spec, prof),
                     "label": r.label, "part": part})
    errs = {part: [abs(r["predicted_ms"] / r["measured_ms"] - 1) for r in rows if r["part"] == part]
            for part in ("heldout", "fitted", "unknown")}
    splits = sorted({f"{float(p.fit['holdout']):.0%} of configurations held out, split seed {int(p.fit['seed'])}"
                     for p in (triton, cudnn) if trained[id(p)] is not None})
    error = ModelError(heldout=_mean(errs["heldout"]), n_heldout=len(errs["heldout"]), fitted=_mean(errs["fitted"]),
                       n_fitted=len(errs["fitted"]), unknown=_mean(errs["unknown"]), n_unknown=len(errs["unknown"]),
                       split="; ".join(splits) or "no split recorded")
    said = ", ".join(f"{name} {_pct(v)} ({n})" for name, v, n in (
        ("held-out", error.heldout, error.n_heldout), ("fitted", error.fitted, error.n_fitted),
        ("split unknown", error.unknown, error.n_unknown)) if n)
    figs = [FigureItem("predicted_vs_measured.png", F.predicted_vs_measured(
        rows, f"Predicted vs measured on the H200: mean error {said}"),
        "Each point is one measured call; points in the grey band are within 10%. Held-out calls are of "
        f"configurations the fitted profiles were not fitted to ({error.split}, as hwmodels/calibration records "
        "it); the error on fitted calls is the fit, not validation.")]
    by_shape: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kernel"] == "gna":  # label: "gna <size> h.. d.. b.. w.. s.. q<tile>/kv<tile>"
            by_shape.setdefault(r["label"].rsplit(" q", 1)[0].removeprefix("gna "), []).append(r)
    shapes = [s for s, rs in by_shape.items() if len(rs) >= 8][:3]
    if shapes:
        ranked = [{**r, "shape": s} for s in shapes for r in by_shape[s]]
        figs.append(FigureItem("tile_ranking.png", F.tile_ranking(ranked), "Tile pairs of one shape ordered by "
                               "measured time: where the dashed (predicted) line rises and falls with the solid "
                               "one, the model ranks tiles as the GPU does."))
    names = ", ".join(Path(p).name for p in paths)
    return Section("Predicted vs measured", text=f"Measurements: {names}.", figures=tuple(figs)), error


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def study_section(study: StudyData) -> Section:
    return Section(f"Optuna study {study.name}", figures=(
        FigureItem("pareto.png", F.pareto_fronts(study.points), "Each head's trials (faint) and its Pareto front: "
                   "moving left saves time, moving down loses less attention; the plan picks one point per head."),
        FigureItem("optuna_history.png", F.optuna_history(study.errors, "Search progress per head"), "How fast each "
                   "head's search found accurate sparse patterns: flat lines mean more trials would not help.")))


def plan_section(plan: Plan, path: str = "") -> Section:
    header = ("layer", "launches", "sparse heads", "predicted ms", "dense ms", "speedup")
    rows = [header] + [(str(layer.layer), str(len(layer.launches)), str(sum(not h.dense for h in layer.heads)),
                        f"{layer.predicted_ms:.3g}", f"{layer.dense_ms:.3g}",
                        f"{layer.dense_ms / layer.predicted_ms:.2f}x") for layer in plan.layers]
    text = (f"Plan file {Path(path).name}: " if path else "") + (
        f"{len(plan.layers)} layers searched, mean error {plan.mean_error:.3f}, attention "
        f"{plan.attention_speedup:.2f}x, end to end {plan.e2e_predicted_speedup:.3f}x.")
    if plan.search is not None:
        text += (f" Searched in study {plan.search.study!r} ({plan.search.storage}), {plan.search.trials} trials "
                 "per head.")
    return Section(f"Plan: {plan.workload} on {plan.gpu}", text=text, table=tuple(rows), figures=(FigureItem(
        "plan.png", F.plan_heatmap(plan), "One cell per head: the share of keys each query keeps (dark: sparse). "
        "Boxed cells stay dense; heads with one pattern in a layer share one kernel launch."),))


def e2e_section(presets: Sequence[str], inp: ReportInputs) -> Section:
    from sparsesim.simulator.workloads import simulate_e2e

    recs = []
    for p in presets:
        for gpu in inp.gpus:
            r = simulate_e2e(preset=p, gpu=gpu, kernel_profile=inp.kernel_profile, dense_profile=inp.dense_profile)
            recs.append(r[0].to_dict())
    header = ("workload", "GPU", "pattern", "attention share", "attention speedup", "end to end")
    rows = [header] + [(r["preset"], r["gpu"], f"w{_dims(r['window'])} s{_dims(r['stride'])}",
                        f"{r['attention_share']:.1%}", f"{r['predicted_speedup']:.2f}x",
                        f"{r['e2e_predicted_speedup']:.2f}x") for r in recs]
    return Section("End to end", table=tuple(rows), figures=(FigureItem(
        "e2e.png", F.e2e_breakdown(recs), "One model step, dense and with the workload's first pattern: "
        "attention shrinks, GEMMs and the other layers do not, which caps the end-to-end speedup."),))


def build_sections(inp: ReportInputs) -> list[Section]:
    """Every section the inputs allow, in reading order."""
    sims = _simulate_all(inp)
    recs = [rec for rec, _ in sims]
    sections = []
    measured, mape = (measured_section(inp.measurements) if inp.measurements else (None, None))
    sections.append(summary_section(recs, inp, mape))
    sections.append(speedup_section(recs))
    sections.append(window_section(inp.configs[0], inp))
    sections.append(tiles_section(sims[:min(2, len(sims))] if len(inp.gpus) == 1 else
                                  [s for i, s in enumerate(sims) if i % len(inp.gpus) == 0][:2]))
    sections.append(breakdown_section(recs))
    box = [(rec, r) for rec, r in sims if r.window is not None]
    if box:
        sections.append(timeline_section(box[0], inp))
    sections.append(roofline_section(recs, inp))
    if measured is not None:
        sections.append(measured)
    if inp.study is not None:
        sections.append(study_section(inp.study))
    if inp.plan is not None:
        sections.append(plan_section(inp.plan, inp.plan_path))
    if inp.presets:
        sections.append(e2e_section(inp.presets, inp))
    return sections
