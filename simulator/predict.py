"""Predicted milliseconds of a sparse kernel and of its dense baseline, as a typed record."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from sparsesim.hwmodels.gpus import GPU
from sparsesim.hwmodels.profiles import KernelProfile
from sparsesim.simulator.cost import PassTime, Problem, backward_time, combine, forward_time, permute_ms
from sparsesim.simulator.feasibility import kv_layout
from sparsesim.simulator.flops import attention_flops
from sparsesim.simulator.patterns import GNAPattern
from sparsesim.simulator.route import forward_profile
from sparsesim.simulator.schedule import box_schedule
from sparsesim.simulator.tiling import TileMap, backward_tilemaps, tilemap


@dataclass(frozen=True)
class Prediction:
    """The cost model's columns of a result (times in ms, rates in TFLOP/s).

    ``predicted_ms`` is the sparse kernel on the GPU (its launch included), ``permute_ms`` the token
    permutation passes it needs and ``call_ms`` the whole call's device time; ``dense_ms`` the dense
    baseline (``dense_profile``). ``predicted_speedup`` is ``dense_ms / call_ms``, ``kernel_speedup``
    ``dense_ms / predicted_ms``. ``host_us`` is the profile's host time per call: calls issued back to
    back whose ``call_ms`` is shorter are host-bound. The ``*_ms`` breakdown (useful work, masking,
    softmax, fixed costs, imbalance, memory) sums to ``predicted_ms``.
    """

    kernel_profile: str
    dense_profile: str
    kv_layout: str
    predicted_ms: float
    permute_ms: float
    call_ms: float
    dense_ms: float
    host_us: float
    predicted_speedup: float
    kernel_speedup: float
    bound: str
    wave_efficiency: float
    achieved_TFLOPs: float
    effective_TFLOPs: float
    dense_TFLOPs: float
    useful_ms: float
    masking_ms: float
    softmax_ms: float
    overhead_ms: float
    imbalance_ms: float
    memory_ms: float


#: Columns the cost model adds to a result, in order.
COST_COLUMNS = [f.name for f in dataclasses.fields(Prediction)]


def full_tilemap(tokens: int, q_tile: int, kv_tile: int) -> TileMap:
    """Tile map of dense non-causal attention over ``tokens`` flat tokens (built directly)."""
    nq, nk = -(-tokens // q_tile), -(-tokens // kv_tile)
    padded = int(nk * kv_tile > tokens)
    visited = np.full((1, nq), nk, dtype=np.int64)
    full = visited - padded
    kv_visited = np.full((1, nk), nq, dtype=np.int64)
    kv_full = kv_visited.copy()
    if padded:
        kv_full[0, -1] = 0
    for a in (visited, full, kv_visited, kv_full):
        a.setflags(write=False)
    return TileMap(tiling="flat", q_tile=(q_tile,), kv_tile=(kv_tile,), q_grid=(nq,), kv_grid=(nk,),
                   visited=visited, full=full, kv_visited=kv_visited, kv_full=kv_full, dense_kv_tiles=nk)


def run_passes(gpu: GPU, prof: KernelProfile, problem: Problem, tm: TileMap, tokens: int, pairs: float,
               backprop: bool, kv_layout: str = "direct", fwd_prof: KernelProfile | None = None,
               pattern: GNAPattern | None = None) -> PassTime:
    """Forward (priced by ``fwd_prof``, default ``prof``), plus backward (``prof``) when ``backprop``: for a GNA
    ``pattern`` on box tiles, at the tiles the backward's kernels may run (:func:`backward_tilemaps`)."""
    fwd = forward_time(gpu, fwd_prof or prof, problem, tm, tokens, pairs, kv_layout)
    if not backprop:
        return fwd
    kernel_tiles = backward_tilemaps(pattern, tm.q_tile, tm.kv_tile) \
        if pattern is not None and tm.tiling == "box" else None
    return combine(fwd, backward_time(gpu, prof, problem, tm, tokens, pairs, kernel_tiles))


def layout_of(prof: KernelProfile, tm: TileMap, problem: Problem, tokens: int) -> str:
    """How the modelled kernel gets its box tiles: ``qkvo`` (q, k, v, o permuted), ``permute``, ``gather``
    or ``direct`` (our kernels, :func:`~sparsesim.simulator.feasibility.kv_layout`), or ``direct`` (token
    permutation ``none``: each tile read in place as a TMA box of the layout)."""
    if tm.tiling != "box" or prof.token_permutation == "none" \
            or (len(tm.q_tile) == 1 and tm.groups == 1 and prof.token_permutation == "qkvo"):
        return "direct"
    if prof.token_permutation == "qkvo":
        return "qkvo"
    return kv_layout(len(tm.q_tile), tm.groups, problem.batch * tokens * int(problem.heads_kv or problem.heads))





def dense_pass(gpu: GPU, prof: KernelProfile, problem: Problem, pattern: GNAPattern | None, tokens: int,
               sparse_tm: TileMap, backprop: bool, route: str | None = None) -> PassTime:
    """The dense kernel's time: the profile's dense tiles over the call's ``tokens`` (the layout's and any extra
    ones), causal axes kept causal. A non-causal call's forward is priced by the profile of the kernel that runs
    it (:func:`~sparsesim.simulator.route.forward_profile`; ``route`` as a measurement recorded it)."""
    q, kv = prof.forward.dense_q_tile, prof.forward.dense_kv_tile
    fwd_prof = prof
    if pattern is None or not pattern.is_causal:
        tm = full_tilemap(tokens, q, kv)
        fwd_prof = forward_profile(gpu, prof, problem, None, tokens, route)
    elif pattern.rank == 1:  # the dense kernel's own tiles, however short the sequence (sinks: causal before it)
        tm = box_schedule(GNAPattern(input_size=tokens, window=tokens, causal=True), (q,), (kv,)).tilemap
    else:
        tm = tilemap(pattern.dense(), sparse_tm.q_tile, sparse_tm.kv_tile, sparse_tm.tiling)
    pairs = float(tokens) ** 2 if pattern is None else float(pattern.dense().visible_pairs())
    fq, fkv = fwd_prof.forward.dense_q_tile, fwd_prof.forward.dense_kv_tile  # the forward kernel's own tiles
    fwd_tm = tm if fwd_prof is prof or (fq, fkv) == (q, kv) else full_tilemap(tokens, fq, fkv)
    fwd = forward_time(gpu, fwd_prof, problem, fwd_tm, tokens, pairs)
    return combine(fwd, backward_time(gpu, prof, problem, tm, tokens, pairs)) if backprop else fwd


@dataclass(frozen=True)
class SparseCall:
    """A sparse call as the model sees it: the kernel pass(es), the permutation, the whole call, the layout."""

    kernel: PassTime
    permute_ms: float
    call_ms: float
    kv_layout: str
    #: The profile that priced the forward (``prof``, or its ``ws_profile`` where that kernel runs the call).
    fwd_prof: KernelProfile | None = dataclasses.field(default=None, compare=False)


def sparse_call(gpu: GPU, prof: KernelProfile, problem: Problem, tm: TileMap, tokens: int, pairs_per_head: float,
                backprop: bool = False, route: str | None = None, pattern: GNAPattern | None = None) -> SparseCall:
    """The kernel, its permutation passes and the whole call's device time of one configuration. The forward is
    priced by the profile of the kernel that runs it (:func:`~sparsesim.simulator.route.forward_profile`;
    ``route`` as a measurement recorded it); a GNA call on the warp-specialized forward gets its tiles as that
    profile's ``token_permutation`` says (``triton-ws``: read in place, nothing permuted). ``pattern``: the GNA
    pattern of ``tm`` (the backward is then priced at its kernels' tiles, :func:`run_passes`)."""
    fwd_prof = forward_profile(gpu, prof, problem, tm, tokens, route)
    if fwd_prof.forward_kernel == "ws" and tm.tiling == "box":  # (also when ``prof`` is that profile)
        layout = layout_of(fwd_prof, tm, problem, tokens)
        perm = permute_ms(gpu, fwd_prof, problem, tokens, tm.num_kv_tiles * math.prod(tm.kv_tile), layout) \
            if layout == "qkvo" else 0.0
    else:
        layout = layout_of(prof, tm, problem, tokens)
        padded_kv = tm.num_kv_tiles * math.prod(tm.kv_tile)
        perm = permute_ms(gpu, prof, problem, tokens, padded_kv, layout, backprop) \
            if layout in ("qkvo", "permute") else 0.0
    kernel = run_passes(gpu, prof, problem, tm, tokens, pairs_per_head, backprop, layout, fwd_prof, pattern)
    return SparseCall(kernel=kernel, permute_ms=perm, call_ms=kernel.ms + perm, kv_layout=layout,
                      fwd_prof=fwd_prof)


def predict(*, gpu: GPU, prof: KernelProfile, dense_prof: KernelProfile, problem: Problem, tm: TileMap, tokens: int,
            pairs_per_head: float, dense_pairs_per_head: float, dense: PassTime,
            backprop: bool = False, pattern: GNAPattern | None = None) -> Prediction:
    """Cost-model columns of one configuration, given its dense baseline's :class:`PassTime`."""
    sc = sparse_call(gpu, prof, problem, tm, tokens, pairs_per_head, backprop, pattern=pattern)
    sparse, perm, call, layout = sc.kernel, sc.permute_ms, sc.call_ms, sc.kv_layout
    fwd_prof = sc.fwd_prof or prof
    kw = {"heads": problem.heads, "head_dim": problem.head_dim, "batch": problem.batch, "backprop": backprop}
    useful_flops = attention_flops(pairs_per_head, **kw)
    dense_flops = attention_flops(dense_pairs_per_head, **kw)
    return Prediction(
        kernel_profile=fwd_prof.name, dense_profile=dense_prof.name, kv_layout=layout, predicted_ms=sparse.ms,
        permute_ms=perm, call_ms=call, dense_ms=dense.ms, host_us=fwd_prof.forward.host_overhead_us,
        predicted_speedup=dense.ms / call, kernel_speedup=dense.ms / sparse.ms,
        bound=sparse.bound, wave_efficiency=sparse.wave_efficiency,
        achieved_TFLOPs=useful_flops / sparse.ms / 1e9, effective_TFLOPs=dense_flops / sparse.ms / 1e9,
        dense_TFLOPs=dense_flops / dense.ms / 1e9, **sparse.breakdown)
