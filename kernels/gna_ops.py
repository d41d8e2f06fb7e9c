"""GNA as torch custom ops: ``sparsesim::gna_fwd`` (returns ``(out, lse)``) and ``sparsesim::gna_bwd``.

Registered with :func:`torch.library.custom_op`, a fake (meta) implementation each and
:func:`torch.library.register_autograd` on the forward, so autograd differentiates through
:func:`sparsesim.kernels.gna_attention`, ``torch.compile(fullgraph=True)`` traces it as one opaque node
(no graph break: Dynamo never enters the launcher's Python), and CUDA graphs capture it (no host sync on
a repeated call). The pattern travels as op-friendly arguments: per-axis lists of ints / bools, ints, a
float, strings; ``None`` where the Python call takes ``None``.

:func:`gna_op_call` is the entry point that :func:`~sparsesim.kernels.gna_attention` routes to when q/k/v
require grad or while torch.compile traces; the implementations import the kernel modules at call time
(the test suite reloads kernel modules under the Triton interpreter; the ops are registered once).

Host time: an eager call with grad (plain tensors, no torch.compile, no functorch transform or torch
function/dispatch mode active) runs the same forward and backward through :class:`_EagerGNA`, a
``torch.autograd.Function`` that calls the implementations directly: the op's dispatch, its autograd wrapper
(which re-binds the 14-argument schema every call) and its aliasing check cost about as much host time as
the forward's own launch path. Everywhere else (tracing, transforms, modes, double backward) the ops run.
Neither path materializes a gradient for the non-differentiable ``lse`` (no zero fill per backward); the
op arguments of a call are normalized once per distinct argument set (:func:`_op_args`).
"""

# no ``from __future__ import annotations``: torch.library reads the annotations to infer the op schemas
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["gna_op_call"]


@torch.library.custom_op("sparsesim::gna_fwd", mutates_args=())
def gna_fwd(q: Tensor, k: Tensor, v: Tensor, window: list[int], stride: list[int], dilation: list[int],
            causal: list[bool], q_tile: Optional[list[int]], kv_tile: Optional[list[int]],  # noqa: UP045
            scale: Optional[float], kv_layout: Optional[str], extra_tokens: int, extra_at: str,  # noqa: UP045
            input_size: Optional[list[int]]) -> tuple[Tensor, Tensor]:  # noqa: UP045
    """GNA forward with each query row's log-sum-exp (:func:`sparsesim.kernels.gna.gna_forward`)."""
    from sparsesim.kernels import gna

    return gna.gna_forward(q, k, v, **_kwargs(window, stride, dilation, causal, q_tile, kv_tile, scale, kv_layout,
                                              extra_tokens, extra_at, input_size))


@gna_fwd.register_fake
def _gna_fwd_fake(q: Tensor, k: Tensor, v: Tensor, window: list[int], stride: list[int], dilation: list[int],
                  causal: list[bool], q_tile: Any, kv_tile: Any, scale: Any, kv_layout: Any, extra_tokens: int,
                  extra_at: str, input_size: Any) -> tuple[Tensor, Tensor]:
    tokens = 1
    for s in q.shape[1:-2]:
        tokens = tokens * s
    return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[-2], tokens), dtype=torch.float32)


@torch.library.custom_op("sparsesim::gna_bwd", mutates_args=())
def gna_bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, window: list[int],
            stride: list[int], dilation: list[int], causal: list[bool], q_tile: Optional[list[int]],  # noqa: UP045
            kv_tile: Optional[list[int]], scale: Optional[float], kv_layout: Optional[str],  # noqa: UP045
            extra_tokens: int, extra_at: str, input_size: Optional[list[int]]  # noqa: UP045
            ) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of :func:`gna_fwd` (:func:`sparsesim.kernels.gna_bwd.gna_backward`)."""
    from sparsesim.kernels import gna_bwd as bwd

    return bwd.gna_backward(grad_out, q, k, v, out, lse, **_kwargs(window, stride, dilation, causal, q_tile, kv_tile,
                                                                   scale, kv_layout, extra_tokens, extra_at,
                                                                   input_size))


@gna_bwd.register_fake
def _gna_bwd_fake(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, *args: Any
                  ) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    q, k, v, *pattern = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.pattern = pattern
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # lse's gradient is never read: no zero-filled tensor per backward


def _backward(ctx: Any, grad_out: Any, grad_lse: Any) -> tuple:
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:  # not materialized (see _setup_context): a zero gradient, as autograd would have passed
        grad_out = torch.zeros_like(out)
    dq, dk, dv = torch.ops.sparsesim.gna_bwd.default(grad_out, q, k, v, out, lse, *ctx.pattern)
    return (dq, dk, dv, *([None] * len(ctx.pattern)))


gna_fwd.register_autograd(_backward, setup_context=_setup_context)


def _kwargs(window: list[int], stride: list[int], dilation: list[int], causal: list[bool], q_tile: Any,
            kv_tile: Any, scale: Any, kv_layout: Any, extra_tokens: int, extra_at: str,
            input_size: Any) -> dict[str, Any]:
    """The op's arguments as :func:`~sparsesim.kernels.gna.gna_forward` takes them (tuples, not lists)."""
    def tup(x: Any) -> Any:
        return None if x is None else tuple(x)

    return dict(window=tuple(window), stride=tuple(stride), dilation=tuple(dilation), causal=tuple(causal),
                q_tile=tup(q_tile), kv_tile=tup(kv_tile), scale=scale, kv_layout=kv_layout, extra_tokens=extra_tokens,
                extra_at=extra_at, input_size=tup(input_size))


def _axes(value: Any, rank: int, kind: type) -> list:
    """An int/bool or one per axis, as a list of ``rank`` (or as many as given: the op's check says if wrong)."""
    if isinstance(value, (list, tuple)):
        return [kind(x) for x in value]
    return [kind(value)] * rank


class _EagerGNA(torch.autograd.Function):
    """``sparsesim::gna_fwd`` / ``sparsesim::gna_bwd`` for an eager call with grad, without the ops' dispatch:
    the same implementations (:func:`~sparsesim.kernels.gna.gna_forward`,
    :func:`~sparsesim.kernels.gna_bwd.gna_backward`), the same saved tensors; returns the output alone."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, args: "_OpArgs") -> Tensor:  # type: ignore[override]
        from sparsesim.kernels import gna

        out, lse, launch = gna.forward_call(q, k, v, *args.call)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = args
        ctx.launch = launch  # the backward's forward launch: no second lookup
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Any) -> tuple:  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        if grad_out is None:  # not materialized: a zero gradient, as autograd would have passed
            grad_out = torch.zeros_like(out)
        if torch.is_grad_enabled():  # create_graph=True: the op, whose own backward raises (no double backward)
            dq, dk, dv = torch.ops.sparsesim.gna_bwd.default(grad_out, q, k, v, out, lse, *ctx.args.pattern)
        else:
            from sparsesim.kernels import gna_bwd as bwd

            dq, dk, dv = bwd.backward_call(grad_out, q, k, v, out, lse, *ctx.args.call, fwd=ctx.launch)
        return dq, dk, dv, None


class _OpArgs:
    """A call's arguments normalized once: ``pattern`` as the ops take them (after q, k, v), ``kwargs`` as
    :func:`~sparsesim.kernels.gna.gna_forward` takes them."""

    __slots__ = ("call", "kwargs", "pattern")

    def __init__(self, pattern: tuple) -> None:
        self.pattern = pattern
        self.kwargs = kw = _kwargs(*pattern)
        #: :func:`~sparsesim.kernels.gna.forward_call`'s arguments after q, k, v (``call`` tuple, extra tokens,
        #: extra_at, input_size), which :func:`~sparsesim.kernels.gna_bwd.backward_call` takes too
        self.call = ((kw["window"], kw["stride"], kw["dilation"], kw["causal"], kw["q_tile"], kw["kv_tile"],
                      kw["scale"], kw["kv_layout"]), kw["extra_tokens"], kw["extra_at"], kw["input_size"])


_OP_ARGS: dict[Any, _OpArgs] = {}
_OP_ARGS_SIZE = 256


def _op_args(rank_dims: int, *raw: Any) -> _OpArgs:
    """:func:`_pattern` of a call's arguments, normalized once per distinct argument set (the key holds each
    argument's type, so ``True`` and ``1`` stay apart; arguments holding lists are normalized every call)."""
    try:
        key: Any = (rank_dims, raw, tuple(map(type, raw)))
        hit = _OP_ARGS.get(key)
    except TypeError:
        key, hit = None, None
    if hit is not None:
        return hit
    args = _OpArgs(_pattern(rank_dims, *raw))
    if key is not None:
        if len(_OP_ARGS) >= _OP_ARGS_SIZE:
            _OP_ARGS.clear()
        _OP_ARGS[key] = args
    return args


def _pattern(rank_dims: int, window: Any, stride: Any, dilation: Any, causal: Any, q_tile: Any, kv_tile: Any,
             scale: Any, kv_layout: Any, extra_tokens: Any, extra_at: Any, input_size: Any) -> tuple:
    """:func:`gna_op_call`'s arguments as the ops take them after q, k, v (``rank_dims``: ``q.dim()``)."""
    if extra_tokens or input_size is not None:
        if input_size is None:
            rank = 1
        else:
            rank = len(input_size) if isinstance(input_size, (list, tuple)) else 1
    else:
        rank = rank_dims - 3
    size = None if input_size is None else _axes(input_size, 1, int)
    if isinstance(scale, bool) or (scale is not None and not isinstance(scale, (int, float))):
        raise ValueError(f"scale={scale!r}; allowed: None (1/sqrt(head_dim)) or a positive finite number")
    return (_axes(window, rank, int), _axes(stride, rank, int), _axes(dilation, rank, int),
            _axes(causal, rank, bool), None if q_tile is None else _axes(q_tile, rank, int),
            None if kv_tile is None else _axes(kv_tile, rank, int), None if scale is None else float(scale),
            kv_layout, int(extra_tokens), extra_at, size)


def _eager(q: Any, k: Any, v: Any) -> bool:
    """Whether a call with grad may skip the ops' dispatch: plain tensors, not traced, no functorch transform, no
    torch function or dispatch mode (those see, trace or transform the ops, so they get them)."""
    return (type(q) is torch.Tensor and type(k) is torch.Tensor and type(v) is torch.Tensor
            and not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()
            and not torch._C._is_torch_function_mode_enabled() and not torch._C._len_torch_dispatch_stack())


def gna_op_call(q: Tensor, k: Tensor, v: Tensor, *, window: Any, stride: Any = 1, dilation: Any = 1,
                causal: Any = False, q_tile: Any = None, kv_tile: Any = None, scale: Optional[float] = None,  # noqa: UP045
                kv_layout: Optional[str] = None, extra_tokens: int = 0, extra_at: str = "end",  # noqa: UP045
                input_size: Any = None) -> Tensor:
    """:func:`~sparsesim.kernels.gna_attention`'s arguments (without ``out``/``heads``) through ``sparsesim::gna_fwd``:
    differentiable, traceable by torch.compile with ``fullgraph=True``. Returns the output alone.

    An eager call with grad on plain tensors runs the ops' implementations through :class:`_EagerGNA` (same
    forward, backward and saved tensors, less host time)."""
    raw = (window, stride, dilation, causal, q_tile, kv_tile, scale, kv_layout, extra_tokens, extra_at, input_size)
    if torch.compiler.is_compiling():  # traced: plain code for Dynamo, the op in the graph
        out, _ = torch.ops.sparsesim.gna_fwd.default(q, k, v, *_pattern(q.dim(), *raw))
        return out
    args = _op_args(q.dim(), *raw)
    if torch.is_grad_enabled() and _eager(q, k, v):
        return _EagerGNA.apply(q, k, v, args)
    out, _ = torch.ops.sparsesim.gna_fwd.default(q, k, v, *args.pattern)
    return out
