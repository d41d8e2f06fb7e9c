"""Run a plan's layer as planned, and measure every layer of a plan against its prediction.

:func:`run_plan` makes the launches the plan lists for one layer: each group of heads with one pattern
is one call of :func:`~sparsesim.kernels.gna_attention` with the plan's tiles; dense groups run dense
attention (cuDNN through torch SDPA on a GPU, our dense kernel under the Triton interpreter).
:func:`validate_plan_layers` is what ``simulate validate --plan`` runs on a GPU. Both read a typed
:class:`~sparsesim.simulator.plan.Plan` (from :func:`~sparsesim.simulator.plan.load_plan`) by its attributes;
this module does not import the search package (the plan is handed in).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsesim.kernels._launch import interpret

if TYPE_CHECKING:  # the type only: kernels do not import search at run time
    from sparsesim.simulator.plan import Plan, PlanLayer


def _take(x: Any, idx: Sequence[int]) -> Any:
    import torch

    if list(idx) == list(range(x.shape[-2])):
        return x
    return x.index_select(-2, torch.as_tensor(list(idx), device=x.device)).contiguous()


def _kv_heads(heads: Sequence[int], group: int) -> tuple[list[int], bool]:
    """The K/V heads of a launch and whether its query heads are whole GQA groups in order."""
    kv = sorted({h // group for h in heads})
    whole = list(heads) == [g * group + i for g in kv for i in range(group)]
    return (kv if whole else [h // group for h in heads]), whole


def _dense(q: Any, k: Any, v: Any) -> Any:
    if interpret() or q.device.type != "cuda":
        from sparsesim.kernels.dense import attention

        return attention(q.flatten(1, -3), k.flatten(1, -3), v.flatten(1, -3)).reshape(q.shape)
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = q.shape[-2] // k.shape[-2]
    qd = q.flatten(1, -3).transpose(1, 2)
    kd, vd = (x.flatten(1, -3).repeat_interleave(group, dim=-2).transpose(1, 2) for x in (k, v))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        o = F.scaled_dot_product_attention(qd, kd, vd)
    return o.transpose(1, 2).reshape(q.shape)


def plan_extras(plan: Any, extra_tokens: int | None = None, extra_at: str | None = None) -> tuple[int, str]:
    """A plan's extra tokens and where they sit: the arguments when given, else the plan's ``extra_tokens`` /
    ``extra_at`` fields when it has them, else none (``0, "end"``)."""
    e = getattr(plan, "extra_tokens", 0) if extra_tokens is None else extra_tokens
    at = getattr(plan, "extra_at", "end") if extra_at is None else extra_at
    return int(e or 0), str(at)


def run_plan(plan: Plan, layer: int | PlanLayer, q: Any, k: Any, v: Any, *, out: Any = None,
             extra_tokens: int | None = None, extra_at: str | None = None) -> Any:
    """Attention of plan layer ``layer`` (its ``layer`` field, or the entry itself, e.g. a step range's) on
    ``q``/``k``/``v`` in NATTEN layout
    ``[batch, *layout, heads, head_dim]``, as the plan's launches run it.

    With extra tokens (``extra_tokens``/``extra_at``, default the plan's own fields when it has them):
    ``q``/``k``/``v`` are the flat sequence ``[batch, N + E, heads, head_dim]`` (see
    :func:`~sparsesim.kernels.gna_attention`); the launches run the layout with the extras."""
    import math

    from sparsesim.simulator.errors import ConfigError

    entry = layer if not isinstance(layer, int) else plan.layer(layer)
    e, at = plan_extras(plan, extra_tokens, extra_at)
    if e:
        n = math.prod(plan.layout)
        if q.dim() != 4 or int(q.shape[1]) != n + e or q.shape[-2] != plan.heads:
            raise ConfigError(f"q {tuple(q.shape)}; the plan is for layout {list(plan.layout)} ({n} tokens) plus "
                              f"{e} extra tokens with {plan.heads} heads: q [batch, {n + e}, {plan.heads}, head_dim]")
    elif tuple(q.shape[1:-2]) != plan.layout or q.shape[-2] != plan.heads:
        raise ConfigError(f"q {tuple(q.shape)}; the plan is for layout {list(plan.layout)} with {plan.heads} heads")
    out = q.new_empty(q.shape) if out is None else out
    for launch in entry.launches:
        run_launch(plan, launch, q, k, v, out, extra_tokens=e, extra_at=at)
    return out


def run_launch(plan: Plan, launch: Any, q: Any, k: Any, v: Any, out: Any, *, extra_tokens: int = 0,
               extra_at: str = "end") -> None:
    """One launch of a plan layer, writing its heads of ``out``. A sparse launch of whole GQA groups runs
    its heads in place (the kernel takes a head map: nothing is copied); dense launches, and sparse ones
    of partial groups, gather their heads and scatter the result back. With ``extra_tokens``, ``q``/``k``/``v``/
    ``out`` are flat sequences of the layout's tokens and the extras (:func:`~sparsesim.kernels.gna_attention`)."""
    import torch

    from sparsesim.kernels.gna import gna_attention

    heads = list(launch.heads)
    kv, whole = _kv_heads(heads, q.shape[-2] // k.shape[-2])
    pattern: dict[str, Any] = {"window": list(launch.window), "stride": list(launch.stride),
                               "dilation": list(launch.dilation), "causal": list(plan.causal),
                               "q_tile": list(plan.q_tile), "kv_tile": list(plan.kv_tile)}
    if extra_tokens:
        pattern.update(extra_tokens=extra_tokens, extra_at=extra_at, input_size=list(plan.layout))
    dense = launch.dense and not any(plan.causal)  # dense over a causal layout runs our kernel
    if not dense and whole:
        gna_attention(q, k, v, **pattern, out=out, heads=heads)
        return
    qs, ks, vs = _take(q, heads), _take(k, kv), _take(v, kv)
    o = _dense(qs, ks, vs) if dense else gna_attention(qs, ks, vs, **pattern)
    if qs is q:
        out.copy_(o)
    else:
        out.index_copy_(-2, torch.as_tensor(heads, device=q.device), o)


def validate_plan_layers(plan: Plan, out: Path, *, seed: int = 0, commit: str | None = None,
                         layers: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Check each plan layer (per launch, sampled rows against the fp32 reference with that launch's exact
    mask), then time the whole layer call and dense cuDNN over all heads; one CSV row per layer (with the plan's
    extra tokens, when it carries them, in every call)."""
    import torch

    from sparsesim.kernels.reference import sequence_mask
    from sparsesim.kernels.timing import TOLERANCE, check_rows, time_ms
    from sparsesim.kernels.validate import _device, _dtype, environment, random_qkv
    from sparsesim.simulator.files import check_output

    check_output(out, "--out", stdout_ok=False)
    env = environment(commit)
    size = plan.layout
    dtype, device = _dtype(plan.dtype if plan.dtype != "fp8" else "bf16"), _device()
    b, h, hk, d = plan.batch, plan.heads, plan.heads_kv, plan.head_dim
    e, at = plan_extras(plan)
    shape = (b, math.prod(size) + e) if e else (b, *size)
    rows = []
    # the plan's layers, then those of each step range that has its own (dense ranges run cuDNN: nothing to check)
    entries = [("all", en) for en in plan.layers]
    for r in plan.steps:
        stop = "" if r.stop is None else r.stop
        entries += [(f"{r.start}:{stop}", en) for en in (r.layers if not r.dense else ())]
    for steps, entry in entries:
        if layers is not None and entry.layer not in layers:
            continue
        s = seed + 10 * entry.layer
        q = random_qkv((*shape, h, d), dtype, device, s)
        k = random_qkv((*shape, hk, d), dtype, device, s + 1)
        v = random_qkv((*shape, hk, d), dtype, device, s + 2)
        got = run_plan(plan, entry, q, k, v)
        worst = 0.0
        group = h // hk
        for launch in entry.launches:
            kv, _ = _kv_heads(launch.heads, group)
            p = plan.pattern(launch)

            def mask_fn(r: Any, p: Any = p) -> Any:
                return sequence_mask(p, e, at, r)
            worst = max(worst, check_rows(_take(got, launch.heads), _take(q, launch.heads), _take(k, kv),
                                          _take(v, kv), mask_fn, seed=s + 3))
        buf = torch.empty_like(q)
        ms = time_ms(lambda: run_plan(plan, entry, q, k, v, out=buf))  # noqa: B023
        dense_ms = time_ms(lambda: _dense(q, k, v))  # noqa: B023
        rows.append({"layer": entry.layer, "steps": steps, "launches": len(entry.launches),
                     "sparse_heads": sum(len(la.heads) for la in entry.launches if not la.dense),
                     "rel_err": worst, "ok": bool(worst < TOLERANCE), "measured_ms": ms,
                     "predicted_ms": entry.predicted_ms, "error": entry.predicted_ms / ms - 1,
                     "dense_measured_ms": dense_ms, "dense_predicted_ms": entry.dense_ms,
                     "measured_speedup": dense_ms / ms, "predicted_speedup": entry.dense_ms / entry.predicted_ms,
                     "workload": plan.workload, "plan_gpu": plan.gpu, **env})
        _write(rows, out)
    return rows


def _write(rows: Sequence[Mapping[str, Any]], out: Path) -> None:
    """Write every row so far through the one output routine (an interruption keeps the finished layers)."""
    from sparsesim.simulator.files import write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(buf.getvalue(), out, "--out")
