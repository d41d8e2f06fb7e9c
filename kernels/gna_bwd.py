"""Backward of generalized neighborhood attention (dQ, dK, dV), with the extra tokens' dense rows and columns.

FlashAttention-2's recomputation: the forward saved each query row's log-sum-exp ``lse`` (natural log,
float32 ``[batch, heads, tokens]``), so ``P = exp(scale * Q K^T - lse)`` is recomputed tile by tile;
``Delta = rowsum(dO * O)`` (one small pass); ``dS = P * (dO V^T - Delta)``; ``dQ = scale * dS K``,
``dK = scale * dS^T Q``, ``dV = P^T dO``. No atomics:

- **dQ** runs the forward's schedule: one CTA per (Q tile, query head, batch x dilation group) over its
  visited KV tiles (full ones unmasked, then the partial boxes masked per element with the forward's
  ``lo``/``hi`` rule), then the extra keys (every layout query sees them).
- **dK/dV** run the transposed schedule (:attr:`sparsesim.kernels.gna_plan.GNAPlan.ranges_t`): one CTA per
  (KV tile, K/V head, batch x dilation group) over the Q tiles that visit it, full ones then partial ones
  (same masks, transposed), for each query head of its GQA group in turn (the group's sum stays in
  registers), then the extra queries' rows when they see every key (no causal axis).
- **Extra tokens** (``extra_tokens > 0``): the extra queries' dQ is a dense-rows pass over every key of the
  sequence, and the extra keys' dK/dV a dense-columns pass over every query row (causal sinks: ``key <=
  query`` in sequence positions, which is the sink rule for both). The forward's extra query rows run the
  same way (:func:`rows_forward`, output and log-sum-exp).

By default every tensor is read and written in the caller's layout (Q/K/V/dO tiles gathered row by row, as the
forward's ``gather`` K/V mode): correctness first; kernels/NOTES.md says what is expected to be slow. With
:class:`BwdTuning`'s ``*_stream_layout="permute"`` a kernel's streamed operands (dQ: K/V; dK/dV: Q/dO and their
LSE/Delta rows) are first permuted into contiguous tiles (the forward's ``permute`` buffers,
:mod:`sparsesim.kernels.permute`) and loaded one block per tile (constexpr ``STREAM``: 1 pointers, 2 TMA).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import triton
import triton.language as tl

from sparsesim.hwmodels.launch import BWD_DKV_CANDIDATES, BWD_DQ_CANDIDATES, shrink_tile
from sparsesim.kernels._common import LOG2E, attn_tile_update
from sparsesim.kernels._launch import (
    CallCache,
    FusedLaunch,
    descriptor,
    descriptors_ok,
    device_gpu,
    fused_launch,
    interpret,
    launch_compiled,
    spec_key,
    tensors_key,
    tma_enabled,
    tma_strides_ok,
)
from sparsesim.kernels.dense_bwd import tma_reduce_ok
from sparsesim.kernels.gna_plan import GNAPlan, plan_gna
from sparsesim.kernels.permute import make_layout, permute_checked, tile_permute, tile_permute_pair, unpermute_into

# --------------------------------------------------------------------------------------------
# Device helpers.
# --------------------------------------------------------------------------------------------

@triton.jit
def _coords(idx, t0, t1, t2, g0, g1, g2, T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
            D0, D1, D2, L0, L1, L2):
    """Layout coordinates (int64) and validity of the rows of box tile ``(t0, t1, t2)`` of group ``(g0, g1, g2)``."""
    x0 = g0 + D0 * (t0 * T0 + idx // (T1 * T2))
    x1 = g1 + D1 * (t1 * T1 + (idx // T2) % T1)
    x2 = g2 + D2 * (t2 * T2 + idx % T2)
    ok = (x0 < L0) & (x1 < L1) & (x2 < L2)
    return x0.to(tl.int64), x1.to(tl.int64), x2.to(tl.int64), ok


@triton.jit
def _gather(X, base, x0, x1, x2, ok, offs_d, s0, s1, s2, sd):
    """Rows at layout coordinates ``(x0, x1, x2)`` of a ``[B, *spatial, H, D]`` tensor (zeros where not ``ok``)."""
    off = base + x0 * s0 + x1 * s1 + x2 * s2
    return tl.load(X + off[:, None] + offs_d[None, :] * sd, mask=ok[:, None], other=0.0)


@triton.jit
def _scatter(X, base, x0, x1, x2, ok, offs_d, s0, s1, s2, sd, val):
    off = base + x0 * s0 + x1 * s1 + x2 * s2
    tl.store(X + off[:, None] + offs_d[None, :] * sd, val.to(X.dtype.element_ty), mask=ok[:, None])


@triton.jit
def _partial_tile(p, s0, s1, vf0, nv0, ff0, nf0, vf1, nv1, ff1, nf1, vf2, nv2, ff2, nf2):
    """The ``p``-th tile of the visited box minus the full box (three disjoint boxes, as in the forward)."""
    c1, c2 = nv1 - nf1, nv2 - nf2
    in0 = p < s0
    in1 = (p >= s0) & (p < s0 + s1)
    r = p - tl.where(p >= s0, s0, 0) - tl.where(p >= s0 + s1, s1, 0)
    n2 = tl.where(in0 | in1, nv2, c2)
    n1 = tl.where(in0, nv1, tl.where(in1, c1, nf1))
    i2 = r % n2
    i1 = (r // n2) % n1
    i0 = r // (n2 * n1)
    t0 = tl.where(in0, vf0 + i0 + tl.where(i0 >= ff0 - vf0, nf0, 0), ff0 + i0)
    t1 = tl.where(in0, vf1 + i1, tl.where(in1, vf1 + i1 + tl.where(i1 >= ff1 - vf1, nf1, 0), ff1 + i1))
    t2 = tl.where(in0 | in1, vf2 + i2, vf2 + i2 + tl.where(i2 >= ff2 - vf2, nf2, 0))
    return t0, t1, t2


@triton.jit
def _dq_update(dq, q, do, k, v, lse2, delta, qk_scale, mask, MASKED: tl.constexpr):
    """dQ (unscaled) of one Q tile gains one KV tile: ``dS K`` with ``P`` recomputed from the base-2 LSE."""
    qk = tl.dot(q, tl.trans(k))
    p = tl.math.exp2(qk * qk_scale - lse2[:, None])
    if MASKED:
        p = tl.where(mask, p, 0.0)
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq)


@triton.jit
def _dkdv_update(dk, dv, k, v, q, do, lse2, delta, qk_scale, mask_t, MASKED: tl.constexpr):
    """dK (unscaled) and dV of one KV tile gain one Q tile; scores transposed ``[BLOCK_N, BLOCK_M]``. Also
    returns ``dS^T`` in the inputs' dtype (the fused dQ's operand, :func:`_dq_reduce`)."""
    qk_t = tl.dot(k, tl.trans(q))
    p_t = tl.math.exp2(qk_t * qk_scale - lse2[None, :])
    if MASKED:
        p_t = tl.where(mask_t, p_t, 0.0)
    dv = tl.dot(p_t.to(do.dtype), do, dv)
    dp_t = tl.dot(v, tl.trans(do))
    ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
    dk = tl.dot(ds_t, q, dk)
    return dk, dv, ds_t


@triton.jit
def _dq_reduce(DQA, ds_t, k, sm_scale, row, offs_m, offs_d, HEAD_DIM: tl.constexpr, DQ_TMA: tl.constexpr):
    """Add one tile pair's ``scale * dS K`` into the float32 dQ accumulator at permuted row ``row`` (int32: the
    buffer holds under 2^31 rows, as the Q stream's descriptors require): a
    TMA reduction through the 2D descriptor ``DQA`` (``DQ_TMA``) or pointer atomics (``DQA`` the buffer,
    contiguous rows of ``HEAD_DIM``)."""
    dq = tl.dot(tl.trans(ds_t), k) * sm_scale
    if DQ_TMA:
        DQA.atomic_add([row, 0], dq)
    else:
        tl.atomic_add(DQA + (row.to(tl.int64) + offs_m)[:, None] * HEAD_DIM + offs_d[None, :], dq, sem="relaxed")


@triton.jit
def _mask_t(mask, LOHI, a: tl.constexpr, g, GMAX, LPMAX, qpos, kc):
    """``mask[n, m] &= lo(query m) <= key n <= hi(query m)`` on axis ``a`` (group coordinates)."""
    p = LOHI + ((a * GMAX + g) * LPMAX + qpos) * 2
    lo, hi = tl.load(p), tl.load(p + 1)
    return mask & (kc[:, None] >= lo[None, :]) & (kc[:, None] <= hi[None, :])


@triton.jit
def _tile_pair(X, Y, x_base, y_base, tile, offs, offs_d, s_xn, s_xd, s_yn, s_yd, row0, BLOCK: tl.constexpr,
               STREAM: tl.constexpr):
    """Tile ``tile`` (row-major index in the group's tile grid) of two permuted, zero-padded buffers
    ``[B * G, H, tiles * BLOCK, D]`` (:func:`sparsesim.kernels.permute.tile_permute`): one contiguous block each.
    ``STREAM`` 1: pointers from ``x_base``/``y_base`` (the buffer's (batch x group, head) offsets); 2: 2D TMA
    descriptors over ``[B * G * H * tiles * BLOCK, D]`` starting at row ``row0`` (the (batch x group, head)'s)."""
    if STREAM == 2:
        row = row0 + tile * BLOCK
        x = X.load([row, 0])
        y = Y.load([row, 0])
    else:
        rows = tile.to(tl.int64) * BLOCK + offs
        x = tl.load(X + x_base + rows[:, None] * s_xn + offs_d[None, :] * s_xd)
        y = tl.load(Y + y_base + rows[:, None] * s_yn + offs_d[None, :] * s_yd)
    return x, y


@triton.jit
def _box_pair(X, Y, b, t0, t1, t2, col, T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
              HEAD_DIM: tl.constexpr):
    """Box tile ``(t0, t1, t2)`` of two tensors read in place through 5D TMA descriptors over their ``[B, L0, L1,
    L2, H * D]`` views (``STREAM`` 3: no dilation, tiles dividing the layout), from column ``col`` (the head's):
    ``[T0 * T1 * T2, HEAD_DIM]`` each, rows in the box's row-major order (the permuted buffers' order)."""
    x = X.load([b, t0 * T0, t1 * T1, t2 * T2, col])
    y = Y.load([b, t0 * T0, t1 * T1, t2 * T2, col])
    return tl.reshape(x, [T0 * T1 * T2, HEAD_DIM]), tl.reshape(y, [T0 * T1 * T2, HEAD_DIM])


# --------------------------------------------------------------------------------------------
# Kernels.
# --------------------------------------------------------------------------------------------

@triton.jit
def _delta_kernel(Out, DO, DELTA, T, L1, L2, H,
                  s_ob, s_o0, s_o1, s_o2, s_oh, s_od, s_gb, s_g0, s_g1, s_g2, s_gh, s_gd, s_lb, s_lh,
                  HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """``Delta[b, h, t] = sum_d dO * O`` in float32, tokens row-major over the (padded 3-axis) layout."""
    tok = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    ok = tok < T
    t64 = tok.to(tl.int64)
    x0 = t64 // (L1 * L2)
    x1 = (t64 // L2) % L1
    x2 = t64 % L2
    d = tl.arange(0, HEAD_DIM)
    o = _gather(Out, b * s_ob + h * s_oh, x0, x1, x2, ok, d, s_o0, s_o1, s_o2, s_od)
    do = _gather(DO, b * s_gb + h * s_gh, x0, x1, x2, ok, d, s_g0, s_g1, s_g2, s_gd)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + b * s_lb + h * s_lh + t64, delta, mask=ok)


@triton.jit
def _gna_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, RANGES, LOHI, XK, XV, qk_scale, sm_scale,
    GROUP, D0, D1, D2, L0, L1, L2, NQ1, NQ2, GMAX, NQMAX, LPMAX, NX, NK1, NK2, HKV, NKP,
    s_qb, s_q0, s_q1, s_q2, s_qh, s_qd,
    s_kb, s_k0, s_k1, s_k2, s_kh, s_kd,
    s_vb, s_v0, s_v1, s_v2, s_vh, s_vd,
    s_ob, s_o0, s_o1, s_o2, s_oh, s_od,
    s_gb, s_g0, s_g1, s_g2, s_gh, s_gd,
    s_lb, s_lh,
    s_xkb, s_xkn, s_xkh, s_xkd, s_xvb, s_xvn, s_xvh, s_xvd,
    HEAD_DIM: tl.constexpr,
    QT0: tl.constexpr, QT1: tl.constexpr, QT2: tl.constexpr,
    KT0: tl.constexpr, KT1: tl.constexpr, KT2: tl.constexpr,
    MASK0: tl.constexpr, MASK1: tl.constexpr, MASK2: tl.constexpr, BLOCK_SPARSE: tl.constexpr,
    EXTRA: tl.constexpr, XTAIL: tl.constexpr, STREAM: tl.constexpr,
):
    # STREAM 0: K/V tiles gathered from the caller's layout; 1/2: K and V are permuted, zero-padded buffers
    # [B * G, H_kv, NKP, D] (pointers / TMA descriptors; strides as the forward's _permuted_strides); 3: K and V
    # read in place by 5D TMA boxes (no dilation, tiles dividing the layout: every key real).
    BLOCK_M: tl.constexpr = QT0 * QT1 * QT2
    BLOCK_N: tl.constexpr = KT0 * KT1 * KT2
    qt = tl.program_id(0)
    h = tl.program_id(1)
    bg = tl.program_id(2)
    hk = h // GROUP
    G = D0 * D1 * D2
    b = bg // G
    g = bg % G
    g2 = g % D2
    g1 = (g // D2) % D1
    g0 = g // (D1 * D2)
    q2 = qt % NQ2
    q1 = (qt // NQ2) % NQ1
    q0 = qt // (NQ1 * NQ2)
    r0 = RANGES + ((0 * GMAX + g0) * NQMAX + q0) * 4
    r1 = RANGES + ((1 * GMAX + g1) * NQMAX + q1) * 4
    r2 = RANGES + ((2 * GMAX + g2) * NQMAX + q2) * 4
    vf0, nv0, ff0, nf0 = tl.load(r0), tl.load(r0 + 1), tl.load(r0 + 2), tl.load(r0 + 3)
    vf1, nv1, ff1, nf1 = tl.load(r1), tl.load(r1 + 1), tl.load(r1 + 2), tl.load(r1 + 3)
    vf2, nv2, ff2, nf2 = tl.load(r2), tl.load(r2 + 1), tl.load(r2 + 2), tl.load(r2 + 3)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    hk64 = hk.to(tl.int64)
    x0, x1, x2, q_ok = _coords(offs_m, q0, q1, q2, g0, g1, g2, QT0, QT1, QT2, D0, D1, D2, L0, L1, L2)
    q = _gather(Q, b64 * s_qb + h64 * s_qh, x0, x1, x2, q_ok, offs_d, s_q0, s_q1, s_q2, s_qd)
    do = _gather(DO, b64 * s_ob + h64 * s_oh, x0, x1, x2, q_ok, offs_d, s_o0, s_o1, s_o2, s_od)
    tok = (x0 * L1 + x1) * L2 + x2
    lse2 = tl.load(LSE + b64 * s_lb + h64 * s_lh + tok, mask=q_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + b64 * s_lb + h64 * s_lh + tok, mask=q_ok, other=0.0)
    if STREAM == 0 or STREAM == 3:
        k_base = b64 * s_kb + hk64 * s_kh
        v_base = b64 * s_vb + hk64 * s_vh
    else:
        k_base = bg.to(tl.int64) * s_kb + hk64 * s_kh
        v_base = bg.to(tl.int64) * s_vb + hk64 * s_vh
    kv_row0 = (bg * HKV + hk) * NKP
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    n_full = nf0 * nf1 * nf2
    for it in range(0, n_full):
        i2 = it % nf2
        i1 = (it // nf2) % nf1
        i0 = it // (nf2 * nf1)
        if STREAM == 0:
            y0, y1, y2, k_ok = _coords(offs_n, ff0 + i0, ff1 + i1, ff2 + i2, g0, g1, g2, KT0, KT1, KT2,
                                       D0, D1, D2, L0, L1, L2)
            k = _gather(K, k_base, y0, y1, y2, k_ok, offs_d, s_k0, s_k1, s_k2, s_kd)
            v = _gather(V, v_base, y0, y1, y2, k_ok, offs_d, s_v0, s_v1, s_v2, s_vd)
        elif STREAM == 3:
            k, v = _box_pair(K, V, b, ff0 + i0, ff1 + i1, ff2 + i2, hk * HEAD_DIM, KT0, KT1, KT2, HEAD_DIM)
        else:
            k, v = _tile_pair(K, V, k_base, v_base, ((ff0 + i0) * NK1 + ff1 + i1) * NK2 + ff2 + i2, offs_n, offs_d,
                              s_k2, s_kd, s_v2, s_vd, kv_row0, BLOCK_N, STREAM)
        dq = _dq_update(dq, q, do, k, v, lse2, delta, qk_scale, 0, False)

    if not BLOCK_SPARSE:
        lo0, hi0, lo1, hi1, lo2, hi2 = offs_m, offs_m, offs_m, offs_m, offs_m, offs_m
        if MASK0:
            p0 = LOHI + ((0 * GMAX + g0) * LPMAX + q0 * QT0 + offs_m // (QT1 * QT2)) * 2
            lo0, hi0 = tl.load(p0), tl.load(p0 + 1)
        if MASK1:
            p1 = LOHI + ((1 * GMAX + g1) * LPMAX + q1 * QT1 + (offs_m // QT2) % QT1) * 2
            lo1, hi1 = tl.load(p1), tl.load(p1 + 1)
        if MASK2:
            p2 = LOHI + ((2 * GMAX + g2) * LPMAX + q2 * QT2 + offs_m % QT2) * 2
            lo2, hi2 = tl.load(p2), tl.load(p2 + 1)
        s0 = (nv0 - nf0) * nv1 * nv2
        s1 = nf0 * (nv1 - nf1) * nv2
        s2 = nf0 * nf1 * (nv2 - nf2)
        for p in range(0, s0 + s1 + s2):
            t0, t1, t2 = _partial_tile(p, s0, s1, vf0, nv0, ff0, nf0, vf1, nv1, ff1, nf1, vf2, nv2, ff2, nf2)
            if STREAM == 0:
                y0, y1, y2, k_ok = _coords(offs_n, t0, t1, t2, g0, g1, g2, KT0, KT1, KT2, D0, D1, D2, L0, L1, L2)
                k = _gather(K, k_base, y0, y1, y2, k_ok, offs_d, s_k0, s_k1, s_k2, s_kd)
                v = _gather(V, v_base, y0, y1, y2, k_ok, offs_d, s_v0, s_v1, s_v2, s_vd)
                mask = k_ok[None, :] & q_ok[:, None]
            elif STREAM == 3:  # every key of a box is real
                k, v = _box_pair(K, V, b, t0, t1, t2, hk * HEAD_DIM, KT0, KT1, KT2, HEAD_DIM)
                mask = tl.full([BLOCK_M, BLOCK_N], 1, tl.int1)
            else:  # padded keys are zero rows (no dQ from them) and outside every query's lo/hi (the forward's rule)
                k, v = _tile_pair(K, V, k_base, v_base, (t0 * NK1 + t1) * NK2 + t2, offs_n, offs_d, s_k2, s_kd,
                                  s_v2, s_vd, kv_row0, BLOCK_N, STREAM)
                mask = tl.full([BLOCK_M, BLOCK_N], 1, tl.int1)
            if MASK0:
                kc0 = t0 * KT0 + offs_n // (KT1 * KT2)
                mask = mask & (kc0[None, :] >= lo0[:, None]) & (kc0[None, :] <= hi0[:, None])
            if MASK1:
                kc1 = t1 * KT1 + (offs_n // KT2) % KT1
                mask = mask & (kc1[None, :] >= lo1[:, None]) & (kc1[None, :] <= hi1[:, None])
            if MASK2:
                kc2 = t2 * KT2 + offs_n % KT2
                mask = mask & (kc2[None, :] >= lo2[:, None]) & (kc2[None, :] <= hi2[:, None])
            dq = _dq_update(dq, q, do, k, v, lse2, delta, qk_scale, mask, True)

    if EXTRA:  # every layout query sees every extra key
        xk_base = XK + b64 * s_xkb + hk64 * s_xkh + offs_d[None, :] * s_xkd
        xv_base = XV + b64 * s_xvb + hk64 * s_xvh + offs_d[None, :] * s_xvd
        n_xfull = NX // BLOCK_N
        for j in range(0, n_xfull):
            xrow = (j * BLOCK_N + offs_n).to(tl.int64)
            k = tl.load(xk_base + xrow[:, None] * s_xkn)
            v = tl.load(xv_base + xrow[:, None] * s_xvn)
            dq = _dq_update(dq, q, do, k, v, lse2, delta, qk_scale, 0, False)
        if XTAIL:
            xrow = (n_xfull * BLOCK_N + offs_n).to(tl.int64)
            x_ok = xrow < NX
            k = tl.load(xk_base + xrow[:, None] * s_xkn, mask=x_ok[:, None], other=0.0)
            v = tl.load(xv_base + xrow[:, None] * s_xvn, mask=x_ok[:, None], other=0.0)
            dq = _dq_update(dq, q, do, k, v, lse2, delta, qk_scale, x_ok[None, :], True)

    _scatter(DQ, b64 * s_gb + h64 * s_gh, x0, x1, x2, q_ok, offs_d, s_g0, s_g1, s_g2, s_gd, dq * sm_scale)


@triton.jit
def _gna_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, RANGES_T, LOHI, XQ, XDO, XLSE, XDELTA, DQA, qk_scale, sm_scale,
    GROUP, D0, D1, D2, L0, L1, L2, NK1, NK2, GMAX, NKMAX, LPMAX, NXQ, NQ1, NQ2, NH, NQP, s_ln, s_xlb, s_xlh,
    s_qb, s_q0, s_q1, s_q2, s_qh, s_qd,
    s_kb, s_k0, s_k1, s_k2, s_kh, s_kd,
    s_vb, s_v0, s_v1, s_v2, s_vh, s_vd,
    s_ob, s_o0, s_o1, s_o2, s_oh, s_od,
    s_ab, s_a0, s_a1, s_a2, s_ah, s_ad,
    s_cb, s_c0, s_c1, s_c2, s_ch, s_cd,
    s_lb, s_lh,
    s_xqb, s_xqn, s_xqh, s_xqd, s_xob, s_xon, s_xoh, s_xod,
    HEAD_DIM: tl.constexpr,
    QT0: tl.constexpr, QT1: tl.constexpr, QT2: tl.constexpr,
    KT0: tl.constexpr, KT1: tl.constexpr, KT2: tl.constexpr,
    MASK0: tl.constexpr, MASK1: tl.constexpr, MASK2: tl.constexpr, BLOCK_SPARSE: tl.constexpr,
    EXTRA_Q: tl.constexpr, XQTAIL: tl.constexpr, STREAM: tl.constexpr, FUSED_DQ: tl.constexpr,
    DQ_TMA: tl.constexpr,
):
    # STREAM 0: Q/dO tiles gathered from the caller's layout, LSE/Delta rows gathered from [B, H, tokens];
    # 1/2: Q and dO are permuted, zero-padded buffers [B * G, H, NQP, D] (pointers / TMA descriptors), LSE
    # (base 2) and Delta permuted alike ([B * G, H, NQP] views, row stride s_ln; zero on padded rows).
    # 3: Q and dO read in place by 5D TMA boxes (no dilation, tiles dividing the layout), LSE/Delta rows gathered
    # from [B, H, tokens] as in 0 (every row real).
    # FUSED_DQ (STREAM 1/2, no extra tokens): each tile pair's dQ goes into DQA, float32 rows permuted as Q's.
    BLOCK_M: tl.constexpr = QT0 * QT1 * QT2
    BLOCK_N: tl.constexpr = KT0 * KT1 * KT2
    kt = tl.program_id(0)
    hk = tl.program_id(1)
    bg = tl.program_id(2)
    G = D0 * D1 * D2
    b = bg // G
    g = bg % G
    g2 = g % D2
    g1 = (g // D2) % D1
    g0 = g // (D1 * D2)
    k2 = kt % NK2
    k1 = (kt // NK2) % NK1
    k0 = kt // (NK1 * NK2)
    # The transposed schedule of this KV tile: per axis, the visiting Q tiles and those seeing it whole.
    r0 = RANGES_T + ((0 * GMAX + g0) * NKMAX + k0) * 4
    r1 = RANGES_T + ((1 * GMAX + g1) * NKMAX + k1) * 4
    r2 = RANGES_T + ((2 * GMAX + g2) * NKMAX + k2) * 4
    vf0, nv0, ff0, nf0 = tl.load(r0), tl.load(r0 + 1), tl.load(r0 + 2), tl.load(r0 + 3)
    vf1, nv1, ff1, nf1 = tl.load(r1), tl.load(r1 + 1), tl.load(r1 + 2), tl.load(r1 + 3)
    vf2, nv2, ff2, nf2 = tl.load(r2), tl.load(r2 + 1), tl.load(r2 + 2), tl.load(r2 + 3)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    b64 = b.to(tl.int64)
    hk64 = hk.to(tl.int64)
    y0, y1, y2, k_ok = _coords(offs_n, k0, k1, k2, g0, g1, g2, KT0, KT1, KT2, D0, D1, D2, L0, L1, L2)
    k = _gather(K, b64 * s_kb + hk64 * s_kh, y0, y1, y2, k_ok, offs_d, s_k0, s_k1, s_k2, s_kd)
    v = _gather(V, b64 * s_vb + hk64 * s_vh, y0, y1, y2, k_ok, offs_d, s_v0, s_v1, s_v2, s_vd)
    # Key coordinates in group coordinates (the lo/hi tables' frame), per maskable axis.
    kc0 = k0 * KT0 + offs_n // (KT1 * KT2)
    kc1 = k1 * KT1 + (offs_n // KT2) % KT1
    kc2 = k2 * KT2 + offs_n % KT2
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    n_full = nf0 * nf1 * nf2
    s0 = (nv0 - nf0) * nv1 * nv2
    s1 = nf0 * (nv1 - nf1) * nv2
    s2 = nf0 * nf1 * (nv2 - nf2)

    for hh in range(0, GROUP):  # the query heads of this K/V head: their dK/dV summed here
        h64 = (hk * GROUP + hh).to(tl.int64)
        if STREAM == 0 or STREAM == 3:
            q_base = b64 * s_qb + h64 * s_qh
            o_base = b64 * s_ob + h64 * s_oh
            l_base = b64 * s_lb + h64 * s_lh
        else:  # permuted buffers: (batch x group, head) blocks of NQP rows
            q_base = bg.to(tl.int64) * s_qb + h64 * s_qh
            o_base = bg.to(tl.int64) * s_ob + h64 * s_oh
            l_base = bg.to(tl.int64) * s_lb + h64 * s_lh
        q_row0 = (bg * NH + hk * GROUP + hh) * NQP
        for it in range(0, n_full):
            i2 = it % nf2
            i1 = (it // nf2) % nf1
            i0 = it // (nf2 * nf1)
            if STREAM == 0:
                x0, x1, x2, q_ok = _coords(offs_m, ff0 + i0, ff1 + i1, ff2 + i2, g0, g1, g2, QT0, QT1, QT2,
                                           D0, D1, D2, L0, L1, L2)
                q = _gather(Q, q_base, x0, x1, x2, q_ok, offs_d, s_q0, s_q1, s_q2, s_qd)
                do = _gather(DO, o_base, x0, x1, x2, q_ok, offs_d, s_o0, s_o1, s_o2, s_od)
                tok = (x0 * L1 + x1) * L2 + x2
                lse2 = tl.load(LSE + l_base + tok, mask=q_ok, other=0.0) * 1.4426950408889634
                delta = tl.load(DELTA + l_base + tok, mask=q_ok, other=0.0)
            elif STREAM == 3:
                q, do = _box_pair(Q, DO, b, ff0 + i0, ff1 + i1, ff2 + i2, (hk * GROUP + hh) * HEAD_DIM, QT0, QT1, QT2,
                                  HEAD_DIM)
                x0, x1, x2, _ = _coords(offs_m, ff0 + i0, ff1 + i1, ff2 + i2, g0, g1, g2, QT0, QT1, QT2,
                                        D0, D1, D2, L0, L1, L2)
                tok = (x0 * L1 + x1) * L2 + x2
                lse2 = tl.load(LSE + l_base + tok) * 1.4426950408889634
                delta = tl.load(DELTA + l_base + tok)
            else:
                qt_full = ((ff0 + i0) * NQ1 + ff1 + i1) * NQ2 + ff2 + i2
                q, do = _tile_pair(Q, DO, q_base, o_base, qt_full, offs_m, offs_d, s_q2, s_qd, s_o2, s_od, q_row0,
                                   BLOCK_M, STREAM)
                rows = qt_full.to(tl.int64) * BLOCK_M + offs_m
                lse2 = tl.load(LSE + l_base + rows * s_ln)
                delta = tl.load(DELTA + l_base + rows * s_ln)
            dk, dv, ds_t = _dkdv_update(dk, dv, k, v, q, do, lse2, delta, qk_scale, 0, False)
            if FUSED_DQ:
                _dq_reduce(DQA, ds_t, k, sm_scale, q_row0 + qt_full * BLOCK_M, offs_m, offs_d,
                           HEAD_DIM, DQ_TMA)
        if not BLOCK_SPARSE:
            for p in range(0, s0 + s1 + s2):
                t0, t1, t2 = _partial_tile(p, s0, s1, vf0, nv0, ff0, nf0, vf1, nv1, ff1, nf1, vf2, nv2, ff2, nf2)
                if STREAM == 0:
                    x0, x1, x2, q_ok = _coords(offs_m, t0, t1, t2, g0, g1, g2, QT0, QT1, QT2, D0, D1, D2,
                                               L0, L1, L2)
                    q = _gather(Q, q_base, x0, x1, x2, q_ok, offs_d, s_q0, s_q1, s_q2, s_qd)
                    do = _gather(DO, o_base, x0, x1, x2, q_ok, offs_d, s_o0, s_o1, s_o2, s_od)
                    tok = (x0 * L1 + x1) * L2 + x2
                    lse2 = tl.load(LSE + l_base + tok, mask=q_ok, other=0.0) * 1.4426950408889634
                    delta = tl.load(DELTA + l_base + tok, mask=q_ok, other=0.0)
                    mask = k_ok[:, None] & q_ok[None, :]
                elif STREAM == 3:  # every row of a box is real
                    q, do = _box_pair(Q, DO, b, t0, t1, t2, (hk * GROUP + hh) * HEAD_DIM, QT0, QT1, QT2, HEAD_DIM)
                    x0, x1, x2, _ = _coords(offs_m, t0, t1, t2, g0, g1, g2, QT0, QT1, QT2, D0, D1, D2, L0, L1, L2)
                    tok = (x0 * L1 + x1) * L2 + x2
                    lse2 = tl.load(LSE + l_base + tok) * 1.4426950408889634
                    delta = tl.load(DELTA + l_base + tok)
                    mask = tl.full([BLOCK_N, BLOCK_M], 1, tl.int1)
                else:  # padded query rows are zero (q, dO, LSE, Delta): they add exactly nothing to dK/dV
                    qt_part = (t0 * NQ1 + t1) * NQ2 + t2
                    q, do = _tile_pair(Q, DO, q_base, o_base, qt_part, offs_m, offs_d, s_q2, s_qd, s_o2, s_od,
                                       q_row0, BLOCK_M, STREAM)
                    rows = qt_part.to(tl.int64) * BLOCK_M + offs_m
                    lse2 = tl.load(LSE + l_base + rows * s_ln)
                    delta = tl.load(DELTA + l_base + rows * s_ln)
                    mask = tl.full([BLOCK_N, BLOCK_M], 1, tl.int1)
                if MASK0:
                    mask = _mask_t(mask, LOHI, 0, g0, GMAX, LPMAX, t0 * QT0 + offs_m // (QT1 * QT2), kc0)
                if MASK1:
                    mask = _mask_t(mask, LOHI, 1, g1, GMAX, LPMAX, t1 * QT1 + (offs_m // QT2) % QT1, kc1)
                if MASK2:
                    mask = _mask_t(mask, LOHI, 2, g2, GMAX, LPMAX, t2 * QT2 + offs_m % QT2, kc2)
                dk, dv, ds_t = _dkdv_update(dk, dv, k, v, q, do, lse2, delta, qk_scale, mask, True)
                if FUSED_DQ:
                    _dq_reduce(DQA, ds_t, k, sm_scale, q_row0 + qt_part * BLOCK_M, offs_m, offs_d,
                               HEAD_DIM, DQ_TMA)
        if EXTRA_Q:  # the extra queries see every key (no causal axis)
            xq_base = XQ + b64 * s_xqb + h64 * s_xqh + offs_d[None, :] * s_xqd
            xo_base = XDO + b64 * s_xob + h64 * s_xoh + offs_d[None, :] * s_xod
            xl_base = b64 * s_xlb + h64 * s_xlh
            n_xfull = NXQ // BLOCK_M
            for j in range(0, n_xfull):
                xrow = (j * BLOCK_M + offs_m).to(tl.int64)
                q = tl.load(xq_base + xrow[:, None] * s_xqn)
                do = tl.load(xo_base + xrow[:, None] * s_xon)
                lse2 = tl.load(XLSE + xl_base + xrow) * 1.4426950408889634
                delta = tl.load(XDELTA + xl_base + xrow)
                dk, dv, _ = _dkdv_update(dk, dv, k, v, q, do, lse2, delta, qk_scale, 0, False)
            if XQTAIL:
                xrow = (n_xfull * BLOCK_M + offs_m).to(tl.int64)
                x_ok = xrow < NXQ
                q = tl.load(xq_base + xrow[:, None] * s_xqn, mask=x_ok[:, None], other=0.0)
                do = tl.load(xo_base + xrow[:, None] * s_xon, mask=x_ok[:, None], other=0.0)
                lse2 = tl.load(XLSE + xl_base + xrow, mask=x_ok, other=0.0) * 1.4426950408889634
                delta = tl.load(XDELTA + xl_base + xrow, mask=x_ok, other=0.0)
                dk, dv, _ = _dkdv_update(dk, dv, k, v, q, do, lse2, delta, qk_scale, x_ok[None, :], True)

    _scatter(DK, b64 * s_ab + hk64 * s_ah, y0, y1, y2, k_ok, offs_d, s_a0, s_a1, s_a2, s_ad, dk * sm_scale)
    _scatter(DV, b64 * s_cb + hk64 * s_ch, y0, y1, y2, k_ok, offs_d, s_c0, s_c1, s_c2, s_cd, dv)


@triton.jit
def _rows_fwd_kernel(
    Q, K, V, Out, LSE, qk_scale, NQ, NK, ROW0, GROUP,
    s_qb, s_qn, s_qh, s_qd, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd, s_ob, s_on, s_oh, s_od, s_lb, s_lh,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
):
    """Dense rows: ``NQ`` query rows (at sequence position ``ROW0`` on) over the ``NK`` keys of the sequence,
    output and log-sum-exp; ``CAUSAL``: key ``j`` visible to row ``i`` iff ``j <= ROW0 + i``."""
    pid = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    hk = h // GROUP
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < NQ
    r64 = rows.to(tl.int64)
    q = tl.load(Q + b * s_qb + h * s_qh + r64[:, None] * s_qn + offs_d[None, :] * s_qd, mask=row_ok[:, None],
                other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_end = NK
    if CAUSAL:
        n_end = tl.minimum(NK, ROW0 + (pid + 1) * BLOCK_M)
    for start in range(0, n_end, BLOCK_N):
        cols = start + offs_n
        c_ok = cols < NK
        c64 = cols.to(tl.int64)
        k = tl.load(K + b * s_kb + hk * s_kh + c64[:, None] * s_kn + offs_d[None, :] * s_kd, mask=c_ok[:, None],
                    other=0.0)
        v = tl.load(V + b * s_vb + hk * s_vh + c64[:, None] * s_vn + offs_d[None, :] * s_vd, mask=c_ok[:, None],
                    other=0.0)
        mask = c_ok[None, :]
        if CAUSAL:
            mask = mask & (cols[None, :] <= ROW0 + rows[:, None])
        acc, l_i, m_i = attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, mask, True)
    acc = acc / l_i[:, None]
    tl.store(Out + b * s_ob + h * s_oh + r64[:, None] * s_on + offs_d[None, :] * s_od, acc.to(Out.dtype.element_ty),
             mask=row_ok[:, None])
    tl.store(LSE + b * s_lb + h * s_lh + r64, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, mask=row_ok)


@triton.jit
def _rows_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, qk_scale, sm_scale, NQ, NK, ROW0, GROUP,
    s_qb, s_qn, s_qh, s_qd, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd,
    s_ob, s_on, s_oh, s_od, s_gb, s_gn, s_gh, s_gd, s_lb, s_lh,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
):
    """dQ of dense rows (as :func:`_rows_fwd_kernel` sees keys); ``LSE``/``DELTA`` start at the rows."""
    pid = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    hk = h // GROUP
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < NQ
    r64 = rows.to(tl.int64)
    q = tl.load(Q + b * s_qb + h * s_qh + r64[:, None] * s_qn + offs_d[None, :] * s_qd, mask=row_ok[:, None],
                other=0.0)
    do = tl.load(DO + b * s_ob + h * s_oh + r64[:, None] * s_on + offs_d[None, :] * s_od, mask=row_ok[:, None],
                 other=0.0)
    lse2 = tl.load(LSE + b * s_lb + h * s_lh + r64, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + b * s_lb + h * s_lh + r64, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    n_end = NK
    if CAUSAL:
        n_end = tl.minimum(NK, ROW0 + (pid + 1) * BLOCK_M)
    for start in range(0, n_end, BLOCK_N):
        cols = start + offs_n
        c_ok = cols < NK
        c64 = cols.to(tl.int64)
        k = tl.load(K + b * s_kb + hk * s_kh + c64[:, None] * s_kn + offs_d[None, :] * s_kd, mask=c_ok[:, None],
                    other=0.0)
        v = tl.load(V + b * s_vb + hk * s_vh + c64[:, None] * s_vn + offs_d[None, :] * s_vd, mask=c_ok[:, None],
                    other=0.0)
        mask = c_ok[None, :] & row_ok[:, None]
        if CAUSAL:
            mask = mask & (cols[None, :] <= ROW0 + rows[:, None])
        dq = _dq_update(dq, q, do, k, v, lse2, delta, qk_scale, mask, True)
    tl.store(DQ + b * s_gb + h * s_gh + r64[:, None] * s_gn + offs_d[None, :] * s_gd,
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _cols_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, qk_scale, sm_scale, NQ, NK, COL0, GROUP,
    s_qb, s_qn, s_qh, s_qd, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd,
    s_ob, s_on, s_oh, s_od, s_ab, s_an, s_ah, s_ad, s_cb, s_cn, s_ch, s_cd, s_lb, s_lh,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
):
    """dK/dV of dense key columns (``NK`` keys at sequence position ``COL0`` on) over every one of the ``NQ``
    query rows of the sequence; ``CAUSAL``: row ``i`` sees key ``j`` iff ``COL0 + j <= i``."""
    pid = tl.program_id(0)
    hk = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    c_ok = cols < NK
    c64 = cols.to(tl.int64)
    k = tl.load(K + b * s_kb + hk * s_kh + c64[:, None] * s_kn + offs_d[None, :] * s_kd, mask=c_ok[:, None],
                other=0.0)
    v = tl.load(V + b * s_vb + hk * s_vh + c64[:, None] * s_vn + offs_d[None, :] * s_vd, mask=c_ok[:, None],
                other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    m_start = 0
    if CAUSAL:
        m_start = ((COL0 + pid * BLOCK_N) // BLOCK_M) * BLOCK_M
    for hh in range(0, GROUP):
        h = hk * GROUP + hh
        for start in range(m_start, NQ, BLOCK_M):
            rows = start + offs_m
            row_ok = rows < NQ
            r64 = rows.to(tl.int64)
            q = tl.load(Q + b * s_qb + h * s_qh + r64[:, None] * s_qn + offs_d[None, :] * s_qd,
                        mask=row_ok[:, None], other=0.0)
            do = tl.load(DO + b * s_ob + h * s_oh + r64[:, None] * s_on + offs_d[None, :] * s_od,
                         mask=row_ok[:, None], other=0.0)
            lse2 = tl.load(LSE + b * s_lb + h * s_lh + r64, mask=row_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA + b * s_lb + h * s_lh + r64, mask=row_ok, other=0.0)
            mask = c_ok[:, None] & row_ok[None, :]
            if CAUSAL:
                mask = mask & (COL0 + cols[:, None] <= rows[None, :])
            dk, dv, _ = _dkdv_update(dk, dv, k, v, q, do, lse2, delta, qk_scale, mask, True)
    tl.store(DK + b * s_ab + hk * s_ah + c64[:, None] * s_an + offs_d[None, :] * s_ad,
             (dk * sm_scale).to(DK.dtype.element_ty), mask=c_ok[:, None])
    tl.store(DV + b * s_cb + hk * s_ch + c64[:, None] * s_cn + offs_d[None, :] * s_cd,
             dv.to(DV.dtype.element_ty), mask=c_ok[:, None])


# --------------------------------------------------------------------------------------------
# Host side.
# --------------------------------------------------------------------------------------------

def _strides6(x: Any) -> tuple[int, ...]:
    """(batch, axis0, axis1, axis2, head, dim) strides of ``[B, *spatial, H, D]`` (1 to 3 axes; missing axes 0)."""
    st = [int(s) for s in x.stride()]
    rank = x.dim() - 3
    return (st[0], *([0] * (3 - rank)), *st[1:1 + rank], st[-2], st[-1])


def _strides4(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.stride())


#: Tile volume the backward streams against a resident tile of the forward's size (GPU; the interpreter keeps
#: the forward's tiles): 64 rows of Q (dK/dV) or of K/V (dQ), as FlashAttention-2's backward does at head dim 128.
BWD_STREAM_VOLUME = 64


@dataclass(frozen=True)
class BwdTuning:
    """Tiles and launch options of the two backward kernels (GPU; the interpreter keeps the forward's tiles).

    ``*_resident``: the largest volume of the tile a kernel keeps (dQ: the Q tile; dK/dV: the KV tile), shrunk
    from the forward's by halving its outermost axis; ``*_stream``: the same for the tile it streams;
    ``*_warps``/``*_stages``: 0 for the fused-launch heuristic (warps by the resident tile, at most 2 stages).
    ``*_stream_layout`` (one of :data:`STREAM_LAYOUTS`): how a kernel reads the operands it streams (dQ: K/V;
    dK/dV: Q/dO and their LSE/Delta rows): ``"gather"`` row by row from the caller's layout, or ``"permute"``
    from buffers permuted once per call into contiguous tiles of the streamed tile's shape (one block load per
    tile: TMA where :func:`sparsesim.kernels._launch.descriptors_ok` allows, pointers otherwise; timed against
    the gather layout in kernels/NOTES.md), or ``"box"``: read in place, one 5D TMA box per tile over the tensors'
    ``[B, L0, L1, L2, H * D]`` views, where the layout has no dilation, the streamed tile divides it and the
    tensors' ``(*spatial, H, D)`` block is contiguous (else as ``"permute"``): no permutation pass, the LSE/Delta
    rows gathered. The resident tile is gathered and the gradients scattered either way.
    ``fused_dq``: no dQ launch; the dK/dV kernel also adds each tile pair's ``scale * dS K`` into a zeroed float32
    buffer permuted as its Q stream (TMA reductions on Hopper, pointer atomics elsewhere), which one inverse
    permutation writes into ``dq`` (five GEMMs per tile pair instead of seven; dQ's last bits then depend on the
    atomics' order). Needs ``dkv_stream_layout="permute"`` and no extra tokens; the ``dq_*`` fields are unused.
    Opt-in: slower than the split pair on every layer the H200 measured (kernels/NOTES.md, session 28).
    """

    dq_resident: int = 1 << 30
    dq_stream: int = BWD_STREAM_VOLUME
    dq_warps: int = 0
    dq_stages: int = 0
    dkv_resident: int = 1 << 30
    dkv_stream: int = BWD_STREAM_VOLUME
    dkv_warps: int = 0
    dkv_stages: int = 0
    dq_stream_layout: str = "gather"
    dkv_stream_layout: str = "gather"
    fused_dq: bool = False


#: What the first GPU call of a backward tries per kernel, ``(resident, stream, stages)``, keeping the fastest:
#: :data:`sparsesim.hwmodels.launch.BWD_DQ_CANDIDATES` / ``BWD_DKV_CANDIDATES`` (the model prices the backward at
#: these candidates' tiles too).
DQ_CANDIDATES: tuple[tuple[int, int, int], ...] = BWD_DQ_CANDIDATES
DKV_CANDIDATES: tuple[tuple[int, int, int], ...] = BWD_DKV_CANDIDATES

#: How the backward kernels may read their streamed operands (:class:`BwdTuning`'s ``*_stream_layout``).
STREAM_LAYOUTS = ("gather", "permute", "box")

#: The same ``(resident, stream, stages)`` settings run with ``stream_layout="permute"`` (benchmarks/bwd_tune.py,
#: ``--stream-layout gather,permute``). A 128-row permuted stream was measured too at 185dd22 and dropped: over
#: the H200's shared memory for dQ, 2.7x slower for dK/dV.
DQ_PERMUTED_CANDIDATES: tuple[tuple[int, int, int], ...] = DQ_CANDIDATES
DKV_PERMUTED_CANDIDATES: tuple[tuple[int, int, int], ...] = DKV_CANDIDATES

#: What the first GPU call's pick (:func:`pick_tuning`) tries per kernel, ``((resident, stream, stages), stream
#: layout)``. Permuted only: on the H200, benchmarks/bwd_tune.py ``--stream-layout gather,permute`` found the
#: permuted layout fastest for both kernels on all four layers of kernels/NOTES.md (185dd22: 3D 16x32x48 and
#: HunyuanVideo, whole backward -8.8% / -8.4%; 54ccec4: 2D 128x128 3.485 -> 3.045 ms, FLUX 41.29 -> 36.61 ms,
#: hwmodels/measurements/bwd_tune_permuted_b_h200_2026-11-30_54ccec4.csv). dK/dV keeps the three settings that
#: won a layer permuted (64-row resident: 3D, HunyuanVideo, FLUX; 32-row 2-stage stream: 2D; 128-row 3-stage:
#: FLUX's second). 6 compiles on a shape's first call (11 before). Session 28: the ``box`` layout (the same
#: kernels reading the streamed tiles in place by 5D TMA boxes, no permutation pass; ``permute`` where boxes
#: cannot run), measured against ``permute`` in kernels/NOTES.md.
DQ_PICK: tuple[tuple[tuple[int, int, int], str], ...] = tuple((c, "box") for c in DQ_PERMUTED_CANDIDATES)
DKV_PICK: tuple[tuple[tuple[int, int, int], str], ...] = (
    ((64, 64, 2), "box"), ((1 << 30, 32, 2), "box"), ((1 << 30, 64, 3), "box"))
#: 1D layouts: gathered only. A 1D tile is already a contiguous run of rows, so permuting it copies Q/dO/K/V for
#: nothing; with the permuted-only pick the 1D 4,096-token forward+backward's host time on the H200 rose from 719
#: to 955 us (benchmarks/backward_host.py --mode gpu, 54ccec4 -> 4441f9d).
DQ_PICK_1D: tuple[tuple[tuple[int, int, int], str], ...] = tuple((c, "gather") for c in DQ_CANDIDATES)
DKV_PICK_1D: tuple[tuple[tuple[int, int, int], str], ...] = tuple((c, "gather") for c in DKV_CANDIDATES)


@dataclass(frozen=True, eq=False)
class GNABackward:
    """A validated backward: the dQ plan (forward's schedule), the dK/dV plan (transposed), device tables."""

    dq_plan: GNAPlan
    dkv_plan: GNAPlan
    heads: int
    heads_kv: int
    head_dim: int
    batch: int
    scale: float
    extra: int
    tables: tuple[Any, Any, Any, Any]  # dq ranges, dq lohi, dkv transposed ranges, dkv lohi (int32, on device)
    dq_config: FusedLaunch
    dkv_config: FusedLaunch
    rows_config: tuple[int, int, int, int]  # BLOCK_M, BLOCK_N, warps, stages of the dense-rows kernels
    dq_stream_layout: str = "gather"  # how dQ reads K/V and dK/dV reads Q/dO (BwdTuning's *_stream_layout)
    dkv_stream_layout: str = "gather"
    fused_dq: bool = False  # BwdTuning's: dQ added by the dK/dV kernel
    #: Compiled dQ / dK/dV kernels by :func:`sparsesim.kernels._launch.spec_key` (repeated calls skip Triton's
    #: argument binding, as the forward's launches do).
    compiled: dict[Any, Any] = field(default_factory=dict)
    #: Per launch signature (the kernel, its STREAM mode and every stride the integer arguments read): the
    #: integer arguments, their spec key, constexprs, options and grid (a repeated call rebuilds none of them).
    launch_args: dict[Any, Any] = field(default_factory=dict)
    #: The dK/dV stream's LSE/Delta row layout (:func:`sparsesim.kernels.permute.make_layout`), built once.
    rows_layout: dict[Any, Any] = field(default_factory=dict)


@functools.lru_cache(maxsize=64)
def _constexprs(plan: GNAPlan) -> dict[str, Any]:
    """The plan's tile and mask constexprs in the kernels' signature order (cached per plan: read, never changed)."""
    qt, kt = plan.q_tile3, plan.kv_tile3
    return dict(QT0=qt[0], QT1=qt[1], QT2=qt[2], KT0=kt[0], KT1=kt[1], KT2=kt[2], MASK0=plan.mask_axes[0],
                MASK1=plan.mask_axes[1], MASK2=plan.mask_axes[2], BLOCK_SPARSE=plan.block_sparse)


def build_backward(fwd: Any, device: Any, tuning: BwdTuning | None = None) -> GNABackward:
    """The backward of a forward launch (:class:`sparsesim.kernels.gna.GNALaunch`): same pattern; on the GPU the
    tiles shrink as ``tuning`` says (default :class:`BwdTuning`: the resident tile keeps the forward's shape, the
    streamed one shrinks to :data:`BWD_STREAM_VOLUME`; registers: dQ keeps a Q tile and its dQ accumulator,
    dK/dV a KV tile and two accumulators)."""
    import torch

    tune = tuning or BwdTuning()
    for name in ("dq_stream_layout", "dkv_stream_layout"):
        if getattr(tune, name) not in STREAM_LAYOUTS:
            raise ValueError(f"BwdTuning.{name}={getattr(tune, name)!r}; allowed: {', '.join(STREAM_LAYOUTS)}")
    if tune.fused_dq and (tune.dkv_stream_layout != "permute" or fwd.extra):
        raise ValueError(f"BwdTuning.fused_dq=True with dkv_stream_layout={tune.dkv_stream_layout!r} and "
                         f"{fwd.extra} extra tokens; allowed: dkv_stream_layout='permute' and no extra tokens")
    pattern = fwd.plan.pattern
    q_tile, kv_tile = fwd.plan.schedule.q_tile, fwd.plan.schedule.kv_tile
    kw = dict(window=pattern.window, stride=pattern.stride, dilation=pattern.dilation, causal=pattern.causal)
    if interpret():
        dq_plan = dkv_plan = fwd.plan
    else:
        dq_plan = _plan_or(fwd.plan, pattern.input_size, kw, shrink_tile(q_tile, tune.dq_resident),
                           shrink_tile(kv_tile, tune.dq_stream))
        dkv_plan = _plan_or(fwd.plan, pattern.input_size, kw, shrink_tile(q_tile, tune.dkv_stream),
                            shrink_tile(kv_tile, tune.dkv_resident))
    _, smem = device_gpu(device)

    def cfg(resident: int, streamed: int, warps: int, stages: int) -> FusedLaunch:
        c = fused_launch(resident, streamed, fwd.head_dim, "bf16", smem)  # fp16 and bf16 alike (2-byte elements)
        return FusedLaunch(warps or c.num_warps, stages or max(1, min(c.num_stages, 2)))

    def table(a: Any) -> Any:
        return torch.from_numpy(a.copy()).to(device)

    return GNABackward(dq_plan=dq_plan, dkv_plan=dkv_plan, heads=fwd.heads, heads_kv=fwd.heads_kv,
                       head_dim=fwd.head_dim, batch=fwd.batch, scale=fwd.scale, extra=fwd.extra,
                       tables=(table(dq_plan.ranges), table(dq_plan.lohi), table(dkv_plan.ranges_t),
                               table(dkv_plan.lohi)),
                       dq_config=cfg(dq_plan.q_volume, dq_plan.kv_volume, tune.dq_warps, tune.dq_stages),
                       dkv_config=cfg(dkv_plan.kv_volume, dkv_plan.q_volume, tune.dkv_warps, tune.dkv_stages),
                       rows_config=_rows_config(), dq_stream_layout=tune.dq_stream_layout,
                       dkv_stream_layout=tune.dkv_stream_layout, fused_dq=tune.fused_dq)


def _plan_or(fallback: GNAPlan, size: tuple[int, ...], kw: dict[str, Any], q_tile: tuple[int, ...],
             kv_tile: tuple[int, ...]) -> GNAPlan:
    try:
        return plan_gna(size, q_tile=q_tile, kv_tile=kv_tile, **kw)
    except ValueError:
        return fallback


_BACKWARDS = CallCache()


#: Per ``_delta`` call key (shapes, strides, dtypes, device, block): the buffer's shape, the grid, the integer
#: arguments, the constexprs and the compiled kernels by pointer alignments (repeated calls skip Triton's binding).
_DELTAS = CallCache()


def _delta(out: Any, do: Any, block: int, rows: bool = False) -> tuple[Any, Any]:
    """``rowsum(dO * O)`` float32 ``[batch, heads, tokens]`` of two ``[B, *spatial, H, D]`` tensors: ``(delta,
    None)``, or with ``rows`` ``(delta, pair)``: Delta as ``pair[1]`` of a new float32 ``[2, batch, heads,
    tokens]`` buffer whose ``pair[0]`` is left for the base-2 LSE that the permuted dK/dV stream reads beside
    Delta (:func:`_permuted_rows`: one buffer permuted as one ``[..., 2]`` tensor, no stacking pass)."""
    import torch

    key = (out.shape, out.stride(), do.shape, do.stride(), out.dtype, do.dtype, out.device, block, rows)
    hit = _DELTAS.get(key)
    if hit is None:
        batch, heads, head_dim = int(out.shape[0]), int(out.shape[-2]), int(out.shape[-1])
        size = [int(s) for s in out.shape[1:-2]]
        size3 = [1] * (3 - len(size)) + size
        tokens = math.prod(size)
        # Delta is a contiguous [batch, heads, tokens] tensor (or a pair's row): strides (heads * tokens, tokens)
        ints = (tokens, size3[1], size3[2], heads, *_strides6(out), *_strides6(do), heads * tokens, tokens)
        shape = (2, batch, heads, tokens) if rows else (batch, heads, tokens)
        hit = _DELTAS.put(key, (shape, (triton.cdiv(tokens, block), heads, batch), ints,
                                {"HEAD_DIM": head_dim, "BLOCK": block}, {}))
    shape, grid, ints, constexprs, compiled = hit
    pair = torch.empty(shape, dtype=torch.float32, device=out.device)
    delta = pair[1] if rows else pair
    launch_compiled(compiled, (out.data_ptr() % 16 == 0, do.data_ptr() % 16 == 0, delta.data_ptr() % 16 == 0),
                    _delta_kernel, grid, (out, do, delta, *ints), constexprs, {})
    return delta, (pair if rows else None)


def rows_forward(q: Any, k: Any, v: Any, out: Any, lse: Any, *, row0: int, rows: int, causal: bool,
                 scale: float) -> None:
    """Dense rows ``[row0, row0 + rows)`` of a flat sequence ``[B, T, H, D]`` over all its keys (``causal``:
    keys at or before the row), writing ``out``'s rows and ``lse[:, :, rows]`` (the extra queries)."""
    batch, _, heads, head_dim = (int(s) for s in q.shape)
    bm, bn, warps, stages = _rows_config()
    xq, xo = q[:, row0:row0 + rows], out[:, row0:row0 + rows]
    xl = lse[:, :, row0:row0 + rows]
    _rows_fwd_kernel[(triton.cdiv(rows, bm), heads, batch)](
        xq, k, v, xo, xl, scale * LOG2E, rows, int(k.shape[1]), row0, heads // int(k.shape[2]),
        *_strides4(xq), *_strides4(k), *_strides4(v), *_strides4(xo), int(xl.stride(0)), int(xl.stride(1)),
        HEAD_DIM=head_dim, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=bool(causal), num_warps=warps, num_stages=stages)


def _rows_config() -> tuple[int, int, int, int]:
    return (16, 16, 1, 1) if interpret() else (64, 64, 4, 2)


def gna_backward(do: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, *, window: Any, stride: Any = 1,
                 dilation: Any = 1, causal: Any = False, q_tile: Any = None, kv_tile: Any = None,
                 scale: float | None = None, kv_layout: str | None = None, extra_tokens: int = 0,
                 extra_at: str = "end", input_size: Any = None, tuning: BwdTuning | None = None
                 ) -> tuple[Any, Any, Any]:
    """``(dq, dk, dv)`` of :func:`sparsesim.kernels.gna.gna_forward` (same arguments) given ``dO``, the forward's
    ``out`` and ``lse``; shapes and dtypes of ``q``, ``k``, ``v``. ``tuning``: the backward's tiles and launch
    options (default :class:`BwdTuning`).

    Example:
        >>> out, lse = gna_forward(q, k, v, window=(7, 7))  # doctest: +SKIP
        >>> dq, dk, dv = gna_backward(torch.ones_like(out), q, k, v, out, lse, window=(7, 7))  # doctest: +SKIP
    """
    return backward_call(do, q, k, v, out, lse, (window, stride, dilation, causal, q_tile, kv_tile, scale, kv_layout),
                         extra_tokens, extra_at, input_size, tuning)


def backward_call(do: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, call: tuple, extra_tokens: int = 0,
                  extra_at: str = "end", input_size: Any = None, tuning: BwdTuning | None = None,
                  fwd: Any = None) -> tuple[Any, Any, Any]:
    """:func:`gna_backward` with the pattern arguments as one tuple ``call = (window, stride, dilation, causal,
    q_tile, kv_tile, scale, kv_layout)`` (:func:`sparsesim.kernels.gna.cached_launch`'s) and ``fwd``: the forward's
    launch of this call (:func:`sparsesim.kernels.gna.forward_call` returns it; looked up when None)."""
    import torch

    from sparsesim.kernels.gna import _extra_view, _is_causal, _layout_view, cached_launch, sequence_info

    causal = call[3]
    seq = sequence_info(q, k, v, extra_tokens, extra_at, input_size, causal)
    if seq is None:
        views = (q, k, v)
        extra = 0
    else:
        size, extra, first, xfirst = seq
        views = tuple(_layout_view(x, seq) for x in (q, k, v))
    if fwd is None:
        fwd = cached_launch(*views, call, extra)
    # the forward itself is in the key (not its id: an evicted launch's id may be reused by another pattern's)
    key = (tensors_key(*views), fwd, tuning)
    bwd = _BACKWARDS.get(key)
    if bwd is not None and bwd.extra != extra:
        bwd = None
    pick = bwd is None and tuning is None and not interpret() and not torch.cuda.is_current_stream_capturing()
    if bwd is None and not pick:
        bwd = _BACKWARDS.put(key, build_backward(fwd, q.device, tuning))
    # Delta, and beside it the LSE rows of a permuted dK/dV stream (the pick may try that layout)
    delta, pair = _delta(out, do, _rows_config()[0], pick or bwd.dkv_stream_layout != "gather")
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if seq is None:
        lv = (q, k, v, do, dq, dk, dv)
        l_lse, l_delta, l_pair = lse, delta, pair
        xv = x_lse = x_delta = None
        is_causal = False
    else:
        n = math.prod(size)
        lv = (*views, *(_layout_view(x, seq) for x in (do, dq, dk, dv)))
        l_pair = None if pair is None else pair[:, :, :, first:first + n]
        l_lse, l_delta = lse[:, :, first:first + n], delta[:, :, first:first + n]
        x_lse, x_delta = lse[:, :, xfirst:xfirst + extra], delta[:, :, xfirst:xfirst + extra]
        is_causal = _is_causal(causal)
        xv = tuple(_extra_view(x, seq) for x in (q, k, v, do)) if extra else None
    xv_t = xv if (extra and not is_causal) else None

    if bwd is None:  # the first GPU call without a tuning: time the candidates on this call's tensors
        def run_dq(b: GNABackward) -> None:
            _launch_dq(b, lv, l_lse, l_delta, xv)

        def run_dkdv(b: GNABackward) -> None:
            _launch_dkdv(b, lv, l_lse, l_delta, xv_t, x_lse, x_delta, l_pair)

        bwd = _BACKWARDS.put(key, build_backward(fwd, q.device, pick_tuning(fwd, q.device, run_dq, run_dkdv)))
    if bwd.fused_dq:
        _launch_fused(bwd, lv, l_lse, l_delta, l_pair)
        return dq, dk, dv
    _launch_dq(bwd, lv, l_lse, l_delta, xv)
    _launch_dkdv(bwd, lv, l_lse, l_delta, xv_t, x_lse, x_delta, l_pair)
    if extra:
        _launch_extra(bwd, (q, k, v, do, dq, dk, dv), lse, delta, xfirst, extra, is_causal)
    return dq, dk, dv


def candidate_tuning(kernel: str, candidate: tuple[int, int, int], layout: str = "gather",
                     base: BwdTuning | None = None) -> BwdTuning:
    """``base`` (default :class:`BwdTuning`) with one kernel's (``"dq"`` or ``"dkv"``) ``(resident, stream,
    stages)`` candidate and stream layout."""
    res, stream, stages = candidate
    fields: dict[str, Any] = {f"{kernel}_resident": res, f"{kernel}_stream": stream, f"{kernel}_stages": stages,
                              f"{kernel}_stream_layout": layout}
    return dataclasses.replace(base or BwdTuning(), **fields)


def pick_tuning(fwd: Any, device: Any, run_dq: Any, run_dkdv: Any,
                dq_candidates: Sequence[tuple[tuple[int, int, int], str]] | None = None,
                dkv_candidates: Sequence[tuple[tuple[int, int, int], str]] | None = None) -> BwdTuning:
    """The fastest of ``dq_candidates`` for dQ and of ``dkv_candidates`` for dK/dV (``(candidate, stream layout)``
    pairs; default: :data:`DQ_PICK` / :data:`DKV_PICK`, 1D layouts :data:`DQ_PICK_1D` / :data:`DKV_PICK_1D`), each
    timed (CUDA events, after a compiling launch) on the call's own tensors by ``run_dq(backward)`` /
    ``run_dkdv(backward)``. The fused-dQ backward (:attr:`BwdTuning.fused_dq`) is not among them: on the H200 it
    lost to the split pair on every layer measured (kernels/NOTES.md, session 28)."""
    import torch

    def timed(run: Any, tuning: BwdTuning) -> float:
        b = build_backward(fwd, device, tuning)
        run(b)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(3):
            run(b)
        end.record()
        torch.cuda.synchronize(device)
        return float(start.elapsed_time(end))

    one_d = fwd.plan.pattern.rank == 1
    dq_c = dq_candidates or (DQ_PICK_1D if one_d else DQ_PICK)
    dkv_c = dkv_candidates or (DKV_PICK_1D if one_d else DKV_PICK)
    dq = min(dq_c, key=lambda c: timed(run_dq, candidate_tuning("dq", *c)))
    dkv = min(dkv_c, key=lambda c: timed(run_dkdv, candidate_tuning("dkv", *c)))
    return candidate_tuning("dkv", *dkv, base=candidate_tuning("dq", *dq))


def fused_tuning(candidate: tuple[int, ...]) -> BwdTuning:
    """A fused-dQ backward (:attr:`BwdTuning.fused_dq`) with the dK/dV setting ``candidate`` ``(resident, stream,
    stages[, warps])`` (warps 0 or left out: the launch heuristic's), its Q/dO stream permuted."""
    warps = candidate[3] if len(candidate) > 3 else 0
    return dataclasses.replace(candidate_tuning("dkv", candidate[:3], "permute"), fused_dq=True, dkv_warps=warps)


def _tensor_spec(tensors: tuple) -> tuple:
    """:func:`sparsesim.kernels._launch.spec_key` of tensor arguments: per tensor its dtype and 16-byte alignment."""
    return tuple([(t.dtype, t.data_ptr() % 16 == 0) for t in tensors])


def _launch_dq(bwd: GNABackward, lv: tuple, lse: Any, delta: Any, xv: tuple | None) -> None:
    q, k, v, do, dq, _, _ = lv
    plan = bwd.dq_plan
    nx = bwd.extra if xv is not None else 0
    if nx:
        _, xk, xvv, _ = xv  # type: ignore[misc]
    else:
        xk, xvv = q, q
    boxes = (_box_descriptors(k, v, plan.schedule.kv_tile, plan.pattern.dilation, bwd.head_dim)
             if bwd.dq_stream_layout == "box" else None)
    if boxes is not None:  # K/V read in place, one TMA box per KV tile
        kk, vv = boxes
        nkp, mode = 0, 3
        kv_key = ("box", k.stride(), v.stride())
    elif bwd.dq_stream_layout != "gather":  # K/V permuted once into contiguous KV tiles of this plan
        kk, vv, kv_strides, nkp, mode = _permuted_pair(k, v, plan.schedule.kv_tile, plan.pattern.dilation,
                                                       bwd.head_dim)
        kv_key: tuple = kv_strides
    else:
        kk, vv, nkp, mode = k, v, 0, 0
        kv_key = (k.stride(), v.stride())
    # every stride the integer arguments read (the plan and the heads are the backward's own)
    sig = ("dq", mode, nkp, kv_key, q.stride(), do.stride(), dq.stride(), lse.stride(),
           *((xk.stride(), xvv.stride(), nx) if nx else ()))
    hit = bwd.launch_args.get(sig)
    if hit is None:
        x_strides = (*_strides4(xk), *_strides4(xvv)) if nx else (0,) * 8
        if mode in (0, 3):
            kv_strides = (*_strides6(k), *_strides6(v))
        ints = (bwd.heads // bwd.heads_kv, *plan.dilation3, *plan.size3, *plan.q_grid3[1:],
                int(plan.ranges.shape[1]), int(plan.ranges.shape[2]), int(plan.lohi.shape[2]), nx,
                *plan.kv_grid3[1:], bwd.heads_kv, nkp,
                *_strides6(q), *kv_strides, *_strides6(do), *_strides6(dq),
                int(lse.stride(0)), int(lse.stride(1)), *x_strides)
        constexprs = {"HEAD_DIM": bwd.head_dim, **_constexprs(plan), "EXTRA": nx > 0,
                      "XTAIL": nx % plan.kv_volume != 0, "STREAM": mode}
        hit = _remember(bwd, sig, ints, constexprs, bwd.dq_config,
                        (plan.num_q_tiles, bwd.heads, bwd.batch * plan.groups))
    ints, ints_spec, constexprs, options, grid = hit
    ranges, lohi = bwd.tables[0], bwd.tables[1]
    tensors = (q, do, dq, lse, delta, ranges, lohi, xk, xvv) if mode >= 2 else (q, kk, vv, do, dq, lse, delta,
                                                                                  ranges, lohi, xk, xvv)
    # spec_key of the arguments (descriptors, mode 2, are fixed by the mode), the integers' part computed once
    launch_compiled(bwd.compiled, ("dq", mode, ints_spec, _tensor_spec(tensors)), _gna_dq_kernel, grid,
                    (q, kk, vv, do, dq, lse, delta, ranges, lohi, xk, xvv, bwd.scale * LOG2E, bwd.scale, *ints),
                    constexprs, options)


def _remember(bwd: GNABackward, sig: tuple, ints: tuple, constexprs: dict[str, Any], cfg: Any,
              grid: tuple[int, ...]) -> tuple:
    """Store a launch signature's integer arguments, their spec key, constexprs, options and grid on ``bwd``."""
    hit = bwd.launch_args[sig] = (ints, spec_key(ints), constexprs,
                                  {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}, grid)
    return hit


def _launch_dkdv(bwd: GNABackward, lv: tuple, lse: Any, delta: Any, xv: tuple | None, x_lse: Any,
                 x_delta: Any, pair: Any, dqa: Any = None) -> int:
    """``pair``: the ``[2, B, H, tokens]`` buffer of :func:`_delta` (the layout's rows, Delta in ``pair[1]``), needed
    by the permuted stream layout (None otherwise). ``dqa`` (fused dQ): a callable that, given the padded rows
    per head, returns the zeroed float32 accumulator ``[B * G, H, padded, D]``. Returns the padded rows (0 when
    the stream is gathered)."""
    q, k, v, do, _, dk, dv = lv
    plan = bwd.dkv_plan
    nxq = bwd.extra if xv is not None else 0
    if nxq:
        xq, _, _, xdo = xv  # type: ignore[misc]
        xl, xd = x_lse, x_delta
    else:
        xq, xdo, xl, xd = q, q, lse, delta
    tile, dilation = plan.schedule.q_tile, plan.pattern.dilation
    boxes = (_box_descriptors(q, do, tile, dilation, bwd.head_dim) if bwd.dkv_stream_layout == "box" and dqa is None
             else None)
    if boxes is not None:  # Q/dO read in place, one TMA box per Q tile; the LSE/Delta rows gathered
        qq, dd = boxes
        nqp, mode = 0, 3
        ll, dl = lse, delta
        qo_key = ("box", q.stride(), do.stride())
    elif bwd.dkv_stream_layout != "gather":  # Q/dO and their LSE/Delta rows permuted once into contiguous Q tiles
        qq, dd, qo_strides, nqp, mode = _permuted_pair(q, do, tile, dilation, bwd.head_dim)
        rows = _permuted_rows(lse, pair, plan.pattern.input_size, tile, dilation, bwd.rows_layout)
        ll, dl = rows, rows[..., 1]  # LSE: the buffer's own pointer (the kernel reads it through the strides given)
        qo_key: tuple = (qo_strides, rows.stride())
    else:
        qq, dd, nqp, mode = q, do, 0, 0
        ll, dl = lse, delta
        qo_key = (q.stride(), do.stride())
    sig = ("dkdv", mode, nqp, qo_key, lse.stride(), k.stride(), v.stride(), dk.stride(), dv.stride(),
           *((xq.stride(), xdo.stride(), xl.stride(), nxq) if nxq else ()))
    hit = bwd.launch_args.get(sig)
    if hit is None:
        x_strides = (*_strides4(xq), *_strides4(xdo)) if nxq else (0,) * 8
        if mode in (0, 3):
            qo_strides = (*_strides6(q), *_strides6(do))
            l_strides = (int(lse.stride(0)), int(lse.stride(1)), 1)
        else:
            l_strides = (int(rows.stride(0)), int(rows.stride(1)), int(rows.stride(2)))
        ints = (bwd.heads // bwd.heads_kv, *plan.dilation3, *plan.size3, *plan.kv_grid3[1:],
                int(plan.ranges_t.shape[1]), int(plan.ranges_t.shape[2]), int(plan.lohi.shape[2]), nxq,
                *plan.q_grid3[1:], bwd.heads, nqp, l_strides[2], int(xl.stride(0)), int(xl.stride(1)),
                *qo_strides[:6], *_strides6(k), *_strides6(v), *qo_strides[6:], *_strides6(dk), *_strides6(dv),
                *l_strides[:2], *x_strides)
        constexprs = {"HEAD_DIM": bwd.head_dim, **_constexprs(plan), "EXTRA_Q": nxq > 0,
                      "XQTAIL": nxq % plan.q_volume != 0, "STREAM": mode}
        hit = _remember(bwd, sig, ints, constexprs, bwd.dkv_config,
                        (plan.num_kv_tiles, bwd.heads_kv, bwd.batch * plan.groups))
    ints, ints_spec, constexprs, options, grid = hit
    ranges_t, lohi = bwd.tables[2], bwd.tables[3]
    tensors: tuple = (k, v, dk, dv, ll, dl, ranges_t, lohi, xq, xdo, xl, xd)
    if mode < 2:
        tensors = (qq, dd, *tensors)
    acc: Any = k  # an unused pointer when dQ is not fused
    dq_tma = False
    if dqa is not None:
        acc = dqa(nqp)
        dq_tma = mode == 2 and tma_reduce_ok(acc.device)
        if dq_tma:
            acc = descriptor(acc.view(-1, bwd.head_dim), [plan.q_volume, bwd.head_dim], _DESCRIPTORS)
        else:
            tensors = (*tensors, acc)
    fused = {"FUSED_DQ": dqa is not None, "DQ_TMA": dq_tma}
    launch_compiled(bwd.compiled, ("dkdv", mode, ints_spec, _tensor_spec(tensors), *fused.values()),
                    _gna_dkdv_kernel, grid,
                    (qq, k, v, dd, dk, dv, ll, dl, ranges_t, lohi, xq, xdo, xl, xd, acc, bwd.scale * LOG2E,
                     bwd.scale, *ints), {**constexprs, **fused}, options)
    return nqp


def _launch_fused(bwd: GNABackward, lv: tuple, lse: Any, delta: Any, pair: Any) -> None:
    """The fused-dQ backward (:attr:`BwdTuning.fused_dq`): the dK/dV kernel adds dQ into a zeroed float32 buffer
    permuted as its Q stream, then one inverse permutation writes it into ``dq`` (``lv[4]``) in its dtype."""
    import torch

    q, dq = lv[0], lv[4]
    plan = bwd.dkv_plan
    held: list[Any] = []

    def accumulator(padded: int) -> Any:
        shape = (q.shape[0] * plan.groups, bwd.heads, padded, bwd.head_dim)
        held.append(torch.zeros(shape, dtype=torch.float32, device=q.device))
        return held[0]

    _launch_dkdv(bwd, lv, lse, delta, None, None, None, pair, dqa=accumulator)
    unpermute_into(held[0], dq, plan.schedule.q_tile, dilation=plan.pattern.dilation)


#: Per ``_permuted_pair`` call key (shapes, strides, dtypes, device, tile, dilation, head dim) of a pair permuted
#: in one pass: its layout, the buffers' strides, padded rows and whether their strides suit TMA descriptors.
_PAIRS = CallCache()
#: TMA descriptor templates (:func:`sparsesim.kernels._launch.descriptor`).
_DESCRIPTORS: dict[Any, Any] = {}


def _permuted_pair(a: Any, b: Any, tile: tuple[int, ...], dilation: tuple[int, ...], head_dim: int
                   ) -> tuple[Any, Any, tuple[int, ...], int, int]:
    """Two ``[B, *spatial, H, D]`` tensors of one shape permuted into contiguous, zero-padded box tiles
    ``[B * G, H, padded, D]`` (the forward's ``permute`` K/V buffers): ``(a, b as the kernel takes them, their
    twelve strides (the forward's ``_permuted_strides``), padded rows, STREAM mode)``; mode 2: 2D TMA
    descriptors ``[B * G * H * padded, D]`` with one tile per block; 1: the buffers (pointer loads)."""
    from sparsesim.kernels.gna import _permuted_strides

    key = (a.shape, a.stride(), b.shape, b.stride(), a.dtype, b.dtype, a.device, tile, dilation, head_dim)
    hit = _PAIRS.get(key)
    if hit is not None:  # a pair checked by an earlier call of the same key: no checks, no layout lookup
        layout, strides, padded, strides_ok = hit
        ap, bp = permute_checked(a, layout, b)
        ok = strides_ok and tma_enabled() and ap.data_ptr() % 16 == 0 and bp.data_ptr() % 16 == 0
    else:
        if a.stride() == b.stride() and a.dtype == b.dtype:
            ap, bp = tile_permute_pair(a, b, tile, dilation=dilation)
        else:  # the pair pass reads both through one set of strides
            ap, bp = tile_permute(a, tile, dilation=dilation), tile_permute(b, tile, dilation=dilation)
        strides = (*_permuted_strides(ap), *_permuted_strides(bp))
        padded = int(ap.shape[2])
        strides_ok = ap.numel() // head_dim < 2**31 and tma_strides_ok(ap) and tma_strides_ok(bp)
        ok = strides_ok and descriptors_ok(ap, bp)
        if a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype:
            _PAIRS.put(key, (make_layout(a.shape[1:-2], tile, dilation), strides, padded, strides_ok))
    if ok:
        block = [math.prod(tile), head_dim]
        return (descriptor(ap.view(-1, head_dim), block, _DESCRIPTORS),
                descriptor(bp.view(-1, head_dim), block, _DESCRIPTORS), strides, padded, 2)
    return ap, bp, strides, padded, 1


def _box_descriptors(a: Any, b: Any, tile: tuple[int, ...], dilation: tuple[int, ...], head_dim: int
                     ) -> tuple[Any, Any] | None:
    """5D TMA descriptors of two ``[B, *spatial, H, D]`` tensors over their ``[B, L0, L1, L2, H * D]`` views
    (lower ranks padded with leading 1s), one ``[1, *tile, D]`` box per tile (the ``box`` stream layout); None
    where that cannot run: dilation, a tile that does not divide the layout, a ``(*spatial, H, D)`` block that is
    not contiguous, TMA off or misaligned."""
    size = tuple(int(x) for x in a.shape[1:-2])
    if (any(d != 1 for d in dilation) or any(n % t for n, t in zip(size, tile, strict=True))
            or not tma_enabled()):
        return None
    heads = int(a.shape[-2])
    pad = (1,) * (3 - len(size))
    block = [1, *pad, *tile, head_dim]
    descs = []
    for x in (a, b):
        inner = [heads * head_dim]
        for n in reversed(size):
            inner.insert(0, inner[0] * n)
        if (tuple(int(t) for t in x.stride()[1:]) != (*inner[1:], head_dim, 1) or int(x.shape[-2]) != heads
                or not descriptors_ok(x)):
            return None
        descs.append(descriptor(x.view(int(x.shape[0]), *pad, *size, heads * head_dim), block, _DESCRIPTORS))
    return descs[0], descs[1]


def _permuted_rows(lse: Any, pair: Any, size: tuple[int, ...], tile: tuple[int, ...],
                   dilation: tuple[int, ...], layouts: dict[Any, Any] | None = None) -> Any:
    """The base-2 LSE and the Delta of the layout's rows permuted as the Q tiles are: float32
    ``[B * G, H, padded, 2]`` (zeros on padded rows). ``lse``: float32 ``[B, H, tokens]`` (tokens row-major over
    ``size``); ``pair``: float32 ``[2, B, H, tokens]`` holding Delta in ``pair[1]`` (:func:`_delta`'s buffer),
    whose ``pair[0]`` receives the base-2 LSE; ``layouts``: a cache for the rows' checked layout."""
    import torch

    torch.mul(lse, LOG2E, out=pair[0])
    rows = pair.permute(1, 3, 2, 0).unflatten(1, tuple(size))  # [B, *size, H, 2]: a view, LSE then Delta
    key = (rows.shape, rows.stride(), rows.dtype, rows.device, tile, dilation)
    layout = None if layouts is None else layouts.get(key)
    if layout is not None:
        return permute_checked(rows, layout)
    out = tile_permute(rows, tile, dilation=dilation)
    if layouts is not None:
        layouts[key] = make_layout(rows.shape[1:-2], tile, dilation)
    return out


def _launch_extra(bwd: GNABackward, whole: tuple, lse: Any, delta: Any, xfirst: int, extra: int,
                  causal: bool) -> None:
    """The extra queries' dQ (dense rows over every key) and the extra keys' dK/dV (dense columns over every
    query row) on the flat sequence ``[B, T, H, D]``."""
    q, k, v, do, dq, dk, dv = whole
    bm, bn, warps, stages = bwd.rows_config
    tokens, group = int(q.shape[1]), bwd.heads // bwd.heads_kv
    sl = slice(xfirst, xfirst + extra)
    xq, xdo, xdq = q[:, sl], do[:, sl], dq[:, sl]
    xl, xd = lse[:, :, sl], delta[:, :, sl]
    _rows_dq_kernel[(triton.cdiv(extra, bm), bwd.heads, bwd.batch)](
        xq, k, v, xdo, xdq, xl, xd, bwd.scale * LOG2E, bwd.scale, extra, tokens, xfirst, group,
        *_strides4(xq), *_strides4(k), *_strides4(v), *_strides4(xdo), *_strides4(xdq),
        int(xl.stride(0)), int(xl.stride(1)),
        HEAD_DIM=bwd.head_dim, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, num_warps=warps, num_stages=stages)
    xk, xv, xdk, xdv = k[:, sl], v[:, sl], dk[:, sl], dv[:, sl]
    _cols_dkdv_kernel[(triton.cdiv(extra, bn), bwd.heads_kv, bwd.batch)](
        q, xk, xv, do, xdk, xdv, lse, delta, bwd.scale * LOG2E, bwd.scale, tokens, extra, xfirst, group,
        *_strides4(q), *_strides4(xk), *_strides4(xv), *_strides4(do), *_strides4(xdk), *_strides4(xdv),
        int(lse.stride(0)), int(lse.stride(1)),
        HEAD_DIM=bwd.head_dim, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, num_warps=warps, num_stages=stages)


__all__ = ["BWD_STREAM_VOLUME", "DKV_CANDIDATES", "DKV_PERMUTED_CANDIDATES", "DKV_PICK", "DKV_PICK_1D",
           "DQ_CANDIDATES", "DQ_PERMUTED_CANDIDATES", "DQ_PICK", "DQ_PICK_1D",
           "STREAM_LAYOUTS", "BwdTuning", "GNABackward", "backward_call", "build_backward",
           "candidate_tuning", "fused_tuning", "gna_backward",
           "pick_tuning", "rows_forward"]
