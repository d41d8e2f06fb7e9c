"""Block-sparse attention with an explicit per-head block map, FlexAttention style.

The map ``[heads, q_blocks, kv_blocks]`` (or ``[q_blocks, kv_blocks]`` shared by all heads) is
prepared once into a :class:`~sparsesim.kernels.block_map.BlockMap`: per (head, Q block) counts and sorted
index lists (FlexAttention's ``kv_num_blocks`` / ``kv_indices``) and their transpose for the backward. The
kernel visits only listed blocks, whole and without any mask; the last KV block, when the sequence is not a
multiple of ``kv_tile``, is kept out of the lists and visited once at the end with a padding mask (flag
``tail[h, qb]``). A raw map is prepared on its first call and found again by identity, never by content.

Extra tokens (joint text tokens, sinks; docs/DESIGN.md) need nothing here: a map over the whole sequence of
``N + E`` tokens with the extras' rows and columns set runs them, exactly where the extras fill whole blocks
(blocks are visited whole). GNA patterns with extras run through :func:`~sparsesim.kernels.gna_attention`, which
masks per element; the plan runner does not build block maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import triton
import triton.language as tl

from sparsesim.hwmodels.launch import WS_KV_TILES, WS_Q_TILE
from sparsesim.kernels._common import LOG2E, attn_tile_update
from sparsesim.kernels._launch import (
    CallCache,
    check_out,
    check_qkv,
    check_scale,
    descriptors_ok,
    device_gpu,
    fused_launch,
    interpret,
    launch_compiled,
    tensors_key,
    ws_kernel,
)
from sparsesim.kernels.block_map import BlockMap, resolve_block_map, sorted_lists
from sparsesim.simulator import can_run


@triton.jit
def _block_sparse_fwd_kernel(
    Q, K, V, Out, Lse, KV_NUM, KV_IDX, TAIL, qk_scale, N, H, GROUP, MAP_HEADS, QB, KB, TAIL_START, TAIL_K, TAIL_V,
    s_qb, s_qn, s_qh, s_qd, s_kb, s_kn, s_kh, s_kd, s_vb, s_vn, s_vh, s_vd, s_ob, s_on, s_oh, s_od,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_TAIL: tl.constexpr,
    USE_DESC: tl.constexpr, STORE_LSE: tl.constexpr = False,
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

    if STORE_LSE:  # natural-log LSE, [B, H, N] contiguous; -inf for a row that sees nothing
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
        tl.store(Lse + (b * H + h64) * N + rows, lse, mask=row_ok)
    acc = acc / l_i[:, None]
    tl.store(Out + b * s_ob + h64 * s_oh + rows[:, None] * s_on + offs_d[None, :] * s_od,
             acc.to(Out.dtype.element_ty), mask=row_ok[:, None])


def block_lists(block_map: np.ndarray, seq_len: int, kv_tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(kv_num [H, QB], kv_idx [H, QB, KB], tail [H, QB])`` int32 from a bool ``[H, QB, KB]`` map.

    Lists hold the visited KV blocks in ascending order, except a padded last block (``seq_len``
    not a multiple of ``kv_tile``), which is flagged in ``tail`` instead. (The arrays a
    :class:`~sparsesim.kernels.block_map.BlockMap` holds, on the host.)
    """
    import torch

    listed = torch.from_numpy(np.array(block_map, dtype=bool))
    tail = torch.zeros(listed.shape[:2], dtype=torch.int32)
    if seq_len % kv_tile != 0:
        tail.copy_(listed[:, :, -1])
        listed[:, :, -1] = False
    kv_num, kv_idx = sorted_lists(listed)
    return kv_num.numpy(), kv_idx.numpy(), tail.numpy()


def block_sparse_attention(q: Any, k: Any, v: Any, block_map: Any, *, q_tile: int | None = None,
                           kv_tile: int | None = None, scale: float | None = None, out: Any = None,
                           use_desc: bool | None = None, return_lse: bool = False) -> Any:
    """Attention restricted to the (Q block, KV block) pairs set in ``block_map``, differentiable.

    Args:
        q: ``[batch, tokens, heads, head_dim]``; k, v: ``[batch, tokens, heads_kv, head_dim]``.
        block_map: a :class:`~sparsesim.kernels.block_map.BlockMap` (prepared once, on q's device: no
            per-call validation), or a raw bool (or 0/1) ``[heads, q_blocks, kv_blocks]`` or ``[q_blocks,
            kv_blocks]`` map (shared by all heads), numpy or torch, with ``q_blocks = ceil(tokens / q_tile)``
            and ``kv_blocks = ceil(tokens / kv_tile)``: prepared on its first call and found again by identity
            (a tensor changed in place is seen through its version counter; a numpy array changed in place is
            not: :mod:`sparsesim.kernels.block_map`).
        q_tile, kv_tile: block sizes, powers of two in 16..256 (default 128; a BlockMap's own).
        scale: softmax scale, default ``1/sqrt(head_dim)``.
        out: optional output buffer shaped like ``q`` (not with autograd: raises when q, k or v requires grad).
        use_desc: load K/V through TMA tensor descriptors (default: where the strides allow).
        return_lse: also return the natural-log log-sum-exp, float32 ``[batch, heads, tokens]`` (``-inf`` on
            rows that see nothing).

    A call is validated once per shapes, strides, dtypes, device, tiles, map heads and scale; repeated calls
    launch the compiled kernel directly. On a Hopper GPU a large call with 128-token Q blocks and 64/128-token KV
    blocks runs the warp-specialized Gluon kernel on the same lists (:mod:`sparsesim.kernels.gluon_fwd`;
    ``SPARSESIM_FWD_KERNEL=triton`` keeps the Triton kernel). When q, k or v requires grad (and grad mode is
    on), or under ``torch.compile`` (which needs a BlockMap), the call runs through the custom op
    ``torch.ops.sparsesim.block_sparse_fwd`` (:mod:`sparsesim.kernels.block_ops`), whose backward runs the
    block-sparse backward kernels.

    Returns:
        ``[batch, tokens, heads, head_dim]`` (and the LSE with ``return_lse``); a query row whose block
        visits nothing is zero.

    Example:
        >>> o = block_sparse_attention(q, k, v, block_map, q_tile=128, kv_tile=128)  # doctest: +SKIP
    """
    from sparsesim.kernels.block_ops import use_op

    if use_op(q, k, v):
        from sparsesim.kernels.block_ops import block_sparse_attention_op

        return block_sparse_attention_op(q, k, v, block_map, q_tile=q_tile, kv_tile=kv_tile, scale=scale, out=out,
                                         use_desc=use_desc, return_lse=return_lse)
    bm = prepared_map(q, k, v, block_map, q_tile, kv_tile)
    o, lse = block_sparse_forward(q, k, v, bm.fwd_lists(), bm.q_tile, bm.kv_tile, scale=scale, out=out,
                                  use_desc=use_desc, want_lse=return_lse)
    return (o, lse) if return_lse else o


def prepared_map(q: Any, k: Any, v: Any, block_map: Any, q_tile: int | None, kv_tile: int | None) -> BlockMap:
    """The BlockMap of a call: ``block_map`` itself (tiles and tokens checked, on q's device) or the raw map
    prepared once (:func:`~sparsesim.kernels.block_map.resolve_block_map`)."""
    import torch

    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        check_qkv(q, k, v, spatial_ranks=(1,), what="block_sparse_attention")  # raises
    n = int(q.shape[1])
    if isinstance(block_map, BlockMap):
        qt = block_map.q_tile if q_tile is None else q_tile
        kt = block_map.kv_tile if kv_tile is None else kv_tile
        if block_map.device != q.device:
            raise ValueError(f"block_sparse_attention: block_map is on {block_map.device} but q on {q.device}; "
                             f"allowed: a BlockMap prepared on q's device (device=...)")
        return resolve_block_map(block_map, seq_len=n, q_tile=qt, kv_tile=kt)
    return resolve_block_map(block_map, seq_len=n, q_tile=128 if q_tile is None else q_tile,
                             kv_tile=128 if kv_tile is None else kv_tile, device=q.device)


def block_sparse_forward(q: Any, k: Any, v: Any, lists: tuple[Any, Any, Any], q_tile: int, kv_tile: int, *,
                         scale: float | None = None, out: Any = None, use_desc: bool | None = None,
                         want_lse: bool = False) -> tuple[Any, Any]:
    """The forward without autograd on a prepared map's ``(kv_num, kv_idx, tail)``; returns ``(out, lse)``
    (``lse`` None unless ``want_lse``). Validated once per call key; the lists' content is never read here."""
    import torch

    kv_num, kv_idx, tail = lists
    try:
        key = (tensors_key(q, k, v), kv_num.shape, kv_idx.shape, tail.shape, kv_num.device, q_tile, kv_tile, scale,
               use_desc)
        hash(key)  # an unhashable argument: validated on every call
    except (AttributeError, TypeError):
        key = None
    launch = _LAUNCHES.get(key)
    if launch is None:
        launch = _LAUNCHES.put(key, _build(q, k, v, lists, q_tile, kv_tile, scale, use_desc))
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        check_out(out, q, q.shape, "block_sparse_attention")
    lse = None
    if want_lse:
        lse = torch.empty((int(q.shape[0]), int(q.shape[2]), int(q.shape[1])), dtype=torch.float32,
                          device=q.device)
    return launch.run(q, k, v, out, lists, lse), lse


def takes_ws(q: Any, k: Any, v: Any, q_tile: int, kv_tile: int, use_desc: bool | None = None) -> bool:
    """Whether a block-sparse call of these tiles runs on the warp-specialized Hopper forward
    (kernels/gluon_fwd.py): TMA loads not turned off, its tiles, and a call the kernel takes (its work counted
    as dense: :func:`~sparsesim.kernels.gluon_fwd.use_ws`)."""
    ws = ws_kernel()
    return (ws is not None and use_desc is not False and q_tile == WS_Q_TILE and kv_tile in WS_KV_TILES
            and ws.use_ws(q, k, v))


@dataclass(frozen=True, eq=False)
class BlockSparseLaunch:
    """A validated block-sparse call: grid, tiles, constants (the map's lists come with each call)."""

    grid: tuple[int, int, int]
    args: tuple[Any, ...]
    q_tile: int
    kv_tile: int
    head_dim: int
    use_desc: bool
    constexprs: dict[str, Any]
    options: dict[str, Any]
    compiled: dict[Any, Any] = field(default_factory=dict)
    ws_scale: float | None = None  # set where the warp-specialized Hopper kernel runs it (kernels/gluon_fwd.py)

    def run(self, q: Any, k: Any, v: Any, out: Any, lists: tuple[Any, Any, Any], lse: Any = None) -> Any:
        ws = ws_kernel() if self.ws_scale is not None else None
        if ws is not None and ws.still_supported(out):  # q, k, v as validated: the call key fixes them
            return ws.ws_forward(q, k, v, out, lse, self.ws_scale, lists=lists, map_heads=self.args[4],
                                 block_n=self.kv_tile, cache=self.compiled)
        kk, vv = k, v
        use_desc = self.use_desc and descriptors_ok(k, v)
        if use_desc:
            from triton.tools.tensor_descriptor import TensorDescriptor

            block = [1, self.kv_tile, 1, self.head_dim]
            kk, vv = TensorDescriptor.from_tensor(k, block), TensorDescriptor.from_tensor(v, block)
        tail_start = self.args[-1]
        store_lse = lse is not None
        args = (q, kk, vv, out, lse if store_lse else out, *lists, *self.args[:-1], tail_start,
                tail_start * int(k.stride(1)), tail_start * int(v.stride(1)), *q.stride(), *k.stride(), *v.stride(),
                *out.stride())
        key = (use_desc, store_lse, q.data_ptr() % 16, out.data_ptr() % 16, k.data_ptr() % 16, v.data_ptr() % 16,
               *(t.data_ptr() % 16 for t in lists))
        launch_compiled(self.compiled, key, _block_sparse_fwd_kernel, self.grid, args,
                        {**self.constexprs, "USE_DESC": use_desc, "STORE_LSE": store_lse}, self.options)
        return out


_LAUNCHES = CallCache()


def check_lists(what: str, n: int, heads: int, lists: tuple[Any, ...], q_tile: int, kv_tile: int,
                device: Any) -> int:
    """Shapes, dtypes and device of a prepared map's lists against a call of ``n`` tokens and ``heads`` query
    heads (the content was validated when the map was prepared); returns the map's head count."""
    import torch

    qbs, kbs = -(-n // q_tile), -(-n // kv_tile)
    kv_num = lists[0]
    map_heads = int(kv_num.shape[0]) if isinstance(kv_num, torch.Tensor) and kv_num.dim() == 2 else -1
    shapes = [(map_heads, qbs), (map_heads, qbs, kbs), (map_heads, qbs), (map_heads, kbs), (map_heads, kbs, qbs)]
    for t, shape in zip(lists, shapes, strict=False):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != torch.int32 \
                or t.device != device:
            got = f"{tuple(t.shape)} {t.dtype} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{what}: block lists {got} do not fit {n} tokens with q_tile={q_tile}, "
                             f"kv_tile={kv_tile} on {device}; allowed: the lists of a BlockMap prepared for them")
    if map_heads not in (1, heads):
        raise ValueError(f"{what}: block_map has {map_heads} heads; allowed: 1 (shared) or heads={heads}")
    return map_heads


def _build(q: Any, k: Any, v: Any, lists: tuple[Any, Any, Any], q_tile: Any, kv_tile: Any, scale: Any,
           use_desc: bool | None) -> BlockSparseLaunch:
    from sparsesim.hwmodels.launch import MAX_TILE_VOLUME, MIN_TILE_VOLUME

    what = "block_sparse_attention"
    dims = check_qkv(q, k, v, spatial_ranks=(1,), what=what)
    n = dims.spatial[0]
    if int(k.shape[1]) != n:
        raise ValueError(f"{what}: q has {n} tokens but k has {int(k.shape[1])}; allowed: equal")
    for name, t in (("q_tile", q_tile), ("kv_tile", kv_tile)):
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"{what}: {name}={t!r}; allowed: a power of two from {MIN_TILE_VOLUME} "
                             f"to {MAX_TILE_VOLUME}")
    gpu, smem = device_gpu(q.device)
    can_run(q_tile=(q_tile,), kv_tile=(kv_tile,), head_dim=dims.head_dim, dtype=dims.dtype, gpu=gpu, raise_error=True,
            **({"interpreter": True} if interpret() else {"smem_bytes": smem}))
    map_heads = check_lists(what, n, dims.heads, lists, q_tile, kv_tile, q.device)
    checked_scale = check_scale(scale, dims.head_dim)
    cfg = fused_launch(q_tile, kv_tile, dims.head_dim, dims.dtype, smem)
    qbs, kbs = -(-n // q_tile), -(-n // kv_tile)
    tail_start = (kbs - 1) * kv_tile
    take_ws = takes_ws(q, k, v, q_tile, kv_tile, use_desc)
    return BlockSparseLaunch(
        grid=(qbs, dims.heads, dims.batch),
        args=(checked_scale * LOG2E, n, dims.heads, dims.group, map_heads, qbs, kbs, tail_start),
        q_tile=q_tile, kv_tile=kv_tile, head_dim=dims.head_dim, use_desc=True if use_desc is None else use_desc,
        constexprs={"HEAD_DIM": dims.head_dim, "BLOCK_M": q_tile, "BLOCK_N": kv_tile, "HAS_TAIL": n % kv_tile != 0},
        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
        ws_scale=checked_scale if take_ws else None)
