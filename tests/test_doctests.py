"""The examples in the docstrings of the CPU-side modules run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "sparsesim.simulator", "sparsesim.simulator.patterns", "sparsesim.simulator.schedule",
    "sparsesim.simulator.flat", "sparsesim.simulator.makespan", "sparsesim.simulator.feasibility",
    "sparsesim.simulator.flops", "sparsesim.simulator.engine", "sparsesim.simulator.workloads",
    "sparsesim.hwmodels.measurements", "sparsesim.kernels._launch", "sparsesim.hwmodels.launch",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
