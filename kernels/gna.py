"""Generalized neighborhood attention (1D/2D/3D) on box tiles: kernel, launcher, functional wrapper.

One fused kernel reads q and writes o in the caller's layout ``[batch, *spatial, heads, head_dim]``:
each CTA gathers its Q tile (a box of one dilation group's sub-layout, rows ``g + d * m`` per
axis) and scatters its output rows back, so the token permutation of Q and O is folded into the
kernel. K and V are read in one of three ways (``kv_layout``):

- ``"direct"`` (1D, no dilation): KV tiles are runs of tokens; TMA loads straight from k and v.
- ``"gather"``: each KV tile's rows are gathered from k and v like the Q tile's (no extra pass).
- ``"permute"``: k and v are first permuted into contiguous box tiles (one Triton pass for both),
  then loaded with TMA; this pays off once the problem is large (see :data:`PERMUTE_MIN_KV_ROWS`).

Kernel grid ``(Q tiles of the longest group, heads, batch * groups)``. A Q tile's visited KV tiles
are the product of per-axis ranges, the full ones the product of per-axis sub-ranges (launch
arrays from :mod:`sparsesim.kernels.gna_plan`). Two flattened loops: first the full KV tiles (no
mask work), then the partial ones, i.e. the visited box minus the full box, enumerated as at most
three disjoint boxes without branches. Partial tiles mask per element from query/key coordinates
against the per-axis ``lo``/``hi`` tables, only on the axes that can be partial (constexpr flags).
When no tile is partial (perfectly block-sparse) the partial loop and all mask code compile out.

Persistent variant (``persistent=``, constexpr ``PERSISTENT``): one program per resident slot, each looping over
a static list of work items, the longest first, from a device table built once per cached launch with the
simulator's own schedule (:func:`sparsesim.simulator.makespan.persistent_schedule` over the cost model's per-CTA
times), so the model's SM schedule of it is the kernel's. By default it runs where the model predicts it
shorter than the launch order (uneven Q tiles: causal, strided); each item's arithmetic is the same either way.

The host side validates a call once and caches its launch (plan, device tables, constants) per
shapes, strides, dtypes, device and pattern: a repeated call only builds two descriptors and
launches. Nothing on the repeated path synchronizes or copies to the device, so it can be captured
in a CUDA graph (warm it up first).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import triton
import triton.language as tl

from sparsesim.hwmodels.launch import WS_KV_TILES, WS_Q_TILE, grid_problem
from sparsesim.kernels._common import LOG2E, attn_tile_update
from sparsesim.kernels._launch import (
    CallCache,
    FusedLaunch,
    check_out,
    check_qkv,
    check_scale,
    descriptor,
    descriptors_ok,
    device_gpu,
    fused_launch,
    hashable,
    interpret,
    launch_compiled,
    tensors_key,
    tma_enabled,
    tma_strides_ok,
    ws_kernel,
)
from sparsesim.kernels.gna_plan import GNAPlan, block_lists, launch_items, plan_gna
from sparsesim.kernels.permute import (
    make_layout,
    permute_checked,
    tile_permute_pair,
    tile_unpermute,
)
from sparsesim.simulator.feasibility import KV_LAYOUTS, PERMUTE_MIN_KV_ROWS, kv_layout
from sparsesim.simulator.makespan import ScheduleChoice, persistent_schedule, schedule_choice

_MODE = {"gather": 0, "permute_ptr": 1, "permute": 2, "direct": 3}


@triton.jit
def _axis_mask(mask, lo, hi, kc):
    return mask & (kc[None, :] >= lo[:, None]) & (kc[None, :] <= hi[:, None])


@triton.jit
def _rows(base, idx, t0, t1, t2, g0, g1, g2, T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
          D0, D1, D2, L0, L1, L2, s0, s1, s2):
    """Offsets (int64) and validity of the rows of box tile ``(t0, t1, t2)`` of group ``(g0, g1, g2)``."""
    x0 = g0 + D0 * (t0 * T0 + idx // (T1 * T2))
    x1 = g1 + D1 * (t1 * T1 + (idx // T2) % T1)
    x2 = g2 + D2 * (t2 * T2 + idx % T2)
    ok = (x0 < L0) & (x1 < L1) & (x2 < L2)
    off = base + x0.to(tl.int64) * s0 + x1.to(tl.int64) * s1 + x2.to(tl.int64) * s2
    return off, ok


@triton.jit
def _load_kv(K, V, k_base, v_base, offs_n, offs_d, t0, t1, t2, g0, g1, g2, D0, D1, D2, L0, L1, L2, NK1, NK2,
             s_k0, s_k1, s_k2, s_kd, s_v0, s_v1, s_v2, s_vd, kv_row0, b32, hk32,
             KT0: tl.constexpr, KT1: tl.constexpr, KT2: tl.constexpr, BLOCK_N: tl.constexpr,
             HEAD_DIM: tl.constexpr, KV_MODE: tl.constexpr, PADDED: tl.constexpr):
    """K and V of KV tile ``(t0, t1, t2)``; ``PADDED``: the tile may hold positions past the layout."""
    if KV_MODE == 0:  # gather rows from the caller's layout
        k_off, ok = _rows(k_base, offs_n, t0, t1, t2, g0, g1, g2, KT0, KT1, KT2, D0, D1, D2, L0, L1, L2,
                          s_k0, s_k1, s_k2)
        v_off, _ = _rows(v_base, offs_n, t0, t1, t2, g0, g1, g2, KT0, KT1, KT2, D0, D1, D2, L0, L1, L2,
                         s_v0, s_v1, s_v2)
        if PADDED:
            k = tl.load(K + k_off[:, None] + offs_d[None, :] * s_kd, mask=ok[:, None], other=0.0)
            v = tl.load(V + v_off[:, None] + offs_d[None, :] * s_vd, mask=ok[:, None], other=0.0)
        else:
            k = tl.load(K + k_off[:, None] + offs_d[None, :] * s_kd)
            v = tl.load(V + v_off[:, None] + offs_d[None, :] * s_vd)
    elif KV_MODE == 1:  # permuted, zero-padded buffers [B * G, H_kv, tiles * BLOCK_N, D], pointers
        row = ((t0 * NK1 + t1) * NK2 + t2).to(tl.int64) * BLOCK_N + offs_n
        k = tl.load(K + k_base + row[:, None] * s_k2 + offs_d[None, :] * s_kd)
        v = tl.load(V + v_base + row[:, None] * s_v2 + offs_d[None, :] * s_vd)
    elif KV_MODE == 2:  # permuted buffers through a 2D TMA descriptor [B * G * H_kv * padded, D]
        row = kv_row0 + ((t0 * NK1 + t1) * NK2 + t2) * BLOCK_N
        k = K.load([row, 0])
        v = V.load([row, 0])
    else:  # 1D runs of tokens straight from [B, N, H_kv, D] (4D descriptor; rows past N read as zeros)
        k = K.load([b32, t2 * BLOCK_N, hk32, 0]).reshape([BLOCK_N, HEAD_DIM])
        v = V.load([b32, t2 * BLOCK_N, hk32, 0]).reshape([BLOCK_N, HEAD_DIM])
    return k, v


@triton.jit
def _gna_fwd_tile(
    qt, hl, bg,
    Q, K, V, Out, RANGES, LOHI, HMAP, XK, XV, LSE, qk_scale,
    GROUP, D0, D1, D2, L0, L1, L2, NQ1, NQ2, NK1, NK2, GMAX, NQMAX, LPMAX, HKV, NX, NKP,
    s_qb, s_q0, s_q1, s_q2, s_qh, s_qd,
    s_kb, s_k0, s_k1, s_k2, s_kh, s_kd,
    s_vb, s_v0, s_v1, s_v2, s_vh, s_vd,
    s_ob, s_o0, s_o1, s_o2, s_oh, s_od,
    s_xkb, s_xkn, s_xkh, s_xkd, s_xvb, s_xvn, s_xvh, s_xvd, s_lb, s_lh,
    HEAD_DIM: tl.constexpr,
    QT0: tl.constexpr, QT1: tl.constexpr, QT2: tl.constexpr,
    KT0: tl.constexpr, KT1: tl.constexpr, KT2: tl.constexpr,
    MASK0: tl.constexpr, MASK1: tl.constexpr, MASK2: tl.constexpr, BLOCK_SPARSE: tl.constexpr,
    EXTRA: tl.constexpr, XTAIL: tl.constexpr,
    HAS_HMAP: tl.constexpr, KV_MODE: tl.constexpr, WARP_SPEC: tl.constexpr, SAVE_LSE: tl.constexpr,
):
    """One work item: Q tile ``qt`` (of the longest group's grid) of launch head ``hl`` and folded index ``bg``."""
    BLOCK_M: tl.constexpr = QT0 * QT1 * QT2
    BLOCK_N: tl.constexpr = KT0 * KT1 * KT2
    # With a head map the launch runs heads HMAP[0..] of the caller's q/k/v/out (whole GQA groups, in
    # order): Q, O and caller-layout K/V are addressed by the caller's head; a permuted K/V buffer holds
    # only the launch's K/V heads, addressed by the launch's own index.
    if HAS_HMAP:
        h = tl.load(HMAP + hl)
    else:
        h = hl
    hk32 = h // GROUP
    hkb32 = hl // GROUP
    # Folded index = batch * G + group; group -> per-axis dilation group (row-major over axes).
    G = D0 * D1 * D2
    b32 = bg // G
    g = bg % G
    g2 = g % D2
    g1 = (g // D2) % D1
    g0 = g // (D1 * D2)
    q2 = qt % NQ2
    q1 = (qt // NQ2) % NQ1
    q0 = qt // (NQ1 * NQ2)

    # Per-axis schedule of this Q tile: first visited, count, first full, count.
    r0 = RANGES + ((0 * GMAX + g0) * NQMAX + q0) * 4
    r1 = RANGES + ((1 * GMAX + g1) * NQMAX + q1) * 4
    r2 = RANGES + ((2 * GMAX + g2) * NQMAX + q2) * 4
    vf0, nv0, ff0, nf0 = tl.load(r0), tl.load(r0 + 1), tl.load(r0 + 2), tl.load(r0 + 3)
    vf1, nv1, ff1, nf1 = tl.load(r1), tl.load(r1 + 1), tl.load(r1 + 2), tl.load(r1 + 3)
    vf2, nv2, ff2, nf2 = tl.load(r2), tl.load(r2 + 1), tl.load(r2 + 2), tl.load(r2 + 3)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    b64 = b32.to(tl.int64)
    h64 = h.to(tl.int64)
    hk64 = hk32.to(tl.int64)
    hkb64 = hkb32.to(tl.int64)
    # Q rows gathered from the caller's layout (the permutation folded into the load).
    q_off, q_ok = _rows(b64 * s_qb + h64 * s_qh, offs_m, q0, q1, q2, g0, g1, g2, QT0, QT1, QT2, D0, D1, D2,
                        L0, L1, L2, s_q0, s_q1, s_q2)
    q = tl.load(Q + q_off[:, None] + offs_d[None, :] * s_qd, mask=q_ok[:, None], other=0.0)
    kv_row0 = (bg * HKV + hkb32) * NKP
    if KV_MODE == 0:
        k_base = b64 * s_kb + hk64 * s_kh
        v_base = b64 * s_vb + hk64 * s_vh
    else:
        k_base = bg.to(tl.int64) * s_kb + hkb64 * s_kh
        v_base = bg.to(tl.int64) * s_vb + hkb64 * s_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Full KV tiles: the product of the per-axis full ranges; no mask work, no padded keys.
    n_full = nf0 * nf1 * nf2
    for it in tl.range(0, n_full, warp_specialize=WARP_SPEC):
        i2 = it % nf2
        i1 = (it // nf2) % nf1
        i0 = it // (nf2 * nf1)
        k, v = _load_kv(K, V, k_base, v_base, offs_n, offs_d, ff0 + i0, ff1 + i1, ff2 + i2, g0, g1, g2,
                        D0, D1, D2, L0, L1, L2, NK1, NK2, s_k0, s_k1, s_k2, s_kd, s_v0, s_v1, s_v2, s_vd,
                        kv_row0, b32, hk32, KT0, KT1, KT2, BLOCK_N, HEAD_DIM, KV_MODE, False)
        acc, l_i, m_i = attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, 0, False)

    if not BLOCK_SPARSE:
        # Per-row visible key interval on each maskable axis (query coordinates from the in-tile index).
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
        # Partial KV tiles: visited box minus full box = three disjoint boxes
        #   B0: axis0 in (visited \ full), axes 1, 2 visited
        #   B1: axis0 full, axis1 in (visited \ full), axis2 visited
        #   B2: axes 0, 1 full, axis2 in (visited \ full)
        # where "visited \ full" maps index i to vf + i (+ nf past the gap), left = ff - vf.
        c0, c1, c2 = nv0 - nf0, nv1 - nf1, nv2 - nf2
        s0 = c0 * nv1 * nv2
        s1 = nf0 * c1 * nv2
        s2 = nf0 * nf1 * c2
        for p in range(0, s0 + s1 + s2):
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
            k, v = _load_kv(K, V, k_base, v_base, offs_n, offs_d, t0, t1, t2, g0, g1, g2,
                            D0, D1, D2, L0, L1, L2, NK1, NK2, s_k0, s_k1, s_k2, s_kd, s_v0, s_v1, s_v2, s_vd,
                            kv_row0, b32, hk32, KT0, KT1, KT2, BLOCK_N, HEAD_DIM, KV_MODE, True)
            mask = tl.full([BLOCK_M, BLOCK_N], 1, tl.int1)
            if MASK0:
                mask = _axis_mask(mask, lo0, hi0, t0 * KT0 + offs_n // (KT1 * KT2))
            if MASK1:
                mask = _axis_mask(mask, lo1, hi1, t1 * KT1 + (offs_n // KT2) % KT1)
            if MASK2:
                mask = _axis_mask(mask, lo2, hi2, t2 * KT2 + offs_n % KT2)
            acc, l_i, m_i = attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, mask, True)

    if EXTRA:
        # Extra keys (joint text tokens, sinks): NX rows of the caller's sequence outside the layout, seen by
        # every layout query; read in place (no permutation) in the same online softmax, the last tile masked.
        xk_base = XK + b64 * s_xkb + hk64 * s_xkh + offs_d[None, :] * s_xkd
        xv_base = XV + b64 * s_xvb + hk64 * s_xvh + offs_d[None, :] * s_xvd
        n_xfull = NX // BLOCK_N
        for j in range(0, n_xfull):
            xrow = (j * BLOCK_N + offs_n).to(tl.int64)
            k = tl.load(xk_base + xrow[:, None] * s_xkn)
            v = tl.load(xv_base + xrow[:, None] * s_xvn)
            acc, l_i, m_i = attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, 0, False)
        if XTAIL:
            xrow = (n_xfull * BLOCK_N + offs_n).to(tl.int64)
            x_ok = xrow < NX
            k = tl.load(xk_base + xrow[:, None] * s_xkn, mask=x_ok[:, None], other=0.0)
            v = tl.load(xv_base + xrow[:, None] * s_xvn, mask=x_ok[:, None], other=0.0)
            acc, l_i, m_i = attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, x_ok[None, :], True)

    acc = acc / l_i[:, None]
    o_off, _ = _rows(b64 * s_ob + h64 * s_oh, offs_m, q0, q1, q2, g0, g1, g2, QT0, QT1, QT2, D0, D1, D2,
                     L0, L1, L2, s_o0, s_o1, s_o2)
    tl.store(Out + o_off[:, None] + offs_d[None, :] * s_od, acc.to(Out.dtype.element_ty), mask=q_ok[:, None])
    if SAVE_LSE:
        # The row's log-sum-exp (natural log) for the backward, at [b, h, flat layout index] of a float32 buffer.
        x0 = g0 + D0 * (q0 * QT0 + offs_m // (QT1 * QT2))
        x1 = g1 + D1 * (q1 * QT1 + (offs_m // QT2) % QT1)
        x2 = g2 + D2 * (q2 * QT2 + offs_m % QT2)
        tok = (x0.to(tl.int64) * L1 + x1) * L2 + x2
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # ln 2: a literal (a jit function reads no globals)
        tl.store(LSE + b64 * s_lb + h64 * s_lh + tok, lse, mask=q_ok)


@triton.jit
def _gna_fwd_kernel(
    Q, K, V, Out, RANGES, LOHI, HMAP, XK, XV, LSE, qk_scale,
    GROUP, D0, D1, D2, L0, L1, L2, NQ1, NQ2, NK1, NK2, GMAX, NQMAX, LPMAX, HKV, NX, NKP,
    s_qb, s_q0, s_q1, s_q2, s_qh, s_qd,
    s_kb, s_k0, s_k1, s_k2, s_kh, s_kd,
    s_vb, s_v0, s_v1, s_v2, s_vh, s_vd,
    s_ob, s_o0, s_o1, s_o2, s_oh, s_od,
    s_xkb, s_xkn, s_xkh, s_xkd, s_xvb, s_xvn, s_xvh, s_xvd, s_lb, s_lh,
    SCHED, NQT, NHL,
    HEAD_DIM: tl.constexpr,
    QT0: tl.constexpr, QT1: tl.constexpr, QT2: tl.constexpr,
    KT0: tl.constexpr, KT1: tl.constexpr, KT2: tl.constexpr,
    MASK0: tl.constexpr, MASK1: tl.constexpr, MASK2: tl.constexpr, BLOCK_SPARSE: tl.constexpr,
    EXTRA: tl.constexpr, XTAIL: tl.constexpr,
    HAS_HMAP: tl.constexpr, KV_MODE: tl.constexpr, WARP_SPEC: tl.constexpr, SAVE_LSE: tl.constexpr = False,
    PERSISTENT: tl.constexpr = False,
):
    """The forward: one work item per program (grid ``(Q tiles, heads, batch * groups)``), or, ``PERSISTENT``,
    the items ``SCHED[SCHED[p]:SCHED[p + 1]]`` of program ``p`` (launch indices ``(bg * NHL + hl) * NQT + qt``):
    the static schedule the host built with the simulator's ``persistent_schedule``."""
    if PERSISTENT:
        pid = tl.program_id(0)
        for i in range(tl.load(SCHED + pid), tl.load(SCHED + pid + 1)):
            item = tl.load(SCHED + i)
            bh = item // NQT
            _gna_fwd_tile(
                item % NQT, bh % NHL, bh // NHL,
                Q, K, V, Out, RANGES, LOHI, HMAP, XK, XV, LSE, qk_scale,
                GROUP, D0, D1, D2, L0, L1, L2, NQ1, NQ2, NK1, NK2, GMAX, NQMAX, LPMAX, HKV, NX, NKP,
                s_qb, s_q0, s_q1, s_q2, s_qh, s_qd, s_kb, s_k0, s_k1, s_k2, s_kh, s_kd,
                s_vb, s_v0, s_v1, s_v2, s_vh, s_vd, s_ob, s_o0, s_o1, s_o2, s_oh, s_od,
                s_xkb, s_xkn, s_xkh, s_xkd, s_xvb, s_xvn, s_xvh, s_xvd, s_lb, s_lh,
                HEAD_DIM, QT0, QT1, QT2, KT0, KT1, KT2, MASK0, MASK1, MASK2, BLOCK_SPARSE, EXTRA, XTAIL,
                HAS_HMAP, KV_MODE, WARP_SPEC, SAVE_LSE)
    else:
        _gna_fwd_tile(
            tl.program_id(0), tl.program_id(1), tl.program_id(2),  # the launch's own head index on axis 1
            Q, K, V, Out, RANGES, LOHI, HMAP, XK, XV, LSE, qk_scale,
            GROUP, D0, D1, D2, L0, L1, L2, NQ1, NQ2, NK1, NK2, GMAX, NQMAX, LPMAX, HKV, NX, NKP,
            s_qb, s_q0, s_q1, s_q2, s_qh, s_qd, s_kb, s_k0, s_k1, s_k2, s_kh, s_kd,
            s_vb, s_v0, s_v1, s_v2, s_vh, s_vd, s_ob, s_o0, s_o1, s_o2, s_oh, s_od,
            s_xkb, s_xkn, s_xkh, s_xkd, s_xvb, s_xvn, s_xvh, s_xvd, s_lb, s_lh,
            HEAD_DIM, QT0, QT1, QT2, KT0, KT1, KT2, MASK0, MASK1, MASK2, BLOCK_SPARSE, EXTRA, XTAIL,
            HAS_HMAP, KV_MODE, WARP_SPEC, SAVE_LSE)

def _spatial_strides(x: Any, rank: int) -> tuple[int, ...]:
    """(batch, axis0, axis1, axis2, head, dim) strides of ``[B, *spatial, H, D]`` (unit axes stride 0)."""
    st = [int(s) for s in x.stride()]
    return (st[0], *([0] * (3 - rank)), *st[1:1 + rank], st[-2], st[-1])


def _permuted_strides(x: Any) -> tuple[int, ...]:
    """The same six strides for a permuted ``[B * G, H, padded, D]`` buffer (rows on the last axis)."""
    st = [int(s) for s in x.stride()]
    return (st[0], 0, 0, st[2], st[1], st[3])


@dataclass(frozen=True, eq=False)
class PreparedKV:
    """K and V ready for the kernel, with their strides, the padded KV length and the load mode."""

    k: Any
    v: Any
    k_strides: tuple[int, ...]
    v_strides: tuple[int, ...]
    n_kp: int
    mode: int
    keep: tuple[Any, Any]  # the tensors behind descriptors, alive until the launch


@dataclass(frozen=True, eq=False)
class GNALaunch:
    """Everything a call needs after validation: the plan, its device tables and the kernel's constants."""

    plan: GNAPlan
    heads: int
    heads_kv: int
    head_dim: int
    batch: int
    scale: float
    kv_layout: str
    ranges: Any
    lohi: Any
    config: FusedLaunch
    constants: dict[str, Any]
    extra: int = 0  # extra keys outside the layout that every query of the launch also sees
    #: The persistent schedule as the kernel reads it (int32 on the device: per program the first and end
    #: offsets, then the items program by program) and its program count; None: one program per work item.
    sched: Any = None
    programs: int = 0
    #: The model's launch-order and persistent makespans of this launch (None when persistent=False was asked).
    choice: ScheduleChoice | None = None
    compiled: dict[Any, Any] = field(default_factory=dict)  # compiled kernels of repeated calls
    head_maps: dict[Any, Any] = field(default_factory=dict)  # device tables of head subsets (head_tables)
    #: prepare_kv's work per K/V shapes, strides, dtypes and device: the permutation's layout, the strides handed
    #: to the kernel, the padded KV length and whether the (fresh or given) buffers' strides suit TMA descriptors.
    kv_memo: dict[Any, Any] = field(default_factory=dict)
    descriptors: dict[Any, Any] = field(default_factory=dict)  # TMA descriptor templates (_launch.descriptor)
    ws_tables: dict[Any, Any] = field(default_factory=dict)  # block lists of the ws route, per device

    @functools.cached_property
    def grid(self) -> tuple[int, int, int]:
        if self.sched is not None:
            return (self.programs, 1, 1)
        return (self.plan.num_q_tiles, self.heads, self.batch * self.plan.groups)

    @functools.cached_property
    def shape_args(self) -> tuple[int, ...]:
        """The kernel's integer arguments that the plan and the heads fix (computed once per launch)."""
        plan = self.plan
        return (self.heads // self.heads_kv, *plan.dilation3, *plan.size3, *plan.q_grid3[1:], *plan.kv_grid3[1:],
                int(plan.ranges.shape[1]), int(plan.ranges.shape[2]), int(plan.lohi.shape[2]), self.heads_kv,
                self.extra)

    @functools.cached_property
    def constexprs(self) -> dict[str, Any]:
        """The constexprs in the kernel's signature order, KV_MODE and WARP_SPEC excepted."""
        return {k: self.constants[k] for k in ("HEAD_DIM", "QT0", "QT1", "QT2", "KT0", "KT1", "KT2", "MASK0", "MASK1",
                                               "MASK2", "BLOCK_SPARSE", "EXTRA", "XTAIL")}

    def prepare_kv(self, k: Any, v: Any, kv_heads: Any = None) -> PreparedKV:
        """K and V as the kernel reads them: descriptors, permuted buffers or the tensors themselves.

        ``kv_heads`` (an int32 tensor): the launch runs only these K/V heads of ``k``/``v``; a permuted
        buffer then holds just them, in that order (the permutation pass reads them in place through the
        map; the caller's layout is read in place otherwise)."""
        plan, mode = self.plan, self.kv_layout
        memo_key = (k.shape, k.stride(), v.shape, v.stride(), k.dtype, v.dtype, k.device)
        hit = self.kv_memo.get(memo_key) if kv_heads is None else None
        if hit is not None:  # k/v of a key checked and prepared before: no checks, no layout lookup
            layout, (k_strides, v_strides), padded, strides_ok = hit
            if mode == "permute":
                kp, vp = permute_checked(k, layout, v)
                if strides_ok and tma_enabled() and kp.data_ptr() % 16 == 0 and vp.data_ptr() % 16 == 0:
                    block = [plan.kv_volume, self.head_dim]
                    return PreparedKV(descriptor(kp.view(-1, self.head_dim), block, self.descriptors),
                                      descriptor(vp.view(-1, self.head_dim), block, self.descriptors),
                                      k_strides, v_strides, padded, _MODE["permute"], (kp, vp))
                return PreparedKV(kp, vp, k_strides, v_strides, padded, _MODE["permute_ptr"], (kp, vp))
            if mode == "direct" and strides_ok and tma_enabled() and k.data_ptr() % 16 == 0 \
                    and v.data_ptr() % 16 == 0:
                block = [1, plan.kv_volume, 1, self.head_dim]
                return PreparedKV(descriptor(k, block, self.descriptors), descriptor(v, block, self.descriptors),
                                  k_strides, v_strides, 0, _MODE["direct"], (k, v))
            return PreparedKV(k, v, k_strides, v_strides, 0, _MODE["gather"], (k, v))
        prepared = self._prepare_kv(k, v, kv_heads)
        if kv_heads is None and k.shape == v.shape and k.stride() == v.stride():
            buffers = prepared.keep
            strides_ok = tma_strides_ok(buffers[0]) and tma_strides_ok(buffers[1])
            if mode == "permute":
                strides_ok = strides_ok and buffers[0].numel() // self.head_dim < 2**31
                layout = make_layout(k.shape[1:-2], plan.schedule.kv_tile, plan.pattern.dilation)
            else:
                layout = None
            if len(self.kv_memo) >= 16:
                self.kv_memo.clear()
            self.kv_memo[memo_key] = (layout, (prepared.k_strides, prepared.v_strides), prepared.n_kp, strides_ok)
        return prepared

    def _prepare_kv(self, k: Any, v: Any, kv_heads: Any = None) -> PreparedKV:
        """:meth:`prepare_kv` with every check (a call key's first call)."""
        plan, rank, mode = self.plan, self.plan.pattern.rank, self.kv_layout
        if mode == "permute":
            if k.stride() != v.stride():  # the pair permutation reads both through one set of strides
                k, v = k.contiguous(), v.contiguous()
            kp, vp = tile_permute_pair(k, v, plan.schedule.kv_tile, dilation=plan.pattern.dilation, heads=kv_heads)
            strides = (_permuted_strides(kp), _permuted_strides(vp))
            if descriptors_ok(kp, vp) and kp.numel() // self.head_dim < 2**31:
                from triton.tools.tensor_descriptor import TensorDescriptor

                block = [plan.kv_volume, self.head_dim]
                return PreparedKV(TensorDescriptor.from_tensor(kp.view(-1, self.head_dim), block),
                                  TensorDescriptor.from_tensor(vp.view(-1, self.head_dim), block),
                                  *strides, int(kp.shape[2]), _MODE["permute"], (kp, vp))
            return PreparedKV(kp, vp, *strides, int(kp.shape[2]), _MODE["permute_ptr"], (kp, vp))
        strides = (_spatial_strides(k, rank), _spatial_strides(v, rank))
        if mode == "direct" and descriptors_ok(k, v):
            from triton.tools.tensor_descriptor import TensorDescriptor

            block = [1, plan.kv_volume, 1, self.head_dim]
            return PreparedKV(TensorDescriptor.from_tensor(k, block), TensorDescriptor.from_tensor(v, block),
                              *strides, 0, _MODE["direct"], (k, v))
        return PreparedKV(k, v, *strides, 0, _MODE["gather"], (k, v))

    def launch(self, q: Any, kv: PreparedKV, out: Any, hmap: Any = None, xkv: tuple[Any, Any] | None = None,
               lse: Any = None) -> Any:
        """The fused kernel alone, on prepared K/V (:meth:`prepare_kv`); ``hmap`` (int32, one entry per
        launched head): the caller's query heads this launch runs (``q``/``out`` hold every head); ``xkv``: the
        extra keys and values ``[batch, extra, heads_kv, head_dim]`` (views into the caller's sequence, every
        K/V head), required when the launch has extra tokens; ``lse``: a float32 ``[batch, heads, tokens]`` view
        (last stride 1, tokens = the layout's, row-major) that receives each query row's log-sum-exp.

        The first launch of a (K/V mode, pointer alignments) goes through Triton's launcher, which
        binds and specializes every argument; later ones call the compiled kernel directly with the
        same arguments (specializations depend only on what the call key and the alignments fix).
        """
        rank = self.plan.pattern.rank
        has_hmap = hmap is not None
        if self.extra:
            if xkv is None:
                raise ValueError(f"gna_attention: the launch has {self.extra} extra tokens; allowed: xkv given")
            xk, xv = xkv
            x_strides = (*(int(s) for s in xk.stride()), *(int(s) for s in xv.stride()))
        else:
            xk, xv, x_strides = q, q, (0,) * 8
        save_lse = lse is not None
        l_strides = (int(lse.stride(0)), int(lse.stride(1))) if save_lse else (0, 0)
        args = (q, kv.k, kv.v, out, self.ranges, self.lohi, hmap if has_hmap else self.ranges, xk, xv,
                lse if save_lse else out, self.scale * LOG2E, *self.shape_args, kv.n_kp,
                *_spatial_strides(q, rank), *kv.k_strides, *kv.v_strides, *_spatial_strides(out, rank), *x_strides,
                *l_strides, self.ranges if self.sched is None else self.sched, self.plan.num_q_tiles, self.heads)
        persistent = self.sched is not None
        key = (kv.mode, has_hmap, save_lse, persistent, q.data_ptr() % 16, out.data_ptr() % 16,
               *(x.data_ptr() % 16 for x in kv.keep if kv.mode in (0, 1)),
               *((xk.data_ptr() % 16, xv.data_ptr() % 16, x_strides) if self.extra else ()),
               *((lse.data_ptr() % 16, l_strides) if save_lse else ()))
        c = self.constants
        launch_compiled(self.compiled, key, _gna_fwd_kernel, self.grid, args,
                        {**self.constexprs, "HAS_HMAP": has_hmap, "KV_MODE": kv.mode,
                         "WARP_SPEC": c["WARP_SPEC"] and not persistent, "SAVE_LSE": save_lse,
                         "PERSISTENT": persistent},
                        {"num_warps": c["num_warps"], "num_stages": c["num_stages"]})
        return out

    def run(self, q: Any, k: Any, v: Any, out: Any = None, heads: tuple[int, ...] | None = None,
            xkv: tuple[Any, Any] | None = None, lse: Any = None) -> Any:
        """Prepare K/V and launch, on tensors already checked to match this launch (``heads``: the caller's
        query heads it runs, whole GQA groups in order; ``q``/``k``/``v``/``out`` then hold every head;
        ``xkv``: the extra keys and values, ``lse``: the log-sum-exp buffer, as :meth:`launch` takes them). A call
        on every head without extra keys, with or without ``lse``, runs the warp-specialized kernel where
        :meth:`ws_route` says so (:meth:`ws_run`), the Triton GNA kernel otherwise."""
        import torch

        out = torch.empty_like(q) if out is None else out
        if heads is None and xkv is None and self.ws_route(q, k, v, out):
            return self.ws_run(q, k, v, out, lse)
        if heads is None:
            return self.launch(q, self.prepare_kv(k, v), out, xkv=xkv, lse=lse)
        if lse is not None:
            raise ValueError("gna_attention: a head subset saves no log-sum-exp; allowed: heads=None with lse")
        hmap, kv_heads = self.head_tables(heads, q.device)
        return self.launch(q, self.prepare_kv(k, v, kv_heads), out, hmap, xkv=xkv)

    def ws_route(self, q: Any, k: Any, v: Any, out: Any) -> bool:
        """Whether this call runs as a block-sparse call of the warp-specialized Hopper kernel reading its tiles
        in place (:mod:`sparsesim.kernels.gluon_fwd`): a perfectly block-sparse plan without dilation or extra
        keys, 128-token Q tiles, 64/128-token KV tiles, layout axes that the tiles divide (no padding), a
        call large enough (:func:`~sparsesim.kernels.gluon_fwd.use_ws` on its visited tiles). The inference and
        the training forward (an LSE buffer, :meth:`run`) alike; :meth:`run` asks it only for calls on every head
        without extra keys."""
        plan = self.plan
        if self.extra or not plan.block_sparse or plan.groups != 1 or plan.q_volume != WS_Q_TILE \
                or plan.kv_volume not in WS_KV_TILES:
            return False
        size = plan.pattern.input_size
        if any(n % t for n, t in zip(size, plan.schedule.q_tile, strict=True)) \
                or any(n % t for n, t in zip(size, plan.schedule.kv_tile, strict=True)):
            return False
        ws = ws_kernel()
        if ws is None or not ws.supported(q, k, v, out):
            return False
        visited = self._ws_visited()
        return bool(ws.use_ws(q, k, v, out, work=visited * plan.q_volume * plan.kv_volume * self.batch * self.heads))

    def _ws_visited(self) -> int:
        """Visited (Q tile, KV tile) pairs of the plan's block lists (one head), counted once."""
        hit = self.ws_tables.get("visited")
        if hit is None:
            hit = self.ws_tables["visited"] = int(self._ws_lists_host()[0].sum())
        return int(hit)

    def _ws_lists_host(self) -> tuple[Any, Any]:
        hit = self.ws_tables.get("host")
        if hit is None:
            hit = self.ws_tables["host"] = block_lists(self.plan)
        return hit

    def ws_run(self, q: Any, k: Any, v: Any, out: Any, lse: Any = None) -> Any:
        """The ws route (:meth:`ws_route`): the kernel on the plan's block lists, each tile read in place as one
        TMA box of the layout (nothing permuted), the output rows written where their tokens are; ``lse`` (a
        float32 ``[batch, heads, tokens]`` view, as :meth:`launch` takes it): each row's log-sum-exp (natural
        log), through a contiguous buffer where the view is not one."""
        import torch

        plan = self.plan
        lists = self.ws_tables.get(q.device)
        if lists is None:
            kv_num, kv_idx = self._ws_lists_host()
            lists = tuple(torch.from_numpy(x).to(q.device) for x in (kv_num, kv_idx, np.zeros_like(kv_num)))
            self.ws_tables[q.device] = lists
        pad = (1,) * (3 - plan.pattern.rank)
        box = tuple((*pad, *x) for x in (plan.pattern.input_size, plan.schedule.q_tile, plan.schedule.kv_tile))
        lp = lse if lse is None or lse.is_contiguous() else torch.empty(lse.shape, dtype=torch.float32,
                                                                         device=q.device)
        visited = self._ws_visited()
        ws = ws_kernel()
        ws.ws_forward(q, k, v, out, lp, self.scale, lists=lists, map_heads=1, block_n=plan.kv_volume, box=box,
                      cache=self.compiled, persistent=ws.persistent_for(visited / lists[0].numel()))
        if lp is not lse:
            lse.copy_(lp)
        return out

    def head_tables(self, heads: tuple[int, ...], device: Any) -> tuple[Any, Any]:
        """The device tables of a head subset (the query heads; their K/V heads; both int32), made once."""
        import torch

        hit = self.head_maps.get(heads)
        if hit is None:
            group = self.heads // self.heads_kv
            hit = (torch.tensor(heads, dtype=torch.int32, device=device),
                   torch.tensor([x // group for x in heads[::group]], dtype=torch.int32, device=device))
            self.head_maps[heads] = hit
        return hit


def choose_kv_layout(plan: GNAPlan, batch: int, heads_kv: int) -> str:
    """The core's rule (:func:`sparsesim.simulator.feasibility.kv_layout`), which the cost model uses too."""
    return kv_layout(plan.pattern.rank, plan.groups, batch * plan.pattern.num_tokens * heads_kv)


def build_launch(q: Any, k: Any, v: Any, *, window: Any, stride: Any, dilation: Any, causal: Any, q_tile: Any,
                 kv_tile: Any, scale: Any, kv_layout: str | None, extra: int = 0, persistent: Any = None) -> GNALaunch:
    """Validate a call (one-line ValueErrors) and prepare its launch (``q``/``k``/``v``: the layout's tokens;
    ``extra``: how many extra keys every query also sees, handed to :meth:`GNALaunch.run`; ``persistent``: as
    :func:`gna_attention` takes it)."""
    import torch

    from sparsesim.simulator.feasibility import can_run

    dims = check_qkv(q, k, v, spatial_ranks=(1, 2, 3), what="gna_attention")
    gpu, smem = device_gpu(q.device)
    if q_tile is None and kv_tile is None:  # the cost model's pick for this GPU and problem
        from sparsesim.simulator import GNAPattern
        from sparsesim.simulator.tile_choice import choose_tiles

        pattern = GNAPattern(input_size=dims.spatial, window=window, stride=stride, dilation=dilation, causal=causal)
        picked = choose_tiles(pattern, gpu.name, dims.heads, dims.heads_kv, dims.head_dim, dims.batch,
                              "fp16" if dims.dtype == "fp32" else dims.dtype)
        if picked is not None:
            q_tile, kv_tile = picked
    plan = plan_gna(dims.spatial, window=window, stride=stride, dilation=dilation, causal=causal,
                    q_tile=q_tile, kv_tile=kv_tile, gpu=gpu)
    can_run(q_tile=plan.schedule.q_tile, kv_tile=plan.schedule.kv_tile, head_dim=dims.head_dim, dtype=dims.dtype,
            gpu=gpu, raise_error=True, **({"interpreter": True} if interpret() else {"smem_bytes": smem}))
    grid_error = grid_problem((plan.num_q_tiles, dims.heads, dims.batch * plan.groups),
                              ("Q tiles", "heads", "batch x dilation groups"))
    if grid_error:
        raise ValueError(f"gna_attention: {grid_error}")
    if kv_layout is None:
        kv_layout = choose_kv_layout(plan, dims.batch, dims.heads_kv)
    elif kv_layout not in KV_LAYOUTS:
        raise ValueError(f"gna_attention: kv_layout={kv_layout!r}; allowed: None (automatic), "
                         f"{', '.join(map(repr, KV_LAYOUTS))}")
    elif kv_layout == "direct" and (plan.pattern.rank != 1 or plan.groups != 1):
        raise ValueError("gna_attention: kv_layout='direct' needs a 1D layout without dilation; "
                         "allowed there: 'gather' or 'permute'")
    cfg = fused_launch(plan.q_volume, plan.kv_volume, dims.head_dim, dims.dtype, smem)
    if os.environ.get("SPARSESIM_WARP_SPECIALIZE") == "1":
        cfg = FusedLaunch(cfg.num_warps, cfg.num_stages, warp_specialize=True)
    qt, kt = plan.q_tile3, plan.kv_tile3
    constants = dict(HEAD_DIM=dims.head_dim, QT0=qt[0], QT1=qt[1], QT2=qt[2], KT0=kt[0], KT1=kt[1], KT2=kt[2],
                     MASK0=plan.mask_axes[0], MASK1=plan.mask_axes[1], MASK2=plan.mask_axes[2],
                     BLOCK_SPARSE=plan.block_sparse, EXTRA=extra > 0, XTAIL=extra % plan.kv_volume != 0,
                     WARP_SPEC=cfg.warp_specialize,
                     num_warps=cfg.num_warps, num_stages=cfg.num_stages)  # constexprs in signature order
    ranges = torch.from_numpy(plan.ranges.copy()).to(q.device)
    lohi = torch.from_numpy(plan.lohi.copy()).to(q.device)
    choice, table = persistent_table(plan, gpu, dims.batch, dims.heads, dims.heads_kv, dims.head_dim, dims.dtype,
                                     kv_layout, persistent)
    sched = None if table is None else torch.from_numpy(table).to(q.device)
    return GNALaunch(plan=plan, heads=dims.heads, heads_kv=dims.heads_kv, head_dim=dims.head_dim, batch=dims.batch,
                     scale=check_scale(scale, dims.head_dim), kv_layout=kv_layout, ranges=ranges, lohi=lohi,
                     config=cfg, constants=constants, extra=int(extra), sched=sched,
                     programs=0 if table is None else int(table[0]) - 1, choice=choice)


def _model_ctas(plan: GNAPlan, gpu: Any, batch: int, heads: int, heads_kv: int, head_dim: int, dtype: str,
                kv_layout: str) -> Any:
    """The cost model's CTAs of this launch (``triton`` profile of the device's GPU file; fp32 priced as fp16)."""
    from sparsesim.hwmodels.profiles import load_profile
    from sparsesim.simulator.cost import Problem, forward_ctas

    problem = Problem(batch=batch, heads=heads, heads_kv=heads_kv, head_dim=head_dim,
                      dtype="fp16" if dtype == "fp32" else dtype)
    return forward_ctas(gpu, load_profile("triton", gpu), problem, plan.schedule.tilemap, kv_layout)


def persistent_table(plan: GNAPlan, gpu: Any, batch: int, heads: int, heads_kv: int, head_dim: int, dtype: str,
                     kv_layout: str, persistent: Any = None) -> tuple[ScheduleChoice | None, np.ndarray | None]:
    """The model's schedule choice for a launch and, where it runs persistent, the kernel's int32 table.

    ``persistent``: ``None`` (persistent where :func:`sparsesim.simulator.makespan.schedule_choice` predicts it
    shorter), ``True`` (one program per slot), ``False`` (launch order: no model, no table) or a program count.
    The table is ``starts + (programs + 1)`` followed by the work items' launch indices
    (:func:`sparsesim.kernels.gna_plan.launch_items`) in the order of
    :func:`sparsesim.simulator.makespan.persistent_schedule` over the model's per-CTA seconds: the simulator's
    function, not a copy, so the model's schedule of the persistent kernel is the kernel's own.
    """
    if persistent is False:
        return None, None
    if persistent is not None and persistent is not True and (
            not isinstance(persistent, (int, np.integer)) or persistent < 1):
        raise ValueError(f"gna_attention: persistent={persistent!r}; allowed: None (where the model predicts it "
                         f"faster), True, False or a number of programs >= 1")
    from sparsesim.simulator.errors import ConfigError

    try:
        ctas = _model_ctas(plan, gpu, batch, heads, heads_kv, head_dim, dtype, kv_layout)
    except ConfigError:
        if persistent is None:  # a problem the model does not price (sizes past its limits): launch order
            return None, None
        raise
    per_cta = ctas.seconds()
    choice = schedule_choice(per_cta, gpu.sm_count, ctas.ctas_per_sm, ctas.repeat)
    if persistent is None and not choice.persistent:
        return choice, None
    ids, cta = launch_items(plan, batch, heads)
    programs = choice.programs if persistent is None or persistent is True else min(int(persistent), ids.size)
    if ids.size == 0 or programs + 1 + ids.size >= 2**31 or int(ids[-1]) >= 2**31:
        if persistent is None:
            return choice, None
        raise ValueError(f"gna_attention: persistent={persistent!r} with {ids.size} work items; allowed: fewer "
                         f"than 2**31 launch indices (persistent=False or None)")
    sched = persistent_schedule(per_cta[cta], programs)
    return choice, np.concatenate([sched.starts + programs + 1, ids[sched.order]]).astype(np.int32)


_LAUNCHES = CallCache()


EXTRA_AT = ("end", "start")


def gna_attention(q: Any, k: Any, v: Any, *, window: Any, stride: Any = 1, dilation: Any = 1, causal: Any = False,
                  q_tile: Any = None, kv_tile: Any = None, scale: float | None = None, out: Any = None,
                  kv_layout: str | None = None, heads: Any = None, extra_tokens: int = 0, extra_at: str = "end",
                  input_size: Any = None, persistent: Any = None) -> Any:
    """Generalized neighborhood attention forward on a 1D, 2D or 3D token layout, with optional extra tokens.

    Args:
        q: ``[batch, *spatial, heads, head_dim]`` (NATTEN layout, 1 to 3 spatial axes), fp16/bf16
            on CUDA (fp32 and CPU tensors under ``TRITON_INTERPRET=1``); or a flat sequence
            ``[batch, tokens, heads, head_dim]`` of the layout's tokens plus ``extra_tokens`` (see below).
        k, v: ``[batch, *spatial, heads_kv, head_dim]`` (or the same flat sequence), ``heads % heads_kv == 0``.
        window, stride, dilation, causal: an int/bool or one per axis (docs/DESIGN.md, Semantics);
            validated by :class:`sparsesim.simulator.GNAPattern`.
        q_tile, kv_tile: box tile shapes (power-of-two entries, volume 16..256, as
            :func:`sparsesim.simulator.can_run` says); a lone one sets both; default: the cost model's
            pick for this problem on the device's GPU (:func:`sparsesim.simulator.tile_choice.choose_tiles`,
            ``triton`` profile, cached), or the GPU file's tiles for layouts too small for any candidate. A
            small layer (at most :data:`MEASURED_PICK_MAX_ROWS` query rows) on a GPU instead times the model's
            best pair of each tile class on its first call and keeps the fastest (:func:`measured_pick`).
        scale: softmax scale, default ``1/sqrt(head_dim)``.
        out: optional output buffer shaped like ``q``.
        kv_layout: how K/V are read (a performance knob): ``None`` chooses; ``"direct"`` (1D without
            dilation), ``"gather"`` or ``"permute"`` (see the module docstring).
        heads: run only these query heads of ``q`` (whole GQA groups, in order), reading ``q``/``k``/``v``
            in place and writing those heads of ``out`` (the others untouched; a plan's launch over some
            of a layer's heads, without copying them out and back).
        extra_tokens: ``E >= 0`` tokens outside the layout (MM-DiT joint text tokens, attention sinks).
            With ``E > 0`` (or ``input_size`` given), ``q``/``k``/``v`` are the whole flat sequence of
            ``N + E`` tokens, ``N = prod(input_size)``: every layout query sees its neighbourhood plus every
            extra key (in the kernel's one online softmax), every extra query sees every key (our dense kernel).
            With a causal axis the extras must be sinks (``extra_at="start"``): layout queries see every extra
            key, extra queries the extra keys at or before them and no layout key.
        extra_at: ``"end"`` (layout tokens ``[0, N)``, extras ``[N, N + E)``, HunyuanVideo) or ``"start"``
            (extras ``[0, E)``, layout ``[E, E + N)``: FLUX's text tokens, sinks).
        input_size: the layout (1 to 3 axes) of a flat sequence; default ``tokens - E`` tokens in 1D.
        persistent: how work items map to programs (a performance knob; the output is the same): ``None``
            (default) runs a persistent grid where the cost model predicts it shorter than the launch order
            (uneven Q tiles: causal, strided), ``True`` always, ``False`` never (one program per Q tile, head
            and batch x group), an int: persistent with that many programs. A persistent grid has one program
            per resident slot, each running a static list of work items, the longest first
            (:func:`sparsesim.simulator.makespan.persistent_schedule`, the model's own schedule).

    Returns:
        ``q``'s shape in q's dtype.

    On a Hopper GPU a large call of a perfectly block-sparse plan (no partial tile, no dilation, no extra
    tokens, 128-token Q tiles, 64/128-token KV tiles dividing the layout) with no head subset runs the
    warp-specialized Gluon kernel, each tile read in place as a TMA box (:meth:`GNALaunch.ws_route`; the autograd
    forward too, with its LSE; ``SPARSESIM_FWD_KERNEL=triton`` keeps the Triton kernel).

    Autograd and torch.compile: when q, k or v requires grad (and grad mode is on), or while torch.compile
    traces, the call runs as the custom op ``sparsesim::gna_fwd`` (:mod:`sparsesim.kernels.gna_ops`), whose
    backward is ``sparsesim::gna_bwd`` (:mod:`sparsesim.kernels.gna_bwd`); ``out=`` and ``heads=`` (in-place
    calls) then raise a ValueError at the forward (never a silently dropped gradient), except ``out=`` under
    torch.compile without grad (the op's result is copied into it). Otherwise the in-place fast path runs. An
    eager call with grad on plain tensors runs the two ops' implementations without their dispatch (same
    results and gradients, less host time: :func:`sparsesim.kernels.gna_ops.gna_op_call`).

    Example:
        >>> o = gna_attention(q, k, v, window=(18, 24, 24), stride=(16, 8, 8),
        ...                   q_tile=(2, 8, 8), kv_tile=(2, 8, 8))  # doctest: +SKIP
        >>> o = gna_attention(qs, ks, vs, window=(9, 9), input_size=(32, 32),
        ...                   extra_tokens=77, extra_at="start")  # doctest: +SKIP
    """
    if _wants_op(q, k, v):  # autograd or torch.compile: the custom op (sparsesim::gna_fwd), which has a backward
        import torch

        grad = any(isinstance(x, torch.Tensor) and x.requires_grad for x in (q, k, v)) and torch.is_grad_enabled()
        if heads is not None or (out is not None and grad) or persistent is not None:
            what = "heads=" if heads is not None else "out=" if out is not None and grad else "persistent="
            why = "q, k or v requires grad" if grad else "under torch.compile"
            raise ValueError(f"gna_attention: {what} with {why}: the in-place call has no backward and does not "
                             f"trace; allowed there: heads=None, out=None and persistent=None (gna_attention "
                             f"returns a new tensor)")
        from sparsesim.kernels.gna_ops import gna_op_call

        o = gna_op_call(q, k, v, window=window, stride=stride, dilation=dilation, causal=causal, q_tile=q_tile,
                        kv_tile=kv_tile, scale=scale, kv_layout=kv_layout, extra_tokens=extra_tokens,
                        extra_at=extra_at, input_size=input_size)
        if out is not None:
            out.copy_(o)
            return out
        return o
    call = (window, stride, dilation, causal, q_tile, kv_tile, scale, kv_layout)
    seq = None
    if extra_tokens or input_size is not None:
        seq = _sequence(q, k, v, extra_tokens, extra_at, input_size, causal)
        if out is None:
            import torch

            out = torch.empty_like(q)
        elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
            check_out(out, q, q.shape, "gna_attention")
        whole = (q, k, v, out)
        q, k, v, out = (_layout_view(x, seq) for x in whole)
    subset = None
    qs, ks, vs = q, k, v  # what the launch is built for: views of the launched heads when a subset runs
    if heads is not None:
        subset = _head_subset(heads, q, k)
        group = int(q.shape[-2]) // int(k.shape[-2])
        qs, ks, vs = q[..., :len(subset), :], k[..., :len(subset) // group, :], v[..., :len(subset) // group, :]
    extra = 0 if seq is None else seq[1]
    launch = cached_launch(qs, ks, vs, call, extra, persistent)
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype or out.device != q.device):
        check_out(out, q, q.shape, "gna_attention")
    if subset is not None:
        check_qkv(q, k, v, spatial_ranks=(1, 2, 3), what="gna_attention")
    if seq is None:
        return launch.run(q, k, v, out, subset)
    if not extra:
        launch.run(q, k, v, out, subset)
        return whole[3]
    wq, wk, wv, wo = whole
    xq, xk, xv, xo = (_extra_view(x, seq) for x in whole)
    launch.run(q, k, v, out, subset, xkv=(xk, xv))
    if _is_causal(causal):
        # sinks: causal among themselves, no layout key (a 1D causal window over the E extra tokens = causal dense)
        gna_attention(xq, xk, xv, window=extra, causal=True, scale=scale, out=xo, heads=subset)
    else:
        _extra_queries(xq, wk, wv, xo, subset, scale)
    return wo


def cached_launch(q: Any, k: Any, v: Any, call: tuple, extra: int, persistent: Any = None) -> GNALaunch:
    """The validated launch of a call (built once per tensors' shapes/strides/dtypes/device, pattern arguments
    ``call = (window, stride, dilation, causal, q_tile, kv_tile, scale, kv_layout)``, extra count and
    ``persistent`` option)."""
    try:
        key = (tensors_key(q, k, v), _call_key(call), extra, type(persistent), hashable(persistent))
    except (AttributeError, TypeError):  # not tensors, or unhashable arguments: the slow path says why
        key = None
    launch = _LAUNCHES.get(key)
    if launch is None:
        window, stride, dilation, causal, q_tile, kv_tile, scale, kv_layout = call
        kw = dict(window=window, stride=stride, dilation=dilation, causal=causal, scale=scale, kv_layout=kv_layout,
                  extra=extra)
        picked = measured_pick(q, k, v, kw, persistent) if q_tile is None and kv_tile is None else None
        launch = _LAUNCHES.put(key, picked or build_launch(q, k, v, q_tile=q_tile, kv_tile=kv_tile,
                                                            persistent=persistent, **kw))
    return launch


#: Small layers (batch x tokens x heads at most this many query rows): with no tiles given, the first call on a
#: GPU times the model's best pair of each tile class (:func:`sparsesim.simulator.tile_choice.class_candidates`)
#: and keeps the fastest (``SPARSESIM_TILE_PICK=model``: the model's pick alone). On the H200 the model's pick
#: ran 1.16x / 0.48x / 1.03x cuDNN's time on the 1K 2D, 4K 1D and 2K 3D layers of benchmarks/small_tiles.py, the
#: fastest measured pair 0.76x / 0.41x / 0.83x (47e5ab5).
MEASURED_PICK_MAX_ROWS = 1 << 17
#: Timed launches per candidate (after one compiling launch), queued behind a GPU sleep of this many cycles
#: (about 1 ms at the H200's clock: longer than the host takes to issue them), so the events time the kernels
#: back to back, not the host's launches.
MEASURED_PICK_REPS = 5
MEASURED_PICK_SLEEP_CYCLES = 2_000_000
#: The measured pick by problem (pattern, tensors' shapes and dtypes, device, scale, K/V layout, persistent option).
_PICKS = CallCache()


def pick_key(pattern: Any, q: Any, k: Any, v: Any, kw: dict[str, Any], persistent: Any) -> tuple:
    """The measured pick's cache key: the pattern, the tensors' shapes/strides/dtypes/device, the call's other
    arguments (``kw``, lists as tuples) and the persistent option."""
    return (pattern, tensors_key(q, k, v), hashable(tuple(sorted(kw.items()))), type(persistent),
            hashable(persistent))


def measured_pick(q: Any, k: Any, v: Any, kw: dict[str, Any], persistent: Any) -> GNALaunch | None:
    """The fastest launch of a small layer's candidate tiles, timed on the call's own tensors (the two fastest
    also with ``persistent=True`` when ``persistent`` is None); None where the pick does not apply: the
    interpreter, CPU tensors, extra tokens, a stream being captured, torch.compile tracing, layers above
    :data:`MEASURED_PICK_MAX_ROWS` rows, ``SPARSESIM_TILE_PICK=model``, or a problem with fewer than two
    candidates. A candidate that fails to build is skipped."""
    import torch

    if (interpret() or not getattr(q, "is_cuda", False) or kw["extra"] or os.environ.get("SPARSESIM_TILE_PICK")
            == "model" or torch.cuda.is_current_stream_capturing() or torch.compiler.is_compiling()):
        return None
    dims = check_qkv(q, k, v, spatial_ranks=(1, 2, 3), what="gna_attention")
    if dims.batch * int(np.prod(dims.spatial)) * dims.heads > MEASURED_PICK_MAX_ROWS:
        return None
    from sparsesim.simulator import GNAPattern
    from sparsesim.simulator.tile_choice import class_candidates

    gpu, _ = device_gpu(q.device)
    pattern = GNAPattern(input_size=dims.spatial, window=kw["window"], stride=kw["stride"],
                         dilation=kw["dilation"], causal=kw["causal"])
    key = pick_key(pattern, q, k, v, kw, persistent)
    hit = _PICKS.get(key)
    if hit is not None:
        q_tile, kv_tile, pers = hit
        return build_launch(q, k, v, q_tile=q_tile, kv_tile=kv_tile, persistent=pers, **kw)
    pairs = class_candidates(pattern, gpu.name, dims.heads, dims.heads_kv, dims.head_dim, dims.batch,
                             "fp16" if dims.dtype == "fp32" else dims.dtype)
    if len(pairs) < 2:
        return None
    out = torch.empty_like(q)

    def timed(q_tile: Any, kv_tile: Any, pers: Any) -> tuple[float, Any]:
        try:
            launch = build_launch(q, k, v, q_tile=q_tile, kv_tile=kv_tile, persistent=pers, **kw)
            launch.run(q, k, v, out)  # compiles
        except ValueError:
            return float("inf"), None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(q.device)
        torch.cuda._sleep(MEASURED_PICK_SLEEP_CYCLES)  # every launch queued before the GPU reaches the first
        start.record()
        for _ in range(MEASURED_PICK_REPS):
            launch.run(q, k, v, out)
        end.record()
        torch.cuda.synchronize(q.device)
        return float(start.elapsed_time(end)), launch

    base = False if persistent is None else persistent
    results = [(*timed(qt, kt, base), qt, kt, base) for qt, kt in pairs]
    if persistent is None:
        fastest = sorted((r for r in results if r[1] is not None), key=lambda r: r[0])[:2]
        results += [(*timed(qt, kt, True), qt, kt, True) for _, _, qt, kt, _ in fastest]
    _, launch, q_tile, kv_tile, pers = min(results, key=lambda r: r[0])
    if launch is None:
        return None
    _PICKS.put(key, (q_tile, kv_tile, pers))
    return launch


def _call_key(call: tuple) -> Any:
    """``hashable(call)`` without rebuilding it when it holds no list (then it is its own key: a hashable tuple
    holds no list at any depth, and :func:`~sparsesim.kernels._launch.hashable` changes nothing else)."""
    try:
        hash(call)
    except TypeError:
        return hashable(call)
    return call


def _wants_op(q: Any, k: Any, v: Any) -> bool:
    """Whether a call goes through the custom op: while torch.compile traces, or when autograd will need it."""
    import torch

    if torch.compiler.is_compiling():
        return True
    return torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in (q, k, v))


def sequence_info(q: Any, k: Any, v: Any, extra_tokens: int, extra_at: str, input_size: Any,
                  causal: Any) -> tuple[tuple[int, ...], int, int, int] | None:
    """A call's flat sequence checked, ``(layout, E, first layout row, first extra row)``, or None for a call on
    the layout itself (``extra_tokens == 0`` and no ``input_size``)."""
    if not extra_tokens and input_size is None:
        return None
    return _sequence(q, k, v, extra_tokens, extra_at, input_size, causal)


def gna_forward(q: Any, k: Any, v: Any, *, window: Any, stride: Any = 1, dilation: Any = 1, causal: Any = False,
                q_tile: Any = None, kv_tile: Any = None, scale: float | None = None, kv_layout: str | None = None,
                extra_tokens: int = 0, extra_at: str = "end", input_size: Any = None,
                persistent: Any = None) -> tuple[Any, Any]:
    """:func:`gna_attention` (arguments as there, without ``out``/``heads``) that also returns each query row's
    log-sum-exp, the softmax statistic the backward recomputes P from: ``(out, lse)``, ``lse`` float32
    ``[batch, heads, tokens]`` (natural log; tokens: the layout's row-major, or the flat sequence's).

    Layout rows: the GNA kernel writes it (constexpr ``SAVE_LSE``; on the warp-specialized route,
    :meth:`GNALaunch.ws_run`, that kernel's ``STORE_LSE`` at each box row's token). Extra query rows
    (``extra_tokens > 0``) go through :func:`sparsesim.kernels.gna_bwd.rows_forward`, a dense-rows kernel that
    writes their output and log-sum-exp (the fast path's dense kernel has no LSE output).
    """
    out, lse, _ = forward_call(q, k, v, (window, stride, dilation, causal, q_tile, kv_tile, scale, kv_layout),
                               extra_tokens, extra_at, input_size, persistent)
    return out, lse


def forward_call(q: Any, k: Any, v: Any, call: tuple, extra_tokens: int = 0, extra_at: str = "end",
                 input_size: Any = None, persistent: Any = None) -> tuple[Any, Any, GNALaunch]:
    """:func:`gna_forward` with the pattern arguments as one tuple ``call = (window, stride, dilation, causal,
    q_tile, kv_tile, scale, kv_layout)`` (:func:`cached_launch`'s); returns ``(out, lse, launch)``, the launch for
    :func:`sparsesim.kernels.gna_bwd.backward_call` (no second lookup in the backward)."""
    import math

    import torch

    seq = sequence_info(q, k, v, extra_tokens, extra_at, input_size, call[3])
    out = torch.empty_like(q)
    lse = torch.empty((int(q.shape[0]), int(q.shape[-2]), q.shape[1:-2].numel()), dtype=torch.float32,
                      device=q.device)
    if seq is None:
        launch = cached_launch(q, k, v, call, 0, persistent)
        launch.run(q, k, v, out, lse=lse)
        return out, lse, launch
    size, extra, first, xfirst = seq
    ql, kl, vl, ol = (_layout_view(x, seq) for x in (q, k, v, out))
    launch = cached_launch(ql, kl, vl, call, extra, persistent)
    n = math.prod(size)
    xkv = (_extra_view(k, seq), _extra_view(v, seq)) if extra else None
    launch.run(ql, kl, vl, ol, xkv=xkv, lse=lse[:, :, first:first + n])
    if extra:
        from sparsesim.kernels.gna_bwd import rows_forward

        rows_forward(q, k, v, out, lse, row0=xfirst, rows=extra, causal=_is_causal(call[3]), scale=launch.scale)
    return out, lse, launch


def _sequence(q: Any, k: Any, v: Any, extra_tokens: Any, extra_at: Any, input_size: Any,
              causal: Any) -> tuple[tuple[int, ...], int, int, int]:
    """A flat sequence call checked: (layout, E, first layout row, first extra row); one-line ValueErrors."""
    import math

    import torch

    from sparsesim.simulator.patterns import layout_tuple

    if isinstance(extra_tokens, bool) or not isinstance(extra_tokens, int) or extra_tokens < 0:
        raise ValueError(f"gna_attention: extra_tokens={extra_tokens!r}; allowed: an integer >= 0")
    if extra_at not in EXTRA_AT:
        raise ValueError(f"gna_attention: extra_at={extra_at!r}; allowed: {', '.join(map(repr, EXTRA_AT))}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"gna_attention: {name} is {shape} with extra_tokens={extra_tokens}, "
                             f"input_size={input_size!r}; allowed: a flat sequence [batch, N + E, heads, head_dim]")
    tokens = int(q.shape[1])
    if int(k.shape[1]) != tokens or int(v.shape[1]) != tokens:
        raise ValueError(f"gna_attention: q has {tokens} tokens, k {int(k.shape[1])}, v {int(v.shape[1])}; "
                         f"allowed: one sequence for all")
    if input_size is None:
        size: tuple[int, ...] = (tokens - extra_tokens,)
        if size[0] < 1:
            raise ValueError(f"gna_attention: extra_tokens={extra_tokens} leaves no layout token of {tokens}; "
                             f"allowed: fewer extra tokens than the sequence's")
    else:
        size = layout_tuple(input_size, "input_size")
    n = math.prod(size)
    if n + extra_tokens != tokens:
        raise ValueError(f"gna_attention: the sequence has {tokens} tokens; input_size={list(size)} ({n} tokens) "
                         f"plus extra_tokens={extra_tokens} is {n + extra_tokens}; allowed: equal")
    if _is_causal(causal) and extra_tokens and extra_at != "start":
        raise ValueError(f"gna_attention: causal={causal!r} with extra_tokens={extra_tokens} at the end; allowed: "
                         f"causal extra tokens at the start (sinks, extra_at='start')")
    start = extra_at == "start"
    return size, extra_tokens, extra_tokens if start else 0, 0 if start else n


def _is_causal(causal: Any) -> bool:
    return any(bool(c) for c in causal) if isinstance(causal, (list, tuple)) else bool(causal)


def _layout_view(x: Any, seq: tuple[tuple[int, ...], int, int, int]) -> Any:
    """The layout's tokens of a flat sequence as ``[batch, *layout, heads, head_dim]`` (a view)."""
    import math

    size, _, first, _ = seq
    return x[:, first:first + math.prod(size)].unflatten(1, size)


def _extra_view(x: Any, seq: tuple[tuple[int, ...], int, int, int]) -> Any:
    """The extra tokens of a flat sequence, ``[batch, E, heads, head_dim]`` (a view)."""
    _, e, _, first = seq
    return x[:, first:first + e]


def _extra_queries(xq: Any, k: Any, v: Any, xo: Any, subset: tuple[int, ...] | None, scale: Any) -> None:
    """Extra queries see every key: our dense kernel on the whole sequence, in place (contiguous runs of heads)."""
    from sparsesim.kernels.dense import attention

    if subset is None:
        attention(xq, k, v, scale=scale, out=xo)
        return
    group = int(xq.shape[-2]) // int(k.shape[-2])
    for a, b in _runs(subset):
        attention(xq[..., a:b, :], k[..., a // group:b // group, :], v[..., a // group:b // group, :], scale=scale,
                  out=xo[..., a:b, :])


def _runs(heads: tuple[int, ...]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive head indices as ``[start, stop)`` pairs."""
    runs: list[tuple[int, int]] = []
    for h in heads:
        if runs and runs[-1][1] == h:
            runs[-1] = (runs[-1][0], h + 1)
        else:
            runs.append((h, h + 1))
    return runs


def _head_subset(heads: Any, q: Any, k: Any) -> tuple[int, ...]:
    """``heads`` checked: distinct query heads of ``q`` forming whole GQA groups in order (one line if not)."""
    h, hk = int(q.shape[-2]), int(k.shape[-2])
    try:
        subset = tuple(int(x) for x in heads)
    except (TypeError, ValueError):
        raise ValueError(f"gna_attention: heads={heads!r}; allowed: a sequence of head indices") from None
    group = h // hk if hk and h % hk == 0 else 1
    if (not subset or len(set(subset)) != len(subset) or min(subset) < 0 or max(subset) >= h
            or len(subset) % group
            or any(subset[i + j] != subset[i] + j or subset[i] % group for i in range(0, len(subset), group)
                   for j in range(group))):
        raise ValueError(f"gna_attention: heads={list(subset)[:16]}; allowed: distinct query heads of 0..{h - 1} "
                         f"in whole groups of {group} (the query heads of a K/V head, in order)")
    return subset


def unpermute_out(plan: GNAPlan, op: Any, out: Any) -> Any:
    """Write the real tokens of a permuted output ``[B * G, H, padded, D]`` into ``out`` ``[B, *spatial, H, D]``."""
    return tile_unpermute(op, plan.pattern.input_size, plan.schedule.q_tile, dilation=plan.pattern.dilation, out=out)


__all__ = ["EXTRA_AT", "GNALaunch", "KV_LAYOUTS", "PERMUTE_MIN_KV_ROWS", "build_launch", "cached_launch",
           "choose_kv_layout", "forward_call", "gna_attention", "gna_forward", "sequence_info", "unpermute_out"]
