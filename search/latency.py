"""Simulated attention time of a layer as its launches run: heads with one pattern share a launch.

A layer's sparse heads are grouped by pattern; each group is one call of our GNA kernel over its heads
(``call_ms`` of the core's :func:`~sparsesim.simulator.engine`, ``triton`` profile: the calibrated one
where it exists), and the dense heads one call of the dense baseline (``dense_profile``, default cuDNN).
The search ranks a head's candidates by its share of a full-layer launch (``call_ms / heads``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sparsesim.search.space import Candidate
from sparsesim.simulator.engine import SimResult, Simulator


@dataclass(frozen=True)
class LayerShape:
    """The attention problem of one layer: layout, heads, head dim, batch, dtype, causal axes."""

    layout: tuple[int, ...]
    heads: int
    heads_kv: int
    head_dim: int
    batch: int = 1
    dtype: str = "bf16"
    causal: tuple[bool, ...] = ()


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a layer: the heads it runs and its simulated time."""

    heads: tuple[int, ...]
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
    _memo: dict[tuple[Candidate, int], SimResult] = field(default_factory=dict, repr=False, compare=False)
    _sim: Simulator = field(default_factory=Simulator, repr=False, compare=False)

    def result(self, cand: Candidate, heads: int) -> SimResult:
        """The core's record of ``cand`` over ``heads`` heads (GQA ratio kept)."""
        key = (cand, heads)
        hit = self._memo.get(key)
        if hit is None:
            s = self.shape
            group = max(1, s.heads // s.heads_kv)
            hit = self._sim.simulate(input_size=s.layout, window=cand.window, stride=cand.stride,
                                     dilation=cand.dilation,
                           causal=s.causal or None, q_tile=self.q_tile, kv_tile=self.kv_tile, gpu=self.gpu,
                           heads=heads, heads_kv=max(1, heads // group), head_dim=s.head_dim, batch=s.batch,
                           dtype=s.dtype, kernel_profile=self.kernel_profile, dense_profile=self.dense_profile)
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
        """The launches of a layer whose head ``h`` runs ``cands[h]``: one per distinct pattern."""
        groups: dict[Candidate, list[int]] = {}
        for h, c in enumerate(cands):
            groups.setdefault(c, []).append(h)
        out = []
        for cand, heads in groups.items():
            r = self.result(cand, len(heads))
            dense = cand.is_dense(self.shape.layout)
            out.append(Launch(heads=tuple(heads), candidate=cand, dense=dense,
                              ms=r.dense_ms if dense else r.call_ms))
        return out

    def layer_ms(self, cands: Sequence[Candidate]) -> float:
        return sum(launch.ms for launch in self.launches(cands))
