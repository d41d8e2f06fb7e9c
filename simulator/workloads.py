"""Workloads (one data file per model) and end-to-end speedups of sparse attention in them.

A model step is its blocks: each block's GEMMs (a roofline with wave and tile quantization),
its elementwise passes (memory-bound) and its attention. Sparse attention replaces the
self-attention over the token layout; text tokens of joint attention and cross-attention stay
dense. With ``S`` an op-level speedup and ``f`` the share of the dense run spent in the
self-attention of the steps that run sparse (the first ``dense_steps`` keep dense attention),
the end-to-end speedup is ``1 / ((1 - f) + f / S)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsesim.hwmodels.gpus import DTYPE_BYTES, GPU, read_toml
from sparsesim.hwmodels.profiles import KernelProfile
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.flops import attention_flops

if TYPE_CHECKING:
    from sparsesim.simulator.e2e import E2EResult

WORKLOAD_DIR = Path(__file__).parent / "workloads"
#: The patterns behind `simulate` with no arguments.
PRESETS_FILE = Path(__file__).parent / "presets" / "main.toml"


@dataclass(frozen=True)
class BlockKind:
    """A kind of transformer block and how many the model has."""

    kind: str
    count: int
    gemms: tuple[tuple[int, int], ...]  # (out_features, in_features) per token


@dataclass(frozen=True)
class Workload:
    """What it takes to time a whole model on a GPU."""

    name: str
    description: str
    layout: tuple[int, ...]
    causal: tuple[bool, ...]
    text_tokens: int
    cross_attention_tokens: int
    heads: int
    heads_kv: int
    head_dim: int
    hidden: int
    mlp: int
    steps: int
    batch: int
    dtype: str
    blocks: tuple[BlockKind, ...]
    patterns: tuple[Mapping[str, Any], ...]
    sources: Mapping[str, str]
    #: Memory passes over (tokens x hidden) per block outside GEMMs and attention; None: the profile's.
    elementwise_passes_per_block: float | None = None

    @property
    def tokens(self) -> int:
        return math.prod(self.layout)

    @property
    def layers(self) -> int:
        return sum(b.count for b in self.blocks)


def _int(data: Mapping[str, Any], key: str, where: str, minimum: int = 1, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key}={value!r} must be an integer >= {minimum}")
    return value


def parse_workload(data: Mapping[str, Any], path: str) -> Workload:
    """Validate a workload table (as read from TOML)."""
    where = f"workload {path!r}"
    layout = data.get("layout")
    if not isinstance(layout, list) or not 1 <= len(layout) <= 3 or not all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in layout):
        raise ConfigError(f"{where}: layout={layout!r} must be 1 to 3 positive integers")
    blocks = []
    for b in data.get("blocks", []):
        gemms = b.get("gemms", [])
        if not all(isinstance(g, list) and len(g) == 2 and all(isinstance(x, int) and x > 0 for x in g)
                   for g in gemms):
            raise ConfigError(f"{where}: block {b.get('kind')!r} gemms must be [out, in] pairs of positive integers")
        blocks.append(BlockKind(kind=str(b.get("kind", "block")), count=_int(b, "count", where),
                                gemms=tuple((g[0], g[1]) for g in gemms)))
    if not blocks:
        raise ConfigError(f"{where}: needs at least one [[blocks]] table")
    heads = _int(data, "heads", where)
    heads_kv = _int(data, "heads_kv", where, default=heads)
    dtype = data.get("dtype", "bf16")
    if dtype not in ("fp16", "bf16", "fp8"):
        raise ConfigError(f"{where}: dtype={dtype!r}; allowed: fp16, bf16, fp8")
    causal = data.get("causal", [False] * len(layout))
    passes = data.get("elementwise_passes_per_block")
    if passes is not None and (isinstance(passes, bool) or not isinstance(passes, (int, float))
                               or not 0 <= passes < 1e6):
        raise ConfigError(f"{where}: elementwise_passes_per_block={passes!r} must be a number >= 0")
    return Workload(
        name=str(data.get("name", Path(path).stem)), description=str(data.get("description", "")),
        layout=tuple(layout), causal=tuple(bool(c) for c in causal),
        text_tokens=_int(data, "text_tokens", where, 0, 0),
        cross_attention_tokens=_int(data, "cross_attention_tokens", where, 0, 0),
        heads=heads, heads_kv=heads_kv, head_dim=_int(data, "head_dim", where), hidden=_int(data, "hidden", where),
        mlp=_int(data, "mlp", where), steps=_int(data, "steps", where), batch=_int(data, "batch", where, 1, 1),
        dtype=dtype, blocks=tuple(blocks), patterns=tuple(data.get("patterns", [])),
        sources={str(k): str(v) for k, v in data.get("sources", {}).items()},
        elementwise_passes_per_block=None if passes is None else float(passes),
    )


@cache
def _builtin() -> dict[str, Workload]:
    return {p.stem: parse_workload(read_toml(p, "workload"), str(p)) for p in sorted(WORKLOAD_DIR.glob("*.toml"))}


def list_workloads() -> list[Workload]:
    """The built-in workloads."""
    return list(_builtin().values())


def load_workload(name_or_path: str) -> Workload:
    """A built-in workload by name, or a workload TOML file by path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        return parse_workload(read_toml(Path(name_or_path), "workload"), name_or_path)
    if name_or_path not in _builtin():
        raise ConfigError(f"unknown preset {name_or_path!r}; allowed: {', '.join(_builtin())}, or a workload .toml")
    return _builtin()[name_or_path]


def gemm_ms(gpu: GPU, prof: KernelProfile, m: int, n: int, k: int, dtype: str) -> float:
    """A GEMM ``[m, k] x [k, n]``: output tiles in waves over the SMs, or its bytes through HBM."""
    g = prof.gemm
    tiles = math.ceil(m / g.tile_m) * math.ceil(n / g.tile_n)
    waves = math.ceil(tiles / gpu.sm_count)
    per_tile = 2.0 * g.tile_m * g.tile_n * k / (gpu.tensor_flops_per_s(dtype) / gpu.sm_count * g.efficiency)
    moved = (m * k + k * n + m * n) * DTYPE_BYTES[dtype]
    return max(waves * per_tile, moved / (gpu.hbm_TBps * 1e12 * g.hbm_efficiency)) * 1e3


@dataclass(frozen=True)
class StepTimes:
    """Milliseconds of one dense diffusion step (or one prefill), by part."""

    gemm_ms: float
    elementwise_ms: float
    self_attention_ms: float
    other_attention_ms: float

    @property
    def total_ms(self) -> float:
        return self.gemm_ms + self.elementwise_ms + self.self_attention_ms + self.other_attention_ms


def dense_step(w: Workload, gpu: GPU, prof: KernelProfile, self_attention_ms: float,
               dense_tflops: float) -> StepTimes:
    """One dense step, given the dense self-attention time per layer and the dense kernel's rate."""
    tokens = w.batch * (w.tokens + w.text_tokens)
    gemm = sum(b.count * sum(gemm_ms(gpu, prof, tokens, n, k, w.dtype) for n, k in b.gemms) for b in w.blocks)
    passes = prof.gemm.elementwise_passes_per_block if w.elementwise_passes_per_block is None \
        else w.elementwise_passes_per_block
    elementwise = w.layers * passes * tokens * w.hidden * DTYPE_BYTES[w.dtype] / (
        gpu.hbm_TBps * 1e12 * prof.gemm.hbm_efficiency) * 1e3
    n, t, c = w.tokens, w.text_tokens, w.cross_attention_tokens
    other_pairs = float(t * (n + t) + n * t + n * c)  # text queries, image queries on text keys, cross-attention
    other_flops = attention_flops(other_pairs, heads=w.heads, head_dim=w.head_dim, batch=w.batch)
    other = w.layers * other_flops / (dense_tflops * 1e12) * 1e3
    return StepTimes(gemm_ms=gemm, elementwise_ms=elementwise, self_attention_ms=w.layers * self_attention_ms,
                     other_attention_ms=other)


def e2e_speedup(share: float, speedup: float) -> float:
    """Amdahl: ``1 / ((1 - f) + f / S)``."""
    return 1.0 / ((1.0 - share) + share / speedup)


def sparse_share(attention_share: float, steps: int, dense_steps: int) -> float:
    """Share of the whole dense run spent in self-attention during the steps that run sparse."""
    if not 0 <= dense_steps <= steps:
        raise ConfigError(f"dense_steps={dense_steps}; allowed: 0 to the workload's {steps} steps")
    if not 0 <= attention_share <= 1:
        raise ConfigError(f"attention_share={attention_share}; allowed: 0 to 1")
    return attention_share * (steps - dense_steps) / steps


def simulate_e2e(**settings: Any) -> list[E2EResult]:
    """End-to-end speedups of a workload with a sparse pattern: :func:`sparsesim.simulator.e2e.simulate_e2e`."""
    from sparsesim.simulator.e2e import simulate_e2e as run

    return run(**settings)
