"""Torch reference attention built on the simulator's masks (no Triton).

Masks come from :func:`sparsesim.simulator.visible_mask` (GNA, with extra tokens too) and
:meth:`sparsesim.simulator.BlockSparsePattern.dense_mask` (block-sparse), so the reference, the
kernels and the simulator share one definition of which keys a query sees. Tokens of a
``[batch, *spatial, heads, head_dim]`` tensor are flattened row-major, as ``visible_mask`` orders
them. A query row that sees no key at all yields zeros (the kernels do the same).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from sparsesim.simulator import BlockSparsePattern, GNAPattern, visible_mask


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None, *,
                        scale: float | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``softmax(q k^T * scale + mask) v`` computed in ``dtype`` (float64 by default).

    Args:
        q: ``[batch, *spatial, heads, head_dim]`` (any number of spatial axes, flattened row-major).
        k, v: ``[batch, *spatial_kv, heads_kv, head_dim]``; KV heads are repeated for GQA.
        mask: ``None`` (dense), a bool ``[N_q, N_kv]`` array/tensor shared by all heads, or
            ``[heads, N_q, N_kv]`` (row = query, True = visible).
        scale: default ``1/sqrt(head_dim)``.
        dtype: compute and output dtype.

    Returns:
        A tensor shaped like ``q`` in ``dtype``.

    Example:
        >>> q = torch.randn(1, 5, 2, 16)
        >>> m = visible_mask(GNAPattern(input_size=5, window=3))
        >>> reference_attention(q, q, q, m).shape
        torch.Size([1, 5, 2, 16])
    """
    batch, heads, head_dim = q.shape[0], q.shape[-2], q.shape[-1]
    heads_kv = k.shape[-2]
    if heads % heads_kv:
        raise ValueError(f"heads={heads} is not a multiple of heads_kv={heads_kv}")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    qf = q.reshape(batch, -1, heads, head_dim).to(dtype)
    kf = k.reshape(batch, -1, heads_kv, head_dim).to(dtype).repeat_interleave(heads // heads_kv, dim=2)
    vf = v.reshape(batch, -1, heads_kv, head_dim).to(dtype).repeat_interleave(heads // heads_kv, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * scale
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask,
                            device=scores.device).to(torch.bool)
        if m.dim() == 2:
            m = m[None]
        if m.shape[-2:] != scores.shape[-2:] or m.shape[0] not in (1, heads):
            raise ValueError(f"mask has shape {list(m.shape)}; allowed: [{scores.shape[-2]}, {scores.shape[-1]}] "
                             f"or [{heads}, {scores.shape[-2]}, {scores.shape[-1]}]")
        scores = scores.masked_fill(~m[None], float("-inf"))
        empty = ~m.any(dim=-1)  # [1 or H, N_q]
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs = probs.masked_fill(empty[None, :, :, None], 0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, vf)
    return out.reshape(*q.shape[:-2], heads, head_dim)


def sequence_mask(pattern: GNAPattern, extra_tokens: int | None = None, extra_at: str | None = None,
                  query_tokens: Any = None) -> np.ndarray:
    """Which keys each query of a sequence of ``N + E`` tokens sees: bool ``[R, N + E]`` (rows ``query_tokens``,
    sequence positions, default all).

    ``extra_tokens``/``extra_at`` (default: the pattern's own) place ``E`` extra tokens after the layout
    (``"end"``: layout ``[0, N)``, extras ``[N, N + E)``) or before it (``"start"``). The core's
    :func:`visible_mask` of the pattern with those extras: the one rule ``visible(i, j) = reference(i, j) and
    (i is extra or j is extra or pattern(i, j))`` (docs/DESIGN.md, Extra tokens).
    """
    import dataclasses

    e = pattern.extra_tokens if extra_tokens is None else extra_tokens
    at = pattern.extra_at if extra_at is None else extra_at
    if (e, at) != (pattern.extra_tokens, pattern.extra_at):
        pattern = dataclasses.replace(pattern, extra_tokens=e, extra_at=at)
    return visible_mask(pattern, query_tokens)


def gna_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: Any, stride: Any = 1,
                  dilation: Any = 1, causal: Any = False, scale: float | None = None,
                  dtype: torch.dtype = torch.float64, extra_tokens: int = 0, extra_at: str = "end",
                  input_size: Any = None) -> torch.Tensor:
    """Reference GNA on ``[batch, *spatial, heads, head_dim]`` with the simulator's mask (:func:`visible_mask`).

    With ``extra_tokens`` (or ``input_size``), ``q``/``k``/``v`` are the flat sequence ``[batch, N + E, heads,
    head_dim]`` as :func:`~sparsesim.kernels.gna_attention` takes it, masked by :func:`sequence_mask`
    (``input_size`` default: a 1D layout of ``N + E - E`` tokens).
    """
    if not extra_tokens and input_size is None:
        mask = visible_mask(GNAPattern(input_size=tuple(q.shape[1:-2]), window=window, stride=stride,
                                       dilation=dilation, causal=causal))
        return reference_attention(q, k, v, mask, scale=scale, dtype=dtype)
    size = (int(q.shape[1]) - int(extra_tokens),) if input_size is None else input_size
    pattern = GNAPattern(input_size=size, window=window, stride=stride, dilation=dilation, causal=causal,
                         extra_tokens=extra_tokens, extra_at=extra_at)
    return reference_attention(q, k, v, visible_mask(pattern), scale=scale, dtype=dtype)


def block_sparse_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_map: Any, *,
                           q_tile: int = 128, kv_tile: int = 128, scale: float | None = None,
                           dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Reference block-sparse attention on ``[batch, tokens, heads, head_dim]`` (map per head or shared)."""
    bm = block_map.cpu().numpy() if isinstance(block_map, torch.Tensor) else np.asarray(block_map)
    pattern = BlockSparsePattern(block_map=bm, seq_len=int(q.shape[1]), q_tile=q_tile, kv_tile=kv_tile)
    masks = np.stack([pattern.dense_mask(h) for h in range(pattern.heads)])
    return reference_attention(q, k, v, masks, scale=scale, dtype=dtype)


def row_reference(q_rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_rows: torch.Tensor, *,
                  scale: float | None = None, dtype: torch.dtype = torch.float32,
                  head_chunk: int = 4) -> torch.Tensor:
    """Reference for a subset of query rows at full size (the benchmark's check for huge N).

    ``q_rows`` is ``[batch, R, heads, head_dim]``, ``k``/``v`` ``[batch, N, heads_kv, head_dim]``,
    ``mask_rows`` bool ``[R, N]``; heads are processed ``head_chunk`` at a time to bound memory.
    """
    heads, heads_kv, head_dim = q_rows.shape[2], k.shape[2], q_rows.shape[3]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    group = heads // heads_kv
    outs = []
    for h0 in range(0, heads, head_chunk):
        hs = list(range(h0, min(heads, h0 + head_chunk)))
        kv_idx = torch.tensor([h // group for h in hs], device=k.device)
        qh = q_rows[:, :, hs].to(dtype)
        kh = k.index_select(2, kv_idx).to(dtype)
        vh = v.index_select(2, kv_idx).to(dtype)
        s = torch.einsum("brhd,bnhd->bhrn", qh, kh) * scale
        s = s.masked_fill(~mask_rows[None, None], float("-inf"))
        outs.append(torch.einsum("bhrn,bnhd->brhd", torch.softmax(s, dim=-1), vh))
    return torch.cat(outs, dim=2)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64; NaN anywhere gives ``inf``."""
    o, r = out.detach().to(torch.float64), ref.detach().to(torch.float64)
    if not torch.isfinite(o).all():
        return float("inf")
    return float((o - r).norm() / r.norm().clamp_min(1e-300))
