"""Tiles chosen by the model: every feasible (Q tile, KV tile) pair ranked by predicted time.

Ranking is two-stage and deterministic. A closed-form estimate first scores every candidate from
per-axis sums of the schedule (visited and full KV tiles and CTAs factorize over axes and dilation
groups) and the cost model's pair and CTA costs: waves of mean-cost CTAs, plus launch and
permutation. The best candidates by that estimate are then simulated exactly (``call_ms``: the
whole call, SM schedule included) and ranked; ties break on the tile shapes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

from sparsesim.hwmodels import GPU, load_gpu
from sparsesim.hwmodels.gpus import DEFAULT_GPU
from sparsesim.hwmodels.profiles import KernelProfile, load_profile
from sparsesim.simulator.cost import Problem, forward_pair, permute_ms
from sparsesim.simulator.feasibility import candidate_tiles, kv_layout
from sparsesim.simulator.patterns import GNAPattern, group_length
from sparsesim.simulator.schedule import group_schedule
from sparsesim.simulator.selection import corrected_pick_ms, selection_sigma

Shape = tuple[int, ...]
#: Candidates simulated exactly after the closed-form estimate (at least the ``top`` asked for).
EXACT = 16


@dataclass(frozen=True)
class TileChoice:
    """One ranked tile pair: the estimate, and the exact prediction where it was simulated."""

    q_tile: Shape
    kv_tile: Shape
    estimate_ms: float
    call_ms: float | None
    predicted_ms: float | None
    tile_speedup: float | None
    kv_layout: str
    #: The pick's reported time (first of the ranking only): ``call_ms`` raised by the optimism of picking the
    #: minimum of the exactly simulated candidates (:mod:`~sparsesim.simulator.selection`); the ranking and the
    #: choice use ``call_ms`` alone.
    pick_ms: float | None = None


@lru_cache(maxsize=4096)
def _axis_sums(length: int, window: int, stride: int, dilation: int, causal: bool, q_tile: int,
               kv_tile: int) -> tuple[int, int, int, int]:
    """(Q tiles, visited pairs, full pairs, KV tiles) of one axis, summed over its dilation groups."""
    q = v = f = k = 0
    for g in range(dilation):
        s = group_schedule(group_length(length, dilation, g), window, stride, causal, q_tile, kv_tile)
        q, v, f, k = q + s.q_tiles, v + int(s.count.sum()), f + int(s.full_count.sum()), k + s.kv_tiles
    return q, v, f, k


def estimate_ms(pattern: GNAPattern, q_tile: Shape, kv_tile: Shape, *, gpu: GPU, prof: KernelProfile,
                problem: Problem) -> tuple[float, str]:
    """Closed-form call time of one tile pair (ms) and the K/V layout it implies."""
    ctas = visited = full = kv_tiles = 1
    for a in range(pattern.rank):
        q, v, f, k = _axis_sums(pattern.input_size[a], pattern.window[a], pattern.stride[a], pattern.dilation[a],
                                pattern.causal[a], q_tile[a], kv_tile[a])
        ctas, visited, full, kv_tiles = ctas * q, visited * v, full * f, kv_tiles * k
    groups = math.prod(pattern.dilation)
    qv, kvv = math.prod(q_tile), math.prod(kv_tile)
    layout = (kv_layout(pattern.rank, groups, problem.batch * pattern.num_tokens * int(problem.heads_kv or 1))
              if prof.token_permutation == "kv-auto" else "direct" if prof.token_permutation == "none" else "qkvo")
    shape, cost, fixed = forward_pair(gpu, prof, problem, qv, kvv, layout)
    repeat = problem.heads * problem.batch
    work = repeat * (ctas * fixed + full * cost.full + (visited - full) * cost.partial)
    n = ctas * repeat
    slots = gpu.sm_count * shape.ctas_per_sm
    kernel_s = math.ceil(n / slots) * (work / n) * shape.ctas_per_sm
    kernel_ms = kernel_s * 1e3 + prof.forward.launch_latency_us * 1e-3
    perm = 0.0
    if layout in ("permute", "qkvo") and (pattern.rank > 1 or groups > 1):
        perm = permute_ms(gpu, prof, problem, pattern.num_tokens, kv_tiles * kvv, layout)
    return kernel_ms + perm, layout


def rank_tiles(pattern: GNAPattern, *, gpu: str | GPU = DEFAULT_GPU, kernel_profile: str | KernelProfile = "triton",
               dense_profile: str | KernelProfile = "cudnn", heads: int = 24, heads_kv: int | None = None,
               head_dim: int = 128, batch: int = 1, dtype: str = "bf16", top: int = 10,
               q_volumes: tuple[int, ...] = (64, 128), kv_volumes: tuple[int, ...] = (64, 128)) -> list[TileChoice]:
    """The feasible tile pairs of ``pattern`` best first by predicted call time (``top`` of them simulated).

    Example:
        >>> p = GNAPattern(input_size=(256, 256), window=(80, 80), stride=(16, 16))
        >>> best = rank_tiles(p, gpu="H200", top=3)
        >>> len(best), best[0].call_ms <= best[1].call_ms <= best[2].call_ms
        (3, True)
    """
    from sparsesim.simulator.engine import simulate

    spec = load_gpu(gpu)
    prof = load_profile(kernel_profile, spec)
    problem = Problem(batch=batch, heads=heads, heads_kv=heads_kv, head_dim=head_dim, dtype=dtype)
    pairs = candidate_tiles(pattern.rank, gpu=spec, head_dim=head_dim, dtype=dtype, input_size=pattern.input_size,
                            q_volumes=q_volumes, kv_volumes=kv_volumes)
    scored = sorted(((*estimate_ms(pattern, q, kv, gpu=spec, prof=prof, problem=problem), q, kv)
                     for q, kv in pairs), key=lambda t: (t[0], t[2], t[3]))
    exact = []
    for est, _layout, q, kv in scored[:max(EXACT, top)]:
        r = simulate(input_size=pattern.input_size, window=pattern.window, stride=pattern.stride,
                     dilation=pattern.dilation, causal=pattern.causal, q_tile=q, kv_tile=kv, gpu=spec, heads=heads,
                     heads_kv=heads_kv, head_dim=head_dim, batch=batch, dtype=dtype, kernel_profile=prof,
                     dense_profile=dense_profile)
        exact.append(TileChoice(q_tile=q, kv_tile=kv, estimate_ms=est, call_ms=r.call_ms, predicted_ms=r.predicted_ms,
                                tile_speedup=r.tile_speedup, kv_layout=r.kv_layout))
    exact.sort(key=lambda c: (c.call_ms, c.q_tile, c.kv_tile))
    if exact:  # the choice stays; only the pick's reported time carries the selection correction
        times = [float(c.call_ms) for c in exact if c.call_ms is not None]
        exact[0] = dataclasses.replace(exact[0], pick_ms=corrected_pick_ms(times, selection_sigma(prof.name)))
    return exact[:top]


#: Tile volume classes the kernels' measured pick for small layers draws from (Q tile, KV tile tokens): a
#: 32-token KV tile is among them because on 1K-4K-token layers it ran fastest on the H200
#: (hwmodels/measurements/small_tiles_h200_2026-11-30_47e5ab5.csv).
PICK_Q_VOLUMES = (64, 128)
PICK_KV_VOLUMES = (32, 64, 128)


@lru_cache(maxsize=256)
def class_candidates(pattern: GNAPattern, gpu: str, heads: int, heads_kv: int, head_dim: int, batch: int,
                     dtype: str, kernel_profile: str = "triton") -> tuple[tuple[Shape, Shape], ...]:
    """The model's best tile pair of each (Q, KV) volume class in :data:`PICK_Q_VOLUMES` x
    :data:`PICK_KV_VOLUMES`, best predicted first: the candidates ``gna_attention`` times on a small layer's
    first call (on small layers the model's ranking across classes misses: launch, tail and gather effects
    that it prices coarsely; within a class its best box ran within 2% of the class's fastest on the three
    layers timed)."""
    best = []
    for qv in PICK_Q_VOLUMES:
        for kvv in PICK_KV_VOLUMES:
            ranked = rank_tiles(pattern, gpu=gpu, kernel_profile=kernel_profile, heads=heads, heads_kv=heads_kv,
                                head_dim=head_dim, batch=batch, dtype=dtype, top=1, q_volumes=(qv,),
                                kv_volumes=(kvv,))
            if ranked and ranked[0].call_ms is not None:
                best.append((float(ranked[0].call_ms), ranked[0].q_tile, ranked[0].kv_tile))
    return tuple((q, kv) for _, q, kv in sorted(best))


@lru_cache(maxsize=256)
def choose_tiles(pattern: GNAPattern, gpu: str, heads: int, heads_kv: int, head_dim: int, batch: int,
                 dtype: str, kernel_profile: str = "triton") -> tuple[Shape, Shape] | None:
    """The model's best tile pair for one problem (cached), or None when no candidate of 64-128 tokens
    fits the layout: what ``gna_attention`` runs when given no tiles."""
    best = rank_tiles(pattern, gpu=gpu, kernel_profile=kernel_profile, heads=heads, heads_kv=heads_kv,
                      head_dim=head_dim, batch=batch, dtype=dtype, top=1)
    return (best[0].q_tile, best[0].kv_tile) if best else None
