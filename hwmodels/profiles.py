"""Kernel profiles: the fused-attention kernel being modelled, per architecture, as data files.

A profile says how a kernel uses a GPU: its tiles, CTAs per SM, persistence, how far softmax
overlaps the matrix units, the cost of masking, fixed per-CTA costs and achievable fractions of
peak. ``reference`` resolves to ``reference-<architecture>`` of the chosen GPU (the best
published kernels); calibration (a later issue) writes profiles fitted to measurements.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sparsesim.hwmodels.errors import ConfigError
from sparsesim.hwmodels.gpus import GPU, read_toml

PROFILE_DIR = Path(__file__).parent / "profiles"

_FRACTIONS = ("mma_efficiency", "softmax_overlap", "l2_hit_fraction", "hbm_efficiency", "efficiency")


@dataclass(frozen=True)
class ForwardProfile:
    """Forward-kernel parameters."""

    dense_q_tile: int
    dense_kv_tile: int
    persistent: bool
    ctas_per_SM: int
    mma_efficiency: float
    softmax_overlap: float
    softmax_fp32_ops_per_element: float
    exp_throughput_scale: float
    mask_ops_per_element: float
    cta_overhead_us: float
    l2_hit_fraction: float
    hbm_efficiency: float


@dataclass(frozen=True)
class BackwardProfile:
    """Backward-kernel parameters (the rest is shared with the forward profile)."""

    q_tile: int
    kv_tile: int
    mma_efficiency: float
    cta_overhead_us: float


@dataclass(frozen=True)
class GemmProfile:
    """Non-attention layers: a GEMM roofline with wave and tile quantization."""

    tile_m: int
    tile_n: int
    efficiency: float
    elementwise_passes_per_block: float


@dataclass(frozen=True)
class KernelProfile:
    """One modelled kernel: forward, backward and the GEMMs around it."""

    name: str
    architecture: str
    description: str
    forward: ForwardProfile
    backward: BackwardProfile
    gemm: GemmProfile
    sources: Mapping[str, str]
    path: str


def _section(data: Mapping[str, Any], name: str, cls: type, where: str) -> Any:
    table = data.get(name)
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: missing section [{name}]")
    values = {}
    for f in dataclasses.fields(cls):
        field = f.name
        if field not in table:
            raise ConfigError(f"{where}: [{name}] is missing {field!r}")
        value = table[field]
        want = f.type
        if want == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: [{name}] {field}={value!r} must be true or false")
        elif (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
              or value < 0):
            raise ConfigError(f"{where}: [{name}] {field}={value!r} must be a non-negative finite number")
        elif want == "int" and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}: [{name}] {field}={value!r} must be a positive integer")
        elif field in _FRACTIONS and not 0 < value <= 1:
            raise ConfigError(f"{where}: [{name}] {field}={value!r} must be in (0, 1]")
        values[field] = value
    return cls(**values)


def parse_profile(data: Mapping[str, Any], path: str) -> KernelProfile:
    """Validate a profile table (as read from TOML) into a :class:`KernelProfile`."""
    where = f"kernel profile {path!r}"
    for key in ("name", "architecture"):
        if not isinstance(data.get(key), str):
            raise ConfigError(f"{where}: missing {key!r}")
    return KernelProfile(
        name=data["name"], architecture=data["architecture"], description=str(data.get("description", "")),
        forward=_section(data, "forward", ForwardProfile, where),
        backward=_section(data, "backward", BackwardProfile, where),
        gemm=_section(data, "gemm", GemmProfile, where),
        sources={str(k): str(v) for k, v in data.get("sources", {}).items()}, path=path,
    )


@cache
def _builtin() -> dict[str, KernelProfile]:
    return {p.stem: parse_profile(read_toml(p, "kernel profile"), str(p)) for p in sorted(PROFILE_DIR.glob("*.toml"))}


def list_profiles() -> list[KernelProfile]:
    """The built-in kernel profiles."""
    return list(_builtin().values())


def load_profile(name_or_path: str | KernelProfile, gpu: GPU) -> KernelProfile:
    """A profile by name (``reference`` picks the GPU's architecture) or by path to a TOML file."""
    if isinstance(name_or_path, KernelProfile):
        return name_or_path
    key = str(name_or_path)
    if key.endswith(".toml") or "/" in key:
        return parse_profile(read_toml(Path(key), "kernel profile"), key)
    if key == "reference":
        key = f"reference-{gpu.architecture}"
    profiles = _builtin()
    if key not in profiles:
        known = ", ".join(["reference", *profiles])
        raise ConfigError(f"unknown kernel profile {name_or_path!r} for {gpu.name}; allowed: {known}, "
                          f"or a path to a profile .toml file")
    return profiles[key]
