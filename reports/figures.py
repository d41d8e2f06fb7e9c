"""Figures of a report: each function takes records and returns a matplotlib Figure (saving is the
writer's job). Every figure has a title, axis labels with units, and colours from the Okabe-Ito palette
(distinct for colour-blind readers) with hatches or markers so that it also reads in greyscale.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

#: Okabe-Ito colours, then hatches and markers for greyscale.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
HATCHES = ["", "//", "..", "xx", "\\\\", "++", "oo", "--"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
#: One colour per GPU in every figure.
GPU_COLORS = {"A100": COLORS[0], "H100": COLORS[1], "H200": COLORS[3], "B200": COLORS[2]}


def gpu_color(gpu: str, i: int = 0) -> str:
    return GPU_COLORS.get(gpu, COLORS[(4 + i) % len(COLORS)])
BREAKDOWN = [("useful_ms", "useful work"), ("masking_ms", "masking"), ("softmax_ms", "softmax and loads"),
             ("overhead_ms", "CTA and launch overhead"), ("imbalance_ms", "imbalance and tails"),
             ("memory_ms", "memory bound"), ("permute_ms", "token permutation")]


def _fig(width: float = 9.0, height: float = 4.2) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(figsize=(width, height), dpi=110, layout="constrained")
    return fig, ax


def _label(rec: Mapping[str, Any]) -> str:
    def dims(v: Any) -> str:
        return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    text = f"w{dims(rec.get('window'))} s{dims(rec.get('stride'))}"
    return f"{rec.get('preset', dims(rec.get('input_size')))}: {text}" if rec.get("preset") else text


def speedup_bars(records: Sequence[Mapping[str, Any]]) -> Figure:
    """FLOP-wise bound, tile-level bound and predicted speedup per configuration and GPU."""
    gpus = list(dict.fromkeys(r["gpu"] for r in records))
    configs = list(dict.fromkeys(_label(r) for r in records))
    fig, ax = _fig(10, 0.9 + 0.55 * len(configs) * len(gpus) ** 0.5)
    kinds = [("flop_speedup", "FLOP bound"), ("tile_speedup", "tile bound"), ("predicted_speedup", "predicted")]
    height = 0.8 / (len(kinds) * len(gpus))
    for gi, gpu in enumerate(gpus):
        for ki, (key, name) in enumerate(kinds):
            ys, xs, lows, highs = [], [], [], []
            for ci, cfg in enumerate(configs):
                rec = next((r for r in records if r["gpu"] == gpu and _label(r) == cfg), None)
                if rec is not None:
                    ys.append(ci + (gi * len(kinds) + ki) * height - 0.4 + height / 2)
                    xs.append(rec[key])
                    lows.append(rec.get("predicted_speedup_low", rec[key]))
                    highs.append(rec.get("predicted_speedup_high", rec[key]))
            ax.barh(ys, xs, height=height, color=gpu_color(gpu, gi), hatch=HATCHES[ki],
                    edgecolor="white" if ki == 0 else "#333333", linewidth=0.4,
                    label=f"{gpu} {name}" if len(gpus) > 1 else name)
            if key == "predicted_speedup" and ys:  # the prediction's error band (held-out residuals)
                err = [[max(0.0, x - lo) for x, lo in zip(xs, lows, strict=True)],
                       [max(0.0, hi - x) for x, hi in zip(xs, highs, strict=True)]]
                ax.errorbar(xs, ys, xerr=err, fmt="none", ecolor="#333333", elinewidth=0.8, capsize=2)
    ax.set_yticks(range(len(configs)), configs, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over dense attention (x)")
    ax.set_title("Speedup bounds and prediction per GPU (hatching: FLOP bound, tile bound, predicted; whiskers: "
                 "the prediction's error band)")
    ax.legend(fontsize=7, ncol=max(1, len(gpus)), loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return fig


def speedup_vs_window(records: Sequence[Mapping[str, Any]], windows: Sequence[int]) -> Figure:
    """Predicted and tile-level speedup against the window (same on every axis), per GPU and stride."""
    fig, ax = _fig()
    series: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for r in records:
        series.setdefault((r["gpu"], r["stride_kind"]), []).append((r["w"], r["predicted_speedup"], r["tile_speedup"]))
    for i, ((gpu, kind), pts) in enumerate(sorted(series.items())):
        pts.sort()
        x = [p[0] for p in pts]
        color = gpu_color(gpu, i)
        ls = "-" if kind == "stride 1" else "--"
        ax.plot(x, [p[1] for p in pts], ls, color=color, marker=MARKERS[i % len(MARKERS)], label=f"{gpu}, {kind}")
        ax.plot(x, [p[2] for p in pts], ls, color=color, alpha=0.35, linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(list(windows), [str(w) for w in windows])
    ax.set_xlabel("window per axis (tokens)")
    ax.set_ylabel("speedup over dense (x, log scale)")
    ax.set_title("Predicted speedup against window (faint: tile-level bound)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    return fig


def tile_visit_map(visits: np.ndarray, full: np.ndarray, q_grid: Sequence[int], title: str) -> Figure:
    """Visited KV tiles per Q tile over the layout, and the partial (masked) share of them."""
    grid = tuple(int(g) for g in q_grid)
    v = np.asarray(visits, dtype=float)[0].reshape(grid)
    f = np.asarray(full, dtype=float)[0].reshape(grid)
    partial = np.where(v > 0, (v - f) / np.maximum(v, 1), 0.0)
    if len(grid) == 3:  # the middle frame of a video
        v, partial = v[grid[0] // 2], partial[grid[0] // 2]
        where = f" (Q-tile row {grid[0] // 2} of {grid[0]} along the first axis)"
    else:
        where = ""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0), dpi=110, layout="constrained")
    if v.ndim == 1:
        axes[0].plot(v, color=COLORS[0])
        axes[1].plot(partial * 100, color=COLORS[5])
        axes[0].set_xlabel("Q tile")
        axes[1].set_xlabel("Q tile")
        axes[0].set_ylabel("visited KV tiles")
        axes[1].set_ylabel("partial tiles (%)")
    else:
        im0 = axes[0].imshow(v, cmap="viridis", aspect="auto")
        im1 = axes[1].imshow(partial * 100, cmap="cividis", vmin=0, vmax=100, aspect="auto")
        fig.colorbar(im0, ax=axes[0], label="visited KV tiles")
        fig.colorbar(im1, ax=axes[1], label="partial (masked) share (%)")
        from matplotlib.ticker import MaxNLocator

        for ax in axes:
            ax.set_xlabel("Q tile along the last axis")
            ax.set_ylabel("Q tile along the second-to-last axis")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title("KV tiles each Q tile visits" + where, fontsize=9)
    axes[1].set_title("share of them that need masking", fontsize=9)
    fig.suptitle(title)
    return fig


def time_breakdown(records: Sequence[Mapping[str, Any]]) -> Figure:
    """Where the predicted time goes, per configuration and GPU (stacked, ms)."""
    labels = [f"{r['gpu']} {_label(r)}" for r in records]
    fig, ax = _fig(10, 1.0 + 0.32 * len(records))
    left = np.zeros(len(records))
    for i, (key, name) in enumerate(BREAKDOWN):
        vals = np.array([float(r.get(key, 0.0) or 0.0) for r in records])
        if not vals.any():
            continue
        ax.barh(labels, vals, left=left, color=COLORS[i % len(COLORS)], hatch=HATCHES[i % len(HATCHES)],
                edgecolor="white", linewidth=0.3, label=name)
        left += vals
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("predicted time of one call (ms)")
    ax.set_title("Where the time goes (sparse kernel, cost model)")
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    return fig


def sm_timeline(costs: np.ndarray, sm_count: int, ctas_per_sm: int, title: str, passes: int = 1) -> Figure:
    """CTAs running over time on the chip (greedy list schedule, as the cost model places them): the
    waves, and the tail where SMs idle."""
    durations = np.tile(np.asarray(costs, dtype=float) * ctas_per_sm, passes) * 1e3
    slots = sm_count * ctas_per_sm
    heap = [(0.0, s) for s in range(slots)]
    events: list[tuple[float, int]] = []
    for d in durations:
        start, s = heapq.heappop(heap)
        events += [(start, 1), (start + d, -1)]
        heapq.heappush(heap, (start + d, s))
    events.sort()
    t = np.array([e[0] for e in events])
    busy = np.cumsum([e[1] for e in events]) / ctas_per_sm
    fig, ax = _fig(10, 3.6)
    ax.step(t, busy, where="post", color=COLORS[0])
    ax.fill_between(t, busy, step="post", alpha=0.3, color=COLORS[0])
    ax.axhline(sm_count, color=COLORS[5], linestyle="--", linewidth=1, label=f"all {sm_count} SMs")
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("SMs busy (CTAs / CTAs per SM)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def roofline(records: Sequence[Mapping[str, Any]], peaks: Mapping[str, tuple[float, float]]) -> Figure:
    """Achieved TFLOP/s of each configuration against its arithmetic intensity (``intensity``: FLOPs per byte
    of Q, K, V and O in the record's dtype, K and V at ``heads_kv``), under each GPU's roof (``peaks``: GPU ->
    (tensor TFLOP/s of the records' dtype, HBM TB/s))."""
    fig, ax = _fig(8, 4.6)
    x = np.logspace(0, 5, 200)
    gpus = list(peaks)
    for i, gpu in enumerate(gpus):
        tf, tb = peaks[gpu]
        ax.plot(x, np.minimum(tf, x * tb), color=gpu_color(gpu, i), linewidth=1.2, label=f"{gpu} roof")
        pts = [r for r in records if r["gpu"] == gpu]
        ax.scatter([r["intensity"] for r in pts], [r["achieved_TFLOPs"] for r in pts],
                   color=gpu_color(gpu, i), marker=MARKERS[i % len(MARKERS)], zorder=3, s=28,
                   label=f"{gpu} configurations")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte of Q, K, V, O)")
    ax.set_ylabel("useful TFLOP/s (predicted)")
    ax.set_title("Roofline placement of the sparse kernels")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    return fig


def predicted_vs_measured(rows: Sequence[Mapping[str, Any]], title: str) -> Figure:
    """Predicted against measured time per case (log-log), the 1:1 line and +-10%, by kernel."""
    fig, ax = _fig(7.5, 5.2)
    kinds = list(dict.fromkeys(r["kernel"] for r in rows))
    lo = min(min(r["measured_ms"], r["predicted_ms"]) for r in rows)
    hi = max(max(r["measured_ms"], r["predicted_ms"]) for r in rows)
    line = np.array([lo / 1.5, hi * 1.5])
    ax.plot(line, line, color="#333333", linewidth=1, label="predicted = measured")
    ax.fill_between(line, line / 1.1, line * 1.1, color="#999999", alpha=0.25, label="within 10%")
    for i, k in enumerate(kinds):
        pts = [r for r in rows if r["kernel"] == k]
        ax.scatter([r["measured_ms"] for r in pts], [r["predicted_ms"] for r in pts], s=16,
                   color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)], label=k, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured time (ms)")
    ax.set_ylabel("predicted time (ms)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def tile_ranking(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Per measured shape: each tile pair's measured and predicted time, pairs ordered by measured time."""
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.2 * len(shapes), 4.2), dpi=110, layout="constrained",
                             squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        pts = sorted((r for r in rows if r["shape"] == shape), key=lambda r: r["measured_ms"])
        x = np.arange(len(pts))
        ax.plot(x, [r["measured_ms"] for r in pts], marker="o", color=COLORS[0], label="measured")
        ax.plot(x, [r["predicted_ms"] for r in pts], marker="s", linestyle="--", color=COLORS[1], label="predicted")
        ax.set_title(shape, fontsize=9)
        ax.set_xlabel("tile pairs, fastest measured first")
        ax.set_ylabel("time of one call (ms)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Tile ranking: does the model order tile pairs like the GPU?")
    return fig


def pareto_fronts(heads: Mapping[str, Sequence[tuple[float, float, bool]]]) -> Figure:
    """Per head: every trial's (latency, error), the Pareto front drawn as a line."""
    fig, ax = _fig(8, 4.8)
    for i, (name, pts) in enumerate(heads.items()):
        color = COLORS[i % len(COLORS)]
        ax.scatter([p[0] for p in pts], [max(p[1], 1e-6) for p in pts], s=10, color=color, alpha=0.35,
                   marker=MARKERS[i % len(MARKERS)])
        front = sorted((p for p in pts if p[2]), key=lambda p: p[0])
        ax.plot([p[0] for p in front], [max(p[1], 1e-6) for p in front], color=color,
                marker=MARKERS[i % len(MARKERS)], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("head's share of its layer's simulated time (ms)")
    ax.set_ylabel("relative output error (log)")
    ax.set_title("Optuna trials and Pareto fronts (faint: every trial)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    return fig


def optuna_history(values: Sequence[Sequence[float]], title: str) -> Figure:
    """Best error found so far against the trial number, for the heads given (one line per head)."""
    fig, ax = _fig(8, 3.6)
    for i, errs in enumerate(values):
        best = np.minimum.accumulate([e if e > 0 else 1e-6 for e in errs])
        ax.plot(np.arange(1, len(errs) + 1), best, color=COLORS[i % len(COLORS)], alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("trial")
    ax.set_ylabel("lowest error among sparse trials so far")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    return fig


def plan_heatmap(plan: Any) -> Figure:
    """The plan (a :class:`sparsesim.simulator.plan.Plan`): layers x heads, colour = the head's kept attention
    density (causal axes counted), dense heads marked."""
    layers = plan.layers
    heads = plan.heads
    dens = np.zeros((len(layers), heads))
    dense = np.zeros((len(layers), heads), dtype=bool)
    for i, layer in enumerate(layers):
        for h in layer.heads:
            dens[i, h.head] = plan.pattern(h).density()
            dense[i, h.head] = h.dense
    fig, ax = _fig(min(12, 2 + 0.35 * heads), 1.6 + 0.3 * len(layers))
    im = ax.imshow(dens * 100, cmap="cividis", vmin=0, vmax=100, aspect="auto")
    ys, xs = np.nonzero(dense)
    ax.scatter(xs, ys, marker="s", facecolors="none", edgecolors="black", linewidths=1.0, s=40,
               label="dense head (all keys)")
    fig.colorbar(im, ax=ax, label="keys kept per query (% of dense)")
    ax.set_yticks(range(len(layers)), [str(layer.layer) for layer in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"Plan for {plan.workload} on {plan.gpu}: density per head "
                 f"(attention {plan.attention_speedup:.2f}x, mean error {plan.mean_error:.3f})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.18), ncol=1, frameon=False)
    return fig


def e2e_breakdown(records: Sequence[Mapping[str, Any]]) -> Figure:
    """One model step, dense and with the sparse pattern, per workload and GPU: GEMMs, other layers,
    self-attention, text attention (ms, stacked)."""
    labels, parts = [], []
    for r in records:
        other = r["dense_step_ms"] - r["gemm_ms"] - r["elementwise_ms"] - r["self_attention_ms"]
        sparse_attn = r["self_attention_ms"] / r["predicted_speedup"]
        labels += [f"{r['preset']} {r['gpu']} dense", f"{r['preset']} {r['gpu']} sparse"]
        parts += [tuple(x / 1e3 for x in (r["gemm_ms"], r["elementwise_ms"], r["self_attention_ms"], other)),
                  tuple(x / 1e3 for x in (r["gemm_ms"], r["elementwise_ms"], sparse_attn, other))]
    fig, ax = _fig(10, 1.0 + 0.3 * len(labels))
    left = np.zeros(len(labels))
    for i, name in enumerate(["GEMMs", "norms, activations, copies", "self-attention", "text attention"]):
        vals = np.array([p[i] for p in parts])
        ax.barh(labels, vals, left=left, color=COLORS[i], hatch=HATCHES[i], edgecolor="white", linewidth=0.3,
                label=name)
        left += vals
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("one model step (s, modelled)")
    ax.set_title("End to end: one step, dense and with the sparse pattern")
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    return fig
