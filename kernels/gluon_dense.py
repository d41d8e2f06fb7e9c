"""Warp-specialized dense forward for Hopper, written in Gluon (issue 17, build item 1: an experiment).

FlashAttention-3's structure with Gluon's explicit partitions: one load warp streams K/V tiles by TMA into a
``STAGES``-deep ring of shared-memory buffers (``k_ready``/``v_ready`` mbarriers signalled by the copies'
byte counts, ``kv_empty`` released by both consumers), and two consumer warpgroups each own 64 rows of the
CTA's 128-row Q tile, so one warpgroup's softmax runs while the other's ``wgmma`` keep the tensor cores busy.
With ``OVERLAP`` a consumer also issues the scores of KV tile ``j + 1`` before the softmax of tile ``j``
(FA3's intra-warpgroup overlap: two ``wgmma`` groups in flight, completed in issue order).

GPU only (Hopper, bf16/fp16, head dim 64-256, no causal, no GQA window): Gluon has no interpreter path, so the
GPU tests check this kernel against the float64 reference and the Triton dense kernel stays the one every
CPU test and every other layout runs (:mod:`sparsesim.kernels.dense`). ``[B, N, H, D]`` tensors whose
``(N, H, D)`` block is contiguous are read through 2D ``[B * N, H * D]`` TMA views; a tile that runs past its
batch's last row reads the next batch's rows, whose scores the key mask drops and whose output rows the
masked store never writes.
"""

from __future__ import annotations

from typing import Any

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from sparsesim.kernels._common import LOG2E

#: Rows of Q per consumer warpgroup (one ``wgmma`` M of 64), consumers per CTA, and the CTA's Q tile.
WG_ROWS = gl.constexpr(64)
CONSUMERS = 2
LN2 = gl.constexpr(0.6931471805599453)


@gluon.jit
def _softmax_step(s, m_i, l_i, acc, qk_scale, dtype: gl.constexpr, p_layout: gl.constexpr, row_o: gl.constexpr):
    """Online softmax of one score tile: ``(P as the wgmma A operand, m, l, rescaled acc)``."""
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    p = gl.exp2(s * qk_scale - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    acc = acc * gl.convert_layout(alpha, row_o)[:, None]
    return gl.convert_layout(p.to(dtype), p_layout), m_new, l_i, acc


@gluon.jit
def _consumer(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, q_desc, k_desc, v_desc, Out, Lse,
              qk_scale, N_Q, N_KV, H, b, h, hk, m0, s_ob, s_on, s_oh,
              WG: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              OVERLAP: gl.constexpr, PINGPONG: gl.constexpr, STORE_LSE: gl.constexpr):
    """One warpgroup's 64 rows: scores, online softmax, ``P V``; then the normalized output (and LSE)."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)

    n_tiles = gl.cdiv(N_KV, BLOCK_N)
    q = q_smem.index(WG)
    zero_s = gl.zeros([WG_ROWS, BLOCK_N], gl.float32, s_layout)
    m_i = gl.full([WG_ROWS], float("-inf"), gl.float32, row_s)
    l_i = gl.zeros([WG_ROWS], gl.float32, row_s)
    acc = gl.zeros([WG_ROWS, HEAD_DIM], gl.float32, o_layout)
    cols = gl.arange(0, BLOCK_N, layout=col_s)
    mbarrier.wait(q_bar, 0)
    if not OVERLAP:
        for j in range(n_tiles):
            st = j % STAGES
            ph = (j // STAGES) & 1
            mbarrier.wait(k_ready.index(st), ph)
            s = warpgroup_mma(q, k_smem.index(st).permute((1, 0)), zero_s, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            s = gl.where((cols < N_KV - j * BLOCK_N)[None, :], s, float("-inf"))
            p16, m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, qk_scale, q_desc.dtype, p_layout, row_o)
            mbarrier.wait(v_ready.index(st), ph)
            acc = warpgroup_mma(p16, v_smem.index(st), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(kv_empty.index(st), count=1)
    else:
        # FA3's order: the scores of tile j and P(j-1) V(j-1) issued together, the softmax of tile j running
        # while the second GEMM does; with PINGPONG the two warpgroups take turns issuing their GEMMs.
        mbarrier.wait(k_ready.index(0), 0)
        s = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        s = gl.where((cols < N_KV)[None, :], s, float("-inf"))
        p16, m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, qk_scale, q_desc.dtype, p_layout, row_o)
        for j in range(1, n_tiles):
            st = j % STAGES
            prev = (j - 1) % STAGES
            if PINGPONG:
                mbarrier.wait(turn.index(WG), ((j - 1) & 1) ^ (1 - WG))
            mbarrier.wait(k_ready.index(st), (j // STAGES) & 1)
            s = warpgroup_mma(q, k_smem.index(st).permute((1, 0)), zero_s, use_acc=False, is_async=True)
            mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
            acc = warpgroup_mma(p16, v_smem.index(prev), acc, is_async=True)
            if PINGPONG:
                mbarrier.arrive(turn.index(1 - WG), count=1)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
            s = gl.where((cols < N_KV - j * BLOCK_N)[None, :], s, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
            p = gl.exp2(s * qk_scale - m_new[:, None])
            alpha = gl.exp2(m_i - m_new)
            l_i = l_i * alpha + gl.sum(p, axis=1)
            m_i = m_new
            p16 = gl.convert_layout(p.to(q_desc.dtype), p_layout)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(kv_empty.index(prev), count=1)
            acc = acc * gl.convert_layout(alpha, row_o)[:, None]
        last = (n_tiles - 1) % STAGES
        mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
        acc = warpgroup_mma(p16, v_smem.index(last), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(kv_empty.index(last), count=1)

    rows = m0 + WG * WG_ROWS + gl.arange(0, WG_ROWS, layout=row_o)
    row_ok = rows < N_Q
    out = acc / gl.convert_layout(l_i, row_o)[:, None]
    offs_d = gl.arange(0, HEAD_DIM, layout=col_o)
    ptrs = Out + b * s_ob + h * s_oh + rows.to(gl.int64)[:, None] * s_on + offs_d[None, :]
    gl.store(ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    if STORE_LSE:
        lse = (gl.convert_layout(m_i, row_o) + gl.log2(gl.convert_layout(l_i, row_o))) * LN2
        gl.store(Lse + (b * H + h) * N_Q + rows, lse, mask=row_ok)


@gluon.jit
def _consumer_first(bufs, qk_scale, N_Q, N_KV, H, b, h, hk, m0, s_ob, s_on, s_oh,
                     HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, OVERLAP: gl.constexpr,
                     PINGPONG: gl.constexpr, STORE_LSE: gl.constexpr):
    """The first consumer warpgroup (rows 0-63 of the CTA's Q tile): the default partition."""
    q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, q_desc, k_desc, v_desc, Out, Lse = bufs
    _consumer(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, q_desc, k_desc, v_desc, Out, Lse,
              qk_scale, N_Q, N_KV, H, b, h, hk, m0, s_ob, s_on, s_oh, 0, HEAD_DIM, BLOCK_N, STAGES, OVERLAP, PINGPONG,
              STORE_LSE)


@gluon.jit
def _consumer_worker(bufs, qk_scale, N_Q, N_KV, H, b, h, hk, m0, s_ob, s_on, s_oh,
                     HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, OVERLAP: gl.constexpr,
                     PINGPONG: gl.constexpr, STORE_LSE: gl.constexpr):
    """The second consumer warpgroup (rows 64-127 of the CTA's Q tile)."""
    q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, q_desc, k_desc, v_desc, Out, Lse = bufs
    _consumer(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, q_desc, k_desc, v_desc, Out, Lse,
              qk_scale, N_Q, N_KV, H, b, h, hk, m0, s_ob, s_on, s_oh, 1, HEAD_DIM, BLOCK_N, STAGES, OVERLAP, PINGPONG,
              STORE_LSE)


@gluon.jit
def _loader(bufs, qk_scale, N_Q, N_KV, H, b, h, hk, m0, s_ob, s_on, s_oh,
            HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, OVERLAP: gl.constexpr,
            PINGPONG: gl.constexpr, STORE_LSE: gl.constexpr):
    """The load warp: both halves of the Q tile once, then K and V tile by tile into the ring."""
    q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, q_desc, k_desc, v_desc, Out, Lse = bufs
    q_row = b * N_Q + m0
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, h * HEAD_DIM], q_bar, q_smem.index(0))
    tma.async_copy_global_to_shared(q_desc, [q_row + WG_ROWS, h * HEAD_DIM], q_bar, q_smem.index(1))
    kv_row = b * N_KV
    for j in range(gl.cdiv(N_KV, BLOCK_N)):
        st = j % STAGES
        ph = (j // STAGES) & 1
        mbarrier.wait(kv_empty.index(st), ph ^ 1)
        mbarrier.expect(k_ready.index(st), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [kv_row + j * BLOCK_N, hk * HEAD_DIM], k_ready.index(st),
                                        k_smem.index(st))
        mbarrier.expect(v_ready.index(st), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [kv_row + j * BLOCK_N, hk * HEAD_DIM], v_ready.index(st),
                                        v_smem.index(st))


@gluon.jit
def _gluon_dense_fwd_kernel(q_desc, k_desc, v_desc, Out, Lse, qk_scale, N_Q, N_KV, H, GROUP, s_ob, s_on, s_oh,
                            HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                            OVERLAP: gl.constexpr, PINGPONG: gl.constexpr, STORE_LSE: gl.constexpr,
                            CONSUMER_REGS: gl.constexpr):
    pid_m = gl.program_id(0)
    h = gl.program_id(1)
    b = gl.program_id(2)
    hk = h // GROUP
    m0 = pid_m * (2 * WG_ROWS)
    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [2, WG_ROWS, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    mbarrier.init(turn.index(0), count=1)
    mbarrier.init(turn.index(1), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)
    bufs = (q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, turn, q_desc, k_desc, v_desc, Out, Lse)
    gl.warp_specialize([
        (_consumer_first, (bufs, qk_scale, N_Q, N_KV, H, b, h, hk, m0, s_ob, s_on, s_oh, HEAD_DIM, BLOCK_N, STAGES,
                           OVERLAP, PINGPONG, STORE_LSE)),
        (_consumer_worker, (bufs, qk_scale, N_Q, N_KV, H, b, h, hk, m0, s_ob, s_on, s_oh, HEAD_DIM, BLOCK_N, STAGES,
                            OVERLAP, PINGPONG, STORE_LSE)),
        (_loader, (bufs, qk_scale, N_Q, N_KV, H, b, h, hk, m0, s_ob, s_on, s_oh, HEAD_DIM, BLOCK_N, STAGES, OVERLAP,
                   PINGPONG, STORE_LSE)),
    ], [4, 1], [CONSUMER_REGS, 24])


def supported(q: Any, k: Any, v: Any) -> bool:
    """True where this kernel runs the call: a Hopper GPU, bf16/fp16, equal Q/K/V head dims of 64 or 128, and
    ``[B, N, H, D]`` tensors whose ``(N, H, D)`` block is contiguous (the 2D TMA views)."""
    import torch

    if not (q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9):
        return False
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return False
    return all(t.shape[-1] in (64, 128) and t.is_contiguous() for t in (q, k, v)) and k.shape[-1] == q.shape[-1]


def gluon_dense_forward(q: Any, k: Any, v: Any, scale: float | None = None, *, block_n: int = 128,
                        stages: int = 2, overlap: bool = False, pingpong: bool = False, consumer_regs: int = 240,
                        return_lse: bool = False) -> Any:
    """Dense attention ``softmax(scale q k^T) v`` by the warp-specialized Gluon kernel (``[B, N, H, D]``).

    ``block_n`` (KV rows per tile), ``stages`` (K/V ring depth), ``overlap`` (scores of the next tile issued
    before this tile's softmax) and ``consumer_regs`` (registers per thread of the second consumer
    warpgroup; the first gets what the kernel's ``maxnreg`` leaves) are the knobs the benchmark varies.
    """
    import torch
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    if not supported(q, k, v):
        raise ValueError("gluon_dense_forward: needs a Hopper GPU and contiguous bf16/fp16 [B, N, H, D] "
                         "tensors of head dim 64 or 128")
    batch, n_q, heads, head_dim = (int(s) for s in q.shape)
    n_kv, heads_kv = int(k.shape[1]), int(k.shape[2])
    if heads % heads_kv:
        raise ValueError(f"gluon_dense_forward: {heads} query heads are not a multiple of {heads_kv} KV heads")
    scale = head_dim ** -0.5 if scale is None else float(scale)
    elem = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    q_layout = gl.NVMMASharedLayout.get_default_for([WG_ROWS.value, head_dim], elem)
    kv_layout = gl.NVMMASharedLayout.get_default_for([block_n, head_dim], elem)
    q2 = q.view(batch * n_q, heads * head_dim)
    k2 = k.view(batch * n_kv, heads_kv * head_dim)
    v2 = v.view(batch * n_kv, heads_kv * head_dim)
    q_desc = TensorDescriptor.from_tensor(q2, [WG_ROWS.value, head_dim], q_layout)
    k_desc = TensorDescriptor.from_tensor(k2, [block_n, head_dim], kv_layout)
    v_desc = TensorDescriptor.from_tensor(v2, [block_n, head_dim], kv_layout)
    out = torch.empty_like(q)
    lse = torch.empty((batch, heads, n_q), dtype=torch.float32, device=q.device) if return_lse else out
    grid = (triton.cdiv(n_q, CONSUMERS * WG_ROWS.value), heads, batch)
    # 4 + 4 + 1 (padded to 4) warps share the register file at one CTA per SM: 168 x 384 threads fits 64K.
    _gluon_dense_fwd_kernel[grid](q_desc, k_desc, v_desc, out, lse, scale * LOG2E, n_q, n_kv, heads,
                                  heads // heads_kv,
                                  out.stride(0), out.stride(1), out.stride(2), HEAD_DIM=head_dim, BLOCK_N=block_n,
                                  STAGES=stages, OVERLAP=overlap, PINGPONG=pingpong, STORE_LSE=return_lse,
                                  CONSUMER_REGS=consumer_regs, num_warps=4, maxnreg=168)
    return (out, lse) if return_lse else out
