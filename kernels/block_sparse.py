"""Block-sparse attention with an explicit per-head block map, FlexAttention style.

The map ``[heads, q_blocks, kv_blocks]`` (or ``[q_blocks, kv_blocks]`` shared by all heads) is
converted on the host into per (head, Q block) counts and sorted index lists (FlexAttention's
``kv_num_blocks`` / ``kv_indices``). The kernel visits only listed blocks, whole and without any
mask; the last KV block, when the sequence is not a multiple of ``kv_tile``, is kept out of the
lists and visited once at the end with a padding mask (flag ``tail[h, qb]``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import triton
import triton.language as tl

from sparsesim.hwmodels.launch import MAX_TILE_VOLUME, MIN_TILE_VOLUME
from sparsesim.kernels._common import LOG2E, attn_tile_update
from sparsesim.kernels._launch import (
    CallCache,
    check_out,
    check_qkv,
    check_scale,
    descriptors_ok,
    device_gpu,
    fused_launch,
    hashable,
    interpret,
    launch_compiled,
    tensors_key,
)
from sparsesim.simulator import BlockSparsePattern, can_run


@triton.jit
def _block_sparse_fwd_kernel(
    Q, K, V, Out, KV_NUM, KV_IDX, TAIL, qk_scale, N, GROUP, MAP_HEADS, QB, KB, TAIL_START, TAIL_K, TAIL_V,
    s_qb, s_qn, s_qh, s_qd, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd, s_ob, s_on, s_oh, s_od,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_TAIL: tl.constexpr,
    USE_DESC: tl.constexpr,
):
    qb = tl.program_id(0)
    h = tl.program_id(1)
    b32 = tl.program_id(2)
    hk32 = h // GROUP
    b = b32.to(tl.int64)
    hk = hk32.to(tl.int64)
    hm = h % MAP_HEADS  # 0 for a map shared by all heads
    h64 = h.to(tl.int64)
    offs_m = qb * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    rows = offs_m.to(tl.int64)
    q = tl.load(Q + b * s_qb + h64 * s_qh + rows[:, None] * s_qn + offs_d[None, :] * s_qd,
                mask=row_ok[:, None], other=0.0)
    if not USE_DESC:
        k_base = K + b * s_kb + hk * s_kh + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd
        v_base = V + b * s_vb + hk * s_vh + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    entry = hm * QB + qb
    count = tl.load(KV_NUM + entry)
    idx_ptr = KV_IDX + entry.to(tl.int64) * KB
    for i in range(0, count):
        kvb = tl.load(idx_ptr + i)
        if USE_DESC:  # 4D descriptors [B, N, H_kv, D], block [1, BLOCK_N, 1, D]
            k = K.load([b32, kvb * BLOCK_N, hk32, 0]).reshape([BLOCK_N, HEAD_DIM])
            v = V.load([b32, kvb * BLOCK_N, hk32, 0]).reshape([BLOCK_N, HEAD_DIM])
        else:
            off = kvb.to(tl.int64) * BLOCK_N
            k = tl.load(k_base + off * s_kn)
            v = tl.load(v_base + off * s_vn)
        acc, l_i, m_i = attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, 0, False)
    if HAS_TAIL:
        if tl.load(TAIL + entry) != 0:
            kv_ok = TAIL_START + offs_n < N
            if USE_DESC:  # rows past N come back as zeros
                k = K.load([b32, TAIL_START, hk32, 0]).reshape([BLOCK_N, HEAD_DIM])
                v = V.load([b32, TAIL_START, hk32, 0]).reshape([BLOCK_N, HEAD_DIM])
            else:
                k = tl.load(k_base + TAIL_K, mask=kv_ok[:, None], other=0.0)
                v = tl.load(v_base + TAIL_V, mask=kv_ok[:, None], other=0.0)
            acc, l_i, m_i = attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, kv_ok[None, :], True)

    acc = acc / l_i[:, None]
    tl.store(Out + b * s_ob + h64 * s_oh + rows[:, None] * s_on + offs_d[None, :] * s_od,
             acc.to(Out.dtype.element_ty), mask=row_ok[:, None])


def block_lists(block_map: np.ndarray, seq_len: int, kv_tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(kv_num [H, QB], kv_idx [H, QB, KB], tail [H, QB])`` int32 from a bool ``[H, QB, KB]`` map.

    Lists hold the visited KV blocks in ascending order, except a padded last block (``seq_len``
    not a multiple of ``kv_tile``), which is flagged in ``tail`` instead.
    """
    bm = np.asarray(block_map, dtype=bool)
    heads, qbs, kbs = bm.shape
    has_tail = seq_len % kv_tile != 0
    listed = bm.copy()
    tail = np.zeros((heads, qbs), dtype=np.int32)
    if has_tail:
        tail[:] = bm[:, :, -1]
        listed[:, :, -1] = False
    kv_num = listed.sum(axis=2).astype(np.int32)
    # Stable argsort of "not visited" puts visited block indices first, in ascending order.
    kv_idx = np.argsort(~listed, axis=2, kind="stable").astype(np.int32)
    return kv_num, kv_idx, tail


def block_sparse_attention(q: Any, k: Any, v: Any, block_map: Any, *, q_tile: int = 128, kv_tile: int = 128,
                           scale: float | None = None, out: Any = None, use_desc: bool | None = None) -> Any:
    """Attention restricted to the (Q block, KV block) pairs set in ``block_map``.

    Args:
        q: ``[batch, tokens, heads, head_dim]``; k, v: ``[batch, tokens, heads_kv, head_dim]``.
        block_map: bool (or 0/1) ``[heads, q_blocks, kv_blocks]`` or ``[q_blocks, kv_blocks]``
            (shared by all heads), numpy or torch, with ``q_blocks = ceil(tokens / q_tile)`` and
            ``kv_blocks = ceil(tokens / kv_tile)``; validated by
            :class:`sparsesim.simulator.BlockSparsePattern`.
        q_tile, kv_tile: block sizes, powers of two in 16..256.
        scale: softmax scale, default ``1/sqrt(head_dim)``.
        out: optional output buffer shaped like ``q``.
        use_desc: load K/V through TMA tensor descriptors (default: where the strides allow).

    A call is validated once per shapes, strides, dtypes, device, map (by content), tiles and scale;
    repeated calls launch the compiled kernel directly.

    Returns:
        ``[batch, tokens, heads, head_dim]``; a query row whose block visits nothing is zero.

    Example:
        >>> o = block_sparse_attention(q, k, v, block_map, q_tile=128, kv_tile=128)  # doctest: +SKIP
    """
    import torch

    try:
        bm_key = block_map_key(block_map)
        key = (tensors_key(q, k, v), bm_key, hashable((q_tile, kv_tile, scale, use_desc)))
    except (AttributeError, TypeError):
        key = None
    launch = _LAUNCHES.get(key)
    if launch is None:
        launch = _LAUNCHES.put(key, _build(q, k, v, block_map, q_tile, kv_tile, scale, use_desc))
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        check_out(out, q, q.shape, "block_sparse_attention")
    return launch.run(q, k, v, out)


def block_map_key(block_map: Any) -> tuple:
    """A block map by content (shape, dtype and bytes), for the launch cache."""
    import torch

    bm = block_map.detach().cpu().numpy() if isinstance(block_map, torch.Tensor) else np.asarray(block_map)
    bm = np.ascontiguousarray(bm)
    return bm.shape, bm.dtype.str, hashlib.blake2b(bm.tobytes(), digest_size=16).digest()


@dataclass(frozen=True, eq=False)
class BlockSparseLaunch:
    """A validated block-sparse call: device lists, grid, tiles, constants."""

    lists: tuple[Any, Any, Any]
    grid: tuple[int, int, int]
    args: tuple[Any, ...]
    q_tile: int
    kv_tile: int
    head_dim: int
    use_desc: bool
    constexprs: dict[str, Any]
    options: dict[str, Any]
    compiled: dict[Any, Any] = field(default_factory=dict)

    def run(self, q: Any, k: Any, v: Any, out: Any) -> Any:
        kk, vv = k, v
        use_desc = self.use_desc and descriptors_ok(k, v)
        if use_desc:
            from triton.tools.tensor_descriptor import TensorDescriptor

            block = [1, self.kv_tile, 1, self.head_dim]
            kk, vv = TensorDescriptor.from_tensor(k, block), TensorDescriptor.from_tensor(v, block)
        tail_start = self.args[-1]
        args = (q, kk, vv, out, *self.lists, *self.args[:-1], tail_start, tail_start * int(k.stride(1)),
                tail_start * int(v.stride(1)), *q.stride(), *k.stride(), *v.stride(), *out.stride())
        key = (use_desc, q.data_ptr() % 16, out.data_ptr() % 16, k.data_ptr() % 16, v.data_ptr() % 16)
        launch_compiled(self.compiled, key, _block_sparse_fwd_kernel, self.grid, args,
                        {**self.constexprs, "USE_DESC": use_desc}, self.options)
        return out


_LAUNCHES = CallCache()


def _build(q: Any, k: Any, v: Any, block_map: Any, q_tile: Any, kv_tile: Any, scale: Any,
           use_desc: bool | None) -> BlockSparseLaunch:
    import torch

    dims = check_qkv(q, k, v, spatial_ranks=(1,), what="block_sparse_attention")
    n = dims.spatial[0]
    if int(k.shape[1]) != n:
        raise ValueError(f"block_sparse_attention: q has {n} tokens but k has {int(k.shape[1])}; allowed: equal")
    for name, t in (("q_tile", q_tile), ("kv_tile", kv_tile)):
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"block_sparse_attention: {name}={t!r}; allowed: a power of two from {MIN_TILE_VOLUME} "
                             f"to {MAX_TILE_VOLUME}")
    gpu, smem = device_gpu(q.device)
    can_run(q_tile=(q_tile,), kv_tile=(kv_tile,), head_dim=dims.head_dim, dtype=dims.dtype, gpu=gpu, raise_error=True,
            **({"interpreter": True} if interpret() else {"smem_bytes": smem}))
    bm = block_map.detach().cpu().numpy() if isinstance(block_map, torch.Tensor) else np.asarray(block_map)
    pattern = BlockSparsePattern(block_map=bm, seq_len=n, q_tile=q_tile, kv_tile=kv_tile)
    if pattern.heads not in (1, dims.heads):
        raise ValueError(f"block_sparse_attention: block_map has {pattern.heads} heads; allowed: 1 (shared) "
                         f"or heads={dims.heads}")
    checked_scale = check_scale(scale, dims.head_dim)
    bmap = np.ascontiguousarray(pattern.block_map)
    lists = tuple(torch.from_numpy(a).to(q.device) for a in block_lists(bmap, n, kv_tile))
    cfg = fused_launch(q_tile, kv_tile, dims.head_dim, dims.dtype, smem)
    qbs, kbs = bmap.shape[1], bmap.shape[2]
    tail_start = (kbs - 1) * kv_tile
    return BlockSparseLaunch(
        lists=lists, grid=(qbs, dims.heads, dims.batch),  # type: ignore[arg-type]
        args=(checked_scale * LOG2E, n, dims.group, pattern.heads, qbs, kbs, tail_start),
        q_tile=q_tile, kv_tile=kv_tile, head_dim=dims.head_dim, use_desc=True if use_desc is None else use_desc,
        constexprs={"HEAD_DIM": dims.head_dim, "BLOCK_M": q_tile, "BLOCK_N": kv_tile, "HAS_TAIL": n % kv_tile != 0},
        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
