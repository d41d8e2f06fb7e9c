"""Block-sparse attention backward on a prepared map's lists (:class:`~sparsesim.kernels.block_map.BlockMap`).

dQ runs the forward schedule: per Q tile (a ``BLOCK_M2`` slice of a map Q block), its listed KV blocks (in
``BLOCK_N2`` slices), then the padded last KV block when flagged, masked. dK/dV run the transposed schedule: per
KV tile (a ``BLOCK_N1`` slice of a map KV block) and per query head of its KV head (GQA: summed in the program),
the Q blocks whose map row holds it (``q_num``/``q_idx``, built once with the map), in ``BLOCK_M1`` slices. No
atomics, no masks except the padded last KV block in dQ. The per-tile math is
:mod:`sparsesim.kernels.dense_bwd`'s.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from sparsesim.kernels._common import LOG2E
from sparsesim.kernels.dense_bwd import (
    _s,
    bwd_config,
    bwd_delta,
    dkdv_step,
    dq_step,
    launch,
    launch_options,
    load_kv_tile,
    store_dkdv,
)


@triton.jit
def _bs_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, Q_NUM, Q_IDX, qk_scale, scale, N, H, GROUP, MAP_HEADS, QB, KB,
    s_qb, s_qn, s_qh, s_qd, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd,
    s_dob, s_don, s_doh, s_dod, s_dkb, s_dkn, s_dkh, s_dkd, s_dvb, s_dvn, s_dvh, s_dvd,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, Q_TILE: tl.constexpr,
    KV_TILE: tl.constexpr,
):
    pid_n = tl.program_id(0)
    hk32 = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    hk = hk32.to(tl.int64)
    kvb = pid_n // (KV_TILE // BLOCK_N)
    k, v, offs_n, kv_ok = load_kv_tile(K, V, b, hk, pid_n * BLOCK_N, N, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh,
                                       s_vd, HEAD_DIM, BLOCK_N)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    for g in range(0, GROUP):
        h32 = hk32 * GROUP + g
        h = h32.to(tl.int64)
        entry = (h32 % MAP_HEADS) * KB + kvb
        count = tl.load(Q_NUM + entry)
        idx_ptr = Q_IDX + entry.to(tl.int64) * QB
        q_h = Q + b * s_qb + h * s_qh
        do_h = DO + b * s_dob + h * s_doh
        row0 = (b * H + h) * N
        for i in range(0, count):
            qb = tl.load(idx_ptr + i)
            for sub in tl.static_range(Q_TILE // BLOCK_M):
                dk, dv = dkdv_step(dk, dv, k, v, q_h, do_h, LSE + row0, DELTA + row0, qb * Q_TILE + sub * BLOCK_M,
                                   offs_n, N, s_qn, s_qd, s_don, s_dod, qk_scale, HEAD_DIM, BLOCK_M, False)
    store_dkdv(DK, DV, dk * scale, dv, b, hk, offs_n, kv_ok, s_dkb, s_dkn, s_dkh, s_dkd, s_dvb, s_dvn, s_dvh, s_dvd,
               HEAD_DIM)


@triton.jit
def _bs_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, KV_NUM, KV_IDX, TAIL, qk_scale, scale, N, H, GROUP, MAP_HEADS, QB, KB,
    s_qb, s_qn, s_qh, s_qd, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd,
    s_dob, s_don, s_doh, s_dod, s_dqb, s_dqn, s_dqh, s_dqd,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, Q_TILE: tl.constexpr,
    KV_TILE: tl.constexpr, HAS_TAIL: tl.constexpr,
):
    pid_m = tl.program_id(0)
    h32 = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    h = h32.to(tl.int64)
    hk = (h32 // GROUP).to(tl.int64)
    qb = pid_m // (Q_TILE // BLOCK_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    m_ok = offs_m < N
    rows = offs_m.to(tl.int64)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    entry = (h32 % MAP_HEADS) * QB + qb
    count = tl.load(KV_NUM + entry)
    visits = count > 0
    if HAS_TAIL:
        tail = tl.load(TAIL + entry) != 0
        visits = visits | tail
    if visits:  # a Q block that visits nothing has dQ = 0 (its rows' LSE is -inf: never read)
        q = tl.load(Q + b * s_qb + h * s_qh + rows[:, None] * s_qn + offs_d[None, :] * s_qd, mask=m_ok[:, None],
                    other=0.0)
        do = tl.load(DO + b * s_dob + h * s_doh + rows[:, None] * s_don + offs_d[None, :] * s_dod,
                     mask=m_ok[:, None], other=0.0)
        row0 = (b * H + h) * N
        lse2 = tl.load(LSE + row0 + rows, mask=m_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row0 + rows, mask=m_ok, other=0.0)
        k_h = K + b * s_kb + hk * s_kh
        v_h = V + b * s_vb + hk * s_vh
        idx_ptr = KV_IDX + entry.to(tl.int64) * KB
        for i in range(0, count):
            kvb = tl.load(idx_ptr + i)
            for sub in tl.static_range(KV_TILE // BLOCK_N):
                dq = dq_step(dq, q, do, lse2, delta, k_h, v_h, kvb * KV_TILE + sub * BLOCK_N, offs_m, N,
                             s_kn, s_kd, s_vn, s_vd, qk_scale, HEAD_DIM, BLOCK_N, False, False)
        if HAS_TAIL:
            if tail:
                for sub in tl.static_range(KV_TILE // BLOCK_N):
                    dq = dq_step(dq, q, do, lse2, delta, k_h, v_h, (KB - 1) * KV_TILE + sub * BLOCK_N, offs_m, N,
                                 s_kn, s_kd, s_vn, s_vd, qk_scale, HEAD_DIM, BLOCK_N, True, False)
    dq = dq * scale
    tl.store(DQ + b * s_dqb + h * s_dqh + rows[:, None] * s_dqn + offs_d[None, :] * s_dqd,
             dq.to(DQ.dtype.element_ty), mask=m_ok[:, None])


def block_sparse_backward(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, dlse: Any,
                          lists: tuple[Any, Any, Any, Any, Any], q_tile: int, kv_tile: int, scale: float,
                          config: dict[str, int] | None = None) -> tuple[Any, Any, Any]:
    """``(dq, dk, dv)`` of :func:`sparsesim.kernels.block_sparse_attention` from the forward's ``out`` and
    ``lse``; ``lists`` = ``(kv_num, kv_idx, tail, q_num, q_idx)`` of the prepared map, ``dlse`` the LSE's
    gradient or None, ``config`` overrides :func:`~sparsesim.kernels.dense_bwd.bwd_config` (blocks at most the
    map's tiles)."""
    import torch

    batch, n, heads, head_dim = (int(s) for s in q.shape)
    heads_kv = int(k.shape[2])
    kv_num, kv_idx, tail, q_num, q_idx = lists
    map_heads, qbs, kbs = int(kv_idx.shape[0]), int(kv_idx.shape[1]), int(kv_idx.shape[2])
    cfg = config or bwd_config(head_dim, q_tile, kv_tile)
    if q_tile % cfg["BLOCK_M1"] or q_tile % cfg["BLOCK_M2"] or kv_tile % cfg["BLOCK_N1"] or kv_tile % cfg["BLOCK_N2"]:
        raise ValueError(f"block_sparse backward config {cfg}: blocks must divide q_tile={q_tile}, kv_tile={kv_tile}")
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    lse = lse.contiguous()
    delta = bwd_delta(out, dout, dlse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    qk_scale = scale * LOG2E
    common = (scale, n, heads, heads // heads_kv, map_heads, qbs, kbs)
    launch(_bs_bwd_dkdv_kernel, (kbs * (kv_tile // cfg["BLOCK_N1"]), heads_kv, batch),
           (q, k, v, dout, lse, delta, dk, dv, q_num, q_idx, qk_scale, *common,
            *_s(q), *_s(k), *_s(v), *_s(dout), *_s(dk), *_s(dv)),
           {"HEAD_DIM": head_dim, "BLOCK_M": cfg["BLOCK_M1"], "BLOCK_N": cfg["BLOCK_N1"], "Q_TILE": q_tile,
            "KV_TILE": kv_tile}, launch_options(cfg, 1))
    launch(_bs_bwd_dq_kernel, (qbs * (q_tile // cfg["BLOCK_M2"]), heads, batch),
           (q, k, v, dout, lse, delta, dq, kv_num, kv_idx, tail, qk_scale, *common,
            *_s(q), *_s(k), *_s(v), *_s(dout), *_s(dq)),
           {"HEAD_DIM": head_dim, "BLOCK_M": cfg["BLOCK_M2"], "BLOCK_N": cfg["BLOCK_N2"], "Q_TILE": q_tile,
            "KV_TILE": kv_tile, "HAS_TAIL": n % kv_tile != 0}, launch_options(cfg, 2))
    return dq, dk, dv
