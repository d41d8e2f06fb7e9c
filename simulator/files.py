"""The one routine that writes what a user asked for (tables, plans, profiles, reports, plots, samples).

Every output is checked before the work that produces it starts (:func:`check_output`), and written
atomically (a temporary file in the same folder, renamed over the target) with the umask's mode. Only a
regular file is ever replaced: device nodes, FIFOs, sockets and directories are refused; a symbolic link
is written through (its target is replaced, the link stays); a missing folder is an error, never created.
Every failure is a one-line :class:`~sparsesim.simulator.errors.ConfigError` naming the flag and path.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from sparsesim.simulator.errors import ConfigError

#: What ``-`` means for a text output.
STDOUT = "-"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return "the name is too long"
    return exc.strerror or str(exc)


def check_output(out: str | os.PathLike[str], flag: str = "--out", *, stdout_ok: bool = True,
                 suffix: str | None = None) -> Path | None:
    """The path an output will be written to, checked now: ``None`` for standard output (``-``).

    The target must be absent or a regular file (a symlink is followed to its target), its folder must
    exist, and a file must be creatable there (probed with a temporary file that is removed at once).
    ``suffix`` (e.g. ``.png``) is required of the name when given.
    """
    text = os.fspath(out)
    if text == STDOUT:
        if stdout_ok:
            return None
        raise ConfigError(f"{flag} -: this output cannot go to standard output; allowed: a file path")
    if not text.strip():
        raise ConfigError(f"{flag} {text!r}; allowed: a file path" + (", or - for standard output" if stdout_ok
                                                                         else ""))
    if "\0" in text:
        raise ConfigError(f"{flag} {text!r} contains a NUL character; allowed: a file path")
    path = Path(text)
    if suffix is not None and path.suffix.lower() != suffix:
        raise ConfigError(f"{flag} {text!r}; allowed: a file name ending in {suffix}")
    try:
        target = Path(os.path.realpath(path)) if path.is_symlink() else path
        try:
            st = target.stat()
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            via = f" (the link's target {str(target)!r})" if target != path else ""
            raise ConfigError(f"{flag} {text!r}{via} is {_kind(st.st_mode)}; allowed: a regular file path"
                              + (", or - for standard output" if stdout_ok else ""))
        parent = target.parent if str(target.parent) else Path(".")
        if not parent.is_dir():
            raise ConfigError(f"{flag} {text!r}: folder {str(parent)!r} does not exist (it is not created)")
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{target.name[:64]}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{flag} {text!r} cannot be written: {_reason(exc)}") from None
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(data: bytes, out: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Write ``data`` to ``out`` atomically (checked as :func:`check_output`); returns the path written."""
    target = check_output(out, flag, stdout_ok=False)
    assert target is not None
    parent = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{target.name[:64]}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"{flag} {os.fspath(out)!r} cannot be written: {_reason(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as exc:
        _remove(tmp)
        raise ConfigError(f"{flag} {os.fspath(out)!r} cannot be written: {_reason(exc)}") from None
    except BaseException:
        _remove(tmp)
        raise
    return target


def write_text(text: str, out: str | os.PathLike[str] | None, flag: str = "--out") -> Path | None:
    """Print ``text`` (``out`` None or ``-``), or write it to ``out`` as :func:`write_bytes` does (UTF-8)."""
    import sys

    if out is None or os.fspath(out) == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return None
    return write_bytes(text.encode("utf-8"), out, flag)


def check_output_dir(out: str | os.PathLike[str], flag: str = "--out") -> Path:
    """A folder an output of several files goes to: an existing directory, or a new one whose parent exists."""
    text = os.fspath(out)
    if not text.strip() or text == STDOUT:
        raise ConfigError(f"{flag} {text!r}; allowed: a folder path")
    path = Path(text)
    try:
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                st = path.stat() if path.exists() else path.lstat()
                raise ConfigError(f"{flag} {text!r} is {_kind(st.st_mode)}; allowed: a folder (existing or new)")
        elif not (path.parent if str(path.parent) else Path(".")).is_dir():
            raise ConfigError(f"{flag} {text!r}: folder {str(path.parent)!r} does not exist (it is not created)")
        probe_dir = path if path.is_dir() else (path.parent if str(path.parent) else Path("."))
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".sparsesim.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{flag} {text!r} cannot be written: {_reason(exc)}") from None
    return path


def write_files(files: Mapping[str, bytes], out: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Write several named files into the folder ``out`` (created if new; each file as :func:`write_bytes`)."""
    folder = check_output_dir(out, flag)
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {os.fspath(out)!r} cannot be created: {_reason(exc)}") from None
    for name, data in files.items():
        if Path(name).name != name or name in ("", ".", ".."):
            raise ConfigError(f"output file name {name!r}; allowed: a plain file name")
        write_bytes(data, folder / name, flag)
    return folder


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
