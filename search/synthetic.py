"""Synthetic heads that look like video DiT attention: a demo source, never evidence about a real model.

The kinds follow what published analyses of video DiTs report (Sparse VideoGen: spatial and temporal
heads; STA: 3D locality; Sparse-vDiT: diagonal, multi-diagonal and vertical-stripe maps; attention sinks):

- ``spatial``: attends within its own frame (a Gaussian of the frame distance with a length scale of
  0.3-0.6 frames) and broadly across that frame (length scales of 20-100% of H and W): a block diagonal
  in frame-major order. Rank 3 only.
- ``temporal``: the same H/W position across frames (0.4-0.9 tokens in H and W, broad along T): stripes
  parallel to the diagonal. Rank 3 only.
- ``local``: a 3D neighbourhood (Gaussian, 3-10% of each axis, at least 0.7 tokens).
- ``heavy``: most mass nearby but a power-law tail, ``(1 + (delta_a / r_a)^2)^(-alpha_a / 2)`` per axis
  (``r_a`` 0.7-2 tokens, ``alpha_a`` 0.8-1.4): no window is nearly exact until it is large, so windows trade
  error gradually. Written into Q and K as RoPE-like cosine features (``cos(w (x - y))`` at geometric
  frequencies ``w``), with amplitudes fitted by least squares to that profile.
- ``global``: diffuse: a weak broad positional term under a strong content term.
- ``sink``: a ``local``, ``spatial`` or ``heavy`` background plus the layer's sink keys (1-3 tokens, the same
  for every head of a layer, like high-norm register tokens), which take 35-70% of each row's attention
  mass (per row, drawn around the head's share).

Every head has a content term (random token features, Q correlated with its own token's K) and values
``V = mean + smooth field over positions + noise`` with log-normal channel scales: values vary smoothly in
space and time as a video latent does, so dropping far keys moves the output (zero-mean white-noise values
would let every window average to about the same output).

Per layer the kinds are a mixture: proportions drawn from a Dirichlet around depth-dependent weights
(:data:`EARLY` at the first layer, :data:`LATE` at the last, linear in between: more local and spatial
heads early, more global, heavy and sink heads late), then each head's kind drawn from them. All of it is
seeded by ``(seed, layer)`` and ``(seed, layer, head)``; the generation costs rows x tokens work per head
(the sink's calibration), never tokens^2. On 1D and 2D layouts the ``spatial`` and ``temporal`` kinds do
not apply; the mixture uses the other four.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DIT_KINDS = ("spatial", "temporal", "local", "heavy", "global", "sink")
#: Kinds that need a (T, H, W) layout.
RANK3_KINDS = ("spatial", "temporal")
#: Mixture weights of the kinds at the first layer and at the last (linear in depth in between).
EARLY = {"spatial": 0.25, "temporal": 0.15, "local": 0.30, "heavy": 0.15, "global": 0.05, "sink": 0.10}
LATE = {"spatial": 0.15, "temporal": 0.15, "local": 0.10, "heavy": 0.20, "global": 0.25, "sink": 0.15}
#: Dirichlet concentration of a layer's proportions around the depth weights (larger: closer to them).
CONCENTRATION = 40.0
#: Q/K dimensions of the content term, and most cosine frequencies per axis of a heavy head.
CONTENT_DIMS = 8
MAX_FREQS = 12
#: Smooth plane waves in the values.
V_WAVES = 8


def kinds_for(rank: int) -> tuple[str, ...]:
    """The DiT-like kinds that apply to a layout of ``rank`` axes."""
    return DIT_KINDS if rank == 3 else tuple(k for k in DIT_KINDS if k not in RANK3_KINDS)


def layer_mixture(rank: int, layer: int, layers: int, seed: int) -> tuple[tuple[str, ...], np.ndarray]:
    """The kinds of a layout of ``rank`` axes and their proportions in ``layer`` of ``layers`` (seeded)."""
    kinds = kinds_for(rank)
    f = layer / (layers - 1) if layers > 1 else 0.0
    w = np.array([(1 - f) * EARLY[k] + f * LATE[k] for k in kinds])
    rng = np.random.default_rng([seed, layer, 0x6D6978])
    return kinds, rng.dirichlet(CONCENTRATION * w / w.sum())


def layer_kinds(rank: int, heads: int, layer: int, layers: int, seed: int) -> tuple[str, ...]:
    """Each head's kind in ``layer``: drawn from :func:`layer_mixture` (seeded)."""
    kinds, p = layer_mixture(rank, layer, layers, seed)
    rng = np.random.default_rng([seed, layer, 0x6B696E64])
    return tuple(kinds[i] for i in rng.choice(len(kinds), size=heads, p=p))


def layer_sinks(tokens: int, layer: int, seed: int) -> np.ndarray:
    """The sink keys of ``layer`` (1-3 flat token indices, sorted; seeded), shared by its sink heads."""
    rng = np.random.default_rng([seed, layer, 0x73696E6B])
    count = min(tokens, int(rng.integers(1, 4)))
    return np.sort(rng.choice(tokens, size=count, replace=False)).astype(np.int64)


def _grid(layout: Sequence[int]) -> np.ndarray:
    """(tokens, rank) float32 coordinates, row-major, centred on the layout."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in layout], indexing="ij")
    centre = (np.array(layout, dtype=np.float32) - 1) / 2
    return np.stack([g.ravel() for g in grids], axis=1) - centre


def heavy_profile(length: int, freqs: int, alpha: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and amplitudes ``(w, a)`` with ``sum_j a_j cos(w_j delta)`` close (least squares, ridge)
    to ``-alpha/2 log(1 + (delta/r)^2)`` on the lags ``0..length-1`` of an axis, up to a constant."""
    count = max(1, min(freqs, length - 1))
    hi = 1.6
    lo = min(hi, 3.0 / length)
    w = np.geomspace(hi, lo, count) if count > 1 else np.array([lo])
    lag = np.arange(length, dtype=np.float64)
    target = -0.5 * alpha * np.log1p((lag / r) ** 2)
    basis = np.concatenate([np.cos(np.outer(lag, w)), np.ones((length, 1))], axis=1)
    weight = np.exp(0.5 * target)[:, None]  # the peak matters most: that is where the mass is
    a_mat, b = basis * weight, target * weight[:, 0]
    ridge = 1e-3 * np.trace(a_mat.T @ a_mat) / a_mat.shape[1]
    coef = np.linalg.solve(a_mat.T @ a_mat + ridge * np.eye(a_mat.shape[1]), a_mat.T @ b)
    return w, coef[:-1]


def _gaussian(kind: str, layout: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Length scales (tokens) per axis of a Gaussian head of ``kind``."""
    size = np.array(layout, dtype=np.float64)
    rank = len(layout)
    if kind == "spatial":
        sigma = np.concatenate([[rng.uniform(0.3, 0.6)], rng.uniform(0.2, 1.0, rank - 1) * size[1:]])
    elif kind == "temporal":
        sigma = np.concatenate([[rng.uniform(1.0, 3.0) * size[0]], rng.uniform(0.4, 0.9, rank - 1)])
    elif kind == "global":
        sigma = rng.uniform(0.5, 2.0, rank) * size
    else:  # local: at least 0.7 tokens, so that it spans neighbouring frames too
        return np.maximum(rng.uniform(0.03, 0.10, rank) * size, 0.7)
    return np.maximum(sigma, 0.4)


def dit_head(layout: Sequence[int], kind: str, rows: np.ndarray, head_dim: int, sinks: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q rows (rows, d), K and V (tokens, d), float32, of one head of ``kind`` (module doc); attention takes
    ``q k^T / sqrt(d)``. ``rows``: flat indices of the sampled queries; ``sinks``: the layer's sink keys."""
    layout = tuple(int(n) for n in layout)
    rank, d = len(layout), head_dim
    xyz = _grid(layout)
    n = xyz.shape[0]
    q = np.zeros((rows.size, d), np.float32)
    k = np.zeros((n, d), np.float32)
    background = kind
    if kind == "sink":
        background = str(rng.choice(["local", "spatial", "heavy"] if rank == 3 else ["local", "heavy"]))
    col = 0
    if background == "heavy":
        index = np.unravel_index(np.arange(n), layout)
        free = d - 1 - min(CONTENT_DIMS, max(0, d - 1 - 2 * rank))
        freqs = max(1, min(MAX_FREQS, free // (2 * rank)))
        for a, length in enumerate(layout):
            alpha, r = rng.uniform(1.2, 2.0), rng.uniform(0.7, 2.0)
            if length < 2 or col + 2 > d - 1:
                continue
            w, amp = heavy_profile(length, min(freqs, (d - 1 - col) // 2), alpha, r)
            phase = np.outer(np.arange(length) - (length - 1) / 2, w)  # per position of the axis, then gathered
            table = np.concatenate([np.cos(phase), np.sin(phase)], axis=1).astype(np.float32)
            feats = table[index[a]]
            m = table.shape[1]
            k[:, col:col + m] = feats
            q[:, col:col + m] = feats[rows] * np.concatenate([amp, amp]).astype(np.float32)
            col += m
    else:
        scaled = xyz / _gaussian(background, layout, rng).astype(np.float32)
        k[:, :rank] = scaled
        k[:, rank] = -0.5 * (scaled * scaled).sum(1)
        q[:, :rank] = scaled[rows]
        q[:, rank] = 1.0
        col = rank + 1
    c = max(0, min(CONTENT_DIMS, d - 1 - col))
    if c:
        lo, hi = {"global": (1.0, 2.0), "heavy": (0.2, 0.5)}.get(kind, (0.3, 0.8))
        gain, rho = rng.uniform(lo, hi), rng.uniform(0.3, 0.7)
        zk = rng.standard_normal((n, c), dtype=np.float32)
        zq = rho * zk[rows] + math.sqrt(1 - rho * rho) * rng.standard_normal((rows.size, c), dtype=np.float32)
        unit = np.float32(math.sqrt(gain) / c ** 0.25)
        k[:, col:col + c] = zk * unit
        q[:, col:col + c] = zq * unit
    root = np.float32(math.sqrt(math.sqrt(d)))  # attention divides q.k by sqrt(d)
    q *= root
    k *= root
    if kind == "sink" and d > col + c:
        s = (q @ k.T) * np.float32(1.0 / math.sqrt(d))
        s -= s.max(axis=1, keepdims=True)
        p = np.exp(s, out=s).astype(np.float64)
        z_sink = p[:, sinks].sum(axis=1)
        z_rest = p.sum(axis=1) - z_sink
        share = np.clip(rng.uniform(0.35, 0.7) + 0.05 * rng.standard_normal(rows.size), 0.2, 0.9)
        boost = np.log(share * z_rest / ((1 - share) * np.maximum(z_sink, 1e-300)))
        q[:, d - 1] = (boost * math.sqrt(math.sqrt(d))).astype(np.float32)
        k[sinks, d - 1] = root
    return q, k, _values(xyz, layout, d, rng)


def _values(xyz: np.ndarray, layout: Sequence[int], d: int, rng: np.random.Generator) -> np.ndarray:
    """V (tokens, d): a mean, a smooth field of :data:`V_WAVES` plane waves over the layout, and noise, with
    log-normal channel scales."""
    size = np.array(layout, dtype=np.float32)
    waves = rng.uniform(-1.5, 1.5, (V_WAVES, len(layout))).astype(np.float32) * np.float32(2 * math.pi) / size
    field = np.cos(xyz @ waves.T + rng.uniform(0, 2 * math.pi, V_WAVES).astype(np.float32))
    mix = rng.standard_normal((V_WAVES, d), dtype=np.float32) * np.float32(math.sqrt(2.0 / V_WAVES))
    noise = np.float32(rng.uniform(0.3, 0.8))
    v = rng.random((xyz.shape[0], d), dtype=np.float32)  # uniform noise (faster to draw than normal), var 1:
    v -= np.float32(0.5)
    v *= noise * np.float32(math.sqrt(12.0))
    v += field @ mix
    v += rng.normal(0.0, 0.5, d).astype(np.float32)
    v *= np.exp(0.5 * rng.standard_normal(d)).astype(np.float32)
    return v
