"""The simulator core: patterns, tiling, cost model and workloads. Imports no torch, triton or optuna.

Example:
    >>> from sparsesim.simulator import simulate
    >>> round(simulate(input_size=(30, 48, 80), window=(18, 24, 24),
    ...                q_tile=(4, 8, 8), kv_tile=(2, 8, 8)).tile_speedup, 2)
    3.27
"""

from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.feasibility import can_run, candidate_tiles
from sparsesim.simulator.flops import attention_flops
from sparsesim.simulator.patterns import BlockSparsePattern, GNAPattern, axis_bounds, dense_mask, load_block_map
from sparsesim.simulator.schedule import BoxSchedule, box_schedule
from sparsesim.simulator.simulate import SimResult, simulate, simulate_many
from sparsesim.simulator.tiling import TileMap, tilemap

__all__ = [
    "BlockSparsePattern", "BoxSchedule", "ConfigError", "GNAPattern", "SimResult", "TileMap", "attention_flops",
    "axis_bounds", "box_schedule", "can_run", "candidate_tiles", "dense_mask", "load_block_map", "simulate",
    "simulate_many", "tilemap",
]
