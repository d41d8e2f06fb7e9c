"""Token permutation into box tiles (and back), with dilation groups folded into the batch.

``[B, *spatial, H, D] -> [B * G, H, n_tiles * tile_volume, D]``: the tokens of one box tile are
contiguous (tile grid row-major, row-major inside a tile). Each axis of length ``L`` with
dilation ``d`` is first split into ``d`` groups (positions ``g, g + d, ...``) of at most
``ceil(L / d)`` positions; the group index moves into the batch (``G`` = product of the
dilations, group index row-major over axes), and each group axis is padded to a multiple of the
tile. Padding is written as zeros; the inverse writes back only real tokens.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import triton
import triton.language as tl

from sparsesim.kernels._launch import (
    CallCache,
    check_tensor_device,
    copy_launch,
    hashable,
    launch_compiled,
    next_pow2,
    spec_key,
)
from sparsesim.simulator.feasibility import tile_problem
from sparsesim.simulator.patterns import per_axis, positive_ints


@triton.jit
def _move(X, Y, src, dst, valid, d_ok, FULL_D: tl.constexpr, INVERSE: tl.constexpr):
    if FULL_D:
        if INVERSE:
            tl.store(X + src, tl.load(Y + dst), mask=valid[:, None])
        else:
            tl.store(Y + dst, tl.load(X + src, mask=valid[:, None], other=0.0))
    else:
        if INVERSE:
            tl.store(X + src, tl.load(Y + dst, mask=d_ok), mask=valid[:, None] & d_ok)
        else:
            tl.store(Y + dst, tl.load(X + src, mask=valid[:, None] & d_ok, other=0.0), mask=d_ok)


@triton.jit
def _permute_kernel(
    X, Y, X2, Y2, HMAP, L0, L1, L2, D0, D1, D2, NT1, NT2,
    s_xb, s_x0, s_x1, s_x2, s_xh, s_xd, s_yb, s_yh, s_yn, s_yd,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr,
    INVERSE: tl.constexpr, PAIR: tl.constexpr, HAS_HMAP: tl.constexpr,
):
    TV: tl.constexpr = T0 * T1 * T2
    t = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)  # the buffer's head
    if HAS_HMAP:  # the buffer holds heads HMAP[0..] of x, in that order
        hx = tl.load(HMAP + h).to(tl.int64)
    else:
        hx = h
    bg = tl.program_id(2)
    groups = D0 * D1 * D2
    b = (bg // groups).to(tl.int64)
    g = bg % groups
    g2 = g % D2
    g1 = (g // D2) % D1
    g0 = g // (D1 * D2)
    t2 = t % NT2
    t1 = (t // NT2) % NT1
    t0 = t // (NT1 * NT2)
    r = tl.arange(0, TV)
    x0 = (t0 * T0 + r // (T1 * T2)) * D0 + g0
    x1 = (t1 * T1 + (r // T2) % T1) * D1 + g1
    x2 = (t2 * T2 + r % T2) * D2 + g2
    valid = (x0 < L0) & (x1 < L1) & (x2 < L2)
    d = tl.arange(0, BLOCK_D)
    src = (b * s_xb + hx * s_xh + x0.to(tl.int64)[:, None] * s_x0 + x1.to(tl.int64)[:, None] * s_x1
           + x2.to(tl.int64)[:, None] * s_x2 + d[None, :] * s_xd)
    rows = t.to(tl.int64) * TV + r
    dst = bg.to(tl.int64) * s_yb + h * s_yh + rows[:, None] * s_yn + d[None, :] * s_yd
    d_ok = d[None, :] < HEAD_DIM
    _move(X, Y, src, dst, valid, d_ok, BLOCK_D == HEAD_DIM, INVERSE)
    if PAIR:  # a second tensor of the same shape and strides (K and V), same offsets
        _move(X2, Y2, src, dst, valid, d_ok, BLOCK_D == HEAD_DIM, INVERSE)


@dataclass(frozen=True)
class TileLayout:
    """Geometry of a permuted layout: per-axis length, dilation, group length, tile and tile count."""

    input_size: tuple[int, ...]
    tile: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.input_size)

    @functools.cached_property
    def group_size(self) -> tuple[int, ...]:
        """Length of each folded axis: ``ceil(L / d)`` (the longest dilation group)."""
        return tuple(-(-n // d) for n, d in zip(self.input_size, self.dilation, strict=True))

    @functools.cached_property
    def grid(self) -> tuple[int, ...]:
        return tuple(-(-n // t) for n, t in zip(self.group_size, self.tile, strict=True))

    @functools.cached_property
    def groups(self) -> int:
        return math.prod(self.dilation)

    @functools.cached_property
    def volume(self) -> int:
        return math.prod(self.tile)

    @functools.cached_property
    def num_tiles(self) -> int:
        return math.prod(self.grid)

    @functools.cached_property
    def padded_tokens(self) -> int:
        return self.num_tiles * self.volume

    def padded3(self, values: Sequence[int], fill: int = 1) -> tuple[int, int, int]:
        """Prepend ``fill`` so a rank-1/2 quantity has three axes (outermost first)."""
        return (fill,) * (3 - len(values)) + tuple(values)  # type: ignore[return-value]


def make_layout(input_size: Sequence[int], tile: Any, dilation: Any = 1) -> TileLayout:
    """Validate and build a :class:`TileLayout` (``ConfigError``, a ValueError, on bad tiles or dilations); a
    call with hashable arguments is built once (repeated calls: a lookup)."""
    try:
        key = (tuple(int(s) for s in input_size), hashable(tile), hashable(dilation), _types(tile), _types(dilation))
    except (TypeError, ValueError):
        return _make_layout(input_size, tile, dilation)
    return _layout_of(*key)


def _types(value: Any) -> Any:
    """The types inside a (nested) value: ``1`` and ``True`` hash alike but are validated differently."""
    return tuple(_types(v) for v in value) if isinstance(value, (list, tuple)) else type(value)


@functools.lru_cache(maxsize=256)
def _layout_of(input_size: tuple[int, ...], tile: Any, dilation: Any, *_types_key: Any) -> TileLayout:
    return _make_layout(input_size, tile, dilation)


def _make_layout(input_size: Sequence[int], tile: Any, dilation: Any) -> TileLayout:
    size = tuple(int(s) for s in input_size)
    rank = len(size)
    if not 1 <= rank <= 3 or any(s < 1 for s in size):
        raise ValueError(f"input_size={list(size)}; allowed: 1 to 3 axes, each >= 1")
    tile_t = positive_ints(per_axis(tile, rank, "tile"), "tile")
    dil_t = positive_ints(per_axis(dilation, rank, "dilation"), "dilation")
    problem = tile_problem(tile_t, "tile")
    if problem:
        raise ValueError(problem)
    return TileLayout(input_size=size, tile=tile_t, dilation=dil_t)


def _launch(x: Any, y: Any, layout: TileLayout, inverse: bool, x2: Any = None, y2: Any = None,
            heads_map: Any = None) -> None:
    pair, has_hmap = x2 is not None, heads_map is not None
    # everything but the tensors themselves follows from these (the heads map's length is its shape)
    key = (x.shape, x.stride(), y.stride(), layout, inverse, pair, None if heads_map is None else heads_map.shape)
    hit = _ARGS.get(key)
    if hit is None:
        hit = _ARGS.put(key, _launch_args(x, y, layout, inverse, pair, heads_map))
    grid, ints, constexprs, options, ints_spec = hit
    x2, y2 = (x2, y2) if pair else (x, y)
    hm = heads_map if has_hmap else x
    # spec_key of (x, y, x2, y2, heads map, *ints) without re-deriving the integers' part
    tensors = (x.dtype, x.data_ptr() % 16 == 0, y.dtype, y.data_ptr() % 16 == 0, x2.dtype, x2.data_ptr() % 16 == 0,
               y2.dtype, y2.data_ptr() % 16 == 0, hm.dtype, hm.data_ptr() % 16 == 0)
    launch_compiled(_COMPILED, (tensors, ints_spec, *constexprs.values()), _permute_kernel, grid,
                    (x, y, x2, y2, hm, *ints), constexprs, options)


def _launch_args(x: Any, y: Any, layout: TileLayout, inverse: bool, pair: bool, heads_map: Any) -> tuple:
    """:func:`_launch`'s grid, integer arguments, constexprs, options and the integers' spec key (per call key)."""
    batch, heads, head_dim = int(x.shape[0]), int(x.shape[-2]), int(x.shape[-1])
    if heads_map is not None:
        heads = int(heads_map.shape[0])
    L0, L1, L2 = layout.padded3(layout.input_size)
    D0, D1, D2 = layout.padded3(layout.dilation)
    _, NT1, NT2 = layout.padded3(layout.grid)
    T0, T1, T2 = layout.padded3(layout.tile)
    xs = [int(s) for s in x.stride()]
    s_sp = [0] * (3 - layout.rank) + xs[1:1 + layout.rank]
    block_d = next_pow2(head_dim)
    cfg = copy_launch(layout.volume, block_d)
    grid = (layout.num_tiles, heads, batch * layout.groups)
    ints = (L0, L1, L2, D0, D1, D2, NT1, NT2, xs[0], *s_sp, xs[-2], xs[-1], *(int(s) for s in y.stride()))
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_D": block_d, "T0": T0, "T1": T1, "T2": T2, "INVERSE": inverse,
                  "PAIR": pair, "HAS_HMAP": heads_map is not None}
    return grid, ints, constexprs, {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}, spec_key(ints)


#: :func:`_launch_args` by call key (shapes, strides, layout, options).
_ARGS = CallCache()


#: Compiled permutation kernels by specialization and constexprs (repeated calls skip Triton's binding).
_COMPILED: dict[Any, Any] = {}


def _check_input(x: Any, rank: int | None, what: str) -> None:
    import torch

    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if rank is not None and x.dim() != rank:
        raise ValueError(f"{what}: tensor has shape {list(x.shape)} (rank {x.dim()}); allowed rank {rank}")
    check_tensor_device(x, what)


def tile_permute(x: Any, tile: Any, *, dilation: Any = 1, out: Any = None) -> Any:
    """``[B, *spatial, H, D] -> [B * G, H, n_tiles * tile_volume, D]`` (see module docstring).

    Example:
        >>> xp = tile_permute(x, (4, 4, 8))  # doctest: +SKIP
    """
    import torch

    _check_input(x, None, "tile_permute")
    if not 4 <= x.dim() <= 6:
        raise ValueError(f"tile_permute: x has shape {list(x.shape)}; allowed: [batch, *spatial, heads, head_dim] "
                         f"with 1 to 3 spatial axes")
    layout = make_layout(x.shape[1:-2], tile, dilation)
    shape = (x.shape[0] * layout.groups, x.shape[-2], layout.padded_tokens, x.shape[-1])
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"tile_permute: out has shape {list(out.shape)} {out.dtype} on {out.device}; "
                         f"allowed: {list(shape)} {x.dtype} on {x.device}")
    _launch(x, out, layout, inverse=False)
    return out


def tile_permute_pair(k: Any, v: Any, tile: Any, *, dilation: Any = 1, heads: Any = None) -> tuple[Any, Any]:
    """:func:`tile_permute` of two tensors of one shape, dtype and strides (K and V) in one launch; ``heads``
    (an integer tensor on the device): only these heads, in that order (the buffers hold ``len(heads)``)."""
    import torch

    _check_input(k, None, "tile_permute_pair")
    _check_input(v, k.dim(), "tile_permute_pair")
    if k.shape != v.shape or k.dtype != v.dtype or k.stride() != v.stride() or k.device != v.device:
        raise ValueError(f"tile_permute_pair: k {list(k.shape)} {k.dtype} and v {list(v.shape)} {v.dtype}; "
                         f"allowed: one shape, dtype, device and strides")
    layout = make_layout(k.shape[1:-2], tile, dilation)
    n_heads = k.shape[-2] if heads is None else int(heads.shape[0])
    shape = (k.shape[0] * layout.groups, n_heads, layout.padded_tokens, k.shape[-1])
    kp = torch.empty(shape, dtype=k.dtype, device=k.device)
    vp = torch.empty(shape, dtype=k.dtype, device=k.device)
    _launch(k, kp, layout, inverse=False, x2=v, y2=vp, heads_map=heads)
    return kp, vp


def permute_checked(x: Any, layout: TileLayout, x2: Any = None) -> Any:
    """:func:`tile_permute` (``x2`` given: :func:`tile_permute_pair`) of inputs already checked against ``layout``
    by an earlier call of theirs with the same shapes, strides, dtypes and device (a repeated call's path: no
    checks, no layout lookup). Returns the buffer, or the two buffers."""
    import torch

    shape = (x.shape[0] * layout.groups, x.shape[-2], layout.padded_tokens, x.shape[-1])
    y = torch.empty(shape, dtype=x.dtype, device=x.device)
    if x2 is None:
        _launch(x, y, layout, inverse=False)
        return y
    y2 = torch.empty(shape, dtype=x.dtype, device=x.device)
    _launch(x, y, layout, inverse=False, x2=x2, y2=y2)
    return y, y2


def tile_unpermute(xp: Any, input_size: Sequence[int], tile: Any, *, dilation: Any = 1, out: Any = None) -> Any:
    """Inverse of :func:`tile_permute`: writes the real tokens of ``xp`` into ``[B, *spatial, H, D]``."""
    import torch

    _check_input(xp, 4, "tile_unpermute")
    layout = make_layout(input_size, tile, dilation)
    bg, heads, n_pad, head_dim = (int(s) for s in xp.shape)
    if bg % layout.groups or n_pad != layout.padded_tokens:
        raise ValueError(f"tile_unpermute: xp has shape {list(xp.shape)}; allowed: [batch * {layout.groups}, heads, "
                         f"{layout.padded_tokens}, head_dim] for input_size={list(layout.input_size)}, "
                         f"tile={list(layout.tile)}, dilation={list(layout.dilation)}")
    shape = (bg // layout.groups, *layout.input_size, heads, head_dim)
    if out is None:
        out = torch.empty(shape, dtype=xp.dtype, device=xp.device)
    elif tuple(out.shape) != shape or out.dtype != xp.dtype or out.device != xp.device:
        raise ValueError(f"tile_unpermute: out has shape {list(out.shape)} {out.dtype} on {out.device}; "
                         f"allowed: {list(shape)} {xp.dtype} on {xp.device}")
    _launch(out, xp, layout, inverse=True)
    return out


def unpermute_into(xp: Any, out: Any, tile: Any, *, dilation: Any = 1) -> Any:
    """:func:`tile_unpermute` of ``xp`` into the given ``out`` ``[B, *spatial, H, D]`` (any strides), its values
    cast to ``out``'s dtype (a float32 accumulator into a bf16 gradient, say). Returns ``out``."""
    _check_input(xp, 4, "unpermute_into")
    _check_input(out, None, "unpermute_into")
    layout = make_layout(out.shape[1:-2], tile, dilation)
    shape = (out.shape[0] * layout.groups, out.shape[-2], layout.padded_tokens, out.shape[-1])
    if tuple(xp.shape) != shape or xp.device != out.device:
        raise ValueError(f"unpermute_into: xp has shape {list(xp.shape)} on {xp.device}; allowed: {list(shape)} on "
                         f"{out.device} for out {list(out.shape)}, tile={list(layout.tile)}, "
                         f"dilation={list(layout.dilation)}")
    _launch(out, xp, layout, inverse=True)
    return out
