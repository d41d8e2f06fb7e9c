"""Torch custom ops and autograd for the dense and block-sparse kernels.

Four ops in the ``sparsesim`` namespace (``torch.library.custom_op``, each with a fake implementation):

- ``dense_fwd(q, k, v, scale, causal, config) -> (out, lse)`` and
  ``dense_bwd(dout, q, k, v, out, lse, dlse, scale, causal) -> (dq, dk, dv)``;
- ``block_sparse_fwd(q, k, v, kv_num, kv_idx, tail, q_num, q_idx, q_tile, kv_tile, scale, use_desc) -> (out,
  lse)`` and ``block_sparse_bwd(...) -> (dq, dk, dv)``: a prepared
  :class:`~sparsesim.kernels.block_map.BlockMap` goes in as its five list tensors (the forward reads the first
  three, the backward all five).

The forward ops carry ``register_autograd`` formulas that call the backward ops (the LSE output is
differentiable too: its gradient enters through ``Delta``), so ``torch.compile(fullgraph=True)`` traces
:func:`~sparsesim.kernels.attention` and :func:`~sparsesim.kernels.block_sparse_attention` as single graph
nodes and CUDA graphs capture them. The public wrappers route through the ops when q, k or v requires grad
(grad mode on) or while compiling (:func:`use_op`) and keep their direct launch path otherwise; a call that
has no backward (an ``out=`` buffer) raises when grad is required instead of dropping the gradient.
"""

from typing import Any

import torch

from sparsesim.kernels._launch import check_scale


@torch.library.custom_op("sparsesim::dense_fwd", mutates_args=(),
                         schema="(Tensor q, Tensor k, Tensor v, float scale, bool causal, int[] config) "
                                "-> (Tensor, Tensor)")
def dense_fwd(q: Any, k: Any, v: Any, scale: float, causal: bool, config: Any) -> Any:
    """Dense forward: ``(out [B, N_q, H, D], lse float32 [B, H, N_q])``."""
    from sparsesim.kernels.dense import config_from_list, dense_forward

    return dense_forward(q, k, v, scale=scale, config=config_from_list(config), causal=causal, want_lse=True)


@dense_fwd.register_fake
def _dense_fwd_fake(q: Any, k: Any, v: Any, scale: float, causal: bool, config: Any) -> Any:
    return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)


@torch.library.custom_op("sparsesim::dense_bwd", mutates_args=(),
                         schema="(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? dlse, "
                                "float scale, bool causal) -> (Tensor, Tensor, Tensor)")
def dense_bwd(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, dlse: Any, scale: float, causal: bool) -> Any:
    """Dense backward: ``(dq, dk, dv)``."""
    from sparsesim.kernels.dense_bwd import dense_backward

    return dense_backward(dout, q, k, v, out, lse, dlse, scale, causal)


@dense_bwd.register_fake
def _dense_bwd_fake(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, dlse: Any, scale: float,
                    causal: bool) -> Any:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _dense_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    q, k, v, scale, causal, _ = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.scale, ctx.causal = scale, causal


def _dense_grad(ctx: Any, dout: Any, dlse: Any) -> tuple:
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.sparsesim.dense_bwd(dout, q, k, v, out, lse, dlse, ctx.scale, ctx.causal)
    return dq, dk, dv, None, None, None


dense_fwd.register_autograd(_dense_grad, setup_context=_dense_setup)


@torch.library.custom_op("sparsesim::block_sparse_fwd", mutates_args=(),
                         schema="(Tensor q, Tensor k, Tensor v, Tensor kv_num, Tensor kv_idx, Tensor tail, "
                                "Tensor q_num, Tensor q_idx, int q_tile, int kv_tile, float scale, bool? use_desc) "
                                "-> (Tensor, Tensor)")
def block_sparse_fwd(q: Any, k: Any, v: Any, kv_num: Any, kv_idx: Any, tail: Any, q_num: Any, q_idx: Any,
                     q_tile: int, kv_tile: int, scale: float, use_desc: Any) -> Any:
    """Block-sparse forward on a prepared map's lists: ``(out, lse)`` (``lse`` is ``-inf`` on rows that see
    nothing)."""
    from sparsesim.kernels.block_sparse import block_sparse_forward

    return block_sparse_forward(q, k, v, (kv_num, kv_idx, tail), q_tile, kv_tile, scale=scale, use_desc=use_desc,
                                want_lse=True)


@block_sparse_fwd.register_fake
def _block_sparse_fwd_fake(q: Any, k: Any, v: Any, kv_num: Any, kv_idx: Any, tail: Any, q_num: Any, q_idx: Any,
                           q_tile: int, kv_tile: int, scale: float, use_desc: Any) -> Any:
    return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)


@torch.library.custom_op("sparsesim::block_sparse_bwd", mutates_args=(),
                         schema="(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? dlse, "
                                "Tensor kv_num, Tensor kv_idx, Tensor tail, Tensor q_num, Tensor q_idx, int q_tile, "
                                "int kv_tile, float scale) -> (Tensor, Tensor, Tensor)")
def block_sparse_bwd(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, dlse: Any, kv_num: Any, kv_idx: Any,
                     tail: Any, q_num: Any, q_idx: Any, q_tile: int, kv_tile: int, scale: float) -> Any:
    """Block-sparse backward: ``(dq, dk, dv)``."""
    from sparsesim.kernels.block_sparse import check_lists
    from sparsesim.kernels.block_sparse_bwd import block_sparse_backward

    lists = (kv_num, kv_idx, tail, q_num, q_idx)
    check_lists("block_sparse_attention backward", int(q.shape[1]), int(q.shape[2]), lists, q_tile, kv_tile,
                q.device)
    return block_sparse_backward(dout, q, k, v, out, lse, dlse, lists, q_tile, kv_tile, scale)


@block_sparse_bwd.register_fake
def _block_sparse_bwd_fake(dout: Any, q: Any, k: Any, v: Any, out: Any, lse: Any, dlse: Any, kv_num: Any,
                           kv_idx: Any, tail: Any, q_num: Any, q_idx: Any, q_tile: int, kv_tile: int,
                           scale: float) -> Any:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _block_sparse_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    q, k, v, kv_num, kv_idx, tail, q_num, q_idx, q_tile, kv_tile, scale, _ = inputs
    ctx.save_for_backward(q, k, v, *output, kv_num, kv_idx, tail, q_num, q_idx)
    ctx.q_tile, ctx.kv_tile, ctx.scale = q_tile, kv_tile, scale


def _block_sparse_grad(ctx: Any, dout: Any, dlse: Any) -> tuple:
    q, k, v, out, lse, *lists = ctx.saved_tensors
    dq, dk, dv = torch.ops.sparsesim.block_sparse_bwd(dout, q, k, v, out, lse, dlse, *lists, ctx.q_tile,
                                                      ctx.kv_tile, ctx.scale)
    return (dq, dk, dv) + (None,) * 9


block_sparse_fwd.register_autograd(_block_sparse_grad, setup_context=_block_sparse_setup)


# --------------------------------------------------------------------------------------------
# Routing from the public wrappers.
# --------------------------------------------------------------------------------------------

def grad_required(q: Any, k: Any, v: Any) -> bool:
    """Whether autograd will want gradients of this call: grad mode on and q, k or v requiring grad."""
    return torch.is_grad_enabled() and bool(getattr(q, "requires_grad", False) or getattr(k, "requires_grad", False)
                                            or getattr(v, "requires_grad", False))


def use_op(q: Any, k: Any, v: Any) -> bool:
    """Whether a public wrapper runs through the custom op: while ``torch.compile`` traces, or when
    :func:`grad_required`."""
    return torch.compiler.is_compiling() or grad_required(q, k, v)


def _check_out(what: str, out: Any, q: Any, k: Any, v: Any) -> None:
    if out is not None and grad_required(q, k, v):
        raise ValueError(f"{what}: out= given while q, k or v requires grad (an output buffer has no backward); "
                         f"allowed: out=None, or the call under torch.no_grad()")


def dense_attention_op(q: Any, k: Any, v: Any, *, scale: float | None = None, out: Any = None,
                       config: dict[str, int] | None = None, causal: bool = False, return_lse: bool = False) -> Any:
    """:func:`sparsesim.kernels.attention` through ``torch.ops.sparsesim.dense_fwd`` (autograd, compile)."""
    from sparsesim.kernels.dense import config_to_list

    _check_out("attention", out, q, k, v)
    if not isinstance(causal, bool):
        raise ValueError(f"attention: causal={causal!r}; allowed: True or False")
    scale = check_scale(scale, int(q.shape[-1]))
    o, lse = torch.ops.sparsesim.dense_fwd(q, k, v, scale, causal, config_to_list(config))
    if out is not None:
        out.copy_(o)
        o = out
    return (o, lse) if return_lse else o


def block_sparse_attention_op(q: Any, k: Any, v: Any, block_map: Any, *, q_tile: int | None = None,
                              kv_tile: int | None = None, scale: float | None = None, out: Any = None,
                              use_desc: bool | None = None, return_lse: bool = False) -> Any:
    """:func:`sparsesim.kernels.block_sparse_attention` through ``torch.ops.sparsesim.block_sparse_fwd``
    (autograd, compile). Under ``torch.compile`` the map must be a prepared
    :class:`~sparsesim.kernels.block_map.BlockMap` (built outside the compiled function)."""
    from sparsesim.kernels.block_map import BlockMap

    what = "block_sparse_attention"
    _check_out(what, out, q, k, v)
    if torch.compiler.is_compiling():
        if not isinstance(block_map, BlockMap):
            raise ValueError(f"{what} under torch.compile: block_map is a {type(block_map).__name__}; allowed: a "
                             f"BlockMap prepared outside the compiled function (prepare_block_map)")
        bm = block_map
        if (q_tile not in (None, bm.q_tile) or kv_tile not in (None, bm.kv_tile)
                or bm.seq_len != q.shape[1]):
            raise ValueError(f"{what}: BlockMap for seq_len={bm.seq_len}, q_tile={bm.q_tile}, kv_tile={bm.kv_tile}; "
                             f"the call has {q.shape[1]} tokens, q_tile={q_tile}, kv_tile={kv_tile}")
    else:
        from sparsesim.kernels.block_sparse import prepared_map

        bm = prepared_map(q, k, v, block_map, q_tile, kv_tile)
    o, lse = torch.ops.sparsesim.block_sparse_fwd(q, k, v, bm.kv_num, bm.kv_idx, bm.tail, bm.q_num, bm.q_idx,
                                                  bm.q_tile, bm.kv_tile, check_scale(scale, int(q.shape[-1])),
                                                  use_desc)
    if out is not None:
        out.copy_(o)
        o = out
    return (o, lse) if return_lse else o
