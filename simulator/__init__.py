"""The simulator core: patterns, tiling, cost model and workloads. Imports no torch, triton or optuna.

Names are loaded on first use (PEP 562), so ``import sparsesim.simulator.patterns`` costs milliseconds
and loads no pandas; ``simulate`` and ``simulate_many`` bring pandas when first asked for.

Example:
    >>> from sparsesim.simulator import simulate
    >>> round(simulate(input_size=(30, 48, 80), window=(18, 24, 24),
    ...                q_tile=(4, 8, 8), kv_tile=(2, 8, 8)).tile_speedup, 2)
    3.27
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS = {
    "ConfigError": "errors", "can_run": "feasibility", "candidate_tiles": "feasibility",
    "attention_flops": "flops", "BlockSparsePattern": "patterns", "GNAPattern": "patterns",
    "axis_bounds": "patterns", "dense_mask": "patterns", "load_block_map": "patterns", "visible_mask": "patterns",
    "BoxSchedule": "schedule", "box_schedule": "schedule", "SimConfig": "config", "SimResult": "engine",
    "simulate": "engine", "simulate_many": "engine", "TileMap": "tiling", "tilemap": "tiling",
}

__all__ = [
    "BlockSparsePattern", "BoxSchedule", "ConfigError", "GNAPattern", "SimConfig", "SimResult", "TileMap",
    "attention_flops", "axis_bounds", "box_schedule", "can_run", "candidate_tiles", "dense_mask", "load_block_map",
    "simulate", "simulate_many", "tilemap", "visible_mask",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from sparsesim.simulator.config import SimConfig
    from sparsesim.simulator.engine import SimResult, simulate, simulate_many
    from sparsesim.simulator.errors import ConfigError
    from sparsesim.simulator.feasibility import can_run, candidate_tiles
    from sparsesim.simulator.flops import attention_flops
    from sparsesim.simulator.patterns import (
        BlockSparsePattern,
        GNAPattern,
        axis_bounds,
        dense_mask,
        load_block_map,
        visible_mask,
    )
    from sparsesim.simulator.schedule import BoxSchedule, box_schedule
    from sparsesim.simulator.tiling import TileMap, tilemap


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sparsesim.simulator' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"sparsesim.simulator.{module}"), name)
    globals()[name] = value
    return value
