"""Fixtures shared by the test folders: the `simulate` command run in-process, and a tiny workload file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

#: A two-block, three-head workload small enough for a search in seconds (its patterns are searched).
TINY_WORKLOAD = """
name = "tiny"
layout = [32, 32]
heads = 3
head_dim = 32
hidden = 96
mlp = 384
steps = 4
dtype = "bf16"
[[blocks]]
kind = "block"
count = 2
gemms = [[288, 96], [96, 96], [384, 96], [96, 384]]
[[patterns]]
window = [16, 16]
stride = [8, 8]
"""


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``cli(*argv)``: run ``simulate ARGV`` in this process and return (exit code, stdout, stderr)."""
    from sparsesim.cli.main import main

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code  # type: ignore[assignment]
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture()
def tiny_workload(tmp_path: Path) -> Path:
    """The tiny workload written to ``tmp_path/tiny.toml``."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_WORKLOAD)
    return path
