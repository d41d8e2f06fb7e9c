"""The hardware-realistic tile-level cost model (pure functions).

Per CTA (one Q tile of one head): a fixed cost, the Q load and O store, and per visited KV tile
the max of tensor-core time, softmax time (exponentials on the special-function units plus FP32
arithmetic, partly hidden under the matrix units) and K/V load time (L2 and HBM; query heads
sharing a KV head reuse it in L2), plus a fixed cost per KV tile (loop bookkeeping, which small
tiles pay more often); partial tiles add the cost of masking each element. Kernels that gather
K/V rows, whose tiles leave room for fewer pipeline stages, or whose KV tiles are narrower than the
dense kernel's, run their pairs slower by the profile's penalties. CTAs are scheduled onto SMs
(:mod:`makespan`), as many at once per SM as the profile says or, for our kernels, as shared memory
and registers allow; a launch costs a fixed latency; the kernel takes at least the time to move its unique
bytes through HBM.

The backward is modelled as the profile's kernels run it. Our kernels (``token_permutation =
"kv-auto"``, kernels/gna_bwd.py, dense_bwd.py, block_sparse_bwd.py) run three launches with no
atomics: a Delta pass (``rowsum(dO * O)``, memory-bound), a dQ pass on the forward's schedule (a
CTA per Q tile over its KV tiles: S recomputed from the LSE, dP and dQ, three GEMMs per pair) and a
dK/dV pass on the transposed schedule (a CTA per KV tile with visitors and KV head, over the Q tiles
of every query head of its group: S, dP, dV and dK, four GEMMs per pair), each scheduled like the
forward. The reference profiles (FlashAttention-2/3, cuDNN) keep the fused FA2 backward: one CTA
per KV tile and query head walks the transposed map and accumulates dQ with fp32 atomics;
memory-bound passes before (rowsum of dO * O) and after (dQ from fp32) complete it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from sparsesim.hwmodels.gpus import DTYPE_BYTES, GPU
from sparsesim.hwmodels.launch import MAX_GRID_YZ
from sparsesim.hwmodels.profiles import KernelProfile
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.feasibility import MAX_STAGES, max_stages, resident_ctas
from sparsesim.simulator.flops import BWD_FLOPS_PER_PAIR, FWD_FLOPS_PER_PAIR
from sparsesim.simulator.makespan import makespan
from sparsesim.simulator.tiling import TileMap

BREAKDOWN = ("useful_ms", "masking_ms", "softmax_ms", "overhead_ms", "imbalance_ms", "memory_ms")
#: Largest heads, batch and head dim a problem takes (the kernels' grid limits; beyond any model).
MAX_HEADS, MAX_BATCH, MAX_HEAD_DIM = 4096, MAX_GRID_YZ, 1024


@dataclass(frozen=True)
class Problem:
    """Attention problem sizes around a pattern."""

    batch: int = 1
    heads: int = 24
    heads_kv: int | None = None
    head_dim: int = 128
    dtype: str = "bf16"

    def __post_init__(self) -> None:
        for name, top in (("batch", MAX_BATCH), ("heads", MAX_HEADS), ("head_dim", MAX_HEAD_DIM)):
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not 1 <= v <= top:
                raise ConfigError(f"{name}={v!r}; allowed: an integer from 1 to {top}")
            object.__setattr__(self, name, int(v))
        kv = self.heads if self.heads_kv is None else self.heads_kv
        if isinstance(kv, (bool, np.bool_)) or not isinstance(kv, (int, np.integer)) or kv < 1 or self.heads % kv:
            raise ConfigError(f"heads_kv={kv!r}; allowed: a positive divisor of heads={self.heads}")
        object.__setattr__(self, "heads_kv", int(kv))
        if self.dtype not in ("fp16", "bf16", "fp8"):
            raise ConfigError(f"dtype={self.dtype!r}; allowed: fp16, bf16, fp8")

    @property
    def bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def group(self) -> int:
        return self.heads // int(self.heads_kv or self.heads)

    def io_bytes(self, tokens: int, tensors_q: int, tensors_kv: int) -> float:
        """Bytes of ``tensors_q`` query-shaped and ``tensors_kv`` key-shaped tensors."""
        per_token = (tensors_q * self.heads + tensors_kv * int(self.heads_kv or self.heads)) * self.head_dim
        return float(self.batch * tokens * per_token * self.bytes)


@dataclass(frozen=True)
class PairCost:
    """Seconds one SM spends on one (Q tile, KV tile) pair, by term; ``full`` overlaps them."""

    elements: int
    mma: float
    softmax: float
    load: float
    mask: float
    full: float

    @property
    def partial(self) -> float:
        return self.full + self.mask

    @property
    def bound(self) -> str:
        return max((self.mma, "compute"), (self.softmax, "exp"), (self.load, "memory"))[1]


@dataclass(frozen=True)
class LaunchShape:
    """How one kernel's CTAs sit on the GPU: resident CTAs per SM and the slowdown of its pairs."""

    ctas_per_sm: int
    slowdown: float


def launch_shape(gpu: GPU, prof: KernelProfile, problem: Problem, q_vol: int, kv_vol: int,
                 kv_layout: str = "direct", tokens: int | None = None) -> LaunchShape:
    """Resident CTAs (the profile's, or what resources allow for our kernels) and the pair slowdown
    from gathering K/V, from pipeline stages the shared memory takes away, from KV tiles narrower than the
    dense kernel's and (``tokens`` given) from a token count the dense KV tile does not divide."""
    fwd = prof.forward
    elt = problem.bytes
    ctas = fwd.ctas_per_SM
    if fwd.occupancy_from_resources:
        ctas = min(ctas, resident_ctas(q_vol, kv_vol, problem.head_dim, elt, gpu))
    missing = max(0, MAX_STAGES - max(1, max_stages(q_vol, kv_vol, problem.head_dim, elt, gpu.smem_per_block_bytes)))
    halvings = max(0.0, math.log2(fwd.dense_kv_tile / kv_vol))  # KV tile narrower than the dense kernel's
    slowdown = ((1.0 + fwd.stage_penalty * missing) * (1.0 + (fwd.gather_penalty if kv_layout == "gather" else 0.0))
                * (1.0 + fwd.narrow_kv_penalty * halvings))
    if tokens is not None and tokens % fwd.dense_kv_tile:
        slowdown *= 1.0 + fwd.unaligned_penalty
    return LaunchShape(ctas_per_sm=ctas, slowdown=slowdown)


def pair_cost(gpu: GPU, prof: KernelProfile, problem: Problem, q_vol: int, kv_vol: int, *,
              flops_per_element: float, mma_efficiency: float, load_bytes: float, slowdown: float = 1.0) -> PairCost:
    """Cost of one (Q tile, KV tile) pair on one SM."""
    fwd = prof.forward
    sms = gpu.sm_count
    elements = q_vol * kv_vol
    mma = elements * flops_per_element * problem.head_dim / (
        gpu.tensor_flops_per_s(problem.dtype) / sms * mma_efficiency)
    fp32_per_sm = gpu.fp32_TFLOPs * 1e12 / sms
    exp_per_sm = gpu.exp_per_s / sms * fwd.exp_throughput_scale
    softmax = elements / exp_per_sm + elements * fwd.softmax_fp32_ops_per_element / fp32_per_sm
    core = max(mma, softmax) + (1.0 - fwd.softmax_overlap) * min(mma, softmax)
    hit = 1.0 - (1.0 - fwd.l2_hit_fraction) / problem.group  # query heads of a group reuse their KV head in L2
    bandwidth = 1.0 / (hit / (gpu.l2_TBps * 1e12) + (1 - hit) / (gpu.hbm_TBps * 1e12 * fwd.hbm_efficiency))
    load = load_bytes / (bandwidth / sms)
    mask = elements * fwd.mask_ops_per_element / fp32_per_sm * slowdown
    rescale = q_vol * problem.head_dim * fwd.rescale_ops_per_element / fp32_per_sm
    full = (max(core, load) + rescale + fwd.kv_tile_overhead_ns * 1e-9) * slowdown
    return PairCost(elements=elements, mma=mma, softmax=softmax, load=load, mask=mask, full=full)


@dataclass(frozen=True)
class PassTime:
    """Predicted time of one kernel launch and where it goes (ms)."""

    ms: float
    breakdown: dict[str, float]
    bound: str
    wave_efficiency: float
    num_ctas: int


def schedule_pass(gpu: GPU, prof: KernelProfile, cost: PairCost, full: np.ndarray, partial: np.ndarray, *,
                  repeat: int, fixed_s: float, useful_elements: float, hbm_bytes: float,
                  ctas_per_sm: int) -> PassTime:
    """Schedule CTAs with per-CTA ``full``/``partial`` pair counts, the whole set ``repeat`` times,
    plus the launch latency."""
    fwd = prof.forward
    sms = gpu.sm_count
    per_cta = (fixed_s + full * cost.full + partial * cost.partial).ravel()
    span = makespan(per_cta, sms, ctas_per_sm, fwd.persistent, repeat=repeat)
    hbm_s = hbm_bytes / (gpu.hbm_TBps * 1e12 * fwd.hbm_efficiency)
    total = float(per_cta.sum()) * repeat
    num_ctas = per_cta.size * repeat
    n_partial = float(partial.sum()) * repeat
    n_pairs = float(full.sum()) * repeat + n_partial
    useful_s = cost.mma * useful_elements / cost.elements
    seconds = {
        "useful_ms": useful_s,
        "masking_ms": max(0.0, cost.mma * n_pairs - useful_s) + n_partial * cost.mask,
        "softmax_ms": n_pairs * (cost.full - cost.mma),
        "overhead_ms": fixed_s * num_ctas,
    }
    breakdown = {k: v / sms * 1e3 for k, v in seconds.items()}
    breakdown["overhead_ms"] += fwd.launch_latency_us * 1e-3
    breakdown["imbalance_ms"] = max(0.0, span - total / sms) * 1e3
    breakdown["memory_ms"] = max(0.0, hbm_s - span) * 1e3
    return PassTime(ms=max(span, hbm_s) * 1e3 + fwd.launch_latency_us * 1e-3, breakdown=breakdown,
                    bound="memory" if hbm_s >= span else cost.bound,
                    wave_efficiency=(total / sms) / span if span > 0 else 1.0, num_ctas=int(num_ctas))


def _tile_volume(tile: tuple[int, ...]) -> int:
    return math.prod(tile)


def _heads_rows(counts: np.ndarray, heads: int) -> tuple[np.ndarray, int]:
    """Per-head count rows and how often to repeat them to cover ``heads`` (maps hold 1 or all heads)."""
    if counts.shape[0] == 1:
        return counts, heads
    if counts.shape[0] != heads:
        raise ConfigError(f"the block map has {counts.shape[0]} heads but the problem has heads={heads}")
    return counts, 1


@dataclass(frozen=True)
class ForwardCTAs:
    """The forward kernel's CTAs of one head pass: pair cost, fixed cost per CTA, residency, counts."""

    cost: PairCost
    fixed_s: float
    ctas_per_sm: int
    full: np.ndarray  # (rows, Q tiles) full KV tiles per CTA; rows = 1 or heads
    partial: np.ndarray
    repeat: int  # passes of these rows to cover heads x batch

    def seconds(self) -> np.ndarray:
        """Each CTA's time in launch order (one pass of the rows)."""
        return (self.fixed_s + self.full * self.cost.full + self.partial * self.cost.partial).ravel()


def forward_pair(gpu: GPU, prof: KernelProfile, problem: Problem, q_vol: int, kv_vol: int,
                 kv_layout: str = "direct", tokens: int | None = None) -> tuple[LaunchShape, PairCost, float]:
    """The forward kernel's residency, pair cost and fixed cost per CTA (slot time) for one tile pair (of a call
    over ``tokens``, when given: :func:`launch_shape`)."""
    b, d = problem.bytes, problem.head_dim
    shape = launch_shape(gpu, prof, problem, q_vol, kv_vol, kv_layout, tokens)
    cost = pair_cost(gpu, prof, problem, q_vol, kv_vol, flops_per_element=FWD_FLOPS_PER_PAIR,
                     mma_efficiency=prof.forward.mma_efficiency, load_bytes=2 * kv_vol * d * b,
                     slowdown=shape.slowdown)
    hbm_s_per_sm = gpu.hbm_TBps * 1e12 * prof.forward.hbm_efficiency / gpu.sm_count
    # Prologue/epilogue latency overlaps the main loops of the other resident CTAs: a slot runs at
    # 1/ctas_per_sm speed (makespan), so the latency costs 1/ctas_per_sm of itself in slot time.
    fixed = prof.forward.cta_overhead_us * 1e-6 / shape.ctas_per_sm + 2 * q_vol * d * b / hbm_s_per_sm  # + Q, O
    return shape, cost, fixed


def forward_ctas(gpu: GPU, prof: KernelProfile, problem: Problem, tm: TileMap,
                 kv_layout: str = "direct", tokens: int | None = None) -> ForwardCTAs:
    """The CTAs :func:`forward_time` schedules (also what an SM timeline draws)."""
    shape, cost, fixed = forward_pair(gpu, prof, problem, _tile_volume(tm.q_tile), _tile_volume(tm.kv_tile),
                                      kv_layout, tokens)
    full, reps = _heads_rows(tm.full, problem.heads)
    partial, _ = _heads_rows(tm.partial, problem.heads)
    return ForwardCTAs(cost=cost, fixed_s=fixed, ctas_per_sm=shape.ctas_per_sm, full=full, partial=partial,
                       repeat=reps * problem.batch)


def forward_time(gpu: GPU, prof: KernelProfile, problem: Problem, tm: TileMap, tokens: int,
                 useful_pairs_per_head: float, kv_layout: str = "direct") -> PassTime:
    """Forward kernel: one CTA per (batch, head, Q tile) over its visited KV tiles."""
    c = forward_ctas(gpu, prof, problem, tm, kv_layout, tokens)
    cost, fixed, full, partial = c.cost, c.fixed_s, c.full, c.partial
    return schedule_pass(gpu, prof, cost, full, partial, repeat=c.repeat, fixed_s=fixed,
                         useful_elements=useful_pairs_per_head * problem.heads * problem.batch,
                         hbm_bytes=problem.io_bytes(tokens, 2, 2), ctas_per_sm=c.ctas_per_sm)


#: GEMMs per (Q tile, KV tile) pair of our split backward: dQ (S, dP, dQ) and dK/dV (S, dP, dV, dK).
DQ_GEMMS, DKDV_GEMMS = 3, 4
#: Float32 bytes per query row and head the backward passes read or write besides the tensors: LSE and Delta.
ROW_STATS_BYTES = 8


def _memory_pass(gpu: GPU, prof: KernelProfile, moved_bytes: float) -> PassTime:
    """A memory-bound launch over ``moved_bytes`` (its CTAs are not counted)."""
    hbm_ms = moved_bytes / (gpu.hbm_TBps * 1e12 * prof.forward.hbm_efficiency) * 1e3
    launch_ms = prof.forward.launch_latency_us * 1e-3
    breakdown = dict.fromkeys(BREAKDOWN, 0.0)
    breakdown["memory_ms"], breakdown["overhead_ms"] = hbm_ms, launch_ms
    return PassTime(ms=hbm_ms + launch_ms, breakdown=breakdown, bound="memory", wave_efficiency=1.0, num_ctas=0)


def _group_rows(counts: np.ndarray, problem: Problem) -> tuple[np.ndarray, int]:
    """Per-KV-head rows of transposed counts: a dK/dV CTA walks the Q tiles of every query head of its group."""
    rows, reps = _heads_rows(counts, problem.heads)
    group, heads_kv = problem.group, int(problem.heads_kv or problem.heads)
    if rows.shape[0] == 1:
        return rows * group, heads_kv
    return rows.reshape(heads_kv, group, rows.shape[1]).sum(axis=1), 1


@dataclass(frozen=True)
class BackwardPasses:
    """Our split backward's three launches (see the module docstring)."""

    delta: PassTime
    dq: PassTime
    dkdv: PassTime
    #: Box tiles: the streamed operands permuted into contiguous tiles (K/V for dQ, Q/dO and their rows for dK/dV).
    permute: PassTime | None = None

    @property
    def total(self) -> PassTime:
        return combine(self.delta, *((self.permute,) if self.permute else ()), self.dq, self.dkdv)


def backward_passes(gpu: GPU, prof: KernelProfile, problem: Problem, tm: TileMap, tokens: int,
                    useful_pairs_per_head: float,
                    kernel_tiles: tuple[Sequence[TileMap], Sequence[TileMap]] | None = None) -> BackwardPasses:
    """Delta, dQ (forward schedule) and dK/dV (transposed schedule, KV tiles with visitors) passes of our kernels.

    The pairs run at ``backward.mma_efficiency`` (dQ at ``backward.dq_mma_efficiency`` where set) with the
    forward's softmax, masking and per-KV-tile terms (each pass recomputes P; dK/dV's masking scaled by
    ``backward.mask_scale``); a CTA pays ``backward.cta_overhead_us`` (overlapped by its resident neighbours
    as in the forward) and its resident tiles' bytes; residency is the forward's at the same tiles. Block maps
    (tiling ``block``) pay ``backward.list_penalty`` per pair. 2D/3D box tiles (GNA) stream operands permuted
    once per call into contiguous tiles, as the kernels' pick runs them (``DQ_PICK``/``DKV_PICK`` in
    kernels/gna_bwd.py: boxed or permuted): no gather penalty, and a memory pass that reads K, V, Q, dO and writes
    them padded to whole tiles, with the LSE/Delta rows (fp32), except where the pick's ``box`` layout reads
    them in place (no dilation, no padding, no extra tokens: no memory pass). 1D tiles are contiguous runs of
    rows, read in place (``DQ_PICK_1D``/``DKV_PICK_1D``: gathered). ``kernel_tiles``: the tile maps of the dQ and
    of the dK/dV kernel at each tile pair their first call's pick may run
    (:func:`sparsesim.simulator.tiling.backward_tilemaps`); each pass is the fastest of its kernel's, as the pick
    keeps the fastest. Without them both passes run at ``tm``'s tiles.
    """
    bwd = prof.backward
    q_vol, kv_vol = _tile_volume(tm.q_tile), _tile_volume(tm.kv_tile)
    b, d = problem.bytes, problem.head_dim
    permute = None
    padded_q, padded_kv = tm.num_q_tiles * q_vol, tm.num_kv_tiles * kv_vol
    # 1D tiles are contiguous rows (gathered); without dilation, padding or extra tokens the tiles are read in
    # place by TMA boxes (the ``box`` stream layout); otherwise the streamed operands are permuted first
    boxed = tm.groups == 1 and tm.extra_q_tiles == 0 and padded_q == tokens and padded_kv == tokens
    if tm.tiling == "box" and len(tm.q_tile) > 1 and not boxed:
        moved = (problem.io_bytes(tokens, 2, 0) + problem.io_bytes(padded_q, 2, 0)  # Q, dO
                 + problem.io_bytes(tokens, 0, 2) + problem.io_bytes(padded_kv, 0, 2)  # K, V (KV heads)
                 + problem.batch * problem.heads * (tokens + padded_q) * ROW_STATS_BYTES)
        permute = _memory_pass(gpu, prof, moved)
    hbm_per_sm = gpu.hbm_TBps * 1e12 * prof.forward.hbm_efficiency / gpu.sm_count
    useful = useful_pairs_per_head * problem.heads * problem.batch
    stats = float(problem.batch * problem.heads * tokens * ROW_STATS_BYTES)
    delta = _memory_pass(gpu, prof, problem.io_bytes(tokens, 2, 0) + stats / 2)  # O, dO in; Delta out

    def shape_of(t: TileMap) -> tuple[int, int, LaunchShape]:
        qv, kv = _tile_volume(t.q_tile), _tile_volume(t.kv_tile)
        shape = launch_shape(gpu, prof, problem, qv, kv, "direct")
        if t.tiling == "block":  # a block map's lists (``backward.list_penalty``)
            shape = replace(shape, slowdown=shape.slowdown * (1.0 + bwd.list_penalty))
        return qv, kv, shape

    def dq_pass(t: TileMap) -> PassTime:
        # per Q tile CTA, Q, dO, LSE, Delta in and dQ out; per KV tile K and V in
        qv, kv, shape = shape_of(t)
        cost = pair_cost(gpu, prof, problem, qv, kv, flops_per_element=2 * DQ_GEMMS,
                         mma_efficiency=bwd.dq_mma_efficiency or bwd.mma_efficiency, load_bytes=2 * kv * d * b,
                         slowdown=shape.slowdown)
        full, reps = _heads_rows(t.full, problem.heads)
        partial, _ = _heads_rows(t.partial, problem.heads)
        return schedule_pass(gpu, prof, cost, full, partial, repeat=reps * problem.batch,
                             fixed_s=bwd.cta_overhead_us * 1e-6 / shape.ctas_per_sm
                             + (3 * qv * d * b + ROW_STATS_BYTES * qv) / hbm_per_sm,
                             useful_elements=useful, hbm_bytes=problem.io_bytes(tokens, 3, 2) + stats,
                             ctas_per_sm=shape.ctas_per_sm)

    def dkdv_pass(t: TileMap) -> PassTime:
        # per KV tile with visitors and KV head, K, V in and dK, dV out; per visiting Q tile Q, dO, LSE, Delta
        qv, kv, shape = shape_of(t)
        cost = pair_cost(gpu, prof, problem, qv, kv, flops_per_element=2 * DKDV_GEMMS,
                         mma_efficiency=bwd.mma_efficiency, load_bytes=2 * qv * d * b + ROW_STATS_BYTES * qv,
                         slowdown=shape.slowdown)
        cost = replace(cost, mask=cost.mask * bwd.mask_scale)  # the transposed masks, rebuilt per partial tile
        kv_full, reps = _group_rows(t.kv_full, problem)
        kv_partial, _ = _group_rows(t.kv_partial, problem)
        seen = (kv_full + kv_partial) > 0
        return schedule_pass(gpu, prof, cost, kv_full[seen], kv_partial[seen], repeat=reps * problem.batch,
                             fixed_s=bwd.cta_overhead_us * 1e-6 / shape.ctas_per_sm + 4 * kv * d * b / hbm_per_sm,
                             useful_elements=useful, hbm_bytes=problem.io_bytes(tokens, 2, 4) + stats,
                             ctas_per_sm=shape.ctas_per_sm)

    dq_tms, dkv_tms = kernel_tiles if kernel_tiles is not None else ((tm,), (tm,))
    dq = min((dq_pass(t) for t in dq_tms), key=lambda p: p.ms)
    dkdv = min((dkdv_pass(t) for t in dkv_tms), key=lambda p: p.ms)
    return BackwardPasses(delta=delta, dq=dq, dkdv=dkdv, permute=permute)


def backward_time(gpu: GPU, prof: KernelProfile, problem: Problem, tm: TileMap, tokens: int,
                  useful_pairs_per_head: float,
                  kernel_tiles: tuple[Sequence[TileMap], Sequence[TileMap]] | None = None) -> PassTime:
    """The backward as the profile's kernels run it: our split passes (:func:`backward_passes`, at
    ``kernel_tiles`` where given) for ``kv-auto`` profiles, else the fused FA2 backward
    (:func:`fused_backward_time`)."""
    if prof.token_permutation == "kv-auto":
        return backward_passes(gpu, prof, problem, tm, tokens, useful_pairs_per_head, kernel_tiles).total
    return fused_backward_time(gpu, prof, problem, tm, tokens, useful_pairs_per_head)


def fused_backward_time(gpu: GPU, prof: KernelProfile, problem: Problem, tm: TileMap, tokens: int,
                        useful_pairs_per_head: float) -> PassTime:
    """FA2-style backward: a CTA per (batch, query head, KV tile) over the transposed map, plus pre/post passes.

    With GQA the dK/dV of each query head are summed into its KV head afterwards (memory-bound).
    """
    bwd = prof.backward
    q_vol, kv_vol = _tile_volume(tm.q_tile), _tile_volume(tm.kv_tile)
    b, d = problem.bytes, problem.head_dim
    hbm_per_sm = gpu.hbm_TBps * 1e12 * prof.forward.hbm_efficiency / gpu.sm_count
    # Per pair: Q and dO tiles in, dQ accumulated with 4-byte atomics.
    cost = pair_cost(gpu, prof, problem, q_vol, kv_vol, flops_per_element=BWD_FLOPS_PER_PAIR,
                     mma_efficiency=bwd.mma_efficiency, load_bytes=q_vol * d * (2 * b + 4))
    kv_full, reps = _heads_rows(tm.kv_full, problem.heads)
    kv_partial, _ = _heads_rows(tm.kv_partial, problem.heads)
    main = schedule_pass(
        gpu, prof, cost, kv_full, kv_partial, repeat=reps * problem.batch,
        fixed_s=bwd.cta_overhead_us * 1e-6 + 4 * kv_vol * d * b / hbm_per_sm,  # K, V in; dK, dV out
        useful_elements=useful_pairs_per_head * problem.heads * problem.batch,
        hbm_bytes=problem.io_bytes(tokens, 3, 4), ctas_per_sm=prof.forward.ctas_per_SM)
    # Pre: read O and dO, write the row sums; post: read fp32 dQ, write dQ; GQA: sum dK/dV per group.
    hbm = gpu.hbm_TBps * 1e12 * prof.forward.hbm_efficiency
    side = problem.io_bytes(tokens, 2, 0) + problem.io_bytes(tokens, 1 + 4 // b, 0)
    if problem.group > 1:
        side += problem.io_bytes(tokens, 2, 2)
    side_ms = side / hbm * 1e3
    breakdown = dict(main.breakdown)
    breakdown["memory_ms"] += side_ms
    return PassTime(ms=main.ms + side_ms, breakdown=breakdown, bound=main.bound,
                    wave_efficiency=main.wave_efficiency * main.ms / (main.ms + side_ms), num_ctas=main.num_ctas)


def combine(*passes: PassTime) -> PassTime:
    """Passes run one after the other."""
    ms = sum(p.ms for p in passes)
    breakdown = {k: sum(p.breakdown[k] for p in passes) for k in BREAKDOWN}
    slowest = max(passes, key=lambda p: p.ms)
    work = sum(p.wave_efficiency * p.ms for p in passes)
    return PassTime(ms=ms, breakdown=breakdown, bound=slowest.bound, wave_efficiency=work / ms if ms else 1.0,
                    num_ctas=sum(p.num_ctas for p in passes))


def permute_ms(gpu: GPU, prof: KernelProfile, problem: Problem, tokens: int, padded_kv_tokens: int,
               kv_layout: str, backprop: bool = False) -> float:
    """Time of the token-permutation passes a box-tiled kernel needs, by the profile's way of permuting.

    ``qkvo`` (NATTEN style): read and write q, k, v into tiles, read and write o back (the backward
    adds dO in and dQ, dK, dV out), two launches. ``kv-auto`` (our kernels): with ``kv_layout``
    ``permute`` one launch reads k and v and writes their padded tiles; ``direct`` and ``gather``
    need no pass. Our backward's own permutation is one of its passes (:func:`backward_passes`).
    """
    hbm = gpu.hbm_TBps * 1e12 * prof.forward.hbm_efficiency
    launch_ms = prof.forward.launch_latency_us * 1e-3
    if prof.token_permutation == "qkvo":
        moved = problem.io_bytes(tokens, 2 * 2, 2 * 2) * (2 if backprop else 1)
        return moved / hbm * 1e3 + 2 * launch_ms
    if kv_layout != "permute":
        return 0.0
    moved = problem.io_bytes(tokens, 0, 2) + problem.io_bytes(padded_kv_tokens, 0, 2)
    return moved / hbm * 1e3 + launch_ms
