"""Quality of a sparse pattern on one head: output error and attention mass kept, on sampled query rows.

For each sampled query row ``i`` the dense softmax row ``p_i`` (over every key) is computed once; a
pattern keeps the keys it makes visible (the core's one predicate, :func:`sparsesim.simulator.patterns.
visible_mask`), and its output is ``sum_j m_ij p_ij v_j / sum_j m_ij p_ij``: exactly what sparse attention
computes for that row. Reported per head:

- ``error``: ``||O_sparse - O_dense|| / ||O_dense||`` over the sampled rows (Frobenius);
- ``mass``: the mean over sampled rows of the dense attention probability the pattern keeps.

A candidate costs one masked (rows x tokens) @ (tokens x head_dim) product, far less than a dense
attention pass over all rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sparsesim.simulator.patterns import GNAPattern, visible_mask


@dataclass(frozen=True)
class Quality:
    """One pattern on one head: relative output error and kept attention mass (sampled rows)."""

    error: float
    mass: float


@dataclass(frozen=True)
class HeadQuality:
    """What one head's candidates are scored against: the dense softmax rows and outputs."""

    layout: tuple[int, ...]
    coords: np.ndarray  # (rows, rank) coordinates of the sampled queries
    rows: np.ndarray  # (rows,) flat row-major token indices of the sampled queries
    p: np.ndarray  # (rows, tokens) exp(score - row max), float32
    z: np.ndarray  # (rows,) row sums of p
    v: np.ndarray  # (tokens, head_dim) float32
    out: np.ndarray  # (rows, head_dim) dense output
    norm: float  # ||out||
    causal: tuple[bool, ...] = ()  # the reference's causal axes


def head_quality(q: np.ndarray, k: np.ndarray, v: np.ndarray, rows: np.ndarray, layout: tuple[int, ...],
                 causal: tuple[bool, ...] = ()) -> HeadQuality:
    """Precompute one head's dense rows: ``q`` (rows, d) for the query positions ``rows`` (flat indices),
    ``k``/``v`` (tokens, d); scores scaled by ``1/sqrt(d)``. The reference is the model's own dense
    attention: causal along the ``causal`` axes."""
    q32, k32, v32 = (np.asarray(x, np.float32) for x in (q, k, v))
    flat = np.asarray(rows, dtype=np.int64).reshape(-1)
    coords = np.stack(np.unravel_index(flat, layout), axis=1).astype(np.int64)
    s = (q32 @ k32.T) * np.float32(1.0 / math.sqrt(q32.shape[1]))
    if any(causal):
        s[~visible_mask(GNAPattern(input_size=layout, window=layout, causal=causal), flat)] = -np.inf
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s, out=s)
    z = p.sum(axis=1)
    out = (p @ v32) / z[:, None]
    return HeadQuality(layout=layout, coords=coords, rows=flat, p=p, z=z, v=v32, out=out,
                       norm=float(np.linalg.norm(out)) or 1.0, causal=tuple(causal) or (False,) * len(layout))


def evaluate(hq: HeadQuality, pattern: GNAPattern) -> Quality:
    """Error and kept mass of ``pattern`` on the head (exact for the sampled rows)."""
    if pattern.window == pattern.input_size and pattern.causal == hq.causal:
        return Quality(error=0.0, mass=1.0)  # the reference itself
    pm = np.where(visible_mask(pattern, hq.rows), hq.p, np.float32(0.0))
    zm = pm.sum(axis=1)
    kept = zm / hq.z
    safe = np.where(zm > 0, zm, 1.0)
    out = (pm @ hq.v) / safe[:, None]
    return Quality(error=float(np.linalg.norm(out - hq.out) / hq.norm), mass=float(kept.mean()))
