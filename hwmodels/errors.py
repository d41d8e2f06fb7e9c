"""The one exception type for bad user input (defined at the bottom layer so every layer can raise it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: the message names the bad value and what is allowed.

    The CLI turns it into one line on stderr and exit code 2.
    """
