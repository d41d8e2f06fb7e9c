"""GPU descriptions and kernel profiles, kept as data files and validated on load."""

from sparsesim.hwmodels.errors import ConfigError
from sparsesim.hwmodels.gpus import GPU, list_gpus, load_gpu

__all__ = ["GPU", "ConfigError", "list_gpus", "load_gpu"]
