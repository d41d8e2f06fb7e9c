"""Simulated attention time of a layer as its launches run: heads with one pattern share a launch.

A layer's sparse heads are grouped by pattern; each group is one call of our GNA kernel over its heads
(``call_ms`` of the core's :func:`~sparsesim.simulator.engine`, ``triton`` profile: the calibrated one
where it exists), and the dense heads one call of the dense baseline (``dense_profile``, default cuDNN).
The search ranks a head's candidates by its share of a full-layer launch (``call_ms / heads``).

GQA (``heads_kv < heads``, group ``heads / heads_kv``): every launch is a valid problem. The KV heads whose
query heads all run one pattern make one launch of whole groups (``heads = group x KV heads``, each K/V
tile read once per group); the query heads of a group its pattern covers only in part make one more
launch with their KV heads repeated (``heads_kv = heads``), as :func:`sparsesim.kernels.run_plan` runs
such a launch. The planner (:func:`sparsesim.search.plan.choose`) gives the query heads of one KV head one
pattern, so its launches are whole groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sparsesim.search.space import Candidate
from sparsesim.simulator.engine import SimResult, Simulator


@dataclass(frozen=True)
class LayerShape:
    """The attention problem of one layer: layout, heads, head dim, batch, dtype, causal axes, and the tokens
    outside the layout every call carries (joint text tokens, sinks; docs/DESIGN.md, Extra tokens)."""

    layout: tuple[int, ...]
    heads: int
    heads_kv: int
    head_dim: int
    batch: int = 1
    dtype: str = "bf16"
    causal: tuple[bool, ...] = ()
    extra_tokens: int = 0
    extra_at: str = "end"


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a layer: the query heads it runs, its KV heads and its simulated time."""

    heads: tuple[int, ...]
    heads_kv: int
    candidate: Candidate
    dense: bool
    ms: float


@dataclass(frozen=True)
class LatencyModel:
    """Simulated times on one GPU with one pair of profiles, memoized per (candidate, heads)."""

    shape: LayerShape
    gpu: str
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    kernel_profile: str = "triton"
    dense_profile: str = "cudnn"
    _memo: dict[tuple[Candidate, int, int], SimResult] = field(default_factory=dict, repr=False, compare=False)
    _sim: Simulator = field(default_factory=Simulator, repr=False, compare=False)

    @property
    def group(self) -> int:
        """Query heads per KV head (1 without GQA)."""
        return max(1, self.shape.heads // max(1, self.shape.heads_kv))

    def result(self, cand: Candidate, heads: int, heads_kv: int | None = None) -> SimResult:
        """The core's record of ``cand`` over ``heads`` query heads and ``heads_kv`` KV heads (default: whole
        GQA groups, ``heads / group``, where ``heads`` is a multiple of the group; else ``heads``: KV repeated)."""
        if heads_kv is None:
            heads_kv = heads // self.group if heads % self.group == 0 else heads
        key = (cand, heads, heads_kv)
        hit = self._memo.get(key)
        if hit is None:
            s = self.shape
            hit = self._sim.simulate(input_size=s.layout, window=cand.window, stride=cand.stride,
                                     dilation=cand.dilation, causal=s.causal or None, q_tile=self.q_tile,
                                     kv_tile=self.kv_tile, gpu=self.gpu, heads=heads, heads_kv=heads_kv,
                                     head_dim=s.head_dim, batch=s.batch, dtype=s.dtype,
                                     extra_tokens=s.extra_tokens, extra_at=s.extra_at,
                                     kernel_profile=self.kernel_profile, dense_profile=self.dense_profile)
            self._memo[key] = hit
        return hit

    def head_ms(self, cand: Candidate) -> float:
        """One head's share of a whole-layer launch of ``cand`` (ms); dense heads: the dense baseline's."""
        r = self.result(cand, self.shape.heads)
        ms = r.dense_ms if cand.is_dense(self.shape.layout) else r.call_ms
        return ms / self.shape.heads

    def dense_layer_ms(self) -> float:
        """Every head dense (the baseline a plan is compared with)."""
        layout = self.shape.layout
        return self.result(Candidate(layout, (1,) * len(layout), (1,) * len(layout)), self.shape.heads).dense_ms

    def launches(self, cands: Sequence[Candidate]) -> list[Launch]:
        """The launches of a layer whose head ``h`` runs ``cands[h]``: one per distinct pattern, under GQA
        one of the whole KV groups that run it and one of the heads of groups it covers in part (module doc)."""
        group = self.group
        by_pattern: dict[Candidate, list[int]] = {}
        for h, c in enumerate(cands):
            by_pattern.setdefault(c, []).append(h)
        out = []
        for cand, heads in by_pattern.items():
            whole = [h for h in heads if group == 1 or all(
                k < len(cands) and cands[k] == cand for k in range(h - h % group, h - h % group + group))]
            whole_set = set(whole)
            part = [h for h in heads if h not in whole_set]
            dense = cand.is_dense(self.shape.layout)
            for ids, heads_kv in ((whole, len(whole) // group), (part, len(part))):
                if ids:
                    r = self.result(cand, len(ids), heads_kv)
                    out.append(Launch(heads=tuple(ids), heads_kv=heads_kv, candidate=cand, dense=dense,
                                      ms=r.dense_ms if dense else r.call_ms))
        return out

    def layer_ms(self, cands: Sequence[Candidate]) -> float:
        return sum(launch.ms for launch in self.launches(cands))
