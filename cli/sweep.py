"""Sweep files: the cartesian product of lists of layouts, windows, strides, tiles and GPUs.

A sweep file is TOML. Top-level keys are :func:`simulate` keywords; a list of values sweeps
that keyword (for shapes, a list of lists). ``[[group]]`` tables each define their own
product, on top of the top-level keys (useful to mix layout ranks)::

    gpu = ["H100", "B200"]
    skip_invalid = true          # drop combinations the pattern rules refuse, and count them

    [[group]]
    input_size = [[30, 48, 80]]
    window = [[18, 24, 24], [30, 24, 24]]
    stride = [[1, 1, 1], [16, 8, 8]]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sparsesim.hwmodels.gpus import read_toml
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import GNAPattern

#: Keys whose value is a shape: a list of ints is one value, a list of lists sweeps.
SHAPE_KEYS = {"input_size", "window", "stride", "dilation", "causal", "q_tile", "kv_tile"}
SWEEP_KEYS = SHAPE_KEYS | {"gpu", "tiling", "heads", "heads_kv", "head_dim", "batch", "dtype", "backprop",
                           "kernel_profile", "dense_profile"}


def _values(key: str, value: Any) -> list[Any]:
    """The list of values a key sweeps over."""
    if key in SHAPE_KEYS:
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return value
        return [value]
    return value if isinstance(value, list) else [value]


def _product(spec: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    keys = list(spec)
    for combo in itertools.product(*(_values(k, spec[k]) for k in keys)):
        yield dict(zip(keys, combo, strict=True))


def expand(spec: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """All configurations of a sweep spec, and how many invalid ones ``skip_invalid`` dropped."""
    top = {k: v for k, v in spec.items() if k not in ("group", "skip_invalid")}
    unknown = sorted(set(top) - SWEEP_KEYS)
    groups = spec.get("group", [{}])
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ConfigError("sweep: 'group' must be an array of tables ([[group]])")
    for g in groups:
        unknown += sorted(set(g) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"sweep: unknown key(s) {sorted(set(unknown))}; allowed: {', '.join(sorted(SWEEP_KEYS))}")
    skip = bool(spec.get("skip_invalid", False))
    configs, skipped = [], 0
    for group in groups:
        for cfg in _product({**top, **group}):
            if "input_size" not in cfg or "window" not in cfg:
                raise ConfigError("sweep: every configuration needs input_size and window")
            try:
                GNAPattern(input_size=cfg["input_size"], window=cfg["window"], stride=cfg.get("stride", 1),
                           dilation=cfg.get("dilation", 1), causal=cfg.get("causal", False))
            except ConfigError as exc:
                if not skip:
                    raise ConfigError(f"sweep: configuration {cfg} is invalid ({exc}); fix it or set "
                                      f"skip_invalid = true") from None
                skipped += 1
                continue
            configs.append(cfg)
    if not configs:
        raise ConfigError("sweep: no valid configuration")
    return configs, skipped


def load_sweep(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Read and expand a sweep file."""
    return expand(read_toml(Path(path), "sweep"))
