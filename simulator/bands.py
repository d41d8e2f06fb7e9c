"""Error bands of predictions: how far measured times fell from a profile's predictions out of sample.

The bands are computed once by ``benchmarks/error_bands.py`` into ``hwmodels/bands/error_bands.toml`` (shipped
with the package): for a fitted profile, the 5th-95th percentile of measured / predicted time over the
held-out rows of its ``simulate calibrate`` split, by kernel and size band; for a reference profile fitted to
published figures, over its fit's held-out figures and the judge figures never fitted (a hand-set one: over the
published figures of its architecture). A profile with no such evidence (our ``triton`` profile on a
GPU we never measured, a profile read from a file) gets the wide default band, ``evidence = "none"``.
Nothing is refitted at run time.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sparsesim.simulator.errors import ConfigError

#: The shipped bands file.
BANDS_FILE = Path(str(resources.files("sparsesim.hwmodels").joinpath("bands").joinpath("error_bands.toml")))
#: Percentiles a band spans (of measured / predicted time).
QUANTILES = (0.05, 0.95)
#: Size bands: at most this many tokens, or more.
SIZE_SPLIT_TOKENS = 4096
#: The band of a profile without out-of-sample evidence: +-35% (measured / predicted).
DEFAULT_LOW, DEFAULT_HIGH = 0.65, 1.35
#: Strength of evidence, weakest first (a speedup's band says the weaker of its two times').
EVIDENCE = ("none", "published", "heldout")
MAX_BANDS_BYTES = 4 * 2**20


def size_band(tokens: int) -> str:
    """The size band of a call over ``tokens`` tokens.

    Example:
        >>> size_band(4096), size_band(4097)
        ('<=4096', '>4096')
    """
    return f"<={SIZE_SPLIT_TOKENS}" if tokens <= SIZE_SPLIT_TOKENS else f">{SIZE_SPLIT_TOKENS}"


@dataclass(frozen=True)
class Band:
    """Measured / predicted time is between ``low`` and ``high`` for 90% of the ``n`` out-of-sample rows of
    ``profile`` on ``gpu`` (``*``: any) of ``kernel`` and ``size`` (``*``: any); ``evidence`` says of which
    rows (``heldout``, ``published``) or ``none`` (the default band)."""

    profile: str
    gpu: str
    kernel: str
    size: str
    low: float
    high: float
    n: int
    evidence: str
    source: str = ""


@dataclass(frozen=True)
class BandTable:
    """The bands of a bands file and its default band."""

    bands: tuple[Band, ...]
    default_low: float = DEFAULT_LOW
    default_high: float = DEFAULT_HIGH

    def band(self, profile: str, gpu: str, kernel: str, tokens: int, *, builtin: bool = True) -> Band:
        """The band of ``profile`` (a built-in profile's name; ``builtin=False``: read from a file, no evidence)
        on ``gpu`` for ``kernel`` (``gna``, ``block_sparse``, ``dense``, ``cudnn``) over ``tokens`` tokens.

        A profile whose bands cover one measured kernel stands for it whatever the pattern; a size band
        without enough rows was pooled (``size = "*"``) when the file was made.
        """
        mine = [b for b in self.bands if builtin and b.profile == profile and b.gpu in (gpu, "*")]
        kernels = {b.kernel for b in mine}
        if kernel not in kernels and "*" not in kernels:
            mine = [b for b in mine if len(kernels) == 1]
        else:
            mine = [b for b in mine if b.kernel in (kernel, "*")]
        size = size_band(tokens)
        for b in sorted(mine, key=lambda b: (b.kernel == "*", b.size == "*")):
            if b.size in (size, "*"):
                return b
        return Band(profile, gpu, kernel, "*", self.default_low, self.default_high, 0, "none")


def _number(rec: Mapping[str, Any], key: str, where: str) -> float:
    value = rec.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}: {key}={str(value)[:40]!r}; allowed: a positive finite number")
    return float(value)


def parse_bands(data: Mapping[str, Any], where: str) -> BandTable:
    """A :class:`BandTable` from a bands file's TOML data; a bad field is a one-line :class:`ConfigError`."""
    bands = []
    raw = data.get("band", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: band is not an array of tables; allowed: [[band]] entries")
    for i, rec in enumerate(raw):
        at = f"{where} band {i + 1}"
        if not isinstance(rec, dict):
            raise ConfigError(f"{at}: not a table; allowed: [[band]] entries")
        text = {k: str(rec.get(k, "")) for k in ("profile", "gpu", "kernel", "size", "evidence", "source")}
        if not text["profile"] or text["evidence"] not in EVIDENCE:
            raise ConfigError(f"{at}: profile={text['profile'][:40]!r} evidence={text['evidence'][:40]!r}; allowed: "
                              f"a profile name and one of {', '.join(EVIDENCE)}")
        low, high = _number(rec, "low", at), _number(rec, "high", at)
        if low > high:
            raise ConfigError(f"{at}: low={low} above high={high}; allowed: low <= high")
        n = rec.get("n", 0)
        bands.append(Band(text["profile"], text["gpu"] or "*", text["kernel"] or "*", text["size"] or "*", low, high,
                          int(n) if isinstance(n, int) else 0, text["evidence"], text["source"]))
    return BandTable(tuple(bands), _number(data, "default_low", where) if "default_low" in data else DEFAULT_LOW,
                     _number(data, "default_high", where) if "default_high" in data else DEFAULT_HIGH)


def load_bands(path: str | Path | None = None) -> BandTable:
    """The bands of a file (default: the shipped one, read once)."""
    if path is None:
        return _shipped()
    from sparsesim.hwmodels.gpus import read_toml

    return parse_bands(read_toml(Path(path), "bands"), f"bands file {str(path)[:200]!r}")


@functools.lru_cache(maxsize=1)
def _shipped() -> BandTable:
    ref = resources.files("sparsesim.hwmodels").joinpath("bands").joinpath("error_bands.toml")
    where = "bands file hwmodels/bands/error_bands.toml"
    try:
        return parse_bands(tomllib.loads(ref.read_text(encoding="utf-8")), where)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where} cannot be read: {str(exc)[:200]}") from None


def _log_band(b: Band) -> tuple[float, float]:
    lo, hi = math.log(b.low), math.log(b.high)
    return (lo + hi) / 2, (hi - lo) / 2


def speedup_band(speedup: float, sparse: Band, dense: Band) -> tuple[float, float]:
    """The band of ``speedup`` (dense over sparse time) from its two times' bands, their errors taken as
    independent: in log space the centres subtract and the half-widths add in quadrature.

    Example:
        >>> b = Band("p", "*", "*", "*", 0.9, 1.1, 10, "heldout")
        >>> lo, hi = speedup_band(2.0, b, b)
        >>> round(lo, 3), round(hi, 3)
        (1.735, 2.305)
    """
    cs, ws = _log_band(sparse)
    cd, wd = _log_band(dense)
    centre, half = cd - cs, math.hypot(ws, wd)
    return speedup * math.exp(centre - half), speedup * math.exp(centre + half)


def weakest(evidence: Sequence[str]) -> str:
    """The weakest of some evidence labels (:data:`EVIDENCE` order)."""
    return min(evidence, key=EVIDENCE.index)


__all__ = ["BANDS_FILE", "Band", "BandTable", "load_bands", "parse_bands", "size_band", "speedup_band", "weakest"]
