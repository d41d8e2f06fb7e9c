"""The one exception type for bad user input (defined at the bottom layer so every layer can raise it)."""

from __future__ import annotations

import os
import stat


class ConfigError(ValueError):
    """Bad user input: the message names the bad value and what is allowed.

    The CLI turns it into one line on stderr and exit code 2.
    """


def check_input_file(path: str | os.PathLike[str], where: str, max_bytes: int, allowed: str) -> None:
    """Refuse, in one line, an input that is not a regular file of at most ``max_bytes`` (a device or FIFO
    would block or flood a reader). ``where`` names the input (``"plan 'x.json'"``); ``allowed`` says what
    is; OSErrors (missing file, too long a name, no permission) propagate for the reader to word."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{where} is not a regular file; allowed: {allowed}")
    if st.st_size > max_bytes:
        raise ConfigError(f"{where} has {st.st_size} bytes; allowed: at most {max_bytes}")
