"""Block maps prepared once, FlexAttention's ``BlockMask`` as the model.

A :class:`BlockMap` is built once from a bool (or 0/1) map ``[heads, q_blocks, kv_blocks]`` or ``[q_blocks,
kv_blocks]`` (numpy or torch; built on the map's device, or on ``device``): validated once, it holds on the device

- the forward lists: per (map head, Q block) the count and ascending indices of its KV blocks
  (``kv_num [Hm, QB]``, ``kv_idx [Hm, QB, KB]``), a padded last KV block (``seq_len`` not a multiple of
  ``kv_tile``) kept out of them and flagged in ``tail [Hm, QB]`` (visited last, masked);
- the transposed lists for the backward's dK/dV: per (map head, KV block) the Q blocks that visit it
  (``q_num [Hm, KB]``, ``q_idx [Hm, KB, QB]``, the padded block included).

:func:`sparsesim.kernels.block_sparse_attention` takes a prepared map with no per-call validation and no
content read. A raw map is prepared on its first call and found again by identity (:func:`resolve_block_map`):
a torch tensor by ``id``, version counter (every in-place op bumps it), data pointer, shape, strides, dtype and
device; a numpy array by ``id``, data pointer, shape, strides and dtype (numpy has no version counter: an
array changed in place is not seen; prepare a new map or pass a new array). Never hashed by content.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from sparsesim.hwmodels.launch import MAX_TILE_VOLUME, MIN_TILE_VOLUME
from sparsesim.simulator.errors import ConfigError


def _check_tile(name: str, value: Any) -> int:
    ok = (not isinstance(value, bool) and isinstance(value, int) and MIN_TILE_VOLUME <= value <= MAX_TILE_VOLUME
          and value & (value - 1) == 0)
    if not ok:
        raise ConfigError(f"{name}={value!r}; allowed: a power of two from {MIN_TILE_VOLUME} to {MAX_TILE_VOLUME}")
    return int(value)


def sorted_lists(visited: Any) -> tuple[Any, Any]:
    """``(num [..., R], idx [..., R, C])`` int32 from a bool ``[..., R, C]`` torch tensor: per row the count of
    set entries and their column indices in ascending order, then the unset ones (a stable sort of
    "not set", computed with one prefix sum and one scatter, on the tensor's device)."""
    import torch

    seen = visited.cumsum(-1, dtype=torch.int32)  # set entries up to and including each column
    num = seen[..., -1]
    cols = torch.arange(visited.shape[-1], dtype=torch.int32, device=visited.device)
    pos = torch.where(visited, seen - 1, num[..., None] + cols - seen)
    idx = torch.empty(visited.shape, dtype=torch.int32, device=visited.device)
    return num.contiguous(), idx.scatter_(-1, pos.long(), cols.expand(visited.shape))


@dataclass(frozen=True, eq=False)
class BlockMap:
    """A validated block map with its forward and transposed block lists on one device.

    Build with :meth:`from_mask` (or :func:`prepare_block_map`); fields are int32 torch tensors as the kernels
    read them. ``heads`` is the map's head count (1: shared by all query heads).
    """

    seq_len: int
    q_tile: int
    kv_tile: int
    heads: int
    kv_num: Any
    kv_idx: Any
    tail: Any
    q_num: Any
    q_idx: Any

    @property
    def q_blocks(self) -> int:
        return -(-self.seq_len // self.q_tile)

    @property
    def kv_blocks(self) -> int:
        return -(-self.seq_len // self.kv_tile)

    @property
    def device(self) -> Any:
        return self.kv_num.device

    @property
    def has_tail(self) -> bool:
        return self.seq_len % self.kv_tile != 0

    def fwd_lists(self) -> tuple[Any, Any, Any]:
        """``(kv_num, kv_idx, tail)``: what the forward and dQ kernels read."""
        return self.kv_num, self.kv_idx, self.tail

    def bwd_lists(self) -> tuple[Any, Any]:
        """``(q_num, q_idx)``: what the dK/dV kernel reads."""
        return self.q_num, self.q_idx

    @classmethod
    def from_mask(cls, block_map: Any, *, seq_len: int, q_tile: int = 128, kv_tile: int = 128,
                  device: Any = None) -> BlockMap:
        """Validate ``block_map`` (bool or 0/1, ``[heads, QB, KB]`` or ``[QB, KB]`` with ``QB = ceil(seq_len /
        q_tile)``, ``KB = ceil(seq_len / kv_tile)``, at least one block set) and build its lists, on ``device``
        (default: the map's device; numpy maps: the CPU). One pass over the content; ConfigError otherwise.
        """
        import numpy as np
        import torch

        for name, value in (("seq_len", seq_len),):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name}={value!r}: must be a positive integer")
        q_tile, kv_tile = _check_tile("q_tile", q_tile), _check_tile("kv_tile", kv_tile)
        if isinstance(block_map, torch.Tensor):
            bm = block_map.detach()
        else:
            arr = np.asarray(block_map)
            if arr.dtype == object:
                raise ConfigError(f"block_map of dtype {arr.dtype}; allowed: a bool array or 0/1 integers")
            bm = torch.from_numpy(np.ascontiguousarray(arr))
        if device is not None:
            bm = bm.to(device)
        if bm.dtype != torch.bool:
            if bm.dtype.is_floating_point or bm.dtype.is_complex or not bool(((bm == 0) | (bm == 1)).all()):
                raise ConfigError(f"block_map has dtype {str(bm.dtype).removeprefix('torch.')} with values other "
                                  f"than 0/1; allowed: a bool array or 0/1 integers")
            bm = bm != 0
        if bm.dim() == 2:
            bm = bm[None]
        if bm.dim() != 3:
            raise ConfigError(f"block_map has shape {tuple(bm.shape)}; allowed: [q_blocks, kv_blocks] "
                              f"or [heads, q_blocks, kv_blocks]")
        seq_len = int(seq_len)
        expected = (-(-seq_len // q_tile), -(-seq_len // kv_tile))
        if tuple(bm.shape[1:]) != expected:
            raise ConfigError(f"block_map has {bm.shape[1]} x {bm.shape[2]} blocks but seq_len={seq_len} "
                              f"with q_tile={q_tile}, kv_tile={kv_tile} needs {expected[0]} x {expected[1]}")
        if int(bm.shape[0]) < 1 or not bool(bm.any()):
            raise ConfigError("block_map visits no block; allowed: a map with at least one true entry")
        listed = bm.clone()
        tail = torch.zeros(bm.shape[:2], dtype=torch.int32, device=bm.device)
        if seq_len % kv_tile:
            tail.copy_(bm[:, :, -1])
            listed[:, :, -1] = False
        kv_num, kv_idx = sorted_lists(listed)
        q_num, q_idx = sorted_lists(bm.transpose(1, 2).contiguous())
        return cls(seq_len=seq_len, q_tile=q_tile, kv_tile=kv_tile, heads=int(bm.shape[0]), kv_num=kv_num,
                   kv_idx=kv_idx, tail=tail, q_num=q_num, q_idx=q_idx)

    def to(self, device: Any) -> BlockMap:
        """The same map with its lists on ``device`` (self when already there)."""
        import torch

        if self.kv_num.device == torch.device(device):
            return self
        t = (self.kv_num, self.kv_idx, self.tail, self.q_num, self.q_idx)
        kv_num, kv_idx, tail, q_num, q_idx = (x.to(device) for x in t)
        return BlockMap(seq_len=self.seq_len, q_tile=self.q_tile, kv_tile=self.kv_tile, heads=self.heads,
                        kv_num=kv_num, kv_idx=kv_idx, tail=tail, q_num=q_num, q_idx=q_idx)

    def dense(self) -> Any:
        """The bool ``[heads, QB, KB]`` map back from the forward lists (checks and FlexAttention)."""
        import torch

        qb, kb = self.q_blocks, self.kv_blocks
        out = torch.zeros((self.heads, qb, kb), dtype=torch.bool, device=self.device)
        listed = torch.arange(kb, device=self.device)[None, None, :] < self.kv_num[..., None].long()
        out.scatter_(2, self.kv_idx.long(), listed)
        if self.has_tail:
            out[:, :, -1] |= self.tail != 0
        return out


def prepare_block_map(block_map: Any, *, seq_len: int, q_tile: int = 128, kv_tile: int = 128,
                      device: Any = None) -> BlockMap:
    """:meth:`BlockMap.from_mask`: prepare a block map once, to pass to every call.

    Example:
        >>> import numpy as np
        >>> bm = prepare_block_map(np.eye(4, dtype=bool), seq_len=64, q_tile=16, kv_tile=16)
        >>> bm.kv_num.tolist(), bm.q_idx[0, 2, :1].tolist()
        ([[1, 1, 1, 1]], [2])
    """
    return BlockMap.from_mask(block_map, seq_len=seq_len, q_tile=q_tile, kv_tile=kv_tile, device=device)


#: Raw maps prepared by :func:`resolve_block_map`: ``id(map) -> (weakref, identity, config, BlockMap)``; an
#: entry goes when its map is freed (or, past the limit, the oldest).
_RAW: dict[int, tuple[Any, tuple, tuple, BlockMap]] = {}
_RAW_LIMIT = 64


def _identity(block_map: Any) -> tuple | None:
    """What a raw map's cache entry depends on, without reading its content (None: not cacheable)."""
    import numpy as np
    import torch

    if isinstance(block_map, torch.Tensor):
        return (block_map._version, block_map.data_ptr(), block_map.shape, block_map.stride(), block_map.dtype,
                block_map.device)
    if type(block_map) is np.ndarray:
        return (block_map.__array_interface__["data"][0], block_map.shape, block_map.strides, block_map.dtype.str)
    return None


def _forget(key: int, ref: Any) -> None:
    entry = _RAW.get(key)
    if entry is not None and entry[0] is ref:
        del _RAW[key]


def resolve_block_map(block_map: Any, *, seq_len: int, q_tile: int = 128, kv_tile: int = 128,
                      device: Any = None) -> BlockMap:
    """The prepared form of ``block_map``: itself when it is a :class:`BlockMap` (tiles and ``seq_len`` checked,
    moved to ``device`` if needed), else the map prepared on an earlier call with the same identity (module
    docstring), else a new one (validated, lists built on ``device``) remembered for the next call."""
    if isinstance(block_map, BlockMap):
        if (block_map.seq_len, block_map.q_tile, block_map.kv_tile) != (seq_len, q_tile, kv_tile):
            raise ConfigError(f"BlockMap prepared for seq_len={block_map.seq_len}, q_tile={block_map.q_tile}, "
                              f"kv_tile={block_map.kv_tile}; the call has seq_len={seq_len}, q_tile={q_tile}, "
                              f"kv_tile={kv_tile}")
        return block_map if device is None else block_map.to(device)
    ident = _identity(block_map)
    config = (seq_len, q_tile, kv_tile, device)
    if ident is not None:
        hit = _RAW.get(id(block_map))
        if hit is not None and hit[0]() is block_map and hit[1] == ident and hit[2] == config:
            return hit[3]
    prepared = BlockMap.from_mask(block_map, seq_len=seq_len, q_tile=q_tile, kv_tile=kv_tile, device=device)
    if ident is not None:
        key = id(block_map)
        try:
            ref: Any = weakref.ref(block_map, lambda r, key=key: _forget(key, r))  # type: ignore[misc]
        except TypeError:  # pragma: no cover - every numpy array and tensor takes weak references
            return prepared
        _RAW.pop(key, None)
        _RAW[key] = (ref, ident, config, prepared)
        while len(_RAW) > _RAW_LIMIT:
            del _RAW[next(iter(_RAW))]
    return prepared
