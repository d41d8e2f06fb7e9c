"""Sparsity patterns: generalized neighborhood attention (GNA) and explicit block-sparse maps.

This module is the one definition of "which keys a query sees" (docs/DESIGN.md, Semantics): the
per-axis rule :func:`axis_bounds` and the token masks :func:`visible_mask` built from it. The
tiling, the cost model and the kernels derive from :func:`axis_bounds`; :func:`dense_mask`, the
kernels' torch reference and the search's quality call :func:`visible_mask`.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsesim.simulator.errors import ConfigError

#: Largest layout :func:`dense_mask` builds (an N x N bool mask of 16K tokens is 256 MiB).
DENSE_MASK_MAX_TOKENS = 16384
#: Largest layout any pattern takes: what a signed 32-bit token index addresses (the kernels' limit).
MAX_TOKENS = 2**31 - 1
#: Where a pattern's extra tokens sit in the attention call's sequence: after the layout or before it.
EXTRA_AT = ("end", "start")

_INT_TYPES = (int, np.integer)
_BOOL_TYPES = (bool, np.bool_)


def per_axis(value: object, rank: int, name: str, default: object = None) -> tuple:
    """Broadcast a scalar (or ``None`` -> ``default``) to ``rank`` entries; check a sequence has ``rank``.

    The one broadcasting rule of the package: one value per axis, or a single value for all axes.
    Anything else (a float, a string, a nested list) is a :class:`ConfigError` naming ``name``.
    """
    if value is None:
        return (default,) * rank
    if isinstance(value, (*_INT_TYPES, *_BOOL_TYPES)):
        return (value,) * rank
    if isinstance(value, (str, bytes, float, np.floating)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{name}={value!r}: allowed: an integer or a list of integers, one per axis")
    values = tuple(value)  # type: ignore[call-overload]
    if len(values) == 1:
        return values * rank
    if len(values) != rank:
        raise ConfigError(
            f"{name}={list(values)} has {len(values)} entries but the layout has rank {rank}; "
            f"give one value per axis or a single value for all axes")
    return values


def positive_ints(values: tuple, name: str, maximum: int | None = None) -> tuple[int, ...]:
    """Check every entry is a positive integer (not a bool, not a float), at most ``maximum``."""
    out = []
    for v in values:
        if isinstance(v, _BOOL_TYPES) or not isinstance(v, _INT_TYPES) or v < 1:
            raise ConfigError(f"{name}={list(values)}: every entry must be a positive integer, got {v!r}")
        if maximum is not None and v > maximum:
            raise ConfigError(f"{name}={list(values)}: entry {v} is too large; allowed: at most {maximum}")
        out.append(int(v))
    return tuple(out)


def layout_tuple(value: object, name: str = "input_size") -> tuple[int, ...]:
    """A layout (1 to 3 positive axis lengths, at most :data:`MAX_TOKENS` tokens) from an int or a list."""
    if isinstance(value, (*_INT_TYPES, *_BOOL_TYPES)):
        value = (value,)
    if isinstance(value, (str, bytes, float, np.floating)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{name}={value!r}: allowed: 1 to 3 positive integers (axis lengths, outermost first)")
    size = positive_ints(tuple(value), name)  # type: ignore[call-overload]
    if not 1 <= len(size) <= 3:
        raise ConfigError(f"{name}={list(size)} has rank {len(size)}; allowed ranks are 1, 2 and 3")
    tokens = math.prod(size)
    if tokens > MAX_TOKENS:
        raise ConfigError(f"{name}={list(size)} has {tokens:.3g} tokens; allowed: at most 2^31 - 1 = {MAX_TOKENS}")
    return size


@dataclass(frozen=True)
class GNAPattern:
    """Generalized neighborhood attention over a 1D, 2D or 3D token layout.

    Per axis (outermost first): window ``w``, stride ``s``, dilation ``d`` and a causal flag,
    with ``1 <= s <= w`` and ``w * d <= L``. ``s = 1`` is a sliding window, ``s = w`` blocked
    attention, ``w = L`` dense.

    ``extra_tokens`` (``E``) are tokens outside the layout (MM-DiT joint text tokens, attention sinks)
    that every query sees and that see everything (docs/DESIGN.md, Extra tokens): the attention call then
    runs over ``seq_tokens = N + E`` tokens, the extra ones after the layout (``extra_at="end"``) or
    before it (``"start"``; the only place allowed with a causal axis).

    Example:
        >>> p = GNAPattern(input_size=(30, 48, 80), window=(18, 24, 24))
        >>> p.num_tokens
        115200
        >>> GNAPattern(input_size=(30, 48, 80), window=(18, 24, 24), extra_tokens=256).seq_tokens
        115456
    """

    input_size: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...] = field(default=())
    dilation: tuple[int, ...] = field(default=())
    causal: tuple[bool, ...] = field(default=())
    extra_tokens: int = 0
    extra_at: str = "end"

    def __post_init__(self) -> None:
        size = layout_tuple(self.input_size)
        rank = len(size)
        if self.window is None:
            raise ConfigError("window is required: one per axis or one for all axes")
        window = positive_ints(per_axis(self.window, rank, "window"), "window")
        stride = positive_ints(per_axis(self.stride if self.stride != () else None, rank, "stride", 1), "stride")
        dilation = positive_ints(per_axis(self.dilation if self.dilation != () else None, rank, "dilation", 1),
                                 "dilation")
        causal_raw = per_axis(self.causal if self.causal != () else None, rank, "causal", False)
        causal = []
        for c in causal_raw:
            if isinstance(c, _BOOL_TYPES) or (isinstance(c, _INT_TYPES) and c in (0, 1)):
                causal.append(bool(c))
            else:
                raise ConfigError(f"causal={list(causal_raw)}: entries must be 0/1 or true/false, got {c!r}")
        for axis, (n, w, s, d) in enumerate(zip(size, window, stride, dilation, strict=True)):
            if w * d > n:
                what = f"window {w} x dilation {d} = {w * d}" if d > 1 else f"window {w}"
                raise ConfigError(f"axis {axis}: {what} is larger than the axis length {n}; "
                                  f"allowed: window x dilation <= {n}")
            if s > w:
                raise ConfigError(f"axis {axis}: stride {s} is larger than window {w}; allowed: 1 <= stride <= window")
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "dilation", dilation)
        object.__setattr__(self, "causal", tuple(causal))
        extra = self.extra_tokens
        if isinstance(extra, _BOOL_TYPES) or not isinstance(extra, _INT_TYPES) or extra < 0:
            raise ConfigError(f"extra_tokens={extra!r}; allowed: an integer >= 0 (tokens outside the layout that "
                              f"every query sees)")
        n = math.prod(size)
        if n + extra > MAX_TOKENS:
            raise ConfigError(f"extra_tokens={extra}: with the layout's {n} tokens the sequence has {n + extra}; "
                              f"allowed: at most 2^31 - 1 = {MAX_TOKENS} in all")
        if self.extra_at not in EXTRA_AT:
            raise ConfigError(f"extra_at={self.extra_at!r}; allowed: {', '.join(EXTRA_AT)}")
        if extra and any(causal) and self.extra_at == "end":
            raise ConfigError(f"extra_at='end' with causal={[int(c) for c in causal]}: extra tokens after a causal "
                              f"layout are not defined; allowed: extra_at='start' (attention sinks) or no causal axis")
        object.__setattr__(self, "extra_tokens", int(extra))

    @property
    def rank(self) -> int:
        return len(self.input_size)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.input_size)

    @property
    def seq_tokens(self) -> int:
        """Tokens of the attention call: the layout's and the extra ones."""
        return self.num_tokens + self.extra_tokens

    @property
    def layout_start(self) -> int:
        """Sequence position of the layout's first token (``extra_tokens`` with ``extra_at="start"``, else 0)."""
        return self.extra_tokens if self.extra_at == "start" else 0

    @property
    def extra_start(self) -> int:
        """Sequence position of the first extra token."""
        return 0 if self.extra_at == "start" else self.num_tokens

    @property
    def is_causal(self) -> bool:
        return any(self.causal)

    def dense(self) -> GNAPattern:
        """The dense baseline of this pattern: full windows, keeping the causal axes causal and the extra tokens."""
        return GNAPattern(input_size=self.input_size, window=self.input_size, causal=self.causal,
                          extra_tokens=self.extra_tokens, extra_at=self.extra_at)

    def layout_pattern(self) -> GNAPattern:
        """The same pattern without extra tokens (the layout's own rule)."""
        return GNAPattern(input_size=self.input_size, window=self.window, stride=self.stride,
                          dilation=self.dilation, causal=self.causal)

    def axis_bounds(self, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """:func:`axis_bounds` for one axis of this pattern."""
        return axis_bounds(self.input_size[axis], self.window[axis], self.stride[axis],
                           self.dilation[axis], self.causal[axis])

    def visible_pairs(self) -> int:
        """Exact number of visible (query, key) pairs over the whole sequence, in closed form.

        The layout's pairs are the product of per-axis counts; ``E`` extra tokens add ``N * E`` (every
        layout query sees them) and ``E * (N + E)`` (they see everything), or ``E * (E + 1) / 2`` when an axis
        is causal (sinks see only the sinks at or before them).
        """
        total = 1
        for axis in range(self.rank):
            n, w, s, d, c = (self.input_size[axis], self.window[axis], self.stride[axis], self.dilation[axis],
                             self.causal[axis])
            total *= sum(group_pairs(group_length(n, d, g), w, s, c) for g in range(d))
        e, n = self.extra_tokens, self.num_tokens
        return total + n * e + (e * (e + 1) // 2 if self.is_causal else e * (n + e))

    def density(self) -> float:
        """Visible pairs over ``seq_tokens^2`` (``N^2`` without extra tokens)."""
        return self.visible_pairs() / float(self.seq_tokens) ** 2

    def mask(self, query_tokens: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """:func:`visible_mask` of this pattern: ``[R, seq_tokens]`` bool, the rows of ``query_tokens``
        (sequence positions, default all)."""
        return visible_mask(self, query_tokens)


def group_bounds(length: int, window: int, stride: int, causal: bool,
                 positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive visible key range ``[lo, hi]`` of queries of one undilated axis of ``length``.

    ``positions`` (int64 array, default every position) picks the queries: the rule is evaluated
    point-wise, so a tile's end points cost O(1) whatever the axis length. docs/DESIGN.md's formulas (Semantics):
    non-causal ``leader = min(floor(i/s)*s + floor(s/2), L-1)``, centre clamped to
    ``[wl, L-1-wr]``; causal ``leader = min(floor(i/s)*s + s-1, L-1)``, keys ``j <= i`` with
    ``leader - j < w``. Both ``lo`` and ``hi`` are non-decreasing in ``i`` and
    ``lo[i] <= i <= hi[i]``: the tiling relies on both facts.
    """
    i = np.arange(length, dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
    block = (i // stride) * stride
    if causal:
        leader = np.minimum(block + stride - 1, length - 1)
        return np.maximum(leader - window + 1, 0), i
    wl = window // 2
    wr = window // 2 + window % 2 - 1
    leader = np.minimum(block + stride // 2, length - 1)
    center = np.clip(leader, wl, length - 1 - wr)
    return center - wl, center + wr


def group_pairs(length: int, window: int, stride: int, causal: bool) -> int:
    """Visible (query, key) pairs of one undilated axis, in closed form (O(1) work).

    Non-causal: every query sees exactly ``window`` keys. Causal: query ``i`` of the stride block
    whose leader is ``e`` sees ``i - max(e - w + 1, 0) + 1`` keys; the first blocks (``e < w``) see
    ``i + 1`` each, every whole block after them ``s * w - s * (s - 1) / 2`` in all, and the last
    block (possibly short) is summed on its own.
    """
    if not causal:
        return length * window
    n, w, s = length, window, stride
    blocks = -(-n // s)
    head = min(blocks, (w - s) // s + 1)  # blocks whose leader is < w: nothing cut at the left
    if head == blocks:
        return n * (n + 1) // 2
    total = head * s * (head * s + 1) // 2
    total += (blocks - head - 1) * (s * w - s * (s - 1) // 2)
    start, end = (blocks - 1) * s, n - 1
    lo = max(end - w + 1, 0)
    count = end - start + 1
    return total + count * (1 - lo) + (start + end) * count // 2


def group_length(length: int, dilation: int, group: int) -> int:
    """Positions of dilation group ``group`` on an axis of ``length``: ``ceil((length - group) / dilation)``."""
    return -(-(length - group) // dilation)


def axis_bounds(length: int, window: int, stride: int = 1, dilation: int = 1,
                causal: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Visible key range of each query position on one axis, in the axis' own coordinates.

    Returns ``(lo, hi)``, int64 arrays of length ``length``: key ``j`` is visible from query ``i``
    iff ``j % dilation == i % dilation`` and ``lo[i] <= j <= hi[i]``.
    """
    if dilation == 1:
        return group_bounds(length, window, stride, causal)
    lo = np.empty(length, dtype=np.int64)
    hi = np.empty(length, dtype=np.int64)
    for g in range(dilation):
        glo, ghi = group_bounds(group_length(length, dilation, g), window, stride, causal)
        lo[g::dilation] = g + dilation * glo
        hi[g::dilation] = g + dilation * ghi
    return lo, hi


def rows_mask(query_tokens: np.ndarray | Sequence[int], input_size: Sequence[int],
              bounds: Sequence[tuple[np.ndarray, np.ndarray]], dilation: Sequence[int]) -> np.ndarray:
    """``[R, N]`` bool mask of the query tokens ``query_tokens`` (flat, row-major) from per-axis bounds.

    ``bounds[a]`` is :func:`axis_bounds` of axis ``a``: key ``j`` is visible from query ``i`` iff on every
    axis ``j_a % d_a == i_a % d_a`` and ``lo_a[i_a] <= j_a <= hi_a[i_a]``. This is the one place that turns
    the per-axis rule into token masks; :func:`visible_mask` computes the bounds from a pattern (callers
    that mask many row batches of one pattern may compute them once and call this directly).
    """
    rows = np.asarray(query_tokens, dtype=np.int64).reshape(-1)
    size = tuple(int(n) for n in input_size)
    coords = np.unravel_index(rows, size)
    mask = np.ones((rows.size, 1), dtype=bool)
    for axis, length in enumerate(size):
        lo, hi = bounds[axis]
        d = int(dilation[axis])
        i = coords[axis]
        j = np.arange(length, dtype=np.int64)
        m = (j[None, :] >= lo[i][:, None]) & (j[None, :] <= hi[i][:, None]) & ((j[None, :] % d) == (i % d)[:, None])
        # Row-major tokens: the new axis varies fastest among the keys.
        mask = (mask[:, :, None] & m[:, None, :]).reshape(rows.size, mask.shape[1] * length)
    return mask


def visible_mask(pattern: GNAPattern, query_tokens: np.ndarray | Sequence[int] | None = None, *,
                 max_tokens: int = DENSE_MASK_MAX_TOKENS) -> np.ndarray:
    """Which keys each query sees under ``pattern``: a bool ``[R, N]`` mask (row = query, column = key).

    The one predicate of "which keys a query sees" (docs/DESIGN.md, Semantics): :func:`dense_mask`, the kernels'
    torch reference and the search's quality all call it. Tokens are row-major (last axis fastest);
    ``query_tokens`` (flat token indices, default every token) picks the rows, so the rows of a huge
    layout cost ``R x N``, never ``N x N``. ``max_tokens`` bounds ``N`` when every row is asked for.

    With ``E = pattern.extra_tokens > 0`` indices are positions in the call's sequence of ``N + E`` tokens
    (``extra_at``: the extra ones after the layout or before it) and the mask is ``[R, N + E]``, by the one rule
    ``visible(i, j) = reference(i, j) and (i is extra or j is extra or pattern(i, j))`` (docs/DESIGN.md, Extra
    tokens): a layout query sees every extra key on top of its pattern; an extra query sees every key, or under a
    causal axis (sinks, at the start) the extra keys at or before it and no layout key.

    Example:
        >>> p = GNAPattern(input_size=(4, 5), window=3, causal=(False, True))
        >>> visible_mask(p, [7]).reshape(4, 5).astype(int)
        array([[1, 1, 1, 0, 0],
               [1, 1, 1, 0, 0],
               [1, 1, 1, 0, 0],
               [0, 0, 0, 0, 0]])
        >>> visible_mask(GNAPattern(input_size=5, window=3, extra_tokens=2), [0, 6]).astype(int)
        array([[1, 1, 1, 0, 0, 1, 1],
               [1, 1, 1, 1, 1, 1, 1]])
    """
    n, total = pattern.num_tokens, pattern.seq_tokens
    if query_tokens is None:
        if total > max_tokens:
            raise ConfigError(f"a mask of every query: the sequence has {total} tokens; allowed: at most "
                              f"{max_tokens} (an N x N mask would need {total * total / 2**30:.1f} GiB)")
        rows = np.arange(total, dtype=np.int64)
    else:
        rows = np.asarray(query_tokens)
        if rows.size and (not np.issubdtype(rows.dtype, np.integer) or rows.min() < 0 or rows.max() >= total):
            raise ConfigError(f"query_tokens: allowed: integer token indices from 0 to {total - 1}")
    bounds = [pattern.axis_bounds(axis) for axis in range(pattern.rank)]
    if not pattern.extra_tokens:
        return rows_mask(rows, pattern.input_size, bounds, pattern.dilation)
    rows = rows.astype(np.int64).reshape(-1)
    start, extra = pattern.layout_start, pattern.extra_start
    layout_keys = slice(start, start + n)
    extra_keys = slice(extra, extra + pattern.extra_tokens)
    is_layout = (rows >= start) & (rows < start + n)
    out = np.zeros((rows.size, total), dtype=bool)
    out[is_layout, layout_keys] = rows_mask(rows[is_layout] - start, pattern.input_size, bounds, pattern.dilation)
    out[is_layout, extra_keys] = True
    if pattern.is_causal:  # sinks (extra_at="start"): the extra keys at or before the query, no layout key
        keys = np.arange(total, dtype=np.int64)
        out[~is_layout] = (keys[None, :] <= rows[~is_layout][:, None]) & (keys[None, :] < pattern.extra_tokens)
    else:
        out[~is_layout] = True
    return out


def dense_mask(*, input_size: int | Sequence[int], window: int | Sequence[int],
               stride: int | Sequence[int] = 1, dilation: int | Sequence[int] = 1,
               causal: bool | Sequence[bool] = False, extra_tokens: int = 0, extra_at: str = "end",
               max_tokens: int = DENSE_MASK_MAX_TOKENS) -> np.ndarray:
    """The explicit ``[S, S]`` bool mask of a GNA pattern (row = query, column = key, row-major tokens;
    ``S = N + extra_tokens``, the extra tokens placed by ``extra_at``).

    :func:`visible_mask` of every token; meant for small layouts: the tests, the kernels' torch reference
    and debugging.

    Example:
        >>> dense_mask(input_size=5, window=3).astype(int)[0]
        array([1, 1, 1, 0, 0])
        >>> dense_mask(input_size=5, window=3, extra_tokens=1, extra_at="start").astype(int)[1]
        array([1, 1, 1, 1, 0, 0])
    """
    pattern = GNAPattern(input_size=input_size, window=window, stride=stride,  # type: ignore[arg-type]
                         dilation=dilation, causal=causal,  # type: ignore[arg-type]
                         extra_tokens=extra_tokens, extra_at=extra_at)
    return visible_mask(pattern, max_tokens=max_tokens)


@dataclass(frozen=True)
class BlockSparsePattern:
    """An explicit per-head map of visited (Q tile, KV tile) blocks over ``seq_len`` tokens.

    ``block_map`` is a bool array ``[heads, q_blocks, kv_blocks]`` (a 2D map means one head)
    with ``q_blocks = ceil(seq_len / q_tile)`` and ``kv_blocks = ceil(seq_len / kv_tile)``.
    Every visited block is processed whole (no element mask) except for padding at the end.
    """

    block_map: np.ndarray
    seq_len: int
    q_tile: int
    kv_tile: int

    def __post_init__(self) -> None:
        for name in ("seq_len", "q_tile", "kv_tile"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name}={value!r}: must be a positive integer")
        bm = np.asarray(self.block_map)
        if bm.dtype != bool:
            if not np.issubdtype(bm.dtype, np.integer) or not np.isin(bm, (0, 1)).all():
                raise ConfigError(f"block_map has dtype {bm.dtype} with values other than 0/1; "
                                  f"allowed: a bool array or 0/1 integers")
            bm = bm.astype(bool)
        if bm.ndim == 2:
            bm = bm[None]
        if bm.ndim != 3:
            raise ConfigError(f"block_map has shape {bm.shape}; allowed: [q_blocks, kv_blocks] "
                              f"or [heads, q_blocks, kv_blocks]")
        expected = (-(-self.seq_len // self.q_tile), -(-self.seq_len // self.kv_tile))
        if bm.shape[1:] != expected:
            raise ConfigError(f"block_map has {bm.shape[1]} x {bm.shape[2]} blocks but seq_len={self.seq_len} "
                              f"with q_tile={self.q_tile}, kv_tile={self.kv_tile} needs "
                              f"{expected[0]} x {expected[1]}")
        if not bm.any():
            raise ConfigError("block_map visits no block; allowed: a map with at least one true entry")
        bm = bm.copy()
        bm.setflags(write=False)
        object.__setattr__(self, "block_map", bm)

    @property
    def heads(self) -> int:
        return int(self.block_map.shape[0])

    def visible_pairs(self) -> int:
        """Visible (query, key) pairs summed over heads."""
        q_sizes = _tile_sizes(self.seq_len, self.q_tile)
        k_sizes = _tile_sizes(self.seq_len, self.kv_tile)
        return int(np.einsum("hqk,q,k->", self.block_map.astype(np.int64), q_sizes, k_sizes))

    def density(self) -> float:
        """Visible pairs over heads x N^2."""
        return self.visible_pairs() / (self.heads * float(self.seq_len) ** 2)

    def dense_mask(self, head: int = 0, max_tokens: int = DENSE_MASK_MAX_TOKENS) -> np.ndarray:
        """The explicit ``[N, N]`` mask of one head."""
        if self.seq_len > max_tokens:
            raise ConfigError(f"dense_mask: seq_len={self.seq_len}; allowed: at most {max_tokens}")
        m = np.repeat(np.repeat(self.block_map[head], self.q_tile, axis=0), self.kv_tile, axis=1)
        return m[: self.seq_len, : self.seq_len]

    @classmethod
    def load(cls, path: str | Path, *, seq_len: int, q_tile: int, kv_tile: int,
             key: str | None = None) -> BlockSparsePattern:
        """Load a block map from ``.npy`` or ``.npz`` without pickle (a file never runs code)."""
        return cls(block_map=load_block_map(path, key=key), seq_len=seq_len, q_tile=q_tile, kv_tile=kv_tile)


def _tile_sizes(n: int, tile: int) -> np.ndarray:
    """Real (unpadded) size of each of the ``ceil(n / tile)`` tiles."""
    starts = np.arange(0, n, tile, dtype=np.int64)
    return np.minimum(starts + tile, n) - starts


def load_block_map(path: str | Path, key: str | None = None) -> np.ndarray:
    """Read a block map from a ``.npy`` file or one array of a ``.npz`` file, never unpickling."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"block map file {str(path)!r} does not exist") from None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"block map file {str(path)!r} is not a readable .npy/.npz array without pickle: "
                          f"{exc}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            names = list(data.files)
            if key is None:
                if len(names) != 1 and "block_map" not in names:
                    raise ConfigError(f"{str(path)!r} holds arrays {names}; name one with key=..., "
                                      f"or store it as 'block_map'")
                key = "block_map" if "block_map" in names else names[0]
            if key not in names:
                raise ConfigError(f"{str(path)!r} has no array {key!r}; it holds {names}")
            try:
                return np.asarray(data[key])
            except ValueError as exc:
                raise ConfigError(f"array {key!r} in {str(path)!r} cannot be read without pickle: {exc}") from None
    return np.asarray(data)
