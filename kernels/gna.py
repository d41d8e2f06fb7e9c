"""Generalized neighborhood attention (1D/2D/3D) on box tiles: kernel, launcher, functional wrapper.

Pipeline: permute q, k, v into box tiles (dilation groups folded into the batch), run the fused
kernel over the schedule of :mod:`sparsesim.kernels.gna_plan`, inverse-permute the output.

Kernel grid ``(num_q_tiles, heads, batch * groups)``. A Q tile's visited KV tiles are the
product of per-axis ranges; the full ones the product of per-axis sub-ranges. The kernel runs
two flattened loops: first the full KV tiles (no mask work at all: the hot loop is as tight as
the dense kernel's, plus a few scalar div/mods to find the tile), then the partial ones, i.e.
the visited box minus the full box, enumerated as at most three disjoint boxes without branches.
Partial tiles mask per element from query/key coordinates (compile-time tile shapes) against
the per-axis ``lo``/``hi`` tables, only on the axes that can be partial (constexpr flags). When
no tile is partial (perfectly block-sparse) the partial loop and all mask code are compiled out.
"""

from __future__ import annotations

import functools
from typing import Any

import triton
import triton.language as tl

from sparsesim.kernels._common import LOG2E, attn_tile_update
from sparsesim.kernels._launch import (
    FusedLaunch,
    check_out,
    check_qkv,
    check_scale,
    descriptors_ok,
    dtype_name,
    fused_launch,
)
from sparsesim.kernels.gna_plan import GNAPlan, plan_gna
from sparsesim.kernels.permute import tile_permute, tile_unpermute


@triton.jit
def _axis_mask(mask, lo, hi, kc):
    return mask & (kc[None, :] >= lo[:, None]) & (kc[None, :] <= hi[:, None])


@triton.jit
def _load_kv(K, V, k_base, v_base, kv_row0, kt, s_kn, s_vn, BLOCK_N: tl.constexpr, USE_DESC: tl.constexpr):
    """K and V of flat KV tile ``kt``: a TMA descriptor load or plain pointers (no mask: padded buffers)."""
    if USE_DESC:
        row = kv_row0 + kt * BLOCK_N
        k = K.load([row, 0])
        v = V.load([row, 0])
    else:
        off = kt.to(tl.int64) * BLOCK_N
        k = tl.load(k_base + off * s_kn)
        v = tl.load(v_base + off * s_vn)
    return k, v


@triton.jit
def _gna_fwd_kernel(
    Q, K, V, Out, RANGES, LOHI, qk_scale,
    GROUP, G0, G1, G2, NQ1, NQ2, NK1, NK2, GMAX, NQMAX, LPMAX, HKV, NKP,
    s_qb, s_qh, s_qn, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd, s_ob, s_oh, s_on, s_od,
    HEAD_DIM: tl.constexpr,
    QT0: tl.constexpr, QT1: tl.constexpr, QT2: tl.constexpr,
    KT0: tl.constexpr, KT1: tl.constexpr, KT2: tl.constexpr,
    MASK0: tl.constexpr, MASK1: tl.constexpr, MASK2: tl.constexpr, BLOCK_SPARSE: tl.constexpr,
    USE_DESC: tl.constexpr, WARP_SPEC: tl.constexpr,
):
    BLOCK_M: tl.constexpr = QT0 * QT1 * QT2
    BLOCK_N: tl.constexpr = KT0 * KT1 * KT2
    qt = tl.program_id(0)
    h = tl.program_id(1)
    bg = tl.program_id(2)
    hk = (h // GROUP).to(tl.int64)
    # Folded batch index = batch * G + group; group -> per-axis dilation group (row-major over axes).
    g = bg % (G0 * G1 * G2)
    g2 = g % G2
    g1 = (g // G2) % G1
    g0 = g // (G1 * G2)
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
    bg64 = bg.to(tl.int64)
    h64 = h.to(tl.int64)
    rows = qt.to(tl.int64) * BLOCK_M + offs_m
    q = tl.load(Q + bg64 * s_qb + h64 * s_qh + rows[:, None] * s_qn + offs_d[None, :] * s_qd)
    if USE_DESC:
        # K, V: 2D descriptors over [B * G * H_kv * padded_tokens, D], block [BLOCK_N, D].
        kv_row0 = (bg * HKV + h // GROUP) * NKP
        k_base = 0
        v_base = 0
    else:
        kv_row0 = 0
        k_base = K + bg64 * s_kb + hk * s_kh + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd
        v_base = V + bg64 * s_vb + hk * s_vh + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Full KV tiles: the product of the per-axis full ranges; no mask work.
    n_full = nf0 * nf1 * nf2
    for it in tl.range(0, n_full, warp_specialize=WARP_SPEC):
        i2 = it % nf2
        i1 = (it // nf2) % nf1
        i0 = it // (nf2 * nf1)
        kt = ((ff0 + i0) * NK1 + ff1 + i1) * NK2 + ff2 + i2
        k, v = _load_kv(K, V, k_base, v_base, kv_row0, kt, s_kn, s_vn, BLOCK_N, USE_DESC)
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
            k, v = _load_kv(K, V, k_base, v_base, kv_row0, (t0 * NK1 + t1) * NK2 + t2, s_kn, s_vn, BLOCK_N, USE_DESC)
            mask = tl.full([BLOCK_M, BLOCK_N], 1, tl.int1)
            if MASK0:
                mask = _axis_mask(mask, lo0, hi0, t0 * KT0 + offs_n // (KT1 * KT2))
            if MASK1:
                mask = _axis_mask(mask, lo1, hi1, t1 * KT1 + (offs_n // KT2) % KT1)
            if MASK2:
                mask = _axis_mask(mask, lo2, hi2, t2 * KT2 + offs_n % KT2)
            acc, l_i, m_i = attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, mask, True)

    acc = acc / l_i[:, None]
    tl.store(Out + bg64 * s_ob + h64 * s_oh + rows[:, None] * s_on + offs_d[None, :] * s_od,
             acc.to(Out.dtype.element_ty))


@functools.lru_cache(maxsize=64)
def _device_tables(plan: GNAPlan, device: Any) -> tuple[Any, Any]:
    """The plan's int32 tables on ``device`` (cached per plan object and device)."""
    import torch

    return (torch.from_numpy(plan.ranges.copy()).to(device),
            torch.from_numpy(plan.lohi.copy()).to(device))


def _strides(x: Any) -> list[int]:
    return [int(s) for s in x.stride()]


def launch_gna(plan: GNAPlan, qp: Any, kp: Any, vp: Any, op: Any, scale: float,
               launch: FusedLaunch | None = None, use_desc: bool | None = None) -> Any:
    """Run the fused kernel on permuted tensors ``[B * G, H, padded_tokens, D]`` (see :func:`permute_qkv`).

    ``launch`` overrides the warps/stages heuristic of :func:`sparsesim.kernels._launch.fused_launch`;
    ``use_desc`` loads K/V through TMA tensor descriptors (default: when the buffers allow it).
    """
    bg, heads, _, head_dim = (int(s) for s in qp.shape)
    heads_kv = int(kp.shape[1])
    if heads > 65535 or bg > 65535:
        raise ValueError(f"gna_attention: heads={heads}, batch x dilation groups={bg}; allowed: each <= 65535")
    ranges, lohi = _device_tables(plan, qp.device)
    G0, G1, G2 = plan.q_layout.padded3(plan.q_layout.dilation)
    _, NQ1, NQ2 = plan.q_layout.padded3(plan.q_layout.grid)
    _, NK1, NK2 = plan.kv_layout.padded3(plan.kv_layout.grid)
    QT0, QT1, QT2 = plan.q_tile3
    KT0, KT1, KT2 = plan.kv_tile3
    cfg = launch or fused_launch(plan.q_layout.volume, plan.kv_layout.volume, head_dim, dtype_name(qp.dtype))
    grid = (plan.q_layout.num_tiles, heads, bg)
    n_kp = int(kp.shape[2])
    if use_desc is None:
        use_desc = (kp.is_contiguous() and vp.is_contiguous() and kp.numel() // head_dim < 2**31
                    and descriptors_ok(kp, vp))
    kk, vv = kp, vp
    if use_desc:
        from triton.tools.tensor_descriptor import TensorDescriptor

        block = [plan.kv_layout.volume, head_dim]
        kk = TensorDescriptor.from_tensor(kp.view(-1, head_dim), block)
        vv = TensorDescriptor.from_tensor(vp.view(-1, head_dim), block)
    _gna_fwd_kernel[grid](
        qp, kk, vv, op, ranges, lohi, scale * LOG2E,
        heads // heads_kv, G0, G1, G2, NQ1, NQ2, NK1, NK2,
        int(plan.ranges.shape[1]), int(plan.ranges.shape[2]), int(plan.lohi.shape[2]), heads_kv, n_kp,
        *_strides(qp), *_strides(kp), *_strides(vp), *_strides(op),
        HEAD_DIM=head_dim, QT0=QT0, QT1=QT1, QT2=QT2, KT0=KT0, KT1=KT1, KT2=KT2,
        MASK0=plan.mask_axes[0], MASK1=plan.mask_axes[1], MASK2=plan.mask_axes[2],
        BLOCK_SPARSE=plan.block_sparse, USE_DESC=use_desc, WARP_SPEC=cfg.warp_specialize,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return op


def permute_qkv(plan: GNAPlan, q: Any, k: Any, v: Any) -> tuple[Any, Any, Any]:
    """Token-permute q (Q tiles) and k, v (KV tiles) for :func:`launch_gna`."""
    dil = plan.pattern.dilation
    return (tile_permute(q, plan.q_layout.tile, dilation=dil),
            tile_permute(k, plan.kv_layout.tile, dilation=dil),
            tile_permute(v, plan.kv_layout.tile, dilation=dil))


def unpermute_out(plan: GNAPlan, op: Any, out: Any) -> Any:
    """Write the real tokens of the permuted output into ``out`` ``[B, *spatial, H, D]``."""
    return tile_unpermute(op, plan.pattern.input_size, plan.q_layout.tile, dilation=plan.pattern.dilation, out=out)


def gna_attention(q: Any, k: Any, v: Any, *, window: Any, stride: Any = 1, dilation: Any = 1, causal: Any = False,
                  q_tile: Any = None, kv_tile: Any = None, scale: float | None = None, out: Any = None) -> Any:
    """Generalized neighborhood attention forward on a 1D, 2D or 3D token layout.

    Args:
        q: ``[batch, *spatial, heads, head_dim]`` (NATTEN layout, 1 to 3 spatial axes), fp16/bf16
            on CUDA (fp32 and CPU tensors under ``TRITON_INTERPRET=1``).
        k, v: ``[batch, *spatial, heads_kv, head_dim]``, ``heads % heads_kv == 0``.
        window, stride, dilation, causal: an int/bool or one per axis (DESIGN.md, Semantics);
            validated by :class:`sparsesim.simulator.GNAPattern`.
        q_tile, kv_tile: box tile shapes (power-of-two volume in 16..256); default the Hopper FNA
            tiles of the H200 data file (1D 128/128, 2D (16,8)/(16,8), 3D (4,4,8)/(4,4,8)).
        scale: softmax scale, default ``1/sqrt(head_dim)``.
        out: optional output buffer shaped like ``q``.

    Returns:
        ``[batch, *spatial, heads, head_dim]`` in q's dtype.

    Example:
        >>> o = gna_attention(q, k, v, window=(18, 24, 24), stride=(16, 8, 8),
        ...                   q_tile=(2, 8, 8), kv_tile=(2, 8, 8))  # doctest: +SKIP
    """
    import torch

    dims = check_qkv(q, k, v, spatial_ranks=(1, 2, 3), what="gna_attention")
    plan = plan_gna(dims.spatial, window=window, stride=stride, dilation=dilation, causal=causal,
                    q_tile=q_tile, kv_tile=kv_tile)
    scale = check_scale(scale, dims.head_dim)
    out = check_out(out, q, q.shape, "gna_attention")
    qp, kp, vp = permute_qkv(plan, q, k, v)
    op = launch_gna(plan, qp, kp, vp, torch.empty_like(qp), scale)
    return unpermute_out(plan, op, out)
