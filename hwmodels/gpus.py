"""GPU descriptions: one TOML data file per GPU, validated on load into frozen dataclasses."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sparsesim.hwmodels.errors import ConfigError, check_input_file

GPU_DIR = Path(__file__).parent / "gpus"
DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1}
#: The GPU every subcommand and API call uses when none is named.
DEFAULT_GPU = "H100"


#: Largest TOML data file read (GPU files, profiles, sweeps and workloads are a few KiB).
MAX_TOML_BYTES = 4 * 2**20


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Read a TOML file, turning every failure into a one-line :class:`ConfigError` (only a regular file of at
    most :data:`MAX_TOML_BYTES` is read: a device or FIFO never blocks or floods)."""
    where = f"{what} file {str(path)[:200]!r}"
    try:
        check_input_file(path, where, MAX_TOML_BYTES, "a TOML file")
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text; allowed: a TOML file") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply; allowed: a TOML data file") from None
    except (OSError, ValueError) as exc:
        reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200]
        raise ConfigError(f"{where} cannot be read: {reason}") from None


#: Bounds of a GPU file's figures: (lowest, highest), far beyond any real GPU, so a typo (``1e20`` SMs, a
#: clock in MHz) is refused before it reaches the model.
GPU_BOUNDS: dict[str, tuple[float, float]] = {
    "sm_count": (1, 10_000), "clock_GHz": (0.01, 20.0), "tensor_TFLOPs": (1e-3, 1e6), "fp32_TFLOPs": (1e-3, 1e6),
    "exp_per_clk_per_SM": (0.01, 1e4), "hbm_TBps": (1e-3, 1e4), "hbm_GB": (0.01, 1e6), "l2_MB": (0.001, 1e5),
    "l2_TBps": (1e-3, 1e5), "smem_per_SM_KB": (1, 1e5), "smem_per_block_KB": (1, 1e5),
    "max_ctas_per_SM": (1, 1024), "registers_per_SM": (1, 1 << 24), "registers_per_thread": (1, 1 << 16),
    "max_threads_per_SM": (1, 1 << 16), "tile": (1, 1 << 20),
}


def _get(table: Mapping[str, Any], key: str, where: str, kind: type | tuple = (int, float)) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: missing key {key!r}")
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = {int: "an integer", float: "a number", str: "a string", dict: "a table"}
        want = " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in (kind if isinstance(kind, tuple)
                                                                              else (kind,))))
        raise ConfigError(f"{where}: {key}={_show(value)} has the wrong type; allowed: {want}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bounded(value: float, key: str, where: str, integer: bool = False) -> None:
    lo, hi = GPU_BOUNDS[key]
    if not math.isfinite(value) or not lo <= value <= hi:
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{where}: {key}={_show(value)}; allowed: {kind} from {lo:g} to {hi:g}")


def _positive(table: Mapping[str, Any], key: str, where: str) -> float:
    value = _get(table, key, where)
    _bounded(value, key, where)
    return float(value)


def _positive_int(table: Mapping[str, Any], key: str, where: str) -> int:
    value = _get(table, key, where, int)
    _bounded(value, key, where, integer=True)
    return int(value)


@dataclass(frozen=True)
class GPU:
    """One GPU's figures; units are in the field names (rates are dense, never 2:4-sparse)."""

    name: str
    full_name: str
    architecture: str
    compute_capability: str
    aliases: tuple[str, ...]
    sm_count: int
    clock_GHz: float
    tensor_TFLOPs: Mapping[str, float]
    fp32_TFLOPs: float
    exp_per_clk_per_SM: float
    hbm_TBps: float
    hbm_GB: float
    l2_MB: float
    l2_TBps: float
    smem_per_SM_KB: float
    smem_per_block_KB: float
    max_ctas_per_SM: int
    registers_per_SM: int
    registers_per_thread: int
    max_threads_per_SM: int
    tiles_kernel: str
    default_tiles: Mapping[int, tuple[tuple[int, ...], tuple[int, ...]]]
    sources: Mapping[str, str]
    path: str

    @property
    def smem_per_block_bytes(self) -> int:
        """Largest shared memory one CTA may take (opt-in), in bytes."""
        return int(self.smem_per_block_KB * 1024)

    @property
    def exp_per_s(self) -> float:
        """Exponentials per second over the whole chip."""
        return self.exp_per_clk_per_SM * self.sm_count * self.clock_GHz * 1e9

    def tensor_flops_per_s(self, dtype: str) -> float:
        """Dense tensor-core FLOP/s for ``dtype``; a clear error where the GPU has no such rate."""
        if dtype not in self.tensor_TFLOPs:
            raise ConfigError(f"dtype={dtype!r} has no tensor-core rate on {self.name}; "
                              f"allowed: {', '.join(sorted(self.tensor_TFLOPs))}")
        return self.tensor_TFLOPs[dtype] * 1e12

    def tiles_for(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Default (Q tile, KV tile) for a layout of ``rank`` axes."""
        if rank not in self.default_tiles:
            raise ConfigError(f"{self.name} has no default tile for rank {rank}; give --q-tile and --kv-tile")
        return self.default_tiles[rank]


def _aliases(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ConfigError(f"{where}: aliases={value!r} must be a list of strings")
    return tuple(value)


def parse_gpu(data: Mapping[str, Any], path: str) -> GPU:
    """Validate a GPU table (as read from TOML) into a :class:`GPU`."""
    where = f"GPU file {path!r}"
    for section in ("compute", "memory", "limits", "tiles"):
        if not isinstance(data.get(section), dict):
            raise ConfigError(f"{where}: missing section [{section}]")
    comp, mem, lim, tiles = data["compute"], data["memory"], data["limits"], data["tiles"]
    tensor = _get(comp, "tensor_TFLOPs", where + " [compute]", dict)
    lo, hi = GPU_BOUNDS["tensor_TFLOPs"]
    for k, v in tensor.items():
        if (k not in DTYPE_BYTES or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                or not lo <= v <= hi):
            raise ConfigError(f"{where}: tensor_TFLOPs.{_show(k)}={_show(v)}; allowed: keys among "
                              f"{', '.join(DTYPE_BYTES)} with rates from {lo:g} to {hi:g}")
    if "bf16" not in tensor:
        raise ConfigError(f"{where}: tensor_TFLOPs has no bf16 rate; allowed: a table with at least bf16")
    default_tiles: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for rank in (1, 2, 3):
        q, kv = tiles.get(f"q_{rank}d"), tiles.get(f"kv_{rank}d")
        if q is None and kv is None:
            continue
        for key, t in ((f"q_{rank}d", q), (f"kv_{rank}d", kv)):
            if (not isinstance(t, list) or len(t) != rank
                    or not all(isinstance(x, int) and not isinstance(x, bool)
                               and GPU_BOUNDS["tile"][0] <= x <= GPU_BOUNDS["tile"][1] for x in t)):
                raise ConfigError(f"{where}: [tiles] {key}={_show(t)}; allowed: {rank} integers from "
                                  f"{GPU_BOUNDS['tile'][0]:g} to {GPU_BOUNDS['tile'][1]:g}")
        default_tiles[rank] = (tuple(q), tuple(kv))  # type: ignore[arg-type]
    name = _get(data, "name", where, str)
    if not name.strip() or len(name) > 64 or not name.isprintable():
        raise ConfigError(f"{where}: name={_show(name)}; allowed: 1 to 64 printable characters")
    for key in ("full_name", "compute_capability"):
        if key in data:
            _get(data, key, where, str)
    if "kernel" in tiles:
        _get(tiles, "kernel", where + " [tiles]", str)
    sources = data.get("sources", {})
    if not isinstance(sources, dict):
        raise ConfigError(f"{where}: sources={_show(sources)} has the wrong type; allowed: a table")
    smem_block, smem_sm = _positive(mem, "smem_per_block_KB", where), _positive(mem, "smem_per_SM_KB", where)
    if smem_block > smem_sm:
        raise ConfigError(f"{where}: smem_per_block_KB={smem_block:g}; allowed: at most smem_per_SM_KB={smem_sm:g}")
    return GPU(
        name=name,
        full_name=str(data.get("full_name", name)),
        architecture=_get(data, "architecture", where, str),
        compute_capability=str(data.get("compute_capability", "")),
        aliases=_aliases(data.get("aliases", []), where),
        sm_count=_positive_int(comp, "sm_count", where),
        clock_GHz=_positive(comp, "clock_GHz", where),
        tensor_TFLOPs={k: float(v) for k, v in tensor.items()},
        fp32_TFLOPs=_positive(comp, "fp32_TFLOPs", where),
        exp_per_clk_per_SM=_positive(comp, "exp_per_clk_per_SM", where),
        hbm_TBps=_positive(mem, "hbm_TBps", where),
        hbm_GB=_positive(mem, "hbm_GB", where),
        l2_MB=_positive(mem, "l2_MB", where),
        l2_TBps=_positive(mem, "l2_TBps", where),
        smem_per_SM_KB=_positive(mem, "smem_per_SM_KB", where),
        smem_per_block_KB=_positive(mem, "smem_per_block_KB", where),
        max_ctas_per_SM=_positive_int(lim, "max_ctas_per_SM", where),
        registers_per_SM=_positive_int(lim, "registers_per_SM", where),
        registers_per_thread=_positive_int(lim, "registers_per_thread", where),
        max_threads_per_SM=_positive_int(lim, "max_threads_per_SM", where),
        tiles_kernel=str(tiles.get("kernel", "")),
        default_tiles=default_tiles,
        sources={str(k): str(v) for k, v in sources.items()},
        path=path,
    )


@cache
def _builtin() -> dict[str, GPU]:
    return {p.stem: parse_gpu(read_toml(p, "GPU"), str(p)) for p in sorted(GPU_DIR.glob("*.toml"))}


def list_gpus() -> list[GPU]:
    """The built-in GPUs."""
    return list(_builtin().values())


def load_gpu(name_or_path: str | GPU) -> GPU:
    """A built-in GPU by name or alias (case-insensitive), or a user's GPU file by path."""
    if isinstance(name_or_path, GPU):
        return name_or_path
    key = str(name_or_path)
    if key.endswith(".toml") or "/" in key or _is_file(key):
        path = Path(key)
        return parse_gpu(read_toml(path, "GPU"), str(path))
    for gpu in _builtin().values():
        if key.lower() in {gpu.name.lower(), *(a.lower() for a in gpu.aliases)}:
            return gpu
    known = ", ".join(g.name for g in _builtin().values())
    raise ConfigError(f"unknown GPU {_show(key)}; allowed: {known}, or a path to a GPU .toml file")


def _is_file(key: str) -> bool:
    try:
        return Path(key).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL character
        return False
