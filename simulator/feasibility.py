"""Which tiles, head dims and dtypes sparsesim's Triton kernels run on a GPU: the one feasibility check.

The simulator flags tiles our kernels cannot run (``feasible`` column), the kernels raise its
message, and the tile listings (``candidate_tiles``, the search space, ``simulate tiles``) are filtered
by it. The rules themselves (numbers and formulas) live in :mod:`sparsesim.hwmodels.launch`; this module
checks them:

- tiles: every entry a power of two, volume (tokens per tile) a power of two from
  :data:`MIN_TILE_VOLUME` to :data:`MAX_TILE_VOLUME` (``tl.arange`` and ``tl.dot`` shapes);
- head dim in :data:`HEAD_DIMS`; dtype in :data:`KERNEL_DTYPES` (fp32 only in the interpreter);
- shared memory: the Q tile and at least one stage of K and V fit the GPU's per-CTA limit
  (``smem_per_block_KB`` of the GPU file); the kernels take the deepest pipeline, up to
  :data:`MAX_STAGES`;
- registers: an estimate of what one thread holds (fp32 accumulator and scores, Q and P in
  the input dtype) within the per-thread limit of the GPU file (:func:`kernel_warps` warps). It
  reproduces the rule measured on the H200: at head dim 256 a 128-row Q tile keeps the KV tile at 64 keys.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from sparsesim.hwmodels.gpus import DEFAULT_GPU, DTYPE_BYTES, GPU, load_gpu
from sparsesim.hwmodels.launch import (
    HEAD_DIMS,
    INTERPRETER_DTYPES,
    KERNEL_DTYPES,
    MAX_STAGES,
    MAX_TILE_VOLUME,
    MIN_TILE_VOLUME,
    is_pow2,
    kernel_threads,
    kernel_warps,
    max_stages,
    pipeline_smem_bytes,
    registers_per_thread,
)
from sparsesim.simulator.errors import ConfigError

__all__ = [
    "HEAD_DIMS", "KERNEL_DTYPES", "KV_LAYOUTS", "MAX_STAGES", "MAX_TILE_VOLUME", "MIN_TILE_VOLUME",
    "PERMUTE_MIN_KV_ROWS", "can_run", "candidate_tiles", "check_tile_volume", "kernel_problem", "kernel_warps",
    "kv_layout", "max_stages", "pipeline_smem_bytes", "registers_per_thread", "resident_ctas", "tile_problem",
    "tile_volume_problem",
]


def tile_volume_problem(volume: int, name: str) -> str:
    """Why a tile volume (tokens per tile) is not one our kernels take ('' when it is): a power of two from
    :data:`MIN_TILE_VOLUME` to :data:`MAX_TILE_VOLUME`.

    Example:
        >>> tile_volume_problem(96, "--q-volume")
        '--q-volume 96; allowed: powers of two from 16 to 256'
    """
    if isinstance(volume, bool) or not isinstance(volume, int) or not is_pow2(volume) \
            or not MIN_TILE_VOLUME <= volume <= MAX_TILE_VOLUME:
        return f"{name} {volume}; allowed: powers of two from {MIN_TILE_VOLUME} to {MAX_TILE_VOLUME}"
    return ""


def check_tile_volume(volume: int, name: str) -> int:
    """``volume`` if :func:`tile_volume_problem` finds nothing wrong, else a :class:`ConfigError` saying what."""
    problem = tile_volume_problem(volume, name)
    if problem:
        raise ConfigError(problem)
    return volume


def tile_problem(tile: Sequence[int], name: str) -> str:
    """Why a tile shape is not one our kernels take ('' when it is): power-of-two entries, volume
    :data:`MIN_TILE_VOLUME` to :data:`MAX_TILE_VOLUME`."""
    bad = [t for t in tile if not is_pow2(int(t))]
    if bad:
        return f"{name}={list(tile)}: entry {bad[0]} is not a power of two"
    vol = math.prod(tile)
    if not MIN_TILE_VOLUME <= vol <= MAX_TILE_VOLUME:
        return f"{name}={list(tile)} has volume {vol}; allowed: {MIN_TILE_VOLUME} to {MAX_TILE_VOLUME} tokens per tile"
    return ""


#: sparsesim's GNA kernel permutes K/V (one extra pass, then TMA loads) once ``batch * tokens * heads_kv``
#: reaches this many rows, and gathers them below it. Measured on the H200 (kernels/NOTES.md, version 7):
#: gathering costs 8-17% of kernel time on every benchmark case (393K to 2.8M rows), and the extra launch
#: and two TMA descriptors cost 50-70 us of host time, which is most of a call below ~64K rows.
PERMUTE_MIN_KV_ROWS = 1 << 16
KV_LAYOUTS = ("direct", "gather", "permute")


def kv_layout(rank: int, groups: int, kv_rows: int) -> str:
    """How sparsesim's GNA kernel reads K/V: ``gather`` below :data:`PERMUTE_MIN_KV_ROWS` rows, else
    ``direct`` (TMA from the caller's tensors) for 1D without dilation and ``permute`` otherwise.

    Example:
        >>> kv_layout(3, 1, 115200 * 24), kv_layout(1, 1, 32768 * 8), kv_layout(2, 1, 1024 * 24)
        ('permute', 'direct', 'gather')
    """
    if kv_rows < PERMUTE_MIN_KV_ROWS:
        return "gather"
    return "direct" if rank == 1 and groups == 1 else "permute"


def resident_ctas(q_volume: int, kv_volume: int, head_dim: int, elt_bytes: int, gpu: GPU) -> int:
    """CTAs of a fused kernel that fit one SM at once: shared memory (deepest pipeline that fits),
    registers (the estimate above), threads and the CTA limit of the GPU file; at least 1."""
    stages = max(1, max_stages(q_volume, kv_volume, head_dim, elt_bytes, gpu.smem_per_block_bytes))
    smem = pipeline_smem_bytes(q_volume, kv_volume, head_dim, stages, elt_bytes)
    threads = kernel_threads(q_volume)
    regs = min(registers_per_thread(q_volume, kv_volume, head_dim, elt_bytes), gpu.registers_per_thread) * threads
    limits = (int(gpu.smem_per_SM_KB * 1024) // smem, int(gpu.registers_per_SM // regs),
              gpu.max_threads_per_SM // threads, gpu.max_ctas_per_SM)
    return max(1, min(limits))


def kernel_problem(*, q_tile: Sequence[int], kv_tile: Sequence[int], head_dim: int, dtype: str,
                   gpu: str | GPU, smem_bytes: int | None = None, interpreter: bool = False) -> str:
    """Why sparsesim's kernels cannot run this configuration on ``gpu`` ('' when they can).

    ``smem_bytes`` overrides the GPU file's per-CTA shared memory (a device that reports less);
    ``interpreter`` (the Triton interpreter on the CPU) also takes fp32 and has no resource limits.
    """
    spec = load_gpu(gpu)
    for name, tile in (("q_tile", q_tile), ("kv_tile", kv_tile)):
        problem = tile_problem(tile, name)
        if problem:
            return problem
    if head_dim not in HEAD_DIMS:
        return f"head_dim={head_dim}; allowed: {', '.join(map(str, HEAD_DIMS))}"
    dtypes = INTERPRETER_DTYPES if interpreter else KERNEL_DTYPES
    if dtype not in dtypes:
        return f"dtype={dtype!r}; allowed: {', '.join(dtypes)}"
    if interpreter:
        return ""
    qv, kv, elt = math.prod(q_tile), math.prod(kv_tile), DTYPE_BYTES[dtype]
    smem = spec.smem_per_block_bytes if smem_bytes is None else smem_bytes
    if max_stages(qv, kv, head_dim, elt, smem) == 0:
        need = pipeline_smem_bytes(qv, kv, head_dim, 1, elt)
        return (f"q_tile={list(q_tile)}, kv_tile={list(kv_tile)} at head_dim={head_dim} need {need // 1024} KB of "
                f"shared memory; {spec.name} allows {smem // 1024} KB per CTA")
    regs = registers_per_thread(qv, kv, head_dim, elt)
    if regs > spec.registers_per_thread:
        return (f"q_tile={list(q_tile)}, kv_tile={list(kv_tile)} at head_dim={head_dim} need about {regs:.0f} "
                f"registers per thread; allowed: {spec.registers_per_thread}")
    return ""


def can_run(*, q_tile: Sequence[int], kv_tile: Sequence[int], head_dim: int = 128, dtype: str = "bf16",
            gpu: str | GPU = DEFAULT_GPU, raise_error: bool = False, smem_bytes: int | None = None,
            interpreter: bool = False) -> bool:
    """Whether sparsesim's kernels run these tiles at this head dim and dtype on ``gpu``.

    With ``raise_error`` a failure raises :class:`ConfigError` naming the offending value;
    ``smem_bytes`` and ``interpreter`` as in :func:`kernel_problem`.

    Example:
        >>> can_run(q_tile=(16, 8), kv_tile=(16, 8), head_dim=128, gpu="H100")
        True
        >>> can_run(q_tile=(128,), kv_tile=(128,), head_dim=256, gpu="H100")
        False
    """
    problem = kernel_problem(q_tile=q_tile, kv_tile=kv_tile, head_dim=head_dim, dtype=dtype, gpu=gpu,
                             smem_bytes=smem_bytes, interpreter=interpreter)
    if problem and raise_error:
        raise ConfigError(problem)
    return not problem


def _boxes(rank: int, volume: int, limits: Sequence[int] | None) -> list[tuple[int, ...]]:
    exps = int(math.log2(volume))
    out = []
    for split in itertools.product(range(exps + 1), repeat=rank):
        if sum(split) != exps:
            continue
        tile = tuple(1 << e for e in split)
        if limits is None or all(t <= lim for t, lim in zip(tile, limits, strict=True)):
            out.append(tile)
    return out


def candidate_tiles(rank: int, *, gpu: str | GPU = DEFAULT_GPU, head_dim: int = 128, dtype: str = "bf16",
                    input_size: Sequence[int] | None = None, q_volumes: Sequence[int] = (64, 128),
                    kv_volumes: Sequence[int] = (64, 128)) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Every (Q tile, KV tile) box pair our kernels run for a rank, GPU, head dim and dtype.

    Boxes have power-of-two entries and the given volumes; with ``input_size`` no entry exceeds its
    axis rounded up to a power of two (larger only pads).

    Example:
        >>> candidate_tiles(1, gpu="H100")
        [((64,), (64,)), ((64,), (128,)), ((128,), (64,)), ((128,), (128,))]
    """
    if rank not in (1, 2, 3):
        raise ConfigError(f"rank={rank}; allowed: 1, 2, 3")
    limits = None
    if input_size is not None:
        if len(input_size) != rank:
            raise ConfigError(f"input_size={list(input_size)} has rank {len(input_size)}, not {rank}")
        limits = [1 << max(0, (int(n) - 1).bit_length()) for n in input_size]
    pairs = []
    for qv in q_volumes:
        for kv in kv_volumes:
            for q in _boxes(rank, qv, limits):
                for k in _boxes(rank, kv, limits):
                    if can_run(q_tile=q, kv_tile=k, head_dim=head_dim, dtype=dtype, gpu=gpu):
                        pairs.append((q, k))
    return pairs
