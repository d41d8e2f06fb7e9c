"""Measured ceilings of a GPU (a large copy, a large GEMM, dense SDPA), read from the JSON files that
``benchmarks/gpu_ceilings.py`` writes into ``hwmodels/measurements/``. Floors and checks read them
from here; no measured figure is typed anywhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sparsesim.hwmodels.errors import ConfigError
from sparsesim.hwmodels.gpus import GPU, load_gpu

MEASUREMENT_DIR = Path(__file__).parent / "measurements"


@dataclass(frozen=True)
class Ceilings:
    """One measurement run's ceilings on one GPU (units in the names)."""

    gpu: str
    device_name: str
    date: str
    commit: str
    torch: str
    triton: str
    gemm_bf16_TFLOPs: float
    hbm_copy_TBps: float
    l2_read_TBps: float | None
    path: str


def _parse(data: dict, path: Path, gpu: GPU) -> Ceilings:
    try:
        return Ceilings(gpu=gpu.name, device_name=str(data["gpu"]), date=str(data["date"]),
                        commit=str(data.get("commit", "unknown")), torch=str(data.get("torch", "")),
                        triton=str(data.get("triton", "")), gemm_bf16_TFLOPs=float(data["gemm_bf16_8192_TFLOPs"]),
                        hbm_copy_TBps=float(data["hbm_copy_TBps"]),
                        l2_read_TBps=float(data["l2_read_TBps_sum16MiB"]) if "l2_read_TBps_sum16MiB" in data else None,
                        path=str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"measurement file {str(path)!r} lacks or mangles {exc}") from None


def load_ceilings(gpu: str | GPU = "H200", directory: Path | None = None) -> Ceilings:
    """The newest measured ceilings of ``gpu`` (a name, alias or :class:`GPU`).

    Example:
        >>> load_ceilings("H200").hbm_copy_TBps > 4.0
        True
    """
    spec = load_gpu(gpu)
    found = []
    for path in sorted((directory or MEASUREMENT_DIR).glob("ceilings_*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"measurement file {str(path)!r} is not readable JSON: {exc}") from None
        name = str(data.get("gpu", ""))
        if name.lower() in {spec.name.lower(), *(a.lower() for a in spec.aliases)}:
            found.append((str(data.get("date", "")), path.name, _parse(data, path, spec)))
    if not found:
        raise ConfigError(f"no measured ceilings for {spec.name} under {directory or MEASUREMENT_DIR}; "
                          f"run benchmarks/gpu_ceilings.py on that GPU")
    return max(found)[2]
