"""Sweep files: the cartesian product of lists of layouts, windows, strides, tiles and GPUs.

A sweep file is TOML. Top-level keys are :func:`simulate` keywords; a list of values sweeps
that keyword (for shapes, a list of lists). ``[[group]]`` tables each define their own
product, on top of the top-level keys (useful to mix layout ranks)::

    gpu = ["H100", "B200"]
    skip_invalid = true          # drop combinations the pattern rules refuse (named on stderr)

    [[group]]
    input_size = [[30, 48, 80]]
    window = [[18, 24, 24], [30, 24, 24]]
    stride = [[1, 1, 1], [16, 8, 8]]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sparsesim.hwmodels.gpus import read_toml
from sparsesim.simulator.config import config_fields
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import GNAPattern

#: Keys whose value is a shape: a list of ints is one value, a list of lists sweeps.
SHAPE_KEYS = {f.name for f in config_fields() if f.metadata["cli"] in ("shape", "flags")}
#: Every setting of a SimConfig but the block map (a sweep is over GNA patterns).
SWEEP_KEYS = {f.name for f in config_fields()} - {"block_map"}


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


#: Most configurations one sweep file may expand to (counted before any is built).
MAX_CONFIGS = 1_000_000


def label(cfg: Mapping[str, Any], width: int = 120) -> str:
    """A configuration as ``key=value`` pairs on one line (shapes as 30x48x80), cut at ``width`` characters."""
    def show(v: Any) -> str:
        return "x".join(map(str, v)) if isinstance(v, list) else str(v)

    text = " ".join(f"{k}={show(v)}" for k, v in cfg.items())
    return text if len(text) <= width else text[:width - 3] + "..."


def expand(spec: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """All configurations of a sweep spec, and the invalid ones ``skip_invalid`` dropped (each labelled with
    the reason)."""
    top = {k: v for k, v in spec.items() if k not in ("group", "skip_invalid")}
    unknown = sorted(set(top) - SWEEP_KEYS)
    groups = spec.get("group", [{}])
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ConfigError("sweep: 'group' must be an array of tables ([[group]])")
    for g in groups:
        unknown += sorted(set(g) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"sweep: unknown key(s) {sorted(set(unknown))}; allowed: {', '.join(sorted(SWEEP_KEYS))}")
    skip = spec.get("skip_invalid", False)
    if not isinstance(skip, bool):
        raise ConfigError(f"sweep: skip_invalid={skip!r}; allowed: true or false (a TOML boolean, unquoted)")
    total = sum(math.prod(len(_values(k, v)) for k, v in {**top, **g}.items()) for g in groups)
    if total > MAX_CONFIGS:
        raise ConfigError(f"sweep: {total} configurations; allowed: at most {MAX_CONFIGS} (split the file)")
    configs: list[dict[str, Any]] = []
    skipped: list[str] = []
    for group in groups:
        for cfg in _product({**top, **group}):
            if "input_size" not in cfg or "window" not in cfg:
                raise ConfigError("sweep: every configuration needs input_size and window")
            try:
                GNAPattern(input_size=cfg["input_size"], window=cfg["window"], stride=cfg.get("stride", 1),
                           dilation=cfg.get("dilation", 1), causal=cfg.get("causal", False))
            except ConfigError as exc:
                if not skip:
                    raise ConfigError(f"sweep: configuration {label(cfg)} is invalid ({exc}); fix it or set "
                                      f"skip_invalid = true") from None
                skipped.append(f"{label(cfg)} ({exc})")
                continue
            configs.append(cfg)
    if not configs:
        raise ConfigError("sweep: no valid configuration" + (f" ({len(skipped)} skipped as invalid, the first: "
                                                             f"{skipped[0]})" if skipped else ""))
    return configs, skipped


def load_sweep(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Read and expand a sweep file (see :func:`expand`)."""
    return expand(read_toml(Path(path), "sweep"))
