"""The one exception type for bad user input (re-exported from the bottom layer)."""

from sparsesim.hwmodels.errors import ConfigError

__all__ = ["ConfigError"]
