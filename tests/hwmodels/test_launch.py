"""The launch rules module: torch-free, the device-to-GPU mapping, grid limits, the rules feasibility reads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sparsesim.hwmodels.launch import (
    MAX_GRID_YZ,
    dense_config_allowed,
    gpu_for_device,
    grid_problem,
    kernel_warps,
    max_stages,
)
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.feasibility import check_tile_volume, tile_volume_problem


def test_imports_no_torch_triton_or_simulator():
    code = ("import sys, sparsesim.hwmodels.launch; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'triton', 'pandas') "
            "or m.startswith('sparsesim.simulator')]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("name", "cc", "want"), [
    ("NVIDIA H100 80GB HBM3", (9, 0), "H100"),  # an alias in H100.toml
    ("NVIDIA H200", (9, 0), "H200"),  # an alias wins over the capability (H100 and H200 are both 9.0)
    ("nvidia a100-sxm4-80gb", (8, 0), "A100"),  # case-insensitive
    ("NVIDIA B200", (10, 0), "B200"),
    ("NVIDIA H100 PCIe", (9, 0), "H100"),  # unknown name: the first file with capability 9.0
    ("NVIDIA A10", (8, 6), "A100"),  # same major
    ("NVIDIA GB300", (10, 3), "B200"),
    ("some future part", (12, 0), "B200"),  # the newest older file
    ("Tesla V100-SXM2-16GB", (7, 0), "A100"),  # older than every file: the oldest
    ("../../etc/H100.toml", (8, 0), "A100"),  # a device name is never read as a path
])
def test_gpu_for_device(name, cc, want):
    assert gpu_for_device(name, cc).name == want


def test_grid_limits():
    assert grid_problem((1, MAX_GRID_YZ, MAX_GRID_YZ)) == ""
    assert grid_problem((1, 65536, 1), ("Q tiles", "heads", "batch")) == "heads=65536; allowed: at most 65535"
    assert "z=70000" in grid_problem((1, 1, 70000))
    assert grid_problem((2**31, 1, 1)).startswith("x=2147483648")


def test_rules_anchors():
    """Values measured or documented elsewhere (kernels/NOTES.md, the H200 runs)."""
    assert [kernel_warps(v) for v in (16, 64, 128, 256)] == [4, 4, 8, 8]
    # H200 / H100 (227 KB per CTA), 128x128 tiles, head dim 128, bf16: 3 stages fit, 4 would not.
    assert max_stages(128, 128, 128, 2, 227 * 1024) == 3
    assert max_stages(128, 128, 256, 2, 227 * 1024) == 1
    assert max_stages(256, 256, 256, 2, 227 * 1024) == 0
    assert dense_config_allowed(128, 128, 8, 2) and not dense_config_allowed(128, 128, 4, 2)
    assert dense_config_allowed(64, 64, 4, 3) and not dense_config_allowed(64, 128, 4, 3)
    assert not dense_config_allowed(64, 64, 4, 2)


@pytest.mark.parametrize("volume", [16, 32, 64, 128, 256])
def test_tile_volume_ok(volume):
    assert tile_volume_problem(volume, "--q-volume") == ""
    assert check_tile_volume(volume, "--q-volume") == volume


@pytest.mark.parametrize("volume", [0, 8, 96, 512, -16, True, 64.0])
def test_tile_volume_refused(volume):
    assert tile_volume_problem(volume, "--kv-volume") == f"--kv-volume {volume}; allowed: powers of two from 16 to 256"
    with pytest.raises(ConfigError, match="powers of two from 16 to 256"):
        check_tile_volume(volume, "--kv-volume")
