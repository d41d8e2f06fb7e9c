"""Dense attention backward: ``Delta = rowsum(dO * O)``, dQ by the forward schedule, dK/dV by the transposed one.

FlashAttention-2's split: one launch computes ``Delta`` (minus the LSE's own gradient when the caller used the
LSE), one launch per KV tile accumulates dK and dV over the Q tiles that see it (for GQA, over every query head
of its KV head too, so no atomics), one launch per Q tile accumulates dQ over its KV tiles. Probabilities are
recomputed from the forward's natural-log LSE: ``P = exp2(s * scale * log2(e) - lse * log2(e))``.

With ``s = scale * q k^T``, ``P = softmax(s)``, ``O = P V``, ``lse = logsumexp(s)`` and incoming ``dO``,
``dlse``: ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - (Delta - dlse))``, ``dQ = scale * dS K``,
``dK = scale * dS^T Q``.

Padding: the last Q tile's rows past ``N_q`` load ``lse = +inf`` (so ``P = 0``) and ``dO = 0``; the last KV
tile's rows past ``N_kv`` only reach rows of dK/dV that are never stored, except in dQ, where they are masked.
The step functions here are shared with :mod:`sparsesim.kernels.block_sparse_bwd`.

A second path (``config["FUSED_DQ"]``, :func:`dense_backward`), as cuDNN/FA2/FA3 run it: five GEMMs per tile
pair instead of seven. The dK/dV kernel's schedule also multiplies each tile pair's ``dS`` by its K tile and adds
the product into a float32 dQ accumulator with atomics (pointer atomics, or TMA reductions on Hopper), which one
elementwise launch then scales into ``dq``'s dtype.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from sparsesim.kernels._common import LOG2E
from sparsesim.kernels._launch import interpret, launch_compiled, spec_key, tma_enabled


@triton.jit
def _bwd_preprocess_kernel(Out, DO, DLSE, Delta, N, H, s_ob, s_on, s_oh, s_od, s_db, s_dn, s_dh, s_dd,
                           HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, HAS_DLSE: tl.constexpr):
    """``Delta[b, h, n] = sum_d Out * dO - dLSE``, float32 ``[B, H, N]`` contiguous."""
    pid = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs < N
    rows = offs.to(tl.int64)
    o = tl.load(Out + b * s_ob + h * s_oh + rows[:, None] * s_on + offs_d[None, :] * s_od, mask=ok[:, None], other=0.0)
    do = tl.load(DO + b * s_db + h * s_dh + rows[:, None] * s_dn + offs_d[None, :] * s_dd, mask=ok[:, None],
                 other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    idx = (b * H + h) * N + rows
    if HAS_DLSE:
        delta -= tl.load(DLSE + idx, mask=ok, other=0.0)
    tl.store(Delta + idx, delta, mask=ok)


@triton.jit
def _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, start_m, offs_n, N_Q, N_KV, s_qn, s_qd, s_don, s_dod, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, EVEN_M: tl.constexpr,
               EVEN_N: tl.constexpr):
    """:func:`dkdv_step`'s math, returning ``dS^T`` in the inputs' dtype (unscaled) too. ``EVEN_N`` False masks
    keys past ``N_KV`` (``P = 0``, so ``dS = 0`` there: the fused kernel's dQ reads these rows)."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m.to(tl.int64)
    if EVEN_M:
        q = tl.load(Q + rows[:, None] * s_qn + offs_d[None, :] * s_qd)
        do = tl.load(DO + rows[:, None] * s_don + offs_d[None, :] * s_dod)
        lse2 = tl.load(LSE + rows) * 1.4426950408889634
        delta = tl.load(DELTA + rows)
    else:
        m_ok = offs_m < N_Q
        q = tl.load(Q + rows[:, None] * s_qn + offs_d[None, :] * s_qd, mask=m_ok[:, None], other=0.0)
        do = tl.load(DO + rows[:, None] * s_don + offs_d[None, :] * s_dod, mask=m_ok[:, None], other=0.0)
        lse2 = tl.load(LSE + rows, mask=m_ok, other=float("inf")) * 1.4426950408889634  # padded rows: P = 0
        delta = tl.load(DELTA + rows, mask=m_ok, other=0.0)
    st = tl.dot(k, tl.trans(q))  # [BLOCK_N, BLOCK_M] scores, transposed
    if CAUSAL:
        vis = offs_m[None, :] >= offs_n[:, None]
        if not EVEN_N:
            vis = vis & (offs_n < N_KV)[:, None]
        st = tl.where(vis, st * qk_scale, float("-inf"))
        pt = tl.math.exp2(st - lse2[None, :])
    elif not EVEN_N:
        st = tl.where((offs_n < N_KV)[:, None], st * qk_scale, float("-inf"))
        pt = tl.math.exp2(st - lse2[None, :])
    else:
        pt = tl.math.exp2(st * qk_scale - lse2[None, :])
    dv = tl.dot(pt.to(do.dtype), do, dv)
    dpt = tl.dot(v, tl.trans(do))
    dst = (pt * (dpt - delta[None, :])).to(q.dtype)
    dk = tl.dot(dst, q, dk)
    return dk, dv, dst


@triton.jit
def dkdv_step(dk, dv, k, v, Q, DO, LSE, DELTA, start_m, offs_n, N_Q, s_qn, s_qd, s_don, s_dod, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr, EVEN_M: tl.constexpr = False):
    """One Q tile (rows ``start_m..``) into the dK/dV accumulators of one KV tile (``k``, ``v`` ``[BLOCK_N, D]``).

    ``Q``/``DO`` point at the head's row 0, ``LSE``/``DELTA`` at its ``[N_Q]`` rows. ``CAUSAL`` masks key
    ``j`` for rows ``i < j``; ``EVEN_M``: every row of the tile exists (no row masks on the loads).
    """
    dk, dv, _ = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, start_m, offs_n, N_Q, N_Q, s_qn, s_qd, s_don, s_dod,
                           qk_scale, HEAD_DIM, BLOCK_M, CAUSAL, EVEN_M, True)
    return dk, dv


@triton.jit
def dkdv_dq_step(dk, dv, k, v, Q, DO, LSE, DELTA, DQA, start_m, offs_n, N_Q, N_KV, s_qn, s_qd, s_don, s_dod, s_an,
                 desc_b, desc_col, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr,
                 EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, DQ_TMA: tl.constexpr):
    """:func:`dkdv_step` plus the tile's dQ contribution ``dS K`` (unscaled), added into the float32 accumulator.

    ``DQ_TMA`` False: ``DQA`` points at the head's row 0 (row stride ``s_an``, contiguous head dim), pointer
    atomics (rows past ``N_Q`` masked); True: ``DQA`` is a descriptor over ``[B, N_Q, H * D]`` with block
    ``[1, BLOCK_M, D]``, reduced into at ``[desc_b, start_m, desc_col]`` by TMA (rows past ``N_Q`` dropped).
    """
    dk, dv, dst = _dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, start_m, offs_n, N_Q, N_KV, s_qn, s_qd, s_don, s_dod,
                             qk_scale, HEAD_DIM, BLOCK_M, CAUSAL, EVEN_M, EVEN_N)
    dq = tl.dot(tl.trans(dst), k)  # [BLOCK_M, D]
    if DQ_TMA:
        DQA.atomic_add([desc_b, start_m, desc_col], tl.reshape(dq, [1, BLOCK_M, HEAD_DIM]))
    else:
        offs_m = start_m + tl.arange(0, BLOCK_M)
        ptrs = DQA + offs_m.to(tl.int64)[:, None] * s_an + tl.arange(0, HEAD_DIM)[None, :]
        if EVEN_M:
            tl.atomic_add(ptrs, dq, sem="relaxed")
        else:
            tl.atomic_add(ptrs, dq, mask=(offs_m < N_Q)[:, None], sem="relaxed")
    return dk, dv


@triton.jit
def dq_step(dq, q, do, lse2, delta, K, V, start_n, offs_m, N_KV, s_kn, s_kd, s_vn, s_vd, qk_scale,
            HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """One KV tile (keys ``start_n..``) into the dQ accumulator of one Q tile. ``K``/``V`` point at the KV
    head's row 0; ``MASKED`` masks keys past ``N_KV`` (and, with ``CAUSAL``, keys after the row)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    cols = offs_n.to(tl.int64)
    if MASKED:
        kv_ok = offs_n < N_KV
        k = tl.load(K + cols[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kv_ok[:, None], other=0.0)
        v = tl.load(V + cols[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kv_ok[:, None], other=0.0)
    else:
        k = tl.load(K + cols[:, None] * s_kn + offs_d[None, :] * s_kd)
        v = tl.load(V + cols[:, None] * s_vn + offs_d[None, :] * s_vd)
    s = tl.dot(q, tl.trans(k))
    if MASKED:
        vis = kv_ok[None, :]
        if CAUSAL:
            vis = vis & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(vis, s * qk_scale, float("-inf"))
        p = tl.math.exp2(s - lse2[:, None])
    else:
        p = tl.math.exp2(s * qk_scale - lse2[:, None])
    dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq)


@triton.jit
def load_kv_tile(K, V, b, hk, start_n, N_KV, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd,
                 HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    """The K and V rows ``start_n..`` of batch ``b``, KV head ``hk`` (rows past ``N_KV`` zeros):
    ``(k, v, offs_n, kv_ok)``, the resident tile of a dK/dV kernel."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_ok = offs_n < N_KV
    cols = offs_n.to(tl.int64)
    k = tl.load(K + b * s_kb + hk * s_kh + cols[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kv_ok[:, None],
                other=0.0)
    v = tl.load(V + b * s_vb + hk * s_vh + cols[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kv_ok[:, None],
                other=0.0)
    return k, v, offs_n, kv_ok


@triton.jit
def store_dkdv(DK, DV, dk, dv, b, hk, offs_n, kv_ok, s_dkb, s_dkn, s_dkh, s_dkd, s_dvb, s_dvn, s_dvh, s_dvd,
               HEAD_DIM: tl.constexpr):
    """Store a dK/dV kernel's accumulators (already scaled) into the rows ``offs_n`` that exist."""
    offs_d = tl.arange(0, HEAD_DIM)
    cols = offs_n.to(tl.int64)
    tl.store(DK + b * s_dkb + hk * s_dkh + cols[:, None] * s_dkn + offs_d[None, :] * s_dkd,
             dk.to(DK.dtype.element_ty), mask=kv_ok[:, None])
    tl.store(DV + b * s_dvb + hk * s_dvh + cols[:, None] * s_dvn + offs_d[None, :] * s_dvd,
             dv.to(DV.dtype.element_ty), mask=kv_ok[:, None])


@triton.jit
def causal_q_bounds(start_n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """``(lo, mid)`` of a dK/dV kernel's KV tile at ``start_n``: with ``CAUSAL``, Q tiles before ``lo`` see none
    of it and from ``mid`` on every row sees all of it (``0, 0`` without)."""
    if CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M
        mid = tl.cdiv(start_n + BLOCK_N - 1, BLOCK_M) * BLOCK_M
    else:
        lo = 0
        mid = 0
    return lo, mid


@triton.jit
def _dense_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, scale, N_Q, N_KV, H, GROUP,
    s_qb, s_qn, s_qh, s_qd, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd,
    s_dob, s_don, s_doh, s_dod, s_dkb, s_dkn, s_dkh, s_dkd, s_dvb, s_dvn, s_dvh, s_dvd,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
):
    pid_n = tl.program_id(0)
    hk32 = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    hk = hk32.to(tl.int64)
    start_n = pid_n * BLOCK_N
    k, v, offs_n, kv_ok = load_kv_tile(K, V, b, hk, start_n, N_KV, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd,
                                       HEAD_DIM, BLOCK_N)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    lo, mid = causal_q_bounds(start_n, BLOCK_M, BLOCK_N, CAUSAL)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_h = Q + b * s_qb + h * s_qh
        do_h = DO + b * s_dob + h * s_doh
        row0 = (b * H + h) * N_Q
        if CAUSAL:
            for start_m in range(lo, tl.minimum(mid, N_Q), BLOCK_M):
                dk, dv = dkdv_step(dk, dv, k, v, q_h, do_h, LSE + row0, DELTA + row0, start_m, offs_n, N_Q,
                                   s_qn, s_qd, s_don, s_dod, qk_scale, HEAD_DIM, BLOCK_M, True)
        m_even = mid + (N_Q - mid) // BLOCK_M * BLOCK_M  # whole Q tiles from ``mid``, then the ragged one
        for start_m in range(mid, m_even, BLOCK_M):
            dk, dv = dkdv_step(dk, dv, k, v, q_h, do_h, LSE + row0, DELTA + row0, start_m, offs_n, N_Q,
                               s_qn, s_qd, s_don, s_dod, qk_scale, HEAD_DIM, BLOCK_M, False, True)
        for start_m in range(m_even, N_Q, BLOCK_M):
            dk, dv = dkdv_step(dk, dv, k, v, q_h, do_h, LSE + row0, DELTA + row0, start_m, offs_n, N_Q,
                               s_qn, s_qd, s_don, s_dod, qk_scale, HEAD_DIM, BLOCK_M, False)
    store_dkdv(DK, DV, dk * scale, dv, b, hk, offs_n, kv_ok, s_dkb, s_dkn, s_dkh, s_dkd, s_dvb, s_dvn, s_dvh, s_dvd,
               HEAD_DIM)


@triton.jit
def _dense_bwd_fused_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, DQA, qk_scale, scale, N_Q, N_KV, H, GROUP,
    s_qb, s_qn, s_qh, s_qd, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd,
    s_dob, s_don, s_doh, s_dod, s_dkb, s_dkn, s_dkh, s_dkd, s_dvb, s_dvn, s_dvh, s_dvd, s_ab, s_an, s_ah,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    EVEN_N: tl.constexpr, DQ_TMA: tl.constexpr,
):
    """:func:`_dense_bwd_dkdv_kernel`'s schedule with dQ added into ``DQA`` (float32 ``[B, N_Q, H, D]``, strides
    ``s_ab``/``s_an``/``s_ah``, contiguous head dim; a TMA descriptor over its ``[B, N_Q, H * D]`` view with
    ``DQ_TMA``) tile by tile: five GEMMs per tile pair instead of seven. ``EVEN_N``: ``N_KV % BLOCK_N == 0``."""
    pid_n = tl.program_id(0)
    hk32 = tl.program_id(1)
    b32 = tl.program_id(2)
    b = b32.to(tl.int64)
    hk = hk32.to(tl.int64)
    start_n = pid_n * BLOCK_N
    k, v, offs_n, kv_ok = load_kv_tile(K, V, b, hk, start_n, N_KV, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd,
                                       HEAD_DIM, BLOCK_N)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    lo, mid = causal_q_bounds(start_n, BLOCK_M, BLOCK_N, CAUSAL)
    for g in range(0, GROUP):
        h32 = hk32 * GROUP + g
        h = h32.to(tl.int64)
        q_h = Q + b * s_qb + h * s_qh
        do_h = DO + b * s_dob + h * s_doh
        if DQ_TMA:
            dqa_h = DQA
        else:
            dqa_h = DQA + b * s_ab + h * s_ah
        row0 = (b * H + h) * N_Q
        col = h32 * HEAD_DIM
        if CAUSAL:
            for start_m in range(lo, tl.minimum(mid, N_Q), BLOCK_M):
                dk, dv = dkdv_dq_step(dk, dv, k, v, q_h, do_h, LSE + row0, DELTA + row0, dqa_h, start_m, offs_n,
                                      N_Q, N_KV, s_qn, s_qd, s_don, s_dod, s_an, b32, col, qk_scale, HEAD_DIM,
                                      BLOCK_M, True, False, EVEN_N, DQ_TMA)
        m_even = mid + (N_Q - mid) // BLOCK_M * BLOCK_M
        for start_m in range(mid, m_even, BLOCK_M):
            dk, dv = dkdv_dq_step(dk, dv, k, v, q_h, do_h, LSE + row0, DELTA + row0, dqa_h, start_m, offs_n,
                                  N_Q, N_KV, s_qn, s_qd, s_don, s_dod, s_an, b32, col, qk_scale, HEAD_DIM,
                                  BLOCK_M, False, True, EVEN_N, DQ_TMA)
        for start_m in range(m_even, N_Q, BLOCK_M):
            dk, dv = dkdv_dq_step(dk, dv, k, v, q_h, do_h, LSE + row0, DELTA + row0, dqa_h, start_m, offs_n,
                                  N_Q, N_KV, s_qn, s_qd, s_don, s_dod, s_an, b32, col, qk_scale, HEAD_DIM,
                                  BLOCK_M, False, False, EVEN_N, DQ_TMA)
    store_dkdv(DK, DV, dk * scale, dv, b, hk, offs_n, kv_ok, s_dkb, s_dkn, s_dkh, s_dkd, s_dvb, s_dvn, s_dvh, s_dvd,
               HEAD_DIM)


@triton.jit
def _dense_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, qk_scale, scale, N_Q, N_KV, H, GROUP,
    s_qb, s_qn, s_qh, s_qd, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd,
    s_dob, s_don, s_doh, s_dod, s_dqb, s_dqn, s_dqh, s_dqd,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
):
    pid_m = tl.program_id(0)
    h32 = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    h = h32.to(tl.int64)
    hk = (h32 // GROUP).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    m_ok = offs_m < N_Q
    rows = offs_m.to(tl.int64)
    q = tl.load(Q + b * s_qb + h * s_qh + rows[:, None] * s_qn + offs_d[None, :] * s_qd, mask=m_ok[:, None],
                other=0.0)
    do = tl.load(DO + b * s_dob + h * s_doh + rows[:, None] * s_don + offs_d[None, :] * s_dod, mask=m_ok[:, None],
                 other=0.0)
    row0 = (b * H + h) * N_Q
    lse2 = tl.load(LSE + row0 + rows, mask=m_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + row0 + rows, mask=m_ok, other=0.0)
    k_h = K + b * s_kb + hk * s_kh
    v_h = V + b * s_vb + hk * s_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        kv_end = tl.minimum(N_KV, (pid_m + 1) * BLOCK_M)
        n_full = tl.minimum(pid_m * BLOCK_M + 1, kv_end) // BLOCK_N
    else:
        kv_end = N_KV
        n_full = N_KV // BLOCK_N
    for j in range(0, n_full):
        dq = dq_step(dq, q, do, lse2, delta, k_h, v_h, j * BLOCK_N, offs_m, N_KV, s_kn, s_kd, s_vn, s_vd, qk_scale,
                     HEAD_DIM, BLOCK_N, False, CAUSAL)
    for j in range(n_full, tl.cdiv(kv_end, BLOCK_N)):
        dq = dq_step(dq, q, do, lse2, delta, k_h, v_h, j * BLOCK_N, offs_m, N_KV, s_kn, s_kd, s_vn, s_vd, qk_scale,
                     HEAD_DIM, BLOCK_N, True, CAUSAL)
    dq = dq * scale
    tl.store(DQ + b * s_dqb + h * s_dqh + rows[:, None] * s_dqn + offs_d[None, :] * s_dqd,
             dq.to(DQ.dtype.element_ty), mask=m_ok[:, None])


def bwd_config(head_dim: int, q_tile: int | None = None, kv_tile: int | None = None) -> dict[str, int]:
    """Tiles and warps of the backward launches: ``BLOCK_M1 x BLOCK_N1`` (dK/dV: Q rows x KV rows),
    ``BLOCK_M2 x BLOCK_N2`` (dQ), ``num_warps``, ``num_stages``. Block-sparse maps cap each block at the
    map's tile (``q_tile``, ``kv_tile``; powers of two, so the blocks divide them).

    Head dim 128: the fastest of benchmarks/bwd_tune.py's variants per launch on the H200 (dK/dV 64 x 64 on
    4 warps, 2 stages; dQ 128 x 64 on 8 warps, 3 stages); other head dims: the Triton tutorial's FA2 split on
    Hopper, untuned. Under the interpreter: 16-32 rows.
    """
    if interpret():
        cfg = {"BLOCK_M1": 16, "BLOCK_N1": 32, "BLOCK_M2": 32, "BLOCK_N2": 16, "num_warps": 4, "num_stages": 1}
    elif head_dim <= 64:
        cfg = {"BLOCK_M1": 32, "BLOCK_N1": 128, "BLOCK_M2": 128, "BLOCK_N2": 32, "num_warps": 4, "num_stages": 3}
    elif head_dim <= 128:  # H200, 24,576 tokens x 24 heads: 76.2 -> ~44 ms (benchmarks/bwd_tune.py, 4032037)
        cfg = {"BLOCK_M1": 64, "BLOCK_N1": 64, "BLOCK_M2": 128, "BLOCK_N2": 64, "num_warps": 8, "num_stages": 3,
               "num_warps1": 4, "num_stages1": 2}
    else:
        cfg = {"BLOCK_M1": 16, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 16, "num_warps": 8, "num_stages": 1}
    if q_tile is not None:
        cfg["BLOCK_M1"] = min(cfg["BLOCK_M1"], q_tile)
        cfg["BLOCK_M2"] = min(cfg["BLOCK_M2"], q_tile)
    if kv_tile is not None:
        cfg["BLOCK_N1"] = min(cfg["BLOCK_N1"], kv_tile)
        cfg["BLOCK_N2"] = min(cfg["BLOCK_N2"], kv_tile)
    return cfg


def launch_options(cfg: dict[str, Any], kernel: int) -> dict[str, int]:
    """Warps and stages of the dK/dV (``kernel`` 1) or dQ (2) launch: ``num_warps<k>``/``num_stages<k>`` where
    the config has them, else the shared ``num_warps``/``num_stages``."""
    return {key: cfg.get(f"{key}{kernel}", cfg[key]) for key in ("num_warps", "num_stages")}


def _s(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.stride())


def bwd_delta(out: Any, dout: Any, dlse: Any = None) -> Any:
    """``rowsum(dO * O) - dLSE`` as float32 ``[B, H, N]`` (one launch)."""
    import torch

    batch, n, heads, head_dim = (int(s) for s in out.shape)
    delta = torch.empty((batch, heads, n), dtype=torch.float32, device=out.device)
    block = 64 if not interpret() else 32
    dl = dlse.contiguous() if dlse is not None else delta
    launch(_bwd_preprocess_kernel, (triton.cdiv(n, block), heads, batch),
           (out, dout, dl, delta, n, heads, *_s(out), *_s(dout)),
           {"HEAD_DIM": head_dim, "BLOCK": block, "HAS_DLSE": dlse is not None}, {"num_warps": 4})
    return delta


#: Compiled backward kernels by kernel, specialization, constexprs and launch options: repeated calls skip
#: Triton's argument binding (:func:`~sparsesim.kernels._launch.launch_compiled`).
_COMPILED: dict[Any, Any] = {}


def launch(kernel: Any, grid: tuple[int, ...], args: tuple, constexprs: dict[str, Any],
           options: dict[str, int]) -> None:
    """``kernel[grid](*args, **constexprs, **options)``, through the compiled-launch cache (``constexprs`` in
    the kernel's signature order)."""
    key = (id(kernel), str(args[0].device), spec_key(args), *constexprs.values(), *sorted(options.items()))
    launch_compiled(_COMPILED, key, kernel, grid, args, constexprs, options)


#: ``DQ_ATOMIC`` values of a fused config: pointer atomics, TMA reductions.
DQ_ATOMICS = ("ptr", "tma")


def tma_reduce_ok(device: Any) -> bool:
    """Whether the fused kernel may add dQ by TMA reductions on ``device``: host descriptors allowed
    (:func:`~sparsesim.kernels._launch.tma_enabled`) and a Hopper or newer GPU; under the interpreter, only where
    it implements descriptor reductions (Triton's does not: the pointer atomics run instead)."""
    if interpret():
        from triton.runtime.interpreter import interpreter_builder

        return tma_enabled() and hasattr(interpreter_builder, "create_descriptor_reduce")
    if not tma_enabled() or getattr(device, "type", "cuda") != "cuda":
        return False
    import torch

    return torch.cuda.get_device_capability(device)[0] >= 9


#: The fused path's launch on Hopper for head dim 128 (benchmarks/bwd_tune.py on the H200 at d9a4dfc, 24,576 tokens
#: x 24 heads: 43.2 ms against 46.4 ms for the two-kernel default and 33.9 ms for cuDNN; the pointer atomics'
#: best 46.9 ms). Taken by default for calls of at least :data:`FUSED_MIN_WORK` score elements without causal
#: masking or GQA (a causal GQA call of 4,133 tokens ran 2.15 ms fused against 1.94 ms).
FUSED_CONFIG: dict[str, Any] = {"FUSED_DQ": 1, "DQ_ATOMIC": "tma", "BLOCK_M1": 64, "BLOCK_N1": 128,
                                "num_warps": 8, "num_stages": 3}
FUSED_MIN_WORK = 2 ** 32


def default_config(q: Any, k: Any, causal: bool) -> dict[str, Any]:
    """The backward's launches when the caller pins none: :data:`FUSED_CONFIG` for large non-causal, non-GQA,
    head-dim-128 calls on a GPU that takes TMA reductions (dQ's float32 atomics make it non-deterministic in
    the last bits), else :func:`bwd_config`."""
    batch, n_q, heads, head_dim = (int(s) for s in q.shape)
    n_kv, heads_kv = int(k.shape[1]), int(k.shape[2])
    if (not interpret() and head_dim == 128 and not causal and heads_kv == heads
            and batch * heads * n_q * n_kv >= FUSED_MIN_WORK and tma_reduce_ok(q.device)):
        return dict(FUSED_CONFIG)
    return bwd_config(head_dim)


def dense_backward(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, dlse: Any, scale: float,
                   causal: bool = False, config: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """``(dq, dk, dv)`` of :func:`sparsesim.kernels.attention` from the forward's ``out`` and ``lse``.

    Tensors as the forward took them (``[B, N, H, D]``, GQA K/V); ``lse`` float32 ``[B, H, N_q]``; ``dlse``
    the LSE's gradient or None; ``config`` overrides :func:`default_config`.

    ``config["FUSED_DQ"]`` true: one kernel per KV tile computes dK, dV and each tile pair's dQ contribution
    (``BLOCK_M1 x BLOCK_N1`` tiles, ``num_warps1``/``num_stages1``), added into a zeroed float32 accumulator by
    atomics (``config["DQ_ATOMIC"]``: ``"ptr"``, the default, or ``"tma"``, see :func:`tma_reduce_ok`; where TMA
    reductions cannot run, pointer atomics do), then scaled into ``dq`` (one elementwise launch).
    """
    import torch

    batch, n_q, heads, head_dim = (int(s) for s in q.shape)
    n_kv, heads_kv = int(k.shape[1]), int(k.shape[2])
    cfg = config or default_config(q, k, causal)
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    lse = lse.contiguous()
    delta = bwd_delta(out, dout, dlse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    qk_scale = scale * LOG2E
    if cfg.get("FUSED_DQ"):
        atomic = cfg.get("DQ_ATOMIC", "ptr")
        if atomic not in DQ_ATOMICS:
            raise ValueError(f"dense backward config DQ_ATOMIC={atomic!r}; allowed: {', '.join(DQ_ATOMICS)}")
        bm, bn = cfg["BLOCK_M1"], cfg["BLOCK_N1"]
        acc = torch.zeros((batch, n_q, heads, head_dim), dtype=torch.float32, device=q.device)
        use_tma = atomic == "tma" and tma_reduce_ok(q.device)
        dqa: Any = acc
        if use_tma:
            from triton.tools.tensor_descriptor import TensorDescriptor

            dqa = TensorDescriptor.from_tensor(acc.view(batch, n_q, heads * head_dim), [1, bm, head_dim])
        launch(_dense_bwd_fused_kernel, (triton.cdiv(n_kv, bn), heads_kv, batch),
               (q, k, v, dout, lse, delta, dk, dv, dqa, qk_scale, scale, n_q, n_kv, heads, heads // heads_kv,
                *_s(q), *_s(k), *_s(v), *_s(dout), *_s(dk), *_s(dv), *_s(acc)[:3]),
               {"HEAD_DIM": head_dim, "BLOCK_M": bm, "BLOCK_N": bn, "CAUSAL": bool(causal),
                "EVEN_N": n_kv % bn == 0, "DQ_TMA": use_tma}, launch_options(cfg, 1))
        torch.mul(acc, scale, out=dq)
        return dq, dk, dv
    launch(_dense_bwd_dkdv_kernel, (triton.cdiv(n_kv, cfg["BLOCK_N1"]), heads_kv, batch),
           (q, k, v, dout, lse, delta, dk, dv, qk_scale, scale, n_q, n_kv, heads, heads // heads_kv,
            *_s(q), *_s(k), *_s(v), *_s(dout), *_s(dk), *_s(dv)),
           {"HEAD_DIM": head_dim, "BLOCK_M": cfg["BLOCK_M1"], "BLOCK_N": cfg["BLOCK_N1"], "CAUSAL": bool(causal)},
           launch_options(cfg, 1))
    launch(_dense_bwd_dq_kernel, (triton.cdiv(n_q, cfg["BLOCK_M2"]), heads, batch),
           (q, k, v, dout, lse, delta, dq, qk_scale, scale, n_q, n_kv, heads, heads // heads_kv,
            *_s(q), *_s(k), *_s(v), *_s(dout), *_s(dq)),
           {"HEAD_DIM": head_dim, "BLOCK_M": cfg["BLOCK_M2"], "BLOCK_N": cfg["BLOCK_N2"], "CAUSAL": bool(causal)},
           launch_options(cfg, 2))
    return dq, dk, dv
