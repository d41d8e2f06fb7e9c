"""Which forward kernel runs a call: our Triton kernels, or the warp-specialized Hopper forward (kernels/gluon_fwd.py).

The rules are :mod:`sparsesim.hwmodels.launch`'s ``WS_*`` (the kernels read the same ones): a Hopper GPU, bf16/fp16,
head dim 64/128, 128-row Q tiles, 64/128-key KV tiles, at least ``WS_MIN_WORK`` score elements, and per call kind:

- dense: non-causal (the kernel's work is ``batch x heads x tokens^2``);
- block-sparse map: any map at those tiles (its work is counted as dense: ``block_sparse_attention``'s rule);
- GNA: a perfectly block-sparse schedule (no partial tile) without dilation groups or extra tokens, tiles that
  divide the layout (no padding); its work is the visited pairs' elements. Each tile is read in place as one TMA
  box of the layout and the output written to its tokens: nothing permuted (``triton-ws``'s token permutation
  ``none``).

A profile names the profile that prices those calls' forward (``ws_profile``; ``triton`` -> ``triton-ws``). The
backward is always the Triton kernels'. Pure functions.
"""

from __future__ import annotations

import dataclasses
import math

from sparsesim.hwmodels.gpus import GPU
from sparsesim.hwmodels.launch import (
    KERNEL_DTYPES,
    WS_ARCHITECTURE,
    WS_HEAD_DIMS,
    WS_KV_TILES,
    WS_MIN_WORK,
    WS_Q_TILE,
)
from sparsesim.hwmodels.profiles import KernelProfile, load_profile
from sparsesim.simulator.cost import Problem
from sparsesim.simulator.tiling import TileMap


def ws_capable(gpu: GPU, problem: Problem, q_volume: int, kv_volume: int) -> bool:
    """Whether the warp-specialized forward can run a call of these tiles on ``gpu`` (its size aside)."""
    return (gpu.architecture == WS_ARCHITECTURE and problem.dtype in KERNEL_DTYPES
            and problem.head_dim in WS_HEAD_DIMS and q_volume == WS_Q_TILE and kv_volume in WS_KV_TILES)


def takes_ws(gpu: GPU, problem: Problem, tm: TileMap | None, tokens: int) -> bool:
    """Whether the kernels run this call on the warp-specialized forward: ``tm`` None for dense non-causal
    attention over ``tokens``, else the call's tile map (``block``: a block map; ``box``: GNA)."""
    heads_batch = problem.heads * problem.batch
    if tm is None:
        return (ws_capable(gpu, problem, WS_Q_TILE, WS_KV_TILES[-1])
                and heads_batch * tokens * tokens >= WS_MIN_WORK)
    q_vol, kv_vol = math.prod(tm.q_tile), math.prod(tm.kv_tile)
    if not ws_capable(gpu, problem, q_vol, kv_vol):
        return False
    if tm.tiling == "block":
        return heads_batch * tokens * tokens >= WS_MIN_WORK
    if tm.tiling != "box" or tm.groups != 1 or tm.extra_q_tiles or tm.extra_kv_tiles:
        return False
    if math.prod(tm.q_grid) * q_vol != tokens or math.prod(tm.kv_grid) * kv_vol != tokens or tm.partial.any():
        return False
    per_head = problem.heads if tm.visited.shape[0] == 1 else 1
    return int(tm.visited.sum()) * per_head * problem.batch * q_vol * kv_vol >= WS_MIN_WORK


def forward_profile(gpu: GPU, prof: KernelProfile, problem: Problem, tm: TileMap | None, tokens: int,
                    route: str | None = None) -> KernelProfile:
    """The profile that prices the call's forward: ``prof``'s ``ws_profile`` where the call takes the
    warp-specialized forward (:func:`takes_ws`, or ``route`` where a measurement recorded it), else ``prof``."""
    if not prof.ws_profile or route == "triton":
        return prof
    if route == "ws" or (route is None and takes_ws(gpu, problem, tm, tokens)):
        return load_profile(prof.ws_profile, gpu)
    return prof


def without_ws(prof: KernelProfile) -> KernelProfile:
    """``prof`` pricing every forward itself: for measurements taken before the warp-specialized forward existed
    (files without a ``fwd_kernel`` column, commits before 6ba650d), where the Triton kernels ran every call."""
    return dataclasses.replace(prof, ws_profile="")
