"""Kernel profiles: the fused-attention kernel being modelled, as data files.

A profile says how a kernel uses a GPU: its tiles, CTAs per SM, persistence, how far softmax
overlaps the matrix units, the cost of masking, fixed costs per CTA, per KV tile, per launch and
per call, and achievable fractions of peak. Profiles are picked by name:

- ``reference``: ``reference-<architecture>`` of the chosen GPU, the best published kernels: set by hand from
  their papers (the prior in ``profiles/``), fitted to published kernel figures by
  ``simulate calibrate --published`` (``calibration/``; Hopper also to our H200 cuDNN measurements);
- ``triton``: sparsesim's own Triton kernels, fitted to measurements on an H200 by
  ``simulate calibrate`` and carried to other GPUs through their hardware figures;
- ``cudnn``: dense cuDNN attention (the default dense baseline), ``cudnn-<architecture>`` where it
  was measured and fitted, else the architecture's reference profile.

Hand-set priors live in ``profiles/``; a fitted profile of the same name in ``calibration/``
(written by ``simulate calibrate``, with the data it came from) takes precedence.
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
CALIBRATION_DIR = Path(__file__).parent / "calibration"
#: How a kernel gets box tiles from the caller's token order: NATTEN-style (permute q, k, v in and o out
#: for 2D/3D or dilated layouts), or sparsesim's kernels (K/V permuted, gathered or read directly,
#: by :func:`sparsesim.simulator.feasibility.kv_layout`; Q/O gathered in the kernel).
TOKEN_PERMUTATIONS = ("qkvo", "kv-auto", "none")
#: Our forward kernels a profile may price (:attr:`KernelProfile.forward_kernel`).
FORWARD_KERNELS = ("triton", "ws")
#: Families of profiles resolved per GPU.
FAMILIES = ("reference", "triton", "cudnn")

#: Largest integer (tiles, CTAs per SM) and number (times, op counts, scales) a profile may hold: far beyond
#: any kernel, so a typo is refused before it reaches the model.
MAX_PROFILE_INT = 1 << 20
MAX_PROFILE_NUMBER = 1e6

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
    #: Fixed time per visited (Q tile, KV tile) pair: loop bookkeeping, barriers, row-reduction latency.
    kv_tile_overhead_ns: float
    #: fp32 ops per (query row x head-dim element) per visited KV tile: rescaling the O accumulator by the
    #: new row max, so a KV tile of fewer tokens pays it over less work.
    rescale_ops_per_element: float
    #: Device time of one kernel launch (the launch itself and the ramp of the first wave).
    launch_latency_us: float
    #: Host time of one call from Python; a call timed back to back takes at least this long.
    host_overhead_us: float
    #: Extra pair time when K/V rows are gathered instead of loaded with TMA (sparsesim's ``gather``).
    gather_penalty: float
    #: Extra pair time per K/V pipeline stage the shared memory takes away (below the kernel's deepest).
    stage_penalty: float
    #: CTAs per SM from shared memory and registers (the feasibility check), capped by ``ctas_per_SM``.
    occupancy_from_resources: bool
    #: Extra pair time per halving of the KV tile below ``dense_kv_tile`` (a 64-key tile runs the score GEMM
    #: at N = 64 and the PV GEMM at K = 64: more shared-memory operand traffic and per-tile synchronisation per
    #: FLOP). Optional in a profile file (0: none).
    narrow_kv_penalty: float = 0.0
    #: Extra pair time of a call whose token count is not a multiple of ``dense_kv_tile`` (the kernel then runs
    #: its bounds-checked variant on every tile: cuDNN on the H200 takes as long for 111,600 tokens as for
    #: 115,200). Optional in a profile file (0: none).
    unaligned_penalty: float = 0.0


@dataclass(frozen=True)
class BackwardProfile:
    """Backward-kernel parameters (the rest is shared with the forward profile)."""

    q_tile: int
    kv_tile: int
    mma_efficiency: float
    cta_overhead_us: float
    #: Extra pair time of the block-sparse backward, whose kernels walk a prepared map's block lists (an index
    #: load ahead of each KV or Q block, the software pipeline restarting at each listed block). Optional in a
    #: profile file (0: none).
    list_penalty: float = 0.0
    #: Our split backward's passes priced apart (benchmarks/bwd_passes.py times each launch): the dQ kernel's
    #: tensor-core efficiency (0: ``mma_efficiency``, which then prices dK/dV alone), and the dK/dV kernel's cost
    #: of masking one partial-tile element over the forward's ``mask_ops_per_element`` (it rebuilds the masks
    #: transposed for every partial tile, per axis from the visiting queries' bounds). Optional (0 and 1). Fitted by
    #: ``benchmarks/bwd_passes.py --fit`` to passes timed alone, priced at the tiles each kernel ran.
    dq_mma_efficiency: float = 0.0
    mask_scale: float = 1.0


@dataclass(frozen=True)
class GemmProfile:
    """Non-attention layers: a GEMM roofline with wave and tile quantization."""

    tile_m: int
    tile_n: int
    efficiency: float
    elementwise_passes_per_block: float
    #: Share of HBM bandwidth the elementwise passes and memory-bound GEMMs reach: their own term, so a fit of
    #: the attention kernel's ``forward.hbm_efficiency`` (which also absorbs its permutation passes) leaves them be.
    hbm_efficiency: float


@dataclass(frozen=True)
class KernelProfile:
    """One modelled kernel: forward, backward and the GEMMs around it."""

    name: str
    architecture: str
    description: str
    token_permutation: str
    forward: ForwardProfile
    backward: BackwardProfile
    gemm: GemmProfile
    sources: Mapping[str, str]
    path: str
    fit: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: The profile pricing the forward of calls our kernels run on the warp-specialized Hopper forward
    #: (:mod:`sparsesim.simulator.route`); empty: none.
    ws_profile: str = ""
    #: Which of our forward kernels this profile's forward prices (``triton`` or ``ws``): the measured rows
    #: (``fwd_kernel``) ``simulate calibrate`` fits it to.
    forward_kernel: str = "triton"


def _section(data: Mapping[str, Any], name: str, cls: type, where: str) -> Any:
    table = data.get(name)
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: missing section [{name}]")
    values = {}
    unknown = sorted(set(table) - {f.name for f in dataclasses.fields(cls)})
    if unknown:  # a misspelled optional term would otherwise be read as its default
        raise ConfigError(f"{where}: [{name}] has unknown key(s) {', '.join(map(repr, unknown))}; allowed: "
                          f"{', '.join(f.name for f in dataclasses.fields(cls))}")
    for f in dataclasses.fields(cls):
        field = f.name
        if field not in table:
            if f.default is not dataclasses.MISSING:  # optional terms keep their default
                continue
            raise ConfigError(f"{where}: [{name}] is missing {field!r}")
        value = table[field]
        want = f.type
        if want == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: [{name}] {field}={value!r} must be true or false")
        elif (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
              or value < 0):
            raise ConfigError(f"{where}: [{name}] {field}={value!r} must be a non-negative finite number")
        elif want == "int" and (not isinstance(value, int) or not 1 <= value <= MAX_PROFILE_INT):
            raise ConfigError(f"{where}: [{name}] {field}={value!r}; allowed: an integer from 1 to {MAX_PROFILE_INT}")
        elif value > MAX_PROFILE_NUMBER:
            raise ConfigError(f"{where}: [{name}] {field}={value!r}; allowed: at most {MAX_PROFILE_NUMBER:g}")
        elif field in _FRACTIONS and not 0 < value <= 1:
            raise ConfigError(f"{where}: [{name}] {field}={value!r} must be in (0, 1]")
        values[field] = value
    return cls(**values)


def parse_profile(data: Mapping[str, Any], path: str) -> KernelProfile:
    """Validate a profile table (as read from TOML) into a :class:`KernelProfile`."""
    where = f"kernel profile {path!r}"
    for key in ("name", "architecture", "token_permutation"):
        if not isinstance(data.get(key), str):
            raise ConfigError(f"{where}: missing {key!r}")
    if data["token_permutation"] not in TOKEN_PERMUTATIONS:
        raise ConfigError(f"{where}: token_permutation={data['token_permutation']!r}; "
                          f"allowed: {', '.join(TOKEN_PERMUTATIONS)}")
    for key, allowed in (("ws_profile", None), ("forward_kernel", FORWARD_KERNELS)):
        value = data.get(key, "" if key == "ws_profile" else "triton")
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            raise ConfigError(f"{where}: {key}={value!r}; allowed: "
                              f"{', '.join(allowed) if allowed else 'a profile name'}")
    fit = data.get("fit", {})
    if not isinstance(fit, dict):
        raise ConfigError(f"{where}: [fit] must be a table")
    if not isinstance(data.get("sources", {}), dict):
        raise ConfigError(f"{where}: sources={data['sources']!r} must be a table")
    return KernelProfile(
        name=data["name"], architecture=data["architecture"], description=str(data.get("description", "")),
        token_permutation=data["token_permutation"], fit=fit,
        forward=_section(data, "forward", ForwardProfile, where),
        backward=_section(data, "backward", BackwardProfile, where),
        gemm=_section(data, "gemm", GemmProfile, where),
        sources={str(k): str(v) for k, v in data.get("sources", {}).items()}, path=path,
        ws_profile=data.get("ws_profile", ""), forward_kernel=data.get("forward_kernel", "triton"),
    )


@cache
def _builtin() -> dict[str, KernelProfile]:
    """Built-in profiles by name: the priors, then the fitted ones of the same name over them."""
    out = {}
    for folder in (PROFILE_DIR, CALIBRATION_DIR):
        for p in sorted(folder.glob("*.toml")):
            out[p.stem] = parse_profile(read_toml(p, "kernel profile"), str(p))
    return out


def list_profiles() -> list[KernelProfile]:
    """The built-in kernel profiles (fitted ones in place of their priors)."""
    return list(_builtin().values())


def resolve_name(name: str, gpu: GPU) -> str:
    """The built-in profile a family name means on ``gpu`` (other names are returned as they are).

    ``reference`` -> ``reference-<arch>``; ``triton`` -> ``triton`` (our kernels, one profile for every
    GPU); ``cudnn`` -> ``cudnn-<arch>`` where measured, else ``reference-<arch>``.
    """
    if name == "reference":
        return f"reference-{gpu.architecture}"
    if name == "cudnn":
        own = f"cudnn-{gpu.architecture}"
        return own if own in _builtin() else f"reference-{gpu.architecture}"
    return name


def load_profile(name_or_path: str | KernelProfile, gpu: GPU) -> KernelProfile:
    """A profile by family or file name (see :func:`resolve_name`) or by path to a TOML file."""
    if isinstance(name_or_path, KernelProfile):
        return name_or_path
    key = str(name_or_path)
    if key.endswith(".toml") or "/" in key:
        return parse_profile(read_toml(Path(key), "kernel profile"), key)
    key = resolve_name(key, gpu)
    profiles = _builtin()
    if key not in profiles:
        known = ", ".join([*FAMILIES, *profiles])
        raise ConfigError(f"unknown kernel profile {name_or_path!r} for {gpu.name}; allowed: {known}, "
                          f"or a path to a profile .toml file")
    return profiles[key]
