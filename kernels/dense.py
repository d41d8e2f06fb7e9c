"""Dense fused attention forward: private Triton kernel, one launcher, one functional wrapper.

Layout ``[batch, tokens, heads, head_dim]`` (NATTEN's, tokens before heads); every stride is
passed, so any layout whose last dim is contiguous runs at full speed and any other still runs.
GQA/MQA: query head ``h`` reads KV head ``h // (heads / heads_kv)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import triton
import triton.language as tl

from sparsesim.kernels._common import LOG2E, attn_tile_update
from sparsesim.kernels._launch import (
    INTERPRET_DENSE_CONFIG,
    CallCache,
    check_out,
    check_qkv,
    check_scale,
    dense_configs,
    descriptors_ok,
    device_gpu,
    dtype_name,
    hashable,
    interpret,
    launch_compiled,
    tensors_key,
    ws_kernel,
)


@triton.jit
def _dense_fwd_kernel(
    Q, K, V, Out, Lse, qk_scale, N_Q, N_KV, H, GROUP,
    s_qb, s_qn, s_qh, s_qd, s_kb, s_kn, s_kh, s_kd,
    s_vb, s_vn, s_vh, s_vd, s_ob, s_on, s_oh, s_od,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_DESC: tl.constexpr,
    WARP_SPEC: tl.constexpr = False, CAUSAL: tl.constexpr = False, STORE_LSE: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    h32 = tl.program_id(1)
    b32 = tl.program_id(2)
    hk32 = h32 // GROUP
    b = b32.to(tl.int64)
    h = h32.to(tl.int64)
    hk = hk32.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q
    rows = offs_m.to(tl.int64)

    q_ptrs = Q + b * s_qb + h * s_qh + rows[:, None] * s_qn + offs_d[None, :] * s_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        # Top-left aligned (SDPA's is_causal): row i sees keys 0..i. Whole tiles left of the Q tile's first
        # row need no mask; the tiles up to its last row are masked.
        kv_end = tl.minimum(N_KV, (pid_m + 1) * BLOCK_M)
        n_full = tl.minimum(pid_m * BLOCK_M + 1, kv_end) // BLOCK_N
    else:
        kv_end = N_KV
        n_full = N_KV // BLOCK_N
    n_tiles = tl.cdiv(kv_end, BLOCK_N)

    if USE_DESC:
        # K and V are 4D tensor descriptors [B, N, H_kv, D] with block [1, BLOCK_N, 1, D] (TMA);
        # rows past N_KV come back as zeros, so only the scores of the last tile need a mask.
        for j in tl.range(0, n_full, warp_specialize=WARP_SPEC):
            k = K.load([b32, j * BLOCK_N, hk32, 0]).reshape([BLOCK_N, HEAD_DIM])
            v = V.load([b32, j * BLOCK_N, hk32, 0]).reshape([BLOCK_N, HEAD_DIM])
            acc, l_i, m_i = attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, 0, False)
        for j in range(n_full, n_tiles):
            cols = j * BLOCK_N + offs_n
            vis = (cols < N_KV)[None, :]
            if CAUSAL:
                vis = vis & (cols[None, :] <= offs_m[:, None])
            k = K.load([b32, j * BLOCK_N, hk32, 0]).reshape([BLOCK_N, HEAD_DIM])
            v = V.load([b32, j * BLOCK_N, hk32, 0]).reshape([BLOCK_N, HEAD_DIM])
            acc, l_i, m_i = attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, vis, True)
    else:
        k_ptrs = K + b * s_kb + hk * s_kh + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd
        v_ptrs = V + b * s_vb + hk * s_vh + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd
        # Hot loop: whole KV tiles, no mask work at all.
        for _ in range(0, n_full):
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
            acc, l_i, m_i = attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, 0, False)
            k_ptrs += BLOCK_N * s_kn
            v_ptrs += BLOCK_N * s_vn
        # The ragged last KV tile (and, causal, the tiles along the diagonal), masked.
        for j in range(n_full, n_tiles):
            cols = j * BLOCK_N + offs_n
            kv_ok = cols < N_KV
            vis = kv_ok[None, :]
            if CAUSAL:
                vis = vis & (cols[None, :] <= offs_m[:, None])
            k = tl.load(k_ptrs, mask=kv_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=kv_ok[:, None], other=0.0)
            acc, l_i, m_i = attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, vis, True)
            k_ptrs += BLOCK_N * s_kn
            v_ptrs += BLOCK_N * s_vn

    if STORE_LSE:  # natural-log LSE, [B, H, N_Q] contiguous; -inf for a row that sees nothing
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # ln(2): base-2 statistics to natural log
        tl.store(Lse + (b * H + h) * N_Q + rows, lse, mask=row_ok)
    acc = acc / l_i[:, None]
    o_ptrs = Out + b * s_ob + h * s_oh + rows[:, None] * s_on + offs_d[None, :] * s_od
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=row_ok[:, None])


def _set_block_shape(nargs: dict[str, Any]) -> None:
    """Autotune pre-hook: a config's BLOCK_N fixes the descriptors' block shape."""
    for name in ("K", "V"):
        desc = nargs[name]
        if hasattr(desc, "block_shape"):
            desc.block_shape = [1, nargs["BLOCK_N"], 1, nargs["HEAD_DIM"]]


@functools.cache
def _autotuned(head_dim: int, dtype: str, gpu: str = "H200") -> Any:
    """The kernel wrapped in an autotuner over :func:`dense_configs` of ``gpu`` (built on first use)."""
    configs = [triton.Config({"BLOCK_M": c["BLOCK_M"], "BLOCK_N": c["BLOCK_N"]},
                             num_warps=c["num_warps"], num_stages=c["num_stages"], pre_hook=_set_block_shape)
               for c in dense_configs(head_dim, dtype, gpu)]
    return triton.autotune(configs=configs, key=["N_Q", "N_KV", "HEAD_DIM", "CAUSAL"])(_dense_fwd_kernel)


def _strides(x: Any) -> tuple[int, int, int, int]:
    return tuple(int(s) for s in x.stride())  # type: ignore[return-value]


def launch_dense(q: Any, k: Any, v: Any, out: Any, scale: float, config: dict[str, int] | None = None,
                 use_desc: bool | None = None, compiled: dict[Any, Any] | None = None, *, causal: bool = False,
                 lse: Any = None) -> dict[str, int]:
    """Launch on checked ``[B, N, H, D]`` tensors; ``config`` pins one config (else autotune). Returns the
    config that ran (the autotuner's pick).

    ``use_desc``: load K/V through TMA tensor descriptors (default: where the strides allow);
    ``compiled``: a cache of compiled kernels for repeated calls with a pinned config; ``causal``: row ``i``
    sees keys ``0..i`` (top-left, as SDPA's ``is_causal``); ``lse``: a float32 ``[B, H, N_q]`` buffer that
    receives the natural-log log-sum-exp of each row (the backward's input).
    """
    batch, n_q, heads, head_dim = (int(s) for s in q.shape)
    n_kv, heads_kv = int(k.shape[1]), int(k.shape[2])
    use_desc = descriptors_ok(k, v) if use_desc is None else use_desc
    if config is None and interpret():
        config = INTERPRET_DENSE_CONFIG
    kk, vv = k, v
    if use_desc:
        from triton.tools.tensor_descriptor import TensorDescriptor

        block = [1, (config or {}).get("BLOCK_N", 16), 1, head_dim]
        kk, vv = TensorDescriptor.from_tensor(k, block), TensorDescriptor.from_tensor(v, block)
    store_lse = lse is not None
    args = (q, kk, vv, out, lse if store_lse else out, scale * LOG2E, n_q, n_kv, heads, heads // heads_kv,
            *_strides(q), *_strides(k), *_strides(v), *_strides(out))
    if config is not None:
        grid = (triton.cdiv(n_q, config["BLOCK_M"]), heads, batch)
        constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": config["BLOCK_M"], "BLOCK_N": config["BLOCK_N"],
                      "USE_DESC": use_desc, "WARP_SPEC": bool(config.get("warp_specialize", False)),
                      "CAUSAL": bool(causal), "STORE_LSE": store_lse}
        options = {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
        key = (use_desc, bool(causal), store_lse, q.data_ptr() % 16, out.data_ptr() % 16, k.data_ptr() % 16,
               v.data_ptr() % 16)
        launch_compiled({} if compiled is None else compiled, key, _dense_fwd_kernel, grid, args, constexprs, options)
        return config

    def grid_of(meta: dict[str, Any]) -> tuple[int, int, int]:
        return (triton.cdiv(n_q, meta["BLOCK_M"]), heads, batch)

    tuner = _autotuned(head_dim, dtype_name(q.dtype), device_gpu(q.device)[0].name)
    tuner[grid_of](*args, HEAD_DIM=head_dim, USE_DESC=use_desc, CAUSAL=bool(causal), STORE_LSE=store_lse)
    best = tuner.best_config
    return {"BLOCK_M": best.kwargs["BLOCK_M"], "BLOCK_N": best.kwargs["BLOCK_N"], "num_warps": best.num_warps,
            "num_stages": best.num_stages}


@dataclass(frozen=True, eq=False)
class DenseLaunch:
    """A validated dense call: its scale and the config the autotuner picked (or the one pinned)."""

    scale: float
    config: dict[str, int]
    compiled: dict[Any, Any] = field(default_factory=dict)
    ws: bool = False  # the warp-specialized Hopper kernel runs it (kernels/gluon_fwd.py)


_LAUNCHES = CallCache()

#: A pinned config as the custom op carries it (a list of ints, empty = autotune).
_CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "warp_specialize")


def config_to_list(config: dict[str, int] | None) -> list[int]:
    """A pinned dense config as a list of ints (``[]`` for None), the form the custom op takes."""
    if not config:
        return []
    return [int(config.get(k, 0)) for k in _CONFIG_KEYS]


def config_from_list(values: Any) -> dict[str, int] | None:
    """Inverse of :func:`config_to_list`."""
    if not values:
        return None
    return dict(zip(_CONFIG_KEYS, (int(x) for x in values), strict=True))


def dense_forward(q: Any, k: Any, v: Any, *, scale: float | None = None, out: Any = None,
                  config: dict[str, int] | None = None, causal: bool = False,
                  want_lse: bool = False) -> tuple[Any, Any]:
    """The forward without autograd: validated (and autotuned) once per call key, then launched directly.

    Returns ``(out, lse)``: ``lse`` the float32 ``[B, H, N_q]`` natural-log log-sum-exp with ``want_lse``,
    else None.
    """
    import torch

    ws = ws_kernel()
    try:
        key = (tensors_key(q, k, v), hashable(scale), hashable(tuple(sorted(config.items())) if config else None),
               causal if isinstance(causal, bool) else None)
    except (AttributeError, TypeError):
        key = None
    launch = _LAUNCHES.get(key)
    if launch is None:
        check_qkv(q, k, v, spatial_ranks=(1,), what="attention")
        checked_scale = check_scale(scale, int(q.shape[-1]))
        if not isinstance(causal, bool):
            raise ValueError(f"attention: causal={causal!r}; allowed: True or False")
        first = check_out(out, q, q.shape, "attention")
        lse = _lse_buffer(q) if want_lse else None
        if takes_ws(q, k, v, first, config=config, causal=causal):
            built = _LAUNCHES.put(key, DenseLaunch(scale=checked_scale, config={}, ws=True))
            ws.ws_forward(q, k, v, first, lse, checked_scale, cache=built.compiled,
                          persistent=ws.persistent_for(-(-int(k.shape[1]) // ws.BEST["block_n"])))
            return first, lse
        picked = launch_dense(q, k, v, first, checked_scale, config, causal=causal, lse=lse)
        _LAUNCHES.put(key, DenseLaunch(scale=checked_scale, config=picked))
        return first, lse
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        check_out(out, q, q.shape, "attention")
    lse = _lse_buffer(q) if want_lse else None
    if launch.ws and ws is not None and ws.use_ws(q, k, v, out):
        ws.ws_forward(q, k, v, out, lse, launch.scale, cache=launch.compiled,
                      persistent=ws.persistent_for(-(-int(k.shape[1]) // ws.BEST["block_n"])))
        return out, lse
    launch_dense(q, k, v, out, launch.scale, launch.config or None, compiled=launch.compiled, causal=causal,
                 lse=lse)
    return out, lse


def _lse_buffer(q: Any) -> Any:
    import torch

    return torch.empty((int(q.shape[0]), int(q.shape[2]), int(q.shape[1])), dtype=torch.float32, device=q.device)


def takes_ws(q: Any, k: Any, v: Any, out: Any = None, *, config: dict[str, int] | None = None,
             causal: bool = False) -> bool:
    """Whether :func:`attention` runs this call on the warp-specialized Hopper forward (kernels/gluon_fwd.py):
    no forced config, non-causal, and a call the kernel takes (:func:`~sparsesim.kernels.gluon_fwd.use_ws`)."""
    ws = ws_kernel()
    return config is None and not causal and ws is not None and ws.use_ws(q, k, v, out)


def attention(q: Any, k: Any, v: Any, *, scale: float | None = None, out: Any = None,
              config: dict[str, int] | None = None, causal: bool = False, return_lse: bool = False) -> Any:
    """Dense attention ``softmax(q k^T * scale) v``, differentiable.

    Args:
        q: ``[batch, tokens_q, heads, head_dim]``, fp16/bf16 on CUDA (fp32 and CPU under
            ``TRITON_INTERPRET=1``); head_dim a power of two in 16..256.
        k, v: ``[batch, tokens_kv, heads_kv, head_dim]`` with ``heads % heads_kv == 0``.
        scale: softmax scale, default ``1/sqrt(head_dim)``.
        out: optional output buffer shaped like ``q`` (not with autograd: raises when q, k or v requires grad).
        config: pin one of :func:`dense_configs` instead of autotuning.
        causal: query ``i`` sees keys ``0..i`` (top-left aligned, as SDPA's ``is_causal``).
        return_lse: also return the natural-log log-sum-exp of each row, float32 ``[batch, heads, tokens_q]``.

    Returns:
        ``[batch, tokens_q, heads, head_dim]`` in q's dtype (and the LSE with ``return_lse``).

    A call is validated (and autotuned) once per shapes, strides, dtypes, device, scale and config;
    repeated calls launch the compiled kernel directly. On a Hopper GPU a large non-causal call with no pinned
    config runs the warp-specialized Gluon kernel instead (:mod:`sparsesim.kernels.gluon_fwd`;
    ``SPARSESIM_FWD_KERNEL=triton`` keeps the Triton kernel). When q, k or v requires grad (and grad mode is on),
    or under ``torch.compile``, the call runs through the custom op ``torch.ops.sparsesim.dense_fwd``
    (:mod:`sparsesim.kernels.block_ops`), whose backward runs the dense backward kernels.

    Example:
        >>> o = attention(q, k, v)  # doctest: +SKIP
    """
    from sparsesim.kernels.block_ops import use_op

    if use_op(q, k, v):
        from sparsesim.kernels.block_ops import dense_attention_op

        return dense_attention_op(q, k, v, scale=scale, out=out, config=config, causal=causal, return_lse=return_lse)
    o, lse = dense_forward(q, k, v, scale=scale, out=out, config=config, causal=causal, want_lse=return_lse)
    return (o, lse) if return_lse else o
