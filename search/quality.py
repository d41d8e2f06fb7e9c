"""Quality of a sparse pattern on one head: output error and attention mass kept, on sampled query rows.

For each sampled query row ``i`` the dense softmax row ``p_i`` (over every key) is computed once; a
pattern keeps the keys it makes visible (the core's one predicate, :func:`sparsesim.simulator.patterns.
visible_mask`), and its output is ``sum_j m_ij p_ij v_j / sum_j m_ij p_ij``: exactly what sparse attention
computes for that row. Reported per head:

- ``error``: ``||O_sparse - O_dense||_F / (sqrt(R) * s_V)`` over the ``R`` sampled rows, where
  ``s_V = sqrt(mean_j ||v_j - mean(v)||^2)`` is the RMS spread of the head's value vectors (over every key):
  the RMS output deviation per row, in units of how much the values the head mixes differ. Each output row
  is a convex combination of the ``v_j``, so adding a constant vector to ``V`` moves both outputs alike
  (the error does not depend on V's mean) and scaling ``V`` scales both sides (nor on V's scale); the error
  is at most ``2 max_j ||v_j - mean(v)|| / s_V``. Where ``s_V`` is ~0 (``V`` constant: every pattern
  is exact) the RMS of ``||v_j||`` stands in. The former denominator, ``||O_dense||``, made a head whose
  values average out (a global head over zero-mean ``V``) score errors above 1 for any window, and a head
  with nearly constant ``V`` score ~0 whatever it dropped. The output's own variation over the rows
  (``||O_dense - mean_rows(O_dense)||``) is no better for the first kind: a global head's rows are
  nearly equal, so any window's error is huge relative to it.
- ``mass``: the mean over sampled rows of the dense attention probability the pattern keeps.

Extra tokens (joint text tokens, attention sinks; docs/DESIGN.md, Extra tokens): ``k`` and ``v``
cover the whole sequence of ``N + E`` tokens and the sampled rows are layout tokens, named by their sequence
positions. Every candidate keeps every extra key (the one rule), so the extra keys add the same term to every
candidate's kept sums and the reference is the model's own dense attention over the whole sequence.

:func:`evaluate` costs one masked (rows x tokens) @ (tokens x head_dim) product per candidate;
:func:`evaluate_all` scores many candidates of one head at once from per-axis masks (the mask of a GNA
pattern is the product of per-axis masks, so the kept sums contract one axis at a time).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import GNAPattern, axis_bounds, rows_mask, visible_mask

if TYPE_CHECKING:
    from sparsesim.search.space import Candidate


@dataclass(frozen=True)
class Quality:
    """One pattern on one head: relative output error and kept attention mass (sampled rows)."""

    error: float
    mass: float


@dataclass(frozen=True)
class HeadQuality:
    """What one head's candidates are scored against: the dense softmax rows and outputs."""

    layout: tuple[int, ...]
    coords: np.ndarray  # (rows, rank) layout coordinates of the sampled queries
    rows: np.ndarray  # (rows,) sequence positions of the sampled queries (flat row-major layout indices, shifted
    #                   by the extra tokens before the layout)
    p: np.ndarray  # (rows, tokens) exp(score - row max), float32, over the whole sequence
    z: np.ndarray  # (rows,) row sums of p
    v: np.ndarray  # (tokens, head_dim) float32
    out: np.ndarray  # (rows, head_dim) dense output
    scale: float  # the error's denominator: sqrt(rows) * the RMS spread of V (module doc)
    causal: tuple[bool, ...] = ()  # the reference's causal axes
    extra_tokens: int = 0  # tokens outside the layout (module doc)
    extra_at: str = "end"

    def reference(self) -> GNAPattern:
        """The model's own dense attention: the layout dense (causal along the causal axes), with the extras."""
        return GNAPattern(input_size=self.layout, window=self.layout, causal=self.causal,
                          extra_tokens=self.extra_tokens, extra_at=self.extra_at)

    def with_extras(self, pattern: GNAPattern) -> GNAPattern:
        """``pattern`` with this head's extra tokens (a layout pattern gets them; other extras are refused)."""
        if (pattern.extra_tokens, pattern.extra_at) == (self.extra_tokens, self.extra_at):
            return pattern
        if pattern.extra_tokens:
            raise ConfigError(f"pattern with extra_tokens={pattern.extra_tokens} ({pattern.extra_at}) on a head "
                              f"with extra_tokens={self.extra_tokens} ({self.extra_at}); allowed: the head's, or none")
        return dataclasses.replace(pattern, extra_tokens=self.extra_tokens, extra_at=self.extra_at)


def head_quality(q: np.ndarray, k: np.ndarray, v: np.ndarray, rows: np.ndarray, layout: tuple[int, ...],
                 causal: tuple[bool, ...] = (), *, extra_tokens: int = 0, extra_at: str = "end") -> HeadQuality:
    """Precompute one head's dense rows: ``q`` (rows, d) for the query positions ``rows`` (sequence positions of
    layout tokens), ``k``/``v`` (tokens, d) over the whole sequence of the layout's tokens and ``extra_tokens``
    more (after the layout, or before it with ``extra_at="start"``); scores scaled by ``1/sqrt(d)``. The
    reference is the model's own dense attention: causal along the ``causal`` axes, the extras included."""
    q32, k32, v32 = (np.asarray(x, np.float32) for x in (q, k, v))
    flags = tuple(bool(c) for c in causal) or (False,) * len(layout)
    ref = GNAPattern(input_size=layout, window=layout, causal=flags, extra_tokens=extra_tokens, extra_at=extra_at)
    if k32.shape[0] != ref.seq_tokens or v32.shape[0] != ref.seq_tokens:
        raise ConfigError(f"k has {k32.shape[0]} and v {v32.shape[0]} tokens; the layout {'x'.join(map(str, layout))}"
                          f" with {extra_tokens} extra tokens has {ref.seq_tokens}")
    flat = np.asarray(rows, dtype=np.int64).reshape(-1)
    local = flat - ref.layout_start
    if flat.size and (local.min() < 0 or local.max() >= ref.num_tokens):
        raise ConfigError(f"sampled rows must be layout tokens: sequence positions {ref.layout_start} to "
                          f"{ref.layout_start + ref.num_tokens - 1}")
    coords = np.stack(np.unravel_index(local, layout), axis=1).astype(np.int64)
    s = (q32 @ k32.T) * np.float32(1.0 / math.sqrt(q32.shape[1]))
    if any(flags):
        s[~visible_mask(ref, flat)] = -np.inf
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s, out=s)
    z = p.sum(axis=1)
    out = (p @ v32) / z[:, None]
    return HeadQuality(layout=layout, coords=coords, rows=flat, p=p, z=z, v=v32, out=out,
                       scale=error_scale(v32, flat.size), causal=flags, extra_tokens=ref.extra_tokens,
                       extra_at=extra_at)


def error_scale(v: np.ndarray, rows: int) -> float:
    """The error's denominator for values ``v`` (tokens, d) and ``rows`` sampled rows: ``sqrt(rows)`` times
    the RMS spread of the value vectors (the RMS of ``||v_j||`` where that spread is ~0, 1 where both are)."""
    v64 = np.asarray(v, np.float64)
    rms = math.sqrt(float(np.mean(np.sum(v64 * v64, axis=1)))) if v64.size else 0.0
    centred = v64 - v64.mean(axis=0, keepdims=True)
    spread = math.sqrt(float(np.mean(np.sum(centred * centred, axis=1)))) if v64.size else 0.0
    unit = spread if spread > 1e-6 * rms else rms
    return math.sqrt(max(1, rows)) * (unit if unit > 0 else 1.0)


def evaluate(hq: HeadQuality, pattern: GNAPattern) -> Quality:
    """Error and kept mass of ``pattern`` on the head (exact for the sampled rows); a pattern without extra tokens
    gets the head's (:meth:`HeadQuality.with_extras`)."""
    pattern = hq.with_extras(pattern)
    if _is_reference(hq, pattern.window, pattern.causal):
        return Quality(error=0.0, mass=1.0)  # the reference itself
    pm = np.where(visible_mask(pattern, hq.rows), hq.p, np.float32(0.0))
    zm = pm.sum(axis=1)
    kept = zm / hq.z
    safe = np.where(zm > 0, zm, 1.0)
    out = (pm @ hq.v) / safe[:, None]
    return Quality(error=float(np.linalg.norm(out - hq.out) / hq.scale), mass=float(kept.mean()))


def _is_reference(hq: HeadQuality, window: tuple[int, ...], causal: tuple[bool, ...]) -> bool:
    return window == hq.layout and causal == hq.causal


def axis_masks(hq: HeadQuality, axis: int, options: Sequence[tuple[int, int, int]], causal: bool) -> np.ndarray:
    """``(options, rows, L)`` float64: which keys of ``axis`` each sampled row sees under each per-axis
    ``(window, stride, dilation)`` (the core's per-axis bounds turned into masks by its one rule)."""
    length = hq.layout[axis]
    coords = hq.coords[:, axis]
    out = np.empty((len(options), coords.size, length), np.float64)
    for o, (w, s, d) in enumerate(options):
        out[o] = rows_mask(coords, (length,), [axis_bounds(length, w, s, d, causal)], (d,))
    return out


def evaluate_all(hq: HeadQuality, candidates: Sequence[Candidate],
                 causal: Sequence[bool] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Error and kept mass of every candidate (``causal``: their causal axes) on the head, as two float64
    arrays in the order of ``candidates``: :func:`evaluate` of each, computed at once.

    Per axis the distinct ``(window, stride, dilation)`` options get one mask each. Per sampled row the
    kept sums ``sum_j m_ij p_ij [v_j, 1]`` of every combination of options follow by contracting the
    layout one axis at a time with those masks: first the axis with the fewest options, as one batched
    product over the other axes' positions (float32 sums along one axis), then the rest in float64 on the
    far smaller result. The whole space costs about as much as a few candidates one by one. Extra tokens
    add the same kept sums to every candidate (every pattern keeps them), computed once per row."""
    rank = len(hq.layout)
    flags = tuple(bool(c) for c in causal) or (False,) * rank
    cands = list(candidates)
    if not cands:
        return np.zeros(0), np.zeros(0)
    options = [sorted({(c.window[a], c.stride[a], c.dilation[a]) for c in cands}) for a in range(rank)]
    where = [{o: i for i, o in enumerate(opts)} for opts in options]
    masks = [axis_masks(hq, a, options[a], flags[a]) for a in range(rank)]
    sizes = tuple(len(o) for o in options)
    flat = np.ravel_multi_index(tuple(np.array([where[a][(c.window[a], c.stride[a], c.dilation[a])]
                                                for c in cands]) for a in range(rank)), sizes)
    order = sorted(range(rank), key=lambda a: (sizes[a], a))
    first, rows, d1 = order[0], hq.rows.size, hq.v.shape[1] + 1
    perm = [b for b in range(rank) if b != first] + [first]  # the first contracted axis last
    rest_shape = [hq.layout[b] for b in perm[:-1]]
    rest, length = math.prod(rest_shape), hq.layout[first]
    ref = hq.reference()
    keys = slice(ref.layout_start, ref.layout_start + ref.num_tokens)
    extra = slice(ref.extra_start, ref.extra_start + ref.extra_tokens)
    v_extra = np.concatenate([hq.v[extra].astype(np.float64), np.ones((ref.extra_tokens, 1))], axis=1)
    fixed = hq.p[:, extra].astype(np.float64) @ v_extra  # (rows, d + 1): the extra keys, which every candidate keeps
    p = hq.p[:, keys].reshape(rows, *hq.layout).transpose(0, *[b + 1 for b in perm]).reshape(rows, rest, length)
    vext = np.concatenate([hq.v[keys], np.ones((ref.num_tokens, 1), np.float32)], axis=1).reshape(*hq.layout, d1)
    vext = np.ascontiguousarray(vext.transpose(*perm, rank).reshape(rest, length, d1))
    m_first = masks[first].astype(np.float32)  # (options, rows, length)
    err2 = np.zeros(len(cands))
    kept = np.zeros(len(cands))
    chunk = max(1, int(2**25 // max(1, rest * sizes[first] * length)))
    for r0 in range(0, rows, chunk):
        rc = min(chunk, rows - r0)
        a = p[r0:r0 + rc].transpose(1, 0, 2)[:, :, None, :] * m_first[:, r0:r0 + rc].transpose(1, 0, 2)[None]
        y = np.matmul(a.reshape(rest, rc * sizes[first], length), vext).reshape(rest, rc, sizes[first], d1)
        for i in range(rc):
            r = r0 + i
            x = np.moveaxis(y[:, i].astype(np.float64), 1, 0).reshape(sizes[first], *rest_shape, d1)
            axes, done = list(perm[:-1]), 1  # layout axes left in x, after ``done`` option dims
            for b in order[1:]:
                x = np.tensordot(masks[b][:, r, :], x, axes=([1], [done + axes.index(b)]))
                axes.remove(b)
                done += 1
            # x: (options of order[-1], ..., options of order[0], d + 1) -> options in axis order
            x = np.transpose(x, [rank - 1 - order.index(b) for b in range(rank)] + [rank]).reshape(-1, d1)
            sums = x[flat] + fixed[r]
            zm = sums[:, d1 - 1]
            out = sums[:, :d1 - 1] / np.where(zm > 0, zm, 1.0)[:, None]
            err2 += np.sum((out - hq.out[r].astype(np.float64)) ** 2, axis=1)
            kept += zm / float(hq.z[r])
    error = np.sqrt(err2) / hq.scale
    mass = kept / rows
    ref = np.array([_is_reference(hq, c.window, flags) for c in cands])
    error[ref], mass[ref] = 0.0, 1.0
    return error, mass
