"""Kernel tests run through the Triton interpreter on CPU tensors.

``TRITON_INTERPRET=1`` must be set before ``triton.jit`` decorates the kernels, so it is set
here, at import time: pytest imports this conftest before collecting the test modules of this
folder. Kernel modules imported earlier in the same process (by another package's tests) were
decorated for the GPU; they are reloaded. The interpreter's integer-overflow sanitizer (on by
default, about half of the interpreter's time on these kernels) is switched off; the GPU has no
such check either.
"""

from __future__ import annotations

import importlib
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

_KERNEL_MODULES = ("_common", "permute", "dense", "dense_bwd", "gna", "gna_bwd", "block_sparse", "block_sparse_bwd")
for _name in _KERNEL_MODULES:
    _mod = sys.modules.get(f"sparsesim.kernels.{_name}")
    if _mod is not None:
        importlib.reload(_mod)

try:  # pragma: no cover - depends on the triton version
    import dataclasses

    import triton.runtime.interpreter as _interp

    _interp.interpreter_builder.options = dataclasses.replace(_interp.interpreter_builder.options,
                                                              sanitize_overflow=False)
except Exception:  # noqa: BLE001 - an optimization only
    pass

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def modes(monkeypatch):
    """The STREAM modes the permuted launches used (2: TMA descriptors, 1: pointers)."""
    from sparsesim.kernels import gna_bwd

    seen: list[int] = []
    real = gna_bwd._permuted_pair

    def spy(*args):
        res = real(*args)
        seen.append(res[-1])
        return res

    monkeypatch.setattr(gna_bwd, "_permuted_pair", spy)
    return seen
