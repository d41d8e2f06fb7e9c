"""Statistics online: captured attention calls streamed into per-head sums from which every candidate's
quality follows, so that a search reruns without the model and without K/V.

For a fixed candidate list the quality of :mod:`~sparsesim.search.quality` is additive over calls: per head and
candidate, ``err2 = sum over rows of ||O_sparse - O_dense||^2 / s_V^2`` (``s_V``: the call's RMS spread of V,
:func:`~sparsesim.search.quality.error_scale`), ``kept = sum over rows of the kept attention mass``, and per head
the row count. From them ``error = sqrt(err2 / rows)`` and ``mass = kept / rows``: for one call exactly
:func:`~sparsesim.search.quality.evaluate_all`'s numbers, and over many calls (denoising steps, prompts, CFG
branches, batch items) the RMS of the per-row errors, each row in units of its own call's ``s_V``.

- :func:`call_sums`: one call's sums for every head and candidate, in torch on the tensors' device (the GPU
  when the capture runs there), batched over heads; it mirrors ``evaluate_all``'s per-axis contraction (masks
  from the core's :func:`~sparsesim.simulator.patterns.axis_bounds` / :func:`~sparsesim.simulator.patterns.
  rows_mask`, turned into tensors once per layout and device);
- :class:`StatsAccumulator` / :func:`accumulate`: the running sums of a capture; :func:`collect_statistics`:
  a :func:`~sparsesim.search.capture.capture_attention` that streams every kept call into them and keeps no K/V;
- :class:`Statistics`: the sums with their candidates, layout and provenance; :func:`save_statistics` /
  :func:`load_statistics`: one ``.npz`` without pickle;
- :func:`fronts_from_stats`: the :class:`~sparsesim.search.exact.ExactFronts` the exhaustive search returns;
  :func:`plan_from_stats`: the whole search (plan and tuned baselines) from statistics (``simulate search
  --stats FILE``).

File format (``.npz``, read with ``allow_pickle=False``): ``header`` a JSON string (``format`` =
``"sparsesim-stats"``, ``version`` = 1, ``layout``, ``causal``, ``layers`` (names), ``heads`` (per layer),
``head_dim``, ``source``, ``steps``, ``calls``, ``date``, ``extra_tokens``, ``extra_at``);
``candidates`` int64 ``(C, 3, rank)`` (window,
stride, dilation); per layer ``i``: ``rows{i}`` int64 ``(heads,)`` rows seen, ``error{i}`` and ``mass{i}``
float32 ``(heads, C)`` (NaN where a head saw no row). Per-layer float32 arrays: a 24-head layer of 5,600
candidates is 0.5 MiB each, so nothing is rounded to float16; the sums are rebuilt as ``error^2 * rows`` and
``mass * rows`` (float32: relative 6e-8 on each).
"""

from __future__ import annotations

import io
import json
import math
import time
import zipfile
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsesim.search.exact import ExactFronts, front_indices, latency_table
from sparsesim.search.space import Candidate, Space
from sparsesim.search.study import Point, SearchReport
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import GNAPattern, axis_bounds, rows_mask, visible_mask

if TYPE_CHECKING:
    from sparsesim.search.latency import LatencyModel
    from sparsesim.search.run import SearchResult

FORMAT = "sparsesim-stats"
VERSION = 1
#: Largest statistics file read (60 layers x 48 heads x 20,000 candidates is about 0.5 GB).
MAX_STATS_BYTES = 4 * 2**30
#: Default bytes of intermediate tensors per chunk of :func:`call_sums` (per device type).
BUDGET = {"cuda": 2 * 2**30, "cpu": 2**28}


def _reference(layout: tuple[int, ...], cand: Candidate) -> bool:
    """The model's own attention, a window over the whole layout with the reference's causal axes (error 0,
    mass 1 by definition, as in ``evaluate_all``)."""
    return cand.window == layout


@dataclass(frozen=True)
class HeadStats:
    """One head's sums over every call it saw: per candidate ``err2`` and ``kept``, and its row count."""

    candidates: tuple[Candidate, ...]
    err2: np.ndarray  # (candidates,) sum of ||O_s - O_d||^2 / s_V^2 over rows
    kept: np.ndarray  # (candidates,) sum of kept mass over rows
    rows: int

    @property
    def error(self) -> np.ndarray:
        """Every candidate's error (RMS over the rows, in units of s_V); NaN without rows."""
        return np.sqrt(self.err2 / self.rows) if self.rows else np.full(len(self.candidates), np.nan)

    @property
    def mass(self) -> np.ndarray:
        """Every candidate's mean kept attention mass; NaN without rows."""
        return self.kept / self.rows if self.rows else np.full(len(self.candidates), np.nan)


@dataclass(frozen=True, eq=False)
class Statistics:
    """Per (layer, head, candidate) sums over every captured call, with what they were computed on.

    ``err2`` / ``kept`` are ``(layers, heads, candidates)`` float64 (heads: the most of any layer; a layer with
    fewer has rows 0 there), ``rows`` ``(layers, heads)`` int64."""

    layout: tuple[int, ...]
    causal: tuple[bool, ...]
    candidates: tuple[Candidate, ...]
    layer_names: tuple[str, ...]
    layer_heads: tuple[int, ...]
    head_dim: int
    err2: np.ndarray
    kept: np.ndarray
    rows: np.ndarray
    source: str = ""
    steps: tuple[int, ...] = ()
    calls: int = 0  # (layer, step, batch item) calls summed
    date: str = ""
    extra_tokens: int = 0  # tokens outside the layout every call carried (joint text tokens, sinks)
    extra_at: str = "end"
    index: dict[Candidate, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.index.update({c: i for i, c in enumerate(self.candidates)})
        shape = (len(self.layer_names), max(self.layer_heads, default=0), len(self.candidates))
        if self.err2.shape != shape or self.kept.shape != shape or self.rows.shape != shape[:2]:
            raise ConfigError(f"statistics arrays err2 {self.err2.shape}, kept {self.kept.shape}, rows "
                              f"{self.rows.shape}; expected {shape} and {shape[:2]}")

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    @property
    def heads(self) -> int:
        """The most heads of any layer (the arrays' second axis)."""
        return int(self.err2.shape[1])

    def head(self, layer: int, head: int) -> HeadStats:
        return HeadStats(self.candidates, self.err2[layer, head], self.kept[layer, head], int(self.rows[layer, head]))

    def error(self) -> np.ndarray:
        """``(layers, heads, candidates)``: ``sqrt(err2 / rows)``, NaN where a head saw no row."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.rows[..., None] > 0, np.sqrt(self.err2 / self.rows[..., None]), np.nan)

    def mass(self) -> np.ndarray:
        """``(layers, heads, candidates)``: ``kept / rows``, NaN where a head saw no row."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.rows[..., None] > 0, self.kept / self.rows[..., None], np.nan)

    def merge(self, other: Statistics) -> Statistics:
        """The sums of both (e.g. two prompts captured apart): same layout, causal axes, candidates and layers."""
        same = (self.layout, self.causal, self.candidates, self.layer_names, self.layer_heads, self.head_dim,
                self.extra_tokens, self.extra_at)
        if same != (other.layout, other.causal, other.candidates, other.layer_names, other.layer_heads,
                    other.head_dim, other.extra_tokens, other.extra_at):
            raise ConfigError("statistics to merge differ in layout, causal axes, candidates, layers or heads")
        return Statistics(layout=self.layout, causal=self.causal, candidates=self.candidates,
                          layer_names=self.layer_names, layer_heads=self.layer_heads, head_dim=self.head_dim,
                          err2=self.err2 + other.err2, kept=self.kept + other.kept, rows=self.rows + other.rows,
                          source=" + ".join(s for s in (self.source, other.source) if s),
                          steps=tuple(sorted({*self.steps, *other.steps})), calls=self.calls + other.calls,
                          date=max(self.date, other.date), extra_tokens=self.extra_tokens, extra_at=self.extra_at)

    def replicate(self, layers: int, heads: int) -> Statistics:
        """``layers`` x ``heads`` heads made by repeating these (layer and head indices cycled): for benchmarks
        of the search's own cost, never for a plan of a model."""
        li = np.arange(layers) % self.num_layers
        hi = np.arange(heads) % self.heads
        return Statistics(layout=self.layout, causal=self.causal, candidates=self.candidates,
                          layer_names=tuple(f"layer{i}" for i in range(layers)), layer_heads=(heads,) * layers,
                          head_dim=self.head_dim, err2=self.err2[li][:, hi], kept=self.kept[li][:, hi],
                          rows=self.rows[li][:, hi], source=f"{self.source} (replicated to {layers}x{heads})",
                          steps=self.steps, calls=self.calls, date=self.date, extra_tokens=self.extra_tokens,
                          extra_at=self.extra_at)


# ------------------------------------------------------------------------------------------------ one call
def _options(candidates: Sequence[Candidate], rank: int) -> tuple[list[list[tuple[int, int, int]]], np.ndarray]:
    """Per axis the distinct ``(window, stride, dilation)`` options, and each candidate's flat index into their
    product (axis order), as ``evaluate_all`` orders them."""
    options = [sorted({(c.window[a], c.stride[a], c.dilation[a]) for c in candidates}) for a in range(rank)]
    where = [{o: i for i, o in enumerate(opts)} for opts in options]
    sizes = tuple(len(o) for o in options)
    flat = np.ravel_multi_index(tuple(np.array([where[a][(c.window[a], c.stride[a], c.dilation[a])]
                                                for c in candidates], dtype=np.int64) for a in range(rank)), sizes)
    return options, np.asarray(flat, dtype=np.int64)


class _Tables:
    """Per axis, every option's mask for every query position ``(options, L, L)`` (the core's rule: axis bounds
    turned into masks by :func:`rows_mask`), and the candidates' flat indices; tensors made once per device."""

    def __init__(self, layout: tuple[int, ...], causal: tuple[bool, ...], candidates: Sequence[Candidate]) -> None:
        rank = len(layout)
        self.layout, self.causal = layout, causal
        self.options, self.flat = _options(candidates, rank)
        self.sizes = tuple(len(o) for o in self.options)
        self.masks = []
        for a, n in enumerate(layout):
            pos = np.arange(n, dtype=np.int64)
            self.masks.append(np.stack([rows_mask(pos, (n,), [axis_bounds(n, w, s, d, causal[a])], (d,))
                                        for w, s, d in self.options[a]]))
        self.ref = np.array([_reference(layout, c) for c in candidates], dtype=bool)
        self._on: dict[str, tuple[Any, ...]] = {}

    def on(self, device: Any) -> tuple[Any, ...]:
        """(per-axis float32 masks, flat index, reference flags) as tensors on ``device``."""
        import torch

        key = str(device)
        hit = self._on.get(key)
        if hit is None:
            hit = (tuple(torch.as_tensor(m, device=device, dtype=torch.float32) for m in self.masks),
                   torch.as_tensor(self.flat, device=device), torch.as_tensor(self.ref, device=device))
            self._on[key] = hit
        return hit


def _value_unit(v: Any) -> Any:
    """Per K/V head the RMS spread of the value vectors (float64; :func:`~sparsesim.search.quality.error_scale`'s
    unit: the RMS of ``||v_j||`` where the spread is ~0, 1 where both are)."""
    import torch

    v64 = v.double()
    rms = torch.sqrt((v64 * v64).sum(-1).mean(-1))
    c = v64 - v64.mean(dim=1, keepdim=True)
    spread = torch.sqrt((c * c).sum(-1).mean(-1))
    unit = torch.where(spread > 1e-6 * rms, spread, rms)
    return torch.where(unit > 0, unit, torch.ones_like(unit))


def call_sums(q: Any, k: Any, v: Any, rows: Any, layout: Sequence[int], candidates: Sequence[Candidate],
              causal: Sequence[bool] = (), *, scale: float | None = None, extra_tokens: int = 0,
              extra_at: str = "end", budget: int | None = None, tables: _Tables | None = None,
              precision: str = "auto") -> tuple[Any, Any]:
    """One attention call's sums for every head and candidate: ``(err2, kept)``, float64 tensors ``(heads,
    candidates)`` on the inputs' device (module doc; each head's rows count ``rows.size``).

    ``q`` ``(heads, R, d)``: the query rows at the flat token positions ``rows`` ``(R,)``; ``k``, ``v``
    ``(heads_kv, tokens, d)`` (GQA: head ``h`` reads K/V head ``h // (heads / heads_kv)``); torch tensors or
    numpy arrays. Scores are ``q k^T * scale`` (default ``1/sqrt(d)``); the reference is dense attention, causal
    along the ``causal`` axes. ``extra_tokens`` (joint text tokens, sinks) after the layout's tokens
    (``extra_at="end"``) or before them (``"start"``): ``k``/``v`` cover the whole sequence, ``rows`` are sequence
    positions of layout tokens, and every candidate keeps every extra key (the same kept sums, once per row).
    Mirrors :func:`~sparsesim.search.quality.evaluate_all`: the axis with the fewest options is contracted first
    in float32 as one batched product over the other axes' positions, the others in ``precision``: ``"float64"``,
    ``"float32"`` or ``"auto"`` (float64 on the CPU, float32 on a GPU: half the memory traffic of the
    intermediates, which is what collection costs there; the final sums are float64 either way). ``budget``: bytes
    of intermediates per chunk (default :data:`BUDGET` of the device type)."""
    import torch

    with torch.no_grad():
        return _call_sums(torch, q, k, v, rows, tuple(int(n) for n in layout), list(candidates),
                          tuple(bool(c) for c in causal) or (False,) * len(layout), scale, int(extra_tokens),
                          extra_at, budget, tables, precision)


def _call_sums(torch: Any, q: Any, k: Any, v: Any, rows: Any, layout: tuple[int, ...], cands: list[Candidate],
               causal: tuple[bool, ...], scale: float | None, extra: int, extra_at: str, budget: int | None,
               tables: _Tables | None, precision: str = "auto") -> tuple[Any, Any]:
    q, k, v = (torch.as_tensor(x) for x in (q, k, v))
    device = q.device
    k, v = k.to(device), v.to(device)
    rows_np = np.asarray(rows.cpu() if hasattr(rows, "cpu") else rows, dtype=np.int64).reshape(-1)
    heads, r, d = (int(x) for x in q.shape)
    hk, n = int(k.shape[0]), int(k.shape[1])
    rank, grid = len(layout), math.prod(layout)
    if extra < 0 or extra_at not in ("end", "start"):
        raise ConfigError(f"extra_tokens={extra}, extra_at={extra_at!r}; allowed: an integer >= 0, 'end' or 'start'")
    start = extra if extra_at == "start" else 0  # the layout's first sequence position
    keys = slice(start, start + grid)
    others = slice(0, extra) if extra_at == "start" else slice(grid, grid + extra)
    tokens = grid + extra
    local = rows_np - start
    if local.size and (local.min() < 0 or local.max() >= grid):
        raise ConfigError(f"rows must be layout tokens: sequence positions {start} to {start + grid - 1}")
    if n != tokens or tuple(v.shape) != tuple(k.shape) or int(k.shape[2]) != d or heads % hk or r != rows_np.size:
        raise ConfigError(f"q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}, {rows_np.size} rows for layout "
                          f"{'x'.join(map(str, layout))} with {extra} extra tokens: q is (heads, rows, d), k and v "
                          "(heads_kv, tokens, d)")
    if len(causal) != rank:
        raise ConfigError(f"causal {list(causal)}; allowed: one flag per axis of the layout ({rank})")
    c_n = len(cands)
    err2 = torch.zeros(heads, c_n, dtype=torch.float64, device=device)
    kept = torch.zeros(heads, c_n, dtype=torch.float64, device=device)
    if not c_n or not r:
        return err2, kept
    if tables is None:
        tables = _Tables(layout, causal, cands)
    masks, flat, ref = tables.on(device)
    sizes = tables.sizes
    group = heads // hk
    scale_f = 1.0 / math.sqrt(d) if scale is None else float(scale)
    coords = [torch.as_tensor(c, device=device) for c in np.unravel_index(local, layout)]
    row_masks = [masks[a][:, coords[a], :] for a in range(rank)]  # (options, R, L)
    ref_hidden = None
    if any(causal):
        ref_hidden = torch.zeros(r, tokens, dtype=torch.bool, device=device)  # every extra key is seen
        ref_hidden[:, keys] = ~torch.as_tensor(visible_mask(GNAPattern(input_size=layout, window=layout,
                                                                       causal=causal), local), device=device)
    # The first contracted axis: the one leaving the smallest intermediate (options x the other axes' positions),
    # then the rest by fewest options (on a 30x48x80 layout with 14/20/20 options: W first, half of T first's)
    first = min(range(rank), key=lambda a: (sizes[a] * grid // layout[a], sizes[a], a))
    order = [first] + sorted((a for a in range(rank) if a != first), key=lambda a: (sizes[a], a))
    perm = [b for b in range(rank) if b != first] + [first]  # the first contracted axis last
    rest_shape = [layout[b] for b in perm[:-1]]
    rest, length, o1, d1 = math.prod(rest_shape), layout[first], sizes[first], d + 1
    if budget is None:
        budget = BUDGET.get(device.type, BUDGET["cuda"])
    # bytes per row of the largest intermediates: stage 1 (float32), each later stage (float64, with copies),
    # the gathered candidates' sums
    wide = _work_dtype(torch, device, precision)
    item = 8 if wide == torch.float64 else 4
    per_row = [4 * (rest * o1 * length + rest * o1 * d1)]
    now = o1 * rest * d1
    for b in order[1:]:
        nxt = now // layout[b] * sizes[b]
        per_row.append(item * (2 * now + nxt))
        now = nxt
    per_row.append(item * 3 * c_n * d1)
    chunk = max(1, int(budget // max(per_row)))
    unit = _value_unit(v)  # (hk,)
    dims = [b + 1 for b in perm]
    for g in range(hk):
        vext = torch.cat([v[g, keys].float(), torch.ones(grid, 1, dtype=torch.float32, device=device)], dim=1)
        vext = vext.reshape(*layout, d1).permute(*perm, rank).reshape(rest, length, d1)
        qg = q[g * group:(g + 1) * group].float().reshape(group * r, d)
        s = (qg @ k[g].float().T) * scale_f  # (group * R, tokens)
        if ref_hidden is not None:
            s = s.masked_fill(ref_hidden.repeat(group, 1), float("-inf"))
        s = s - s.amax(dim=1, keepdim=True)
        p = torch.exp(s)
        del s
        z = p.sum(dim=1).double()
        out = (p @ v[g].float()).double() / z[:, None]  # (group * R, d) dense output
        # the extra keys' kept sums [p v, p], the same for every candidate
        fixed = torch.cat([p[:, others].double() @ v[g, others].double(), p[:, others].double().sum(1, keepdim=True)],
                          dim=1)
        p = p[:, keys].reshape(group * r, *layout).permute(0, *dims).reshape(group * r, rest, length)
        w = 1.0 / float(unit[g]) ** 2
        for b0 in range(0, group * r, chunk):
            b1 = min(group * r, b0 + chunk)
            idx = torch.arange(b0, b1, device=device) % r  # the sampled row of each (head, row)
            bc = b1 - b0
            m1 = row_masks[first][:, idx, :]  # (o1, bc, length)
            a = p[b0:b1].permute(1, 0, 2)[:, :, None, :] * m1.permute(1, 0, 2)[None]  # (rest, bc, o1, length)
            y = torch.bmm(a.reshape(rest, bc * o1, length), vext).reshape(rest, bc, o1, d1)
            del a
            x = y.permute(1, 2, 0, 3).to(wide).reshape(bc, o1, *rest_shape, d1)
            del y
            axes, done = list(perm[:-1]), 1  # layout axes left in x, after ``done`` option dims
            for b in order[1:]:
                pos = 1 + done + axes.index(b)
                other = x.shape[1:pos] + x.shape[pos + 1:]
                xx = x.movedim(pos, 1).reshape(bc, layout[b], -1)
                mb = row_masks[b][:, idx, :].permute(1, 0, 2).to(wide)  # (bc, ob, L)
                x = torch.bmm(mb, xx).reshape(bc, sizes[b], *other)
                axes.remove(b)
                done += 1
            # x: (bc, options of order[-1], ..., options of order[0], d + 1) -> options in axis order
            x = x.permute(0, *[rank - order.index(b) for b in range(rank)], rank + 1).reshape(bc, -1, d1)
            sums = x[:, flat].double() + fixed[b0:b1, None, :]  # (bc, candidates, d + 1)
            del x
            zm = sums[:, :, d]
            o = sums[:, :, :d] / torch.where(zm > 0, zm, torch.ones_like(zm))[:, :, None]
            e2 = ((o - out[b0:b1, None, :]) ** 2).sum(-1)  # (bc, candidates)
            km = zm / z[b0:b1, None]
            del sums, o
            head = g * group + torch.arange(b0, b1, device=device) // r
            err2.index_add_(0, head, e2 * w)
            kept.index_add_(0, head, km)
    err2[:, ref] = 0.0
    kept[:, ref] = float(r)
    return err2, kept


PRECISIONS = ("auto", "float64", "float32")


def _work_dtype(torch: Any, device: Any, precision: str) -> Any:
    """The dtype of the later contraction stages (see :func:`call_sums`)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}; allowed: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.float64 if device.type == "cpu" else torch.float32
    return torch.float64 if precision == "float64" else torch.float32


# ------------------------------------------------------------------------------------------------ accumulation
class StatsAccumulator:
    """Running per-(layer, head, candidate) sums of many calls (on the calls' device), turned into
    :class:`Statistics` by :meth:`statistics`."""

    def __init__(self, layout: Sequence[int], candidates: Sequence[Candidate], causal: Sequence[bool] = (), *,
                 source: str = "", budget: int | None = None, extra_tokens: int = 0, extra_at: str = "end") -> None:
        self.layout = tuple(int(n) for n in layout)
        if not 1 <= len(self.layout) <= 3 or any(n < 1 for n in self.layout):
            raise ConfigError(f"layout {list(self.layout)}; allowed: 1 to 3 positive integers")
        self.causal = tuple(bool(c) for c in causal) or (False,) * len(self.layout)
        if len(self.causal) != len(self.layout):
            raise ConfigError(f"causal {list(self.causal)}; allowed: one flag per axis of the layout")
        self.candidates = tuple(dict.fromkeys(candidates))
        if not self.candidates:
            raise ConfigError("statistics need at least one candidate")
        bad = [c for c in self.candidates if len(c.window) != len(self.layout) or any(
            not 1 <= w <= n or s < 1 or dd < 1 for w, s, dd, n in zip(c.window, c.stride, c.dilation, self.layout,
                                                                       strict=True))]
        if bad:
            raise ConfigError(f"candidate {bad[0].label()} does not fit layout {'x'.join(map(str, self.layout))}")
        self.source = source
        self.budget = budget
        if isinstance(extra_tokens, bool) or not isinstance(extra_tokens, int) or extra_tokens < 0 or extra_at not in (
                "end", "start"):
            raise ConfigError(f"extra_tokens={extra_tokens!r}, extra_at={extra_at!r}; allowed: an integer >= 0, 'end' "
                              "or 'start'")
        self.extra_tokens, self.extra_at = extra_tokens, extra_at
        self.tables = _Tables(self.layout, self.causal, self.candidates)
        self._sums: dict[int, list[Any]] = {}  # layer -> [err2, kept, rows]
        self._names: dict[int, str] = {}
        self.head_dim: int | None = None
        self.steps: set[int] = set()
        self.calls = 0

    def add(self, layer: int, q: Any, k: Any, v: Any, rows: Any, *, scale: float | None = None,
            name: str | None = None, step: int | None = None) -> None:
        """Add one call of layer ``layer`` (see :func:`call_sums` for the arguments)."""
        import torch

        err2, kept = call_sums(q, k, v, rows, self.layout, self.candidates, self.causal, scale=scale,
                               extra_tokens=self.extra_tokens, extra_at=self.extra_at, budget=self.budget,
                               tables=self.tables)
        heads, r, d = (int(x) for x in q.shape)
        if self.head_dim is None:
            self.head_dim = d
        elif d != self.head_dim:
            raise ConfigError(f"layer {layer}: head_dim {d}; earlier calls had {self.head_dim}")
        have = self._sums.get(layer)
        if have is None:
            self._sums[layer] = [err2, kept, torch.full((heads,), r, dtype=torch.int64)]
        elif int(have[0].shape[0]) != heads:
            raise ConfigError(f"layer {layer}: {heads} heads; earlier calls had {int(have[0].shape[0])}")
        else:
            have[0] += err2.to(have[0].device)
            have[1] += kept.to(have[1].device)
            have[2] += r
        self._names.setdefault(layer, name or f"layer{layer}")
        if step is not None:
            self.steps.add(int(step))
        self.calls += 1

    def statistics(self) -> Statistics:
        """The sums so far (layers by index, each at its row of the arrays)."""
        if not self._sums:
            raise ConfigError("no attention call reached the statistics: nothing was captured")
        layers = sorted(self._sums)
        heads = tuple(int(self._sums[li][0].shape[0]) for li in layers)
        shape = (len(layers), max(heads), len(self.candidates))
        err2, kept = np.zeros(shape), np.zeros(shape)
        rows = np.zeros(shape[:2], dtype=np.int64)
        for i, li in enumerate(layers):
            e, m, r = self._sums[li]
            err2[i, :heads[i]] = e.cpu().numpy()
            kept[i, :heads[i]] = m.cpu().numpy()
            rows[i, :heads[i]] = r.cpu().numpy()
        return Statistics(layout=self.layout, causal=self.causal, candidates=self.candidates,
                          layer_names=tuple(self._names[li] for li in layers), layer_heads=heads,
                          head_dim=int(self.head_dim or 0), err2=err2, kept=kept, rows=rows, source=self.source,
                          steps=tuple(sorted(self.steps)), calls=self.calls,
                          date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                          extra_tokens=self.extra_tokens, extra_at=self.extra_at)


def accumulate(acc: StatsAccumulator, layer: int, q_rows: Any, k: Any, v: Any, rows: Any, *,
               scale: float | None = None, name: str | None = None, step: int | None = None) -> None:
    """Stream one call of ``layer`` (``q_rows`` ``(heads, R, d)`` at the flat positions ``rows``, ``k``/``v``
    ``(heads_kv, tokens, d)``) into ``acc``: :meth:`StatsAccumulator.add`."""
    acc.add(layer, q_rows, k, v, rows, scale=scale, name=name, step=step)


def candidates_of(space: Space | Sequence[Candidate], extra: Sequence[Candidate] = ()) -> tuple[Candidate, ...]:
    """A space's every candidate (or a candidate list) and ``extra``, distinct, in order."""
    base = space.all_candidates() if isinstance(space, Space) else space
    return tuple(dict.fromkeys([*base, *extra]))


class StatsCollector:
    """What :func:`collect_statistics` yields: the capture (``.capture``: set ``.capture.step`` per denoising step
    as with :func:`~sparsesim.search.capture.capture_attention`) and the running sums (:meth:`statistics`)."""

    def __init__(self, capture: Any, acc: StatsAccumulator) -> None:
        self.capture = capture
        self.acc = acc

    @property
    def step(self) -> int | None:
        return self.capture.step  # type: ignore[no-any-return]

    @step.setter
    def step(self, value: int | None) -> None:
        self.capture.step = value

    def begin_pass(self, step: int | None = None) -> None:
        self.capture.begin_pass(step)

    def statistics(self) -> Statistics:
        return self.acc.statistics()


@contextmanager
def collect_statistics(model: Any = None, *, layout: Sequence[int], space: Space | Sequence[Candidate],
                       extra: Sequence[Candidate] = (), causal: Sequence[bool] | None = None, rows: int = 64,
                       seed: int = 0, steps: Collection[int] | None = None,
                       batch_items: Collection[int] | None = None, extra_tokens: int = 0, extra_at: str = "end",
                       source: str = "", budget: int | None = None) -> Iterator[StatsCollector]:
    """:func:`~sparsesim.search.capture.capture_attention` (same arguments and checks) that streams each kept
    call (layer, step, batch item) into per-head statistics over the candidates of ``space`` (a
    :class:`~sparsesim.search.space.Space` or a candidate list) and ``extra``, and keeps no K/V.

    ``extra_tokens`` / ``extra_at``: as for ``capture_attention`` (every candidate keeps the extra keys).
    ``causal``: the reference's causal axes (default: from the calls: a causal SDPA call is causal along a 1-D
    layout; over a 2-D or 3-D layout its flat causal mask is no per-axis pattern and is refused).

    Example:
        >>> with collect_statistics(model, layout=(30, 48, 80), space=space, rows=64) as col:  # doctest: +SKIP
        ...     pipe(prompt, num_inference_steps=50)
        >>> save_statistics(col.statistics(), "hunyuan.stats.npz")  # doctest: +SKIP
    """
    from sparsesim.search.capture import capture_attention

    shape = tuple(int(n) for n in layout)
    flags = None if causal is None else tuple(bool(c) for c in causal)
    acc = StatsAccumulator(shape, candidates_of(space, extra), flags or (), source=source, budget=budget,
                           extra_tokens=extra_tokens, extra_at=extra_at)

    def sink(meta: Any, step: int, item: int, q: Any, k: Any, v: Any) -> None:
        del item
        call = bool(meta.causal)
        if call and len(shape) != 1:
            raise ConfigError(f"attention call {meta.name!r}: a causal call over the {len(shape)}-D layout "
                              f"{'x'.join(map(str, shape))} (its flat causal mask is not a per-axis pattern); "
                              "allowed: causal calls over 1-D layouts")
        if len(shape) == 1 and call != acc.causal[0]:
            if flags is not None or acc.calls:
                raise ConfigError(f"attention call {meta.name!r}: causal={call}; the statistics' reference is "
                                  f"{'causal' if acc.causal[0] else 'not causal'} (causal= or earlier calls)")
            acc.causal = (call,)
            acc.tables = _Tables(acc.layout, acc.causal, acc.candidates)
        acc.add(meta.index, q, k, v, meta.rows, scale=meta.scale, name=meta.name, step=step)

    more: dict[str, Any] = {"extra_tokens": extra_tokens, "extra_at": extra_at} if extra_tokens else {}
    with capture_attention(model, layout=shape, rows=rows, seed=seed, steps=steps, batch_items=batch_items,
                           **more) as cap:
        cap.sink = sink
        yield StatsCollector(cap, acc)


# ------------------------------------------------------------------------------------------------ files
def save_statistics(stats: Statistics, path: str | Path, flag: str = "--out") -> Path:
    """Write ``stats`` to ``path`` (``.npz``, module doc) atomically through :mod:`sparsesim.simulator.files`."""
    from sparsesim.simulator.files import check_output, write_bytes

    check_output(path, flag, stdout_ok=False)
    header = {"format": FORMAT, "version": VERSION, "layout": list(stats.layout), "causal": list(stats.causal),
              "layers": list(stats.layer_names), "heads": list(stats.layer_heads), "head_dim": stats.head_dim,
              "source": stats.source, "steps": list(stats.steps), "calls": stats.calls, "date": stats.date,
              "extra_tokens": stats.extra_tokens, "extra_at": stats.extra_at}
    arrays: dict[str, np.ndarray] = {
        "header": np.array(json.dumps(header)),
        "candidates": np.array([[c.window, c.stride, c.dilation] for c in stats.candidates], dtype=np.int64)}
    error, mass = stats.error(), stats.mass()
    for i, h in enumerate(stats.layer_heads):
        arrays[f"rows{i}"] = stats.rows[i, :h].astype(np.int64)
        arrays[f"error{i}"] = error[i, :h].astype(np.float32)
        arrays[f"mass{i}"] = mass[i, :h].astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return write_bytes(buf.getvalue(), path, flag)


def _field(header: dict[str, Any], key: str, where: str, check: Callable[[Any], bool], allowed: str) -> Any:
    value = header.get(key)
    if key not in header or not check(value):
        raise ConfigError(f"{where}: header field {key!r} is {str(value)[:60]!r}; allowed: {allowed}")
    return value


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _arr(data: dict[str, np.ndarray], key: str, where: str, kinds: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in data:
        raise ConfigError(f"{where} lacks array {key!r}")
    a = data[key]
    if a.dtype.kind not in kinds or a.shape != shape:
        raise ConfigError(f"{where}: array {key!r} is {a.dtype} with shape {a.shape}; allowed: "
                          f"{'floats' if kinds == 'f' else 'integers'} of shape {shape}")
    return a


def load_statistics(path: str | Path, flag: str = "--stats") -> Statistics:
    """Read a statistics file; one that is not one (another format or version, a bad header field or array)
    gets a one-line error naming the file and the field."""
    from sparsesim.hwmodels.errors import check_input_file

    where = f"{flag} {str(path)[:200]!r}"
    try:
        check_input_file(path, where, MAX_STATS_BYTES, "a statistics file (.npz)")
        z = np.load(Path(path), allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ConfigError(f"{where} is a single array, not a statistics file (.npz)")
        with z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200]
        raise ConfigError(f"{where} is not a readable statistics file (.npz): {reason}") from None
    raw = data.get("header")
    if raw is None or raw.dtype.kind != "U" or raw.ndim != 0:
        raise ConfigError(f"{where} lacks the text array 'header'; expected a {FORMAT!r} file")
    try:
        header = json.loads(str(raw))
    except ValueError:
        raise ConfigError(f"{where}: header is not JSON") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{where}: header is not a JSON object")
    if header.get("format") != FORMAT:
        raise ConfigError(f"{where}: format {str(header.get('format'))[:40]!r}; expected {FORMAT!r}")
    if header.get("version") != VERSION:
        raise ConfigError(f"{where}: version {str(header.get('version'))[:40]}; this sparsesim reads version "
                          f"{VERSION}")
    layout = tuple(_field(header, "layout", where, lambda x: isinstance(x, list) and 1 <= len(x) <= 3 and all(
        _is_int(n) and 1 <= n < 2**31 for n in x) and math.prod(x) < 2**31, "1 to 3 positive axis lengths"))
    rank = len(layout)
    causal = tuple(_field(header, "causal", where, lambda x: isinstance(x, list) and len(x) == rank and all(
        isinstance(c, bool) for c in x), f"{rank} true/false flags"))
    names = tuple(_field(header, "layers", where, lambda x: isinstance(x, list) and len(x) >= 1 and all(
        isinstance(s, str) for s in x), "a non-empty list of layer names"))
    heads = tuple(_field(header, "heads", where, lambda x: isinstance(x, list) and len(x) == len(names) and all(
        _is_int(h) and h >= 1 for h in x), "one head count >= 1 per layer"))
    head_dim = _field(header, "head_dim", where, lambda x: _is_int(x) and x >= 0, "an integer >= 0")
    source = _field(header, "source", where, lambda x: isinstance(x, str), "a string")
    steps = tuple(_field(header, "steps", where, lambda x: isinstance(x, list) and all(_is_int(s) for s in x),
                         "a list of integers"))
    calls = _field(header, "calls", where, lambda x: _is_int(x) and x >= 0, "an integer >= 0")
    date = _field(header, "date", where, lambda x: isinstance(x, str), "a string")
    extra_tokens = _field(header, "extra_tokens", where, lambda x: _is_int(x) and x >= 0, "an integer >= 0")
    extra_at = _field(header, "extra_at", where, lambda x: x in ("end", "start"), "'end' or 'start'")
    cand = data.get("candidates")
    if cand is None or cand.dtype.kind not in "iu" or cand.ndim != 3 or cand.shape[1:] != (3, rank) or not len(cand):
        shown = None if cand is None else f"{cand.dtype} {cand.shape}"
        raise ConfigError(f"{where}: array 'candidates' is {shown}; allowed: integers of shape (C >= 1, 3, {rank})")
    lay = np.array(layout)
    if (cand < 1).any() or (cand[:, 0] > lay).any():
        raise ConfigError(f"{where}: array 'candidates' holds a window, stride or dilation < 1 or a window larger "
                          f"than the layout {'x'.join(map(str, layout))}")
    candidates = tuple(Candidate(tuple(int(x) for x in c[0]), tuple(int(x) for x in c[1]),
                                 tuple(int(x) for x in c[2])) for c in cand)
    if len(set(candidates)) != len(candidates):
        raise ConfigError(f"{where}: array 'candidates' repeats a candidate")
    c_n = len(candidates)
    shape = (len(names), max(heads), c_n)
    err2, kept = np.zeros(shape), np.zeros(shape)
    rows = np.zeros(shape[:2], dtype=np.int64)
    for i, h in enumerate(heads):
        r = _arr(data, f"rows{i}", where, "iu", (h,)).astype(np.int64)
        e = _arr(data, f"error{i}", where, "f", (h, c_n)).astype(np.float64)
        m = _arr(data, f"mass{i}", where, "f", (h, c_n)).astype(np.float64)
        if (r < 0).any():
            raise ConfigError(f"{where}: array 'rows{i}' holds a negative row count")
        seen = r > 0
        if not (np.isfinite(e[seen]).all() and np.isfinite(m[seen]).all()):
            raise ConfigError(f"{where}: array 'error{i}' or 'mass{i}' holds NaN or infinite values where rows were "
                              "seen; allowed: finite values")
        if (e[seen] < 0).any() or (m[seen] < 0).any() or (m[seen] > 1 + 1e-3).any():
            raise ConfigError(f"{where}: array 'error{i}' or 'mass{i}' is out of range; allowed: error >= 0, mass "
                              "in [0, 1]")
        rows[i, :h] = r
        err2[i, :h] = np.where(seen[:, None], e * e * r[:, None], 0.0)
        kept[i, :h] = np.where(seen[:, None], m * r[:, None], 0.0)
    return Statistics(layout=layout, causal=causal, candidates=candidates, layer_names=names, layer_heads=heads,
                      head_dim=head_dim, err2=err2, kept=kept, rows=rows, source=source, steps=steps, calls=calls,
                      date=date, extra_tokens=extra_tokens, extra_at=extra_at)


# ------------------------------------------------------------------------------------------------ search
def fronts_from_stats(stats: Statistics, latency: LatencyModel, layers: Sequence[int] | None = None
                      ) -> ExactFronts:
    """The :class:`~sparsesim.search.exact.ExactFronts` of ``stats`` (its layers ``layers``, default all) on
    ``latency``'s GPU: what :func:`~sparsesim.search.exact.run_exhaustive` returns for the same heads and
    candidates, without K/V. The layout and causal axes must be the latency model's."""
    if tuple(latency.shape.layout) != stats.layout:
        raise ConfigError(f"the statistics' layout {'x'.join(map(str, stats.layout))} is not the workload's "
                          f"{'x'.join(map(str, latency.shape.layout))}")
    want = tuple(latency.shape.causal) or (False,) * len(stats.layout)
    if want != stats.causal:
        raise ConfigError(f"the statistics' causal axes {list(stats.causal)} are not the workload's {list(want)}")
    chosen = list(range(stats.num_layers)) if layers is None else list(layers)
    t0 = time.perf_counter()
    ms = latency_table(latency, stats.candidates)
    simulator_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    error, mass = stats.error()[chosen], stats.mass()[chosen]
    quality_s = time.perf_counter() - t1
    heads = int(sum(int((stats.rows[li] > 0).sum()) for li in chosen))
    seconds = time.perf_counter() - t0
    report = SearchReport(heads=heads, found=0, ran=heads * len(stats.candidates), seconds=seconds,
                          simulator_s=simulator_s, quality_s=quality_s,
                          other_s=max(0.0, seconds - simulator_s - quality_s))
    return ExactFronts(candidates=stats.candidates, ms=ms, error=error, mass=mass, report=report)


def plan_from_stats(stats: Statistics, *, workload: str, gpu: str, layers: str | None = None,
                    error_budget: float | None = None, max_error: float | None = None,
                    target_speedup: float | None = None, kernel_profile: str = "triton",
                    dense_profile: str = "cudnn", samples_label: str = "") -> SearchResult:
    """The exhaustive search of :func:`~sparsesim.search.run.search_plan` on statistics: the same fronts, plan
    and tuned baselines, from the candidates the statistics hold (the uniform baselines' patterns among them).

    The choice after the fronts mirrors ``search_plan``'s exhaustive branch."""
    from sparsesim.search.baselines import Table
    from sparsesim.search.latency import LatencyModel, LayerShape
    from sparsesim.search.plan import SearchInfo
    from sparsesim.search.run import SearchResult, layer_range, plan_search, uniform_candidates
    from sparsesim.search.space import build_space
    from sparsesim.simulator.workloads import load_workload

    t0 = time.perf_counter()
    w = load_workload(workload)
    if tuple(w.layout) != stats.layout:
        raise ConfigError(f"the statistics' layout {'x'.join(map(str, stats.layout))} is not the workload's "
                          f"{'x'.join(map(str, w.layout))}")
    for li, h in enumerate(stats.layer_heads):
        if h != w.heads:
            raise ConfigError(f"statistics layer {li} has {h} heads; {w.name} has {w.heads}")
        if int(stats.rows[li].min()) < 1:
            raise ConfigError(f"statistics layer {li} has a head that saw no query row")
    chosen = layer_range(layers, w, stats.num_layers)
    space = build_space(w.layout, gpu=gpu, head_dim=w.head_dim, dtype=w.dtype)
    shape = LayerShape(layout=w.layout, heads=w.heads, heads_kv=w.heads_kv, head_dim=w.head_dim, batch=w.batch,
                       dtype=w.dtype, causal=w.causal, extra_tokens=stats.extra_tokens, extra_at=stats.extra_at)
    latency = LatencyModel(shape=shape, gpu=gpu, q_tile=space.q_tile, kv_tile=space.kv_tile,
                           kernel_profile=kernel_profile, dense_profile=dense_profile)
    sample_layers = list(range(len(chosen)))
    exact = fronts_from_stats(stats, latency, sample_layers)
    uniform = [c for c in uniform_candidates(space, w) if c in exact.index]
    fronts = [[[exact.point(li, h, int(i)) for i in front_indices(exact.ms, exact.error[li, h])]
               for h in range(w.heads)] for li in sample_layers]
    evaluated: list[list[list[Point]]] = []
    for li in sample_layers:
        shared = list(dict.fromkeys([*(p.candidate for f in fronts[li] for p in f), *uniform]))
        evaluated.append([[exact.point(li, h, exact.index[c]) for c in shared] for h in range(w.heads)])
    table = Table(exact.candidates, exact.error, exact.point)
    if latency.group > 1:  # GQA: every point of every head (made only here: 5,600 points a head)
        evaluated = [[exact.points(li, h) for h in range(w.heads)] for li in sample_layers]
    data, outcomes, base_plans = plan_search(
        w, latency, chosen, [stats.layer_names[li] for li in chosen], fronts, evaluated, table, gpu=gpu,
        error_budget=error_budget, max_error=max_error, target_speedup=target_speedup,
        kernel_profile=kernel_profile, dense_profile=dense_profile,
        info=SearchInfo(study="-", storage="-", trials=len(exact.candidates), seed=0,
                        samples=samples_label or stats.source or "-",
                        sampler="exhaustive from statistics (every candidate the statistics hold)", baselines=()))
    seconds = time.perf_counter() - t0
    r = exact.report
    report = SearchReport(heads=r.heads, found=0, ran=r.ran, seconds=seconds, simulator_s=r.simulator_s,
                          quality_s=r.quality_s, other_s=max(0.0, seconds - r.simulator_s - r.quality_s))
    return SearchResult(plan=data, outcomes=outcomes, report=report, baselines=base_plans)
