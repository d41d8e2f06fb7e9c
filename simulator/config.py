"""One simulated configuration, typed: :class:`SimConfig`, whose fields carry the one set of defaults.

:func:`~sparsesim.simulator.engine.simulate` takes a ``SimConfig`` (or its fields as keywords), sweep
files and presets are turned into ``SimConfig`` records, and the command line builds its pattern, tile and
problem flags from these fields (their ``help`` metadata): a default is written here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsesim.hwmodels.gpus import DEFAULT_GPU, GPU
from sparsesim.hwmodels.profiles import KernelProfile
from sparsesim.simulator.errors import ConfigError

#: Field kinds the command line knows how to parse (metadata ``cli``): ``shape`` (ints per axis),
#: ``flags`` (0/1 per axis), ``int``, ``choice``, ``bool`` (a switch), ``text``, ``gpus`` (one or more names).
CLI_KINDS = ("shape", "flags", "int", "choice", "bool", "text", "gpus")


def _meta(cli: str, help: str, group: str, **extra: Any) -> dict[str, Any]:
    return {"cli": cli, "help": help, "group": group, **extra}


@dataclass(frozen=True)
class SimConfig:
    """One configuration to simulate; the field names are the CLI flags with underscores.

    Without ``block_map`` the pattern is GNA over ``input_size`` (stride, dilation default 1, causal
    off); with it, ``input_size`` is the sequence length and the map (array or ``.npy``/``.npz`` path)
    is tiled by ``q_tile``/``kv_tile``. Values are checked where they are used (the pattern, the tiles,
    the problem), each with a one-line :class:`ConfigError`.

    Example:
        >>> SimConfig(input_size=(64, 64), window=8).gpu == DEFAULT_GPU
        True
    """

    input_size: Any = field(metadata=_meta(
        "shape", "token layout, outermost axis first (1 to 3 axes); the sequence length with --block-map",
        "pattern", required=True, metavar="L"))
    window: Any = field(default=None, metadata=_meta("shape", "window per axis, or one for all axes", "pattern",
                                                     metavar="W"))
    stride: Any = field(default=None, metadata=_meta("shape", "stride per axis (default 1)", "pattern", metavar="S"))
    dilation: Any = field(default=None, metadata=_meta("shape", "dilation per axis (default 1)", "pattern",
                                                       metavar="D"))
    causal: Any = field(default=None, metadata=_meta("flags", "causal flag per axis (default 0)", "pattern",
                                                     metavar="0|1"))
    extra_tokens: int = field(default=0, metadata=_meta(
        "int", "tokens outside the layout that every query sees and that see everything (joint text tokens, "
        "attention sinks)", "pattern", minimum=0, metavar="E"))
    extra_at: str = field(default="end", metadata=_meta(
        "choice", "where the extra tokens sit in the sequence: after the layout or before it (with a causal axis: "
        "start)", "pattern", choices=("end", "start")))
    block_map: str | Path | np.ndarray | None = field(default=None, metadata=_meta(
        "text", "explicit block map (.npy/.npz, [heads,] q_blocks x kv_blocks) instead of a window", "pattern",
        metavar="FILE"))
    q_tile: Any = field(default=None, metadata=_meta(
        "shape", "Q tile per axis (flat tiling: one size); default: the GPU's fused-kernel tile (`simulate gpus`); "
        "a lone --q-tile or --kv-tile sets both", "tiles", metavar="T"))
    kv_tile: Any = field(default=None, metadata=_meta("shape", "KV tile, as --q-tile", "tiles", metavar="T"))
    tiling: str = field(default="box", metadata=_meta(
        "choice", "box: token-permuted box tiles (dilation groups tiled apart); flat: runs of tokens", "tiles",
        choices=("box", "flat")))
    gpu: str | GPU = field(default=DEFAULT_GPU, metadata=_meta("gpus", "GPU names or GPU .toml files", "problem",
                                                               metavar="GPU"))
    heads: int = field(default=24, metadata=_meta("int", "query heads", "problem"))
    heads_kv: int | None = field(default=None, metadata=_meta("int", "KV heads (GQA); default: --heads", "problem"))
    head_dim: int = field(default=128, metadata=_meta("int", "head dimension", "problem"))
    batch: int = field(default=1, metadata=_meta("int", "batch size", "problem"))
    dtype: str = field(default="bf16", metadata=_meta("choice", "operand dtype", "problem",
                                                      choices=("fp16", "bf16", "fp8")))
    backprop: bool = field(default=False, metadata=_meta("bool", "forward + backward (dQ and dK/dV passes)",
                                                         "problem"))
    kernel_profile: str | KernelProfile = field(default="reference", metadata=_meta(
        "text", "modelled sparse kernel: 'reference' (best published for the GPU), 'triton' (ours, fitted on an "
        "H200) or a profile name or .toml file", "problem"))
    dense_profile: str | KernelProfile = field(default="cudnn", metadata=_meta(
        "text", "modelled dense baseline: 'cudnn' (fitted where measured, else the reference), 'triton' (our dense "
        "kernel), 'reference' or a profile name or .toml file", "problem"))

    def __post_init__(self) -> None:
        if not isinstance(self.backprop, (bool, np.bool_)):
            raise ConfigError(f"backprop={self.backprop!r}; allowed: true or false")
        if self.tiling not in ("box", "flat"):
            raise ConfigError(f"tiling={self.tiling!r}; allowed: box, flat")
        if self.block_map is not None:
            given = [k for k in ("window", "stride", "dilation", "causal") if getattr(self, k) is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} cannot be combined with block_map (--block-map: the map is the "
                                  f"pattern); allowed with it: input_size, q_tile, kv_tile and the problem settings")
            if self.tiling != "box":
                raise ConfigError(f"tiling={self.tiling!r} cannot be combined with block_map (--block-map: the map's "
                                  f"blocks are the tiles)")
            if self.extra_tokens:
                raise ConfigError(f"extra_tokens={self.extra_tokens!r} cannot be combined with block_map "
                                  f"(--block-map: the map covers the whole sequence); allowed with it: 0")

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> SimConfig:
        """A configuration from a dict of settings (a sweep row, a preset), refusing unknown keys."""
        names = field_names()
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; allowed: {', '.join(names)}")
        if "input_size" not in settings:
            raise ConfigError("input_size is required")
        return cls(**settings)

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def field_names() -> list[str]:
    """Every setting of :class:`SimConfig`, in order."""
    return [f.name for f in dataclasses.fields(SimConfig)]


def config_fields(group: str | None = None) -> Sequence[dataclasses.Field[Any]]:
    """The fields of :class:`SimConfig` (of one flag group: ``pattern``, ``tiles`` or ``problem``)."""
    return [f for f in dataclasses.fields(SimConfig) if group is None or f.metadata["group"] == group]


def as_config(value: SimConfig | Mapping[str, Any]) -> SimConfig:
    """``value`` itself, or the :class:`SimConfig` its settings describe."""
    return value if isinstance(value, SimConfig) else SimConfig.from_mapping(value)
