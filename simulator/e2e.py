"""End-to-end speedups of sparse attention in a whole model, with the non-attention time made explicit.

A dense run is split into parts: the self-attention of the transformer steps (modelled from the dense
kernel), the rest of the transformer steps (GEMMs, elementwise passes, text/cross attention; modelled, see
:func:`~sparsesim.simulator.workloads.dense_step`) and, where a published breakdown gives attention's share
of the whole run, what lies outside the transformer steps (text encoders, VAE, host time), by difference.
The share comes from ``hwmodels/published/breakdowns.csv`` (``part = self_attention``) when the file has a
row for the workload and GPU, else from the model. The sparse run replaces the self-attention of the steps
that run sparse (all but the first ``dense_steps``) by the sparse call: the kernel plus its memory passes
(token permutation), the latter at the published share of dense attention time (``part =
sparse_memory_ops``, the mean of the GPU's rows) where the file has one for the GPU and the kernel is a
shipped ``reference`` profile permuting NATTEN-style (q, k, v in, o out), else modelled.
With ``f`` the sparse steps' share of the dense run and ``S`` the call's speedup this is Amdahl:
``1 / ((1 - f) + f / S)``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sparsesim.hwmodels.gpus import DEFAULT_GPU, GPU
from sparsesim.hwmodels.profiles import KernelProfile
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.workloads import Workload, dense_step, e2e_speedup, load_workload, sparse_share

#: Published breakdowns of end-to-end time (attention share, memory passes of the sparse path), one sourced
#: figure per row.
BREAKDOWNS_FILE = Path(__file__).resolve().parent.parent / "hwmodels" / "published" / "breakdowns.csv"
BREAKDOWN_COLUMNS = ("id", "model", "gpu", "layout", "part", "value", "unit", "kernel", "paper", "address", "figure",
                     "note")
#: Each part and the unit its value is in.
PARTS = {"self_attention": "share_of_run", "sparse_memory_ops": "share_of_dense_attention"}
#: Where the attention share comes from: a published breakdown when there is one (else the model), or the model.
SHARE_FROM = ("breakdown", "model")
MAX_BREAKDOWN_BYTES = 4 * 2**20


@dataclass(frozen=True)
class BreakdownRow:
    """One published figure of a breakdown: a part of the end-to-end time of a model on a GPU."""

    id: str
    model: str
    gpu: str
    layout: tuple[int, ...]
    part: str
    value: float
    kernel: str
    source: str  # paper, figure


def _layout(text: str, where: str) -> tuple[int, ...]:
    try:
        layout = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        layout = ()
    if not layout or not all(x > 0 for x in layout):
        raise ConfigError(f"{where}: layout={text!r} must be positive integers joined by 'x', e.g. 30x48x80")
    return layout


def read_breakdowns(path: str | Path | None = None) -> tuple[BreakdownRow, ...]:
    """Every row of a breakdowns CSV (default: the shipped :data:`BREAKDOWNS_FILE`), checked."""
    path = Path(path) if path is not None else BREAKDOWNS_FILE
    if not path.is_file():
        raise ConfigError(f"breakdowns file {str(path)!r} does not exist or is not a regular file")
    if path.stat().st_size > MAX_BREAKDOWN_BYTES:
        raise ConfigError(f"breakdowns file {str(path)!r} is larger than {MAX_BREAKDOWN_BYTES >> 20} MiB")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in BREAKDOWN_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"breakdowns file {str(path)!r} lacks columns {missing}; needs "
                                  f"{', '.join(BREAKDOWN_COLUMNS)}")
            raw = list(reader)
    except UnicodeDecodeError as e:
        raise ConfigError(f"breakdowns file {str(path)!r} is not UTF-8 text ({e.reason})") from None
    rows = []
    for i, r in enumerate(raw, start=2):
        where = f"breakdowns file {str(path)!r} line {i}"
        part = r["part"] or ""
        if part not in PARTS:
            raise ConfigError(f"{where}: part={part!r}; allowed: {', '.join(PARTS)}")
        if r["unit"] != PARTS[part]:
            raise ConfigError(f"{where}: unit={r['unit']!r}; part {part} is in {PARTS[part]}")
        try:
            value = float(r["value"] or "")
        except ValueError:
            value = math.nan
        if not 0 < value < 1:
            raise ConfigError(f"{where}: value={r['value']!r} must be a share between 0 and 1")
        if not r["model"] or not r["gpu"] or not r["paper"]:
            raise ConfigError(f"{where}: model, gpu and paper (the source) must not be empty")
        rows.append(BreakdownRow(id=r["id"] or f"line {i}", model=r["model"], gpu=r["gpu"],
                                 layout=_layout(r["layout"] or "", where), part=part, value=value,
                                 kernel=r["kernel"] or "", source=f"{r['paper']}, {r['figure']}"))
    return tuple(rows)


@cache
def _shipped() -> tuple[BreakdownRow, ...]:
    return read_breakdowns()


def attention_share_row(rows: tuple[BreakdownRow, ...], w: Workload, gpu: str) -> BreakdownRow | None:
    """The published self-attention share for this workload (name and layout) on this GPU, if any."""
    hits = [r for r in rows if r.part == "self_attention" and r.model == w.name and r.gpu == gpu
            and r.layout == w.layout]
    if len(hits) > 1:
        raise ConfigError(f"breakdowns: {len(hits)} self_attention rows for {w.name} on {gpu} "
                          f"({', '.join(r.id for r in hits)}); allowed: one")
    return hits[0] if hits else None


def memory_ops_rows(rows: tuple[BreakdownRow, ...], gpu: str) -> list[BreakdownRow]:
    """Published memory passes of NATTEN-style sparse calls on this GPU (any model: a share of dense time)."""
    return [r for r in rows if r.part == "sparse_memory_ops" and r.gpu == gpu]


@dataclass(frozen=True)
class E2EResult:
    """End-to-end speedups of one pattern in one workload on one GPU, and the dense and sparse runs by part.

    Times are of one whole run (all steps). ``attention_s`` is the dense self-attention of the transformer
    steps, ``other_s`` the rest of those steps (modelled), ``outside_s`` what the attention share
    leaves beyond them (text encoders, VAE, host; by difference, so negative where the modelled rest of the
    steps is already more than the share allows; 0 with a modelled share). ``memory_ops_s`` is the sparse
    call's memory passes over the sparse steps.
    """

    preset: str
    gpu: str
    input_size: tuple[int, ...]
    window: tuple[int, ...] | None
    stride: tuple[int, ...] | None
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    steps: int
    dense_steps: int
    attention_share: float
    share_source: str
    modelled_attention_share: float
    flop_speedup: float
    tile_speedup: float
    kernel_speedup: float
    predicted_speedup: float
    e2e_flop_speedup: float
    e2e_tile_speedup: float
    e2e_predicted_speedup: float
    dense_step_ms: float
    gemm_ms: float
    elementwise_ms: float
    self_attention_ms: float
    other_attention_ms: float
    attention_s: float
    other_s: float
    outside_s: float
    sparse_attention_s: float
    memory_ops_s: float
    memory_ops_source: str
    dense_run_s: float
    sparse_run_s: float

    def to_dict(self) -> dict[str, Any]:
        """The record as a dict of columns."""
        return dataclasses.asdict(self)


def simulate_e2e(*, preset: str, gpu: str | GPU = DEFAULT_GPU, window: Any = None, stride: Any = None,
                 dilation: Any = 1, q_tile: Any = None, kv_tile: Any = None, tiling: str = "box",
                 dense_steps: int = 0, attention_share: float | None = None, share_from: str = "breakdown",
                 breakdowns: str | Path | None = None,
                 kernel_profile: str | KernelProfile = "reference",
                 dense_profile: str | KernelProfile = "cudnn") -> list[E2EResult]:
    """End-to-end speedups of a workload with a sparse pattern (default: the workload's own patterns).

    ``attention_share`` (a profiled share of the whole dense run) wins; else ``share_from="breakdown"``
    takes the published share for the workload and GPU from ``breakdowns`` (default: the shipped file) and
    falls back to the modelled share, and ``"model"`` always uses the model (breakdown rows then unused,
    memory passes modelled too).

    Example:
        >>> rows = simulate_e2e(preset="flux-4k", gpu="B200", window=(80, 80), stride=(16, 16),
        ...                     q_tile=(16, 16), kv_tile=(16, 8), attention_share=0.518)
        >>> round(rows[0].e2e_tile_speedup, 2)
        1.88
    """
    from sparsesim.hwmodels import load_gpu
    from sparsesim.hwmodels.profiles import load_profile
    from sparsesim.simulator.engine import simulate

    if attention_share is not None and not 0 < attention_share <= 1:
        raise ConfigError(f"attention_share={attention_share}; allowed: above 0, at most 1")
    if share_from not in SHARE_FROM:
        raise ConfigError(f"share_from={share_from!r}; allowed: {', '.join(SHARE_FROM)}")
    w = load_workload(preset)
    gpu_spec = load_gpu(gpu)
    prof = load_profile(kernel_profile, gpu_spec)
    if window is None:
        patterns = [dict(p) for p in w.patterns]
        if not patterns:
            raise ConfigError(f"workload {w.name!r} lists no patterns; give --window")
    else:
        patterns = [{"window": window, "stride": 1 if stride is None else stride,
                     "dilation": 1 if dilation is None else dilation}]
    if share_from == "model":
        table: tuple[BreakdownRow, ...] = ()
    else:
        table = _shipped() if breakdowns is None else read_breakdowns(breakdowns)
    share_row = attention_share_row(table, w, gpu_spec.name)
    mem_rows = memory_ops_rows(table, gpu_spec.name)
    # Published memory passes stand for NATTEN's calls: they replace the modelled ones for the shipped
    # reference profiles named as such (those model the published kernels), never for a user's profile.
    published_kernel = isinstance(kernel_profile, str) and not kernel_profile.endswith(".toml") \
        and "/" not in kernel_profile and prof.name.startswith("reference")
    rows = []
    for pat in patterns:
        r = simulate(input_size=w.layout, causal=w.causal, q_tile=q_tile, kv_tile=kv_tile, tiling=tiling,
                     gpu=gpu_spec, heads=w.heads, heads_kv=w.heads_kv, head_dim=w.head_dim, batch=w.batch,
                     dtype=w.dtype, kernel_profile=prof, dense_profile=dense_profile, **pat)
        step = dense_step(w, gpu_spec, prof, r.dense_ms, r.dense_TFLOPs)
        modelled = step.self_attention_ms / step.total_ms
        if attention_share is not None:
            share, source = attention_share, "given"
        elif share_row is not None:
            share, source = share_row.value, f"{share_row.id}: {share_row.source}"
        else:
            share, source = modelled, "modelled (no published breakdown for this workload and GPU)"
        f = sparse_share(share, w.steps, dense_steps)
        # The sparse call: the kernel plus its memory passes, published for NATTEN-style calls where known.
        kernel_ms = r.predicted_ms
        if mem_rows and published_kernel and r.kv_layout == "qkvo":
            mem_share = sum(m.value for m in mem_rows) / len(mem_rows)
            memory_ms = mem_share * r.dense_ms
            mem_source = (f"{mem_share:.3f} of dense attention: mean of {len(mem_rows)} published figures "
                          f"({', '.join(m.id for m in mem_rows)})")
        else:
            memory_ms = r.permute_ms
            mem_source = "modelled" if memory_ms > 0 else "none"
        call_speedup = r.dense_ms / (kernel_ms + memory_ms)
        e2e_pred = e2e_speedup(f, call_speedup)
        attention_s = step.self_attention_ms * w.steps / 1e3
        other_s = (step.total_ms - step.self_attention_ms) * w.steps / 1e3
        dense_run_s = attention_s + other_s if share is modelled else attention_s / share
        sparse_steps = w.steps - dense_steps
        rows.append(E2EResult(
            preset=w.name, gpu=gpu_spec.name, input_size=w.layout, window=r.window, stride=r.stride,
            q_tile=r.q_tile, kv_tile=r.kv_tile, steps=w.steps, dense_steps=dense_steps, attention_share=share,
            share_source=source, modelled_attention_share=modelled, flop_speedup=r.flop_speedup,
            tile_speedup=r.tile_speedup, kernel_speedup=r.kernel_speedup, predicted_speedup=call_speedup,
            e2e_flop_speedup=e2e_speedup(f, r.flop_speedup), e2e_tile_speedup=e2e_speedup(f, r.tile_speedup),
            e2e_predicted_speedup=e2e_pred, dense_step_ms=step.total_ms, gemm_ms=step.gemm_ms,
            elementwise_ms=step.elementwise_ms, self_attention_ms=step.self_attention_ms,
            other_attention_ms=step.other_attention_ms, attention_s=attention_s, other_s=other_s,
            outside_s=0.0 if share is modelled else dense_run_s - attention_s - other_s,
            sparse_attention_s=w.layers * (kernel_ms + memory_ms) * sparse_steps / 1e3,
            memory_ops_s=w.layers * memory_ms * sparse_steps / 1e3, memory_ops_source=mem_source,
            dense_run_s=dense_run_s, sparse_run_s=dense_run_s / e2e_pred))
    return rows


__all__ = ["BREAKDOWNS_FILE", "BreakdownRow", "E2EResult", "SHARE_FROM", "attention_share_row", "memory_ops_rows",
           "read_breakdowns", "simulate_e2e"]
