"""Warp-specialized attention forward for Hopper (dense and block-sparse), written in Gluon (issue 17, item 1).

FlashAttention-3's structure with Gluon's explicit partitions: one load warp streams K/V tiles by TMA into a
``STAGES``-deep ring of shared-memory buffers (``k_ready``/``v_ready`` mbarriers signalled by the copies'
byte counts, ``kv_empty`` released by both consumers), and two consumer warpgroups each own 64 rows of the
CTA's 128-row Q tile, so one warpgroup's softmax runs while the other's ``wgmma`` keep the tensor cores busy.
With ``OVERLAP`` a consumer also issues the scores of KV tile ``j + 1`` before the softmax of tile ``j``
(FA3's intra-warpgroup overlap: two ``wgmma`` groups in flight, completed in issue order).

Block-sparse (``SPARSE``): the CTA's KV tiles come from a prepared map's lists (``kv_num``/``kv_idx``, then the
padded last block where ``tail`` flags it), the schedule of :mod:`sparsesim.kernels.block_sparse`; dense visits
every KV tile in order. Both mask the keys past ``N_KV`` in the tile that holds them; a row that visits nothing
is zero with LSE ``-inf``.

GPU only (Hopper, bf16/fp16, head dim 64 or 128, no causal): Gluon has no interpreter path, so the GPU tests
check this kernel against the float64 reference; the Triton kernels (:mod:`sparsesim.kernels.dense`,
:mod:`sparsesim.kernels.block_sparse`) run every CPU test and every call this one does not take.
``[B, N, H, D]`` tensors whose ``(N, H, D)`` block is contiguous are read through 2D ``[B * N, H * D]`` TMA
views; a tile that runs past its batch's last row reads the next batch's rows, whose scores the key mask
drops and whose output rows the masked store never writes. GNA layouts whose tiles divide them (``BOX``) are
read through 5D ``[B, L0, L1, L2, H * D]`` views, a tile one box, so Q/K/V need no permutation; the output rows
are stored at the box's tokens. Keys are masked only where they end inside a KV tile (``KV_MASK``).

Work items are (128-row Q tile, head, batch), the Q tile fastest; program ``p`` of ``P`` runs items ``p, p + P,
...``: one item each when launched one program per item, several when persistent (``P`` = the SMs). The K/V
ring's position and the ping-pong turns run on across a program's items; the Q buffer is handed back by the
``q_empty`` barrier once both consumers' last score GEMM of an item is done (``EARLY``: before that tile's
softmax, and the load warp issues the next item's first K/V tiles before it waits for the buffer; else after
the softmax), so the next item's loads overlap the last one's final softmax, ``P V`` and store.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from sparsesim.hwmodels.launch import WS_HEAD_DIMS, WS_MIN_WORK, WS_PERSISTENT_MAX_TILES
from sparsesim.kernels._common import LOG2E

#: Rows of Q per consumer warpgroup (one ``wgmma`` M of 64), consumers per CTA, and the CTA's Q tile.
WG_ROWS = gl.constexpr(64)
CONSUMERS = 2
LN2 = gl.constexpr(0.6931471805599453)


@gluon.jit
def _softmax_step(s, m_i, l_i, acc, qk_scale, dtype: gl.constexpr, p_layout: gl.constexpr, row_o: gl.constexpr):
    """Online softmax of one score tile: ``(P as the wgmma A operand, m, l, rescaled acc)``."""
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: P = 0, not NaN
    p = gl.exp2(s * qk_scale - m_safe[:, None])
    alpha = gl.exp2(m_i - m_safe)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    acc = acc * gl.convert_layout(alpha, row_o)[:, None]
    return gl.convert_layout(p.to(dtype), p_layout), m_new, l_i, acc


@gluon.jit
def _sched(w, base):
    """The schedule tuple of work item ``w`` (its Q tile fastest, then head, then batch: the launch order of a
    grid of one program per item): the launch's ``base`` arguments with the item's batch, head, first row, map
    entry and TMA row/column offsets in place."""
    qk_scale, N_Q, N_KV, H, GROUP, MAP_HEADS, QB, KB = base[0], base[1], base[2], base[3], base[4], base[5], \
        base[6], base[7]
    QRB, QRH, QCH, KRB, KRH, KCH = base[14], base[15], base[16], base[17], base[18], base[19]
    pid_m = w % QB
    h = (w // QB) % H
    b = w // (QB * H)
    hk = h // GROUP
    m0 = pid_m * (2 * WG_ROWS)
    entry = (h % MAP_HEADS) * QB + pid_m  # the map's (head, Q block); 0 heads of a shared map
    return (qk_scale, N_Q, N_KV, H, b, h, hk, m0, base[8], base[9], base[10], base[11], base[12], base[13], entry,
            KB, b * QRB + h * QRH + m0, h * QCH, b * KRB + hk * KRH, hk * KCH, base[20], base[21], base[22],
            base[23])


@gluon.jit
def _tiles(sched, BLOCK_N: gl.constexpr, SPARSE: gl.constexpr, HAS_TAIL: gl.constexpr):
    """``(count, n_tiles)`` of the CTA: listed KV blocks and, with the tail block, one more (dense: all)."""
    N_KV, KV_NUM, TAIL, entry = sched[2], sched[11], sched[13], sched[14]
    if SPARSE:
        count = gl.load(KV_NUM + entry)
        n_tiles = count
        if HAS_TAIL:
            n_tiles = count + gl.load(TAIL + entry)
    else:
        n_tiles = gl.cdiv(N_KV, BLOCK_N)
        count = n_tiles
    return count, n_tiles


@gluon.jit
def _kv_block(j, count, sched, SPARSE: gl.constexpr):
    """The CTA's ``j``-th KV tile (block-sparse: listed block ``j``, past the list the tail; dense: ``j``)."""
    KV_IDX, entry, KB = sched[12], sched[14], sched[15]
    if SPARSE:
        return gl.load(KV_IDX + entry.to(gl.int64) * KB + j, mask=j < count, other=KB - 1)
    else:
        return j


@gluon.jit
def _kv_start(j, count, sched, BLOCK_N: gl.constexpr, SPARSE: gl.constexpr):
    """First key (in tile order) of the CTA's ``j``-th KV tile."""
    return _kv_block(j, count, sched, SPARSE) * BLOCK_N


@gluon.jit
def _box_origin(tile, L1, L2, T0: gl.constexpr, T1: gl.constexpr, T2: gl.constexpr):
    """First position ``(x0, x1, x2)`` of box tile ``tile`` of a 3D layout ``[*, L1, L2]`` cut into
    ``T0 x T1 x T2`` boxes (the tile grid row-major: the numbering of the plan's block lists)."""
    n1 = L1 // T1
    n2 = L2 // T2
    return (tile // (n1 * n2)) * T0, ((tile // n2) % n1) * T1, (tile % n2) * T2


@gluon.jit
def _box_tokens(local, tile, L1, L2, T0: gl.constexpr, T1: gl.constexpr, T2: gl.constexpr):
    """Token indices of rows ``local`` of box tile ``tile`` (row ``r``: position ``r`` of the box, row-major)."""
    x0, x1, x2 = _box_origin(tile, L1, L2, T0, T1, T2)
    return ((x0 + local // (T1 * T2)) * L1 + x1 + (local // T2) % T1) * L2 + x2 + local % T2


@gluon.jit
def _stage(ring, st, BOX: gl.constexpr):
    """Stage ``st`` of a K/V ring as the ``[BLOCK_N, HEAD_DIM]`` operand (box mode: its box flattened)."""
    buf = ring.index(st)
    if BOX:
        buf = buf.reshape([buf.shape[0] * buf.shape[1] * buf.shape[2] * buf.shape[3], buf.shape[4]])
    return buf


@gluon.jit
def _consumer(bufs, base, WG: gl.constexpr, OPTS: gl.constexpr):
    """One warpgroup's 64 rows of each of its program's work items: scores, online softmax, ``P V``; then the
    normalized output (and LSE). The K/V ring position and the ping-pong turns run on across items; the Q
    buffer is released (``q_empty``) as soon as an item's last score GEMM is done."""
    q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, Out, Lse, q_empty = bufs
    HEAD_DIM: gl.constexpr = OPTS[6]
    BLOCK_N: gl.constexpr = OPTS[7]
    STAGES: gl.constexpr = OPTS[0]
    OVERLAP: gl.constexpr = OPTS[1]
    PINGPONG: gl.constexpr = OPTS[2]
    STORE_LSE: gl.constexpr = OPTS[3]
    SPARSE: gl.constexpr = OPTS[4]
    HAS_TAIL: gl.constexpr = OPTS[5]
    BOX: gl.constexpr = OPTS[8]
    KV_MASK: gl.constexpr = OPTS[9]
    EARLY: gl.constexpr = OPTS[10]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
    dtype: gl.constexpr = q_smem.dtype

    if BOX:
        q = q_smem.reshape([2 * WG_ROWS, HEAD_DIM]).slice(WG * WG_ROWS, WG_ROWS)
    else:
        q = q_smem.index(WG)
    zero_s = gl.zeros([WG_ROWS, BLOCK_N], gl.float32, s_layout)
    cols = gl.arange(0, BLOCK_N, layout=col_s)
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    pos = 0  # the ring position of the item's first KV tile
    turns = 0  # ping-pong turns taken so far
    for w in range(pid, base[24], nprog):
        sched = _sched(w, base)
        qk_scale, N_Q, N_KV, b, h, m0, s_ob, s_on, s_oh = sched[0], sched[1], sched[2], sched[4], sched[5], \
            sched[7], sched[8], sched[9], sched[10]
        count, n_tiles = _tiles(sched, BLOCK_N, SPARSE, HAS_TAIL)
        m_i = gl.full([WG_ROWS], float("-inf"), gl.float32, row_s)
        l_i = gl.zeros([WG_ROWS], gl.float32, row_s)
        acc = gl.zeros([WG_ROWS, HEAD_DIM], gl.float32, o_layout)
        mbarrier.wait(q_bar, ((w - pid) // nprog) & 1)
        if not OVERLAP:
            for j in range(n_tiles):
                st = (pos + j) % STAGES
                ph = ((pos + j) // STAGES) & 1
                mbarrier.wait(k_ready.index(st), ph)
                s = warpgroup_mma(q, _stage(k_smem, st, BOX).permute((1, 0)), zero_s, use_acc=False, is_async=True)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
                if KV_MASK:
                    s = gl.where((cols < N_KV - _kv_start(j, count, sched, BLOCK_N, SPARSE))[None, :], s,
                                 float("-inf"))
                p16, m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, qk_scale, dtype, p_layout, row_o)
                mbarrier.wait(v_ready.index(st), ph)
                acc = warpgroup_mma(p16, _stage(v_smem, st, BOX), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(kv_empty.index(st), count=1)
            mbarrier.arrive(q_empty, count=1)
        elif n_tiles > 0:
            # FA3's order: the scores of tile j and P(j-1) V(j-1) issued together, the softmax of tile j running
            # while the second GEMM does; with PINGPONG the two warpgroups take turns issuing their GEMMs.
            mbarrier.wait(k_ready.index(pos % STAGES), (pos // STAGES) & 1)
            s = warpgroup_mma(q, _stage(k_smem, pos % STAGES, BOX).permute((1, 0)), zero_s, use_acc=False,
                              is_async=True)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            if EARLY:
                if n_tiles == 1:  # the item's last score GEMM is done: the loader may load the next Q
                    mbarrier.arrive(q_empty, count=1)
            if KV_MASK:
                s = gl.where((cols < N_KV - _kv_start(0, count, sched, BLOCK_N, SPARSE))[None, :], s, float("-inf"))
            p16, m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, qk_scale, dtype, p_layout, row_o)
            for j in range(1, n_tiles):
                st = (pos + j) % STAGES
                prev = (pos + j - 1) % STAGES
                if PINGPONG:
                    mbarrier.wait(turn.index(WG), ((turns + j - 1) & 1) ^ (1 - WG))
                mbarrier.wait(k_ready.index(st), ((pos + j) // STAGES) & 1)
                s = warpgroup_mma(q, _stage(k_smem, st, BOX).permute((1, 0)), zero_s, use_acc=False, is_async=True)
                mbarrier.wait(v_ready.index(prev), ((pos + j - 1) // STAGES) & 1)
                acc = warpgroup_mma(p16, _stage(v_smem, prev, BOX), acc, is_async=True)
                if PINGPONG:
                    mbarrier.arrive(turn.index(1 - WG), count=1)
                s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
                if EARLY:
                    if j == n_tiles - 1:  # the item's last score GEMM is done: the loader may load the next Q
                        mbarrier.arrive(q_empty, count=1)
                if KV_MASK:
                    s = gl.where((cols < N_KV - _kv_start(j, count, sched, BLOCK_N, SPARSE))[None, :], s,
                                 float("-inf"))
                m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
                m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
                p = gl.exp2(s * qk_scale - m_safe[:, None])
                alpha = gl.exp2(m_i - m_safe)
                l_i = l_i * alpha + gl.sum(p, axis=1)
                m_i = m_new
                p16 = gl.convert_layout(p.to(dtype), p_layout)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(kv_empty.index(prev), count=1)
                acc = acc * gl.convert_layout(alpha, row_o)[:, None]
            if not EARLY:
                mbarrier.arrive(q_empty, count=1)  # the item's last score GEMM is done: the next Q may load
            last = (pos + n_tiles - 1) % STAGES
            mbarrier.wait(v_ready.index(last), ((pos + n_tiles - 1) // STAGES) & 1)
            acc = warpgroup_mma(p16, _stage(v_smem, last, BOX), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(kv_empty.index(last), count=1)
            turns += n_tiles - 1
        else:
            mbarrier.arrive(q_empty, count=1)
        pos += n_tiles

        local = WG * WG_ROWS + gl.arange(0, WG_ROWS, layout=row_o)
        if BOX:  # the box's rows are scattered over the layout; every box is whole (no row past N_Q)
            rows = _box_tokens(local, m0 // (2 * WG_ROWS), sched[20], sched[21], q_smem.shape[1], q_smem.shape[2],
                               q_smem.shape[3])
        else:
            rows = m0 + local
        row_ok = rows < N_Q
        l_o = gl.convert_layout(l_i, row_o)
        out = acc / gl.where(l_o == 0.0, 1.0, l_o)[:, None]
        offs_d = gl.arange(0, HEAD_DIM, layout=col_o)
        ptrs = Out + b.to(gl.int64) * s_ob + h * s_oh + rows.to(gl.int64)[:, None] * s_on + offs_d[None, :]
        gl.store(ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
        if STORE_LSE:  # natural log; -inf on a row that sees nothing
            lse = (gl.convert_layout(m_i, row_o) + gl.log2(l_o)) * LN2
            gl.store(Lse + b.to(gl.int64) * sched[22] + h.to(gl.int64) * sched[23] + rows, lse, mask=row_ok)


@gluon.jit
def _consumer_first(bufs, descs, base, OPTS: gl.constexpr):
    """The first consumer warpgroup (rows 0-63 of the CTA's Q tile): the default partition."""
    _consumer(bufs, base, 0, OPTS)


@gluon.jit
def _consumer_second(bufs, descs, base, OPTS: gl.constexpr):
    """The second consumer warpgroup (rows 64-127 of the CTA's Q tile)."""
    _consumer(bufs, base, 1, OPTS)


@gluon.jit
def _load_q(bufs, descs, sched, L1, L2, BOX: gl.constexpr):
    """Issue the item's Q tile into the Q buffer (``q_bar`` counts its bytes)."""
    q_smem, q_bar = bufs[0], bufs[3]
    q_desc = descs[0]
    b, m0, q_row, q_col = sched[4], sched[7], sched[16], sched[17]
    if BOX:  # one copy of the whole Q box, [b, x0, x1, x2, column] coordinates
        QS: gl.constexpr = q_desc.block_type.shape
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        x0, x1, x2 = _box_origin(m0 // (2 * WG_ROWS), L1, L2, QS[1], QS[2], QS[3])
        tma.async_copy_global_to_shared(q_desc, [b, x0, x1, x2, q_col], q_bar, q_smem)
    else:
        mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_row, q_col], q_bar, q_smem.index(0))
        tma.async_copy_global_to_shared(q_desc, [q_row + WG_ROWS, q_col], q_bar, q_smem.index(1))


@gluon.jit
def _load_kv(bufs, descs, sched, j, pos, count, L1, L2, OPTS: gl.constexpr):
    """Issue the item's ``j``-th K and V tiles into ring position ``pos + j`` once the consumers freed it."""
    k_smem, v_smem, k_ready, v_ready, kv_empty = bufs[1], bufs[2], bufs[4], bufs[5], bufs[6]
    k_desc, v_desc = descs[1], descs[2]
    BLOCK_N: gl.constexpr = OPTS[7]
    STAGES: gl.constexpr = OPTS[0]
    SPARSE: gl.constexpr = OPTS[4]
    BOX: gl.constexpr = OPTS[8]
    b, kv_row, kv_col = sched[4], sched[18], sched[19]
    st = (pos + j) % STAGES
    ph = ((pos + j) // STAGES) & 1
    mbarrier.wait(kv_empty.index(st), ph ^ 1)
    mbarrier.expect(k_ready.index(st), k_desc.block_type.nbytes)
    if BOX:
        KS: gl.constexpr = k_desc.block_type.shape
        y0, y1, y2 = _box_origin(_kv_block(j, count, sched, SPARSE), L1, L2, KS[1], KS[2], KS[3])
        tma.async_copy_global_to_shared(k_desc, [b, y0, y1, y2, kv_col], k_ready.index(st), k_smem.index(st))
        mbarrier.expect(v_ready.index(st), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [b, y0, y1, y2, kv_col], v_ready.index(st), v_smem.index(st))
    else:
        row = kv_row + _kv_start(j, count, sched, BLOCK_N, SPARSE)
        tma.async_copy_global_to_shared(k_desc, [row, kv_col], k_ready.index(st), k_smem.index(st))
        mbarrier.expect(v_ready.index(st), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [row, kv_col], v_ready.index(st), v_smem.index(st))


@gluon.jit
def _loader(bufs, descs, base, OPTS: gl.constexpr):
    """The load warp, item by item of its program: the item's Q tile once the consumers released the last one
    (``q_empty``) and its K and V tiles into the ring, whose position runs on across items. With ``EARLY`` the
    item's first K/V tiles go out before the wait for the Q buffer (they need only a free ring stage)."""
    q_empty = bufs[10]
    BLOCK_N: gl.constexpr = OPTS[7]
    SPARSE: gl.constexpr = OPTS[4]
    HAS_TAIL: gl.constexpr = OPTS[5]
    BOX: gl.constexpr = OPTS[8]
    EARLY: gl.constexpr = OPTS[10]
    L1, L2 = base[20], base[21]
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    pos = 0
    for w in range(pid, base[24], nprog):
        sched = _sched(w, base)
        count, n_tiles = _tiles(sched, BLOCK_N, SPARSE, HAS_TAIL)
        first = 0
        if EARLY:
            if n_tiles > 0:
                _load_kv(bufs, descs, sched, 0, pos, count, L1, L2, OPTS)
                first = 1
        mbarrier.wait(q_empty, (((w - pid) // nprog) & 1) ^ 1)
        _load_q(bufs, descs, sched, L1, L2, BOX)
        for j in range(first, n_tiles):
            _load_kv(bufs, descs, sched, j, pos, count, L1, L2, OPTS)
        pos += n_tiles


@gluon.jit
def _ws_fwd_kernel(q_desc, k_desc, v_desc, Out, Lse, KV_NUM, KV_IDX, TAIL, qk_scale, N_Q, N_KV, H, GROUP,
                   MAP_HEADS, QB, KB, s_ob, s_on, s_oh, QRB, QRH, QCH, KRB, KRH, KCH, L1, L2, s_lb, s_lh, N_ITEMS,
                   HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, OVERLAP: gl.constexpr,
                   PINGPONG: gl.constexpr, STORE_LSE: gl.constexpr, SPARSE: gl.constexpr, HAS_TAIL: gl.constexpr,
                   CONSUMER_REGS: gl.constexpr, BOX: gl.constexpr, KV_MASK: gl.constexpr, EARLY: gl.constexpr):
    # program p runs work items p, p + P, ... (P programs): one item each when launched one per item, else
    # persistent (static round-robin: the launch order's schedule when the items cost the same)
    dtype: gl.constexpr = q_desc.dtype
    if BOX:  # the TMA boxes' own shapes: [1, T0, T1, T2, HEAD_DIM], flattened to 2D by the consumers
        QS: gl.constexpr = q_desc.block_type.shape
        KS: gl.constexpr = k_desc.block_type.shape
        q_smem = gl.allocate_shared_memory(dtype, [QS[0], QS[1], QS[2], QS[3], QS[4]], q_desc.layout)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, KS[0], KS[1], KS[2], KS[3], KS[4]], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, KS[0], KS[1], KS[2], KS[3], KS[4]], v_desc.layout)
    else:
        q_smem = gl.allocate_shared_memory(dtype, [2, WG_ROWS, HEAD_DIM], q_desc.layout)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    mbarrier.init(q_empty, count=2)  # both consumers release the Q tile
    mbarrier.init(turn.index(0), count=1)
    mbarrier.init(turn.index(1), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)  # both consumers release a stage
    bufs = (q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, Out, Lse, q_empty)
    descs = (q_desc, k_desc, v_desc)
    base = (qk_scale, N_Q, N_KV, H, GROUP, MAP_HEADS, QB, KB, s_ob, s_on, s_oh, KV_NUM, KV_IDX, TAIL,
            QRB, QRH, QCH, KRB, KRH, KCH, L1, L2, s_lb, s_lh, N_ITEMS)
    opts: gl.constexpr = (STAGES, OVERLAP, PINGPONG, STORE_LSE, SPARSE, HAS_TAIL, HEAD_DIM, BLOCK_N, BOX, KV_MASK,
                          EARLY)
    gl.warp_specialize([
        (_consumer_first, (bufs, descs, base, opts)),
        (_consumer_second, (bufs, descs, base, opts)),
        (_loader, (bufs, descs, base, opts)),
    ], [4, 1], [CONSUMER_REGS, 24])


#: The variant the H200 measured fastest (kernels/NOTES.md, version 9): FA3 order, ping-pong, three stages.
BEST = {"block_n": 128, "stages": 3, "overlap": True, "pingpong": True, "consumer_regs": 240}


#: Calls of at least this many score elements take this kernel where it can run them (:func:`use_ws`); the rule
#: and its measurement live in :mod:`sparsesim.hwmodels.launch` (the model prices the same calls with it).
MIN_WORK = WS_MIN_WORK


def use_ws(q: Any, k: Any, v: Any, out: Any = None, *, work: int | None = None) -> bool:
    """Whether a forward call should take this kernel: :func:`supported`, at least :data:`MIN_WORK` score
    elements (``work``, default the dense count), and not opted out with ``SPARSESIM_FWD_KERNEL=triton``."""
    import os

    if os.environ.get("SPARSESIM_FWD_KERNEL", "").strip().lower() == "triton" or not supported(q, k, v, out):
        return False
    if work is None:
        work = int(q.shape[0]) * int(q.shape[2]) * int(q.shape[1]) * int(k.shape[1])
    return work >= MIN_WORK


def supported(q: Any, k: Any, v: Any, out: Any = None) -> bool:
    """True where this kernel can run the call: a Hopper GPU (not the interpreter; TMA not turned off by
    ``SPARSESIM_NO_TMA=1``), bf16/fp16, equal Q/K/V head dims of 64 or 128, contiguous ``[B, *tokens, H, D]`` tensors
    (the 2D TMA views) on 16-byte aligned storage."""
    import torch

    from sparsesim.kernels._launch import interpret, tma_enabled

    tensors = (q, k, v) if out is None else (q, k, v, out)
    if interpret() or not tma_enabled():
        return False
    if not all(isinstance(t, torch.Tensor) and t.is_cuda and t.dim() >= 4 for t in tensors):
        return False
    if _major(q.device.index) != 9:  # WS_ARCHITECTURE (sm_90)
        return False
    if q.dtype not in (torch.bfloat16, torch.float16) or any(t.dtype != q.dtype for t in tensors):
        return False
    return (all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in tensors) and q.shape[-1] in WS_HEAD_DIMS
            and k.shape[-1] == q.shape[-1] and v.shape[-1] == q.shape[-1])


def persistent_for(tiles_per_item: float) -> bool:
    """Whether a launch whose work items (Q tiles) visit ``tiles_per_item`` KV tiles on average (all alike)
    should run persistent: :data:`~sparsesim.hwmodels.launch.WS_PERSISTENT_MAX_TILES` and its measurement."""
    return tiles_per_item <= WS_PERSISTENT_MAX_TILES


def still_supported(out: Any) -> bool:
    """The per-call remainder of :func:`supported` for a launch whose call key fixed Q, K and V (shapes, strides,
    dtype, device, alignment) when it was validated: TMA not turned off, ``out`` contiguous and 16-byte aligned
    (its shape, dtype and device are checked by the caller)."""
    from sparsesim.kernels._launch import tma_enabled

    return tma_enabled() and out.is_contiguous() and out.data_ptr() % 16 == 0


@functools.lru_cache(maxsize=64)
def _sm_count(index: int | None) -> int:
    """A CUDA device's streaming multiprocessors (asked once per device)."""
    import torch

    return int(torch.cuda.get_device_properties(index).multi_processor_count)


@functools.lru_cache(maxsize=64)
def _major(index: int | None) -> int:
    """A CUDA device's compute capability major (a fixed fact of the device: asked once per device; the
    per-call query cost ~10 us of the warp-specialized call's host time, benchmarks/ws_host_profile.py)."""
    import torch

    return int(torch.cuda.get_device_capability(index)[0])


def ws_forward(q: Any, k: Any, v: Any, out: Any, lse: Any, scale: float, *, lists: Any = None,
               map_heads: int = 1, block_n: int = 128, box: Any = None, cache: dict[Any, Any] | None = None,
               stages: int = 3, overlap: bool = True, pingpong: bool = True, consumer_regs: int = 240,
               mask_kv: bool | None = None, persistent: bool = False, early: bool = True) -> Any:
    """Launch the kernel on checked tensors (:func:`supported`): dense, or block-sparse on a prepared map's
    ``lists`` ``(kv_num, kv_idx, tail)`` (Q tiles of 128 rows, KV tiles of ``block_n``; ``kv_idx``'s rows may be
    shorter than the KV tile count where no tail block is flagged). ``lse``: a float32 contiguous ``[B, H, N_q]``
    buffer or None. ``box``: ``(layout, q_tile, kv_tile)`` of a GNA layout whose tiles divide it (3-tuples, lower
    ranks padded with leading 1s): the tensors are ``[B, *layout, H, D]``, the lists number box tiles (the tile
    grid row-major), each tile is read as one TMA box of a 5D view and its output rows are written where its
    tokens are: nothing is permuted. ``cache``: a dict kept with the caller's validated launch; repeated calls
    then reuse their TMA descriptors by storage address (:func:`_descriptor`) and launch the compiled kernel
    directly, skipping Gluon's argument binding: through Triton's C launcher with the descriptors encoded once
    per address triple (:func:`~sparsesim.kernels._launch.direct_launch`), else through the compiled kernel
    (:func:`~sparsesim.kernels._launch.launch_compiled`). Returns ``out``.

    ``stages`` (K/V ring depth), ``overlap`` (FA3's order), ``pingpong`` (the consumers take turns issuing
    GEMMs), ``consumer_regs`` (registers per thread of the second consumer; the first gets what the kernel's
    ``maxnreg`` leaves), ``mask_kv`` (mask the keys past ``N_KV`` in every tile; default: only where the keys
    end inside a KV tile, the one case that needs it) and ``persistent`` (one program per SM, each taking the
    work items ``p, p + P, ...``: a static round-robin, which is the launch order's schedule when every item costs
    the same; the next item's Q load overlaps the last one's final GEMM and store; the callers decide by
    :func:`persistent_for`) and ``early`` (each consumer hands the Q buffer back right after an item's last score
    GEMM, and the load warp issues the next item's first K/V tiles before it waits for that buffer) are the knobs
    benchmarks/gluon_dense_bench.py and benchmarks/gna_ws_bench.py vary.
    """
    from sparsesim.kernels._launch import DirectLaunch, direct_launch, launch_compiled

    sparse = lists is not None
    static_key = ("ws-static", box, block_n, stages, overlap, pingpong, consumer_regs, lse is None, sparse, mask_kv,
                  persistent, early)
    static = None if cache is None else cache.get(static_key)
    if static is None:  # what the call's shapes fix: a cache belongs to one validated launch (fixed shapes)
        static = _static_args(q, k, out, scale, map_heads, block_n, box, lse is not None,
                              int(lists[1].shape[-1]) if sparse else None,
                              {"STAGES": stages, "OVERLAP": overlap, "PINGPONG": pingpong,
                               "CONSUMER_REGS": consumer_regs, "MASK_KV": mask_kv, "PERSISTENT": persistent,
                               "EARLY": early},
                              _sm_count(q.device.index) if persistent else 0)
        if cache is not None:
            cache[static_key] = static
    layouts, views, ints, grid, constexprs = static
    kv_num, kv_idx, tail = lists if sparse else (out, out, out)
    rest = (out, out if lse is None else lse, kv_num, kv_idx, tail)
    options = {"num_warps": 4, "maxnreg": 168}
    # the shapes are fixed; what Triton specializes on besides them: the pointers' 16-byte alignment
    key = ("ws", out.data_ptr() % 16 == 0, rest[1].data_ptr() % 16 == 0, kv_num.data_ptr() % 16 == 0,
           kv_idx.data_ptr() % 16 == 0, tail.data_ptr() % 16 == 0, *constexprs.values())
    views_of = zip((q, k, v), views, layouts, strict=True)  # (tensor, (view shape, block), shared layout)
    if cache is not None and cache.get(key) is not None:  # repeated: descriptors by address, the compiled kernel
        # the views' shapes are the launch's; its descriptors depend on the three addresses only
        by_ptrs = cache.get(("descs", static_key))
        if by_ptrs is None:
            by_ptrs = cache[("descs", static_key)] = {}
        ptrs = (q.data_ptr(), k.data_ptr(), v.data_ptr())
        descs = by_ptrs.get(ptrs)
        if descs is None:
            descs = tuple(_descriptor(x.view(shape), block, layout, cache) for x, (shape, block), layout in views_of)
            if len(by_ptrs) >= MAX_ADDRESSES:
                del by_ptrs[next(iter(by_ptrs))]
            by_ptrs[ptrs] = descs
        direct = cache.get(("direct", key))
        if direct is None:
            direct = cache[("direct", key)] = direct_launch(cache[key], 3) or False
        if isinstance(direct, DirectLaunch):  # Triton's C launcher, the descriptors encoded once per address triple
            expanded = cache.get(("expanded", static_key, key))
            if expanded is None:
                expanded = cache[("expanded", static_key, key)] = {}
            args = expanded.get(ptrs)
            if args is None:
                if len(expanded) >= MAX_ADDRESSES:
                    del expanded[next(iter(expanded))]
                args = expanded[ptrs] = direct.expand(descs)
            if direct(grid, args, (*rest, *ints, *constexprs.values())):
                return out
        launch_compiled(cache, key, _ws_fwd_kernel, grid, (*descs, *rest, *ints), constexprs, options)
        return out
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    descs = tuple(TensorDescriptor.from_tensor(x.view(shape), block, layout) for x, (shape, block), layout in views_of)
    if cache is None:
        _ws_fwd_kernel[grid](*descs, *rest, *ints, **constexprs, **options)
    else:  # Triton's launcher binds and specializes the real tensors once per key
        launch_compiled(cache, key, _ws_fwd_kernel, grid, (*descs, *rest, *ints), constexprs, options)
    return out


def _static_args(q: Any, k: Any, out: Any, scale: float, map_heads: int, block_n: int, box: Any,
                 store_lse: bool, kv_row: int | None, knobs: dict[str, Any], sms: int) -> tuple:
    """The parts of a launch its shapes fix: shared layouts of Q and K/V, each input's TMA view ``(shape,
    block)``, the integer arguments, the grid and the constexprs (in the kernel's signature order); ``box`` as
    :func:`ws_forward` takes it; ``kv_row``: the block lists' row length (block-sparse), None for dense; ``sms``:
    the device's SMs (a persistent launch: one program each, at most one per work item)."""
    import torch

    sparse = kv_row is not None
    batch, heads, head_dim = int(q.shape[0]), int(q.shape[-2]), int(q.shape[-1])
    heads_kv = int(k.shape[-2])
    n_q, n_kv = math.prod(q.shape[1:-2]), math.prod(k.shape[1:-2])
    out_strides = (out.stride(0), out.stride(-3), out.stride(-2))
    if box is not None:  # [B, L0, L1, L2, H * D] views, one box [1, *tile, D] a tile; heads are column offsets
        layout, q_tile, kv_tile = box
        q_view, kv_view = (batch, *layout, heads * head_dim), (batch, *layout, heads_kv * head_dim)
        q_block, kv_block = [1, *q_tile, head_dim], [1, *kv_tile, head_dim]
        q_rows, k_rows = (0, 0, head_dim), (0, 0, head_dim)
        axes = (layout[1], layout[2])
    else:  # [B * N, H * D] views: a tile is rows, heads are column offsets
        q_view, kv_view = (-1, heads * head_dim), (-1, heads_kv * head_dim)
        q_block, kv_block = [WG_ROWS.value, head_dim], [block_n, head_dim]
        q_rows, k_rows = (n_q, 0, head_dim), (n_kv, 0, head_dim)
        axes = (1, 1)
    elem = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    q_layout = gl.NVMMASharedLayout.get_default_for(q_block, elem)
    kv_layout = gl.NVMMASharedLayout.get_default_for(kv_block, elem)
    qbs, kbs = triton.cdiv(n_q, CONSUMERS * WG_ROWS.value), triton.cdiv(n_kv, block_n)
    if kv_row is not None:  # the lists' row length (a BlockMap's: every KV block, so the tail block is KB - 1)
        kbs = kv_row
    items = qbs * heads * batch  # work items: (Q tile, head, batch), the Q tile fastest
    ints = (scale * LOG2E, n_q, n_kv, heads, heads // heads_kv, map_heads, qbs, kbs, *out_strides, *q_rows, *k_rows,
            *axes, heads * n_q, n_q, items)  # heads * n_q, n_q: the [B, H, N_q] LSE buffer's strides
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_N": block_n, "STAGES": knobs["STAGES"], "OVERLAP": knobs["OVERLAP"],
                  "PINGPONG": knobs["PINGPONG"], "STORE_LSE": store_lse, "SPARSE": sparse,
                  "HAS_TAIL": sparse and n_kv % block_n != 0, "CONSUMER_REGS": knobs["CONSUMER_REGS"],
                  "BOX": box is not None,
                  "KV_MASK": n_kv % block_n != 0 if knobs["MASK_KV"] is None else bool(knobs["MASK_KV"]),
                  "EARLY": bool(knobs["EARLY"])}
    # 4 + 4 + 1 (padded to 4) warps at one CTA per SM: 168 registers x 384 threads fit the 64K register file;
    # the load warp gives back all but 24, the consumers take 240 each (the launch options).
    programs = min(items, sms) if knobs["PERSISTENT"] else items
    return ((q_layout, kv_layout, kv_layout), ((q_view, q_block), (kv_view, kv_block), (kv_view, kv_block)), ints,
            (programs, 1, 1), constexprs)  # 3D: the compiled launcher reads three grid dimensions


def _descriptor(base: Any, block: list[int], layout: Any, cache: dict[Any, Any]) -> Any:
    """A Gluon TMA descriptor of a 2D view for a repeated launch: per (shape, strides, dtype, block) and storage
    address, made once and kept with the launch; its ``base`` is an :class:`_Address` (the launcher reads only its
    ``data_ptr()``), so a cached descriptor holds no tensor and never keeps a caller's memory alive (a later tensor
    at that address gets the same, correct descriptor). At most :data:`MAX_ADDRESSES` addresses per view; the
    oldest goes first."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    key = ("desc", tuple(base.shape), tuple(base.stride()), base.dtype, *block)
    by_address = cache.get(key)
    if by_address is None:
        by_address = cache[key] = {}
    ptr = base.data_ptr()
    desc = by_address.get(ptr)
    if desc is None:
        desc = TensorDescriptor.from_tensor(base, block, layout)
        desc.base = _Address(ptr)
        if len(by_address) >= MAX_ADDRESSES:
            del by_address[next(iter(by_address))]
        by_address[ptr] = desc
    return desc


#: Storage addresses whose descriptors a launch keeps per template (inputs cycle through a few buffers).
MAX_ADDRESSES = 16


class _Address:
    """A device address standing in for a descriptor's base tensor in repeated launches."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def data_ptr(self) -> int:
        return self.ptr


def gluon_dense_forward(q: Any, k: Any, v: Any, scale: float | None = None, *, return_lse: bool = False,
                        **knobs: Any) -> Any:
    """Dense ``softmax(scale q k^T) v`` (``[B, N, H, D]``) by this kernel, for tests and benchmarks; ``knobs``
    as :func:`ws_forward` takes them (default :data:`BEST`)."""
    import torch

    if not supported(q, k, v):
        raise ValueError("gluon_dense_forward: needs a Hopper GPU and contiguous bf16/fp16 [B, N, H, D] "
                         "tensors of head dim 64 or 128")
    if int(q.shape[2]) % int(k.shape[2]):
        raise ValueError(f"gluon_dense_forward: {int(q.shape[2])} query heads are not a multiple of "
                         f"{int(k.shape[2])} KV heads")
    out = torch.empty_like(q)
    lse = torch.empty((int(q.shape[0]), int(q.shape[2]), int(q.shape[1])), dtype=torch.float32,
                      device=q.device) if return_lse else None
    scale = int(q.shape[-1]) ** -0.5 if scale is None else float(scale)
    ws_forward(q, k, v, out, lse, scale, **{**BEST, **knobs})
    return (out, lse) if return_lse else out
