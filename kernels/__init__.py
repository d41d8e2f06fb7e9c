"""Triton kernels that run the simulator's tile schedule, their torch reference and GPU benchmarks.

Public surface (imported lazily, so ``from sparsesim.kernels import dense_configs`` needs
neither torch nor triton):

- :func:`attention`: dense fused attention forward, ``[batch, tokens, heads, head_dim]``.
- :func:`gna_attention`: generalized neighborhood attention, 1D/2D/3D, NATTEN layout (differentiable: custom
  ops ``sparsesim::gna_fwd`` / ``sparsesim::gna_bwd``, traceable by ``torch.compile(fullgraph=True)``).
- :func:`gna_forward` / :func:`gna_backward`: its forward with the log-sum-exp, and its backward kernels.
- :func:`block_sparse_attention`: explicit per-head block maps.
- :class:`BlockMap`, :func:`prepare_block_map`: a block map validated and listed once, reused every call.
- :func:`reference_attention`: torch reference from the simulator's masks.
- :func:`dense_configs`: the dense kernel's autotune space.
- :func:`run_plan`: one layer of a search plan, as its launches run.
- :func:`apply_plan`: a context in which a model's attention calls run as a plan says.

On a machine without a GPU, set ``TRITON_INTERPRET=1`` before importing triton to run the
kernels on CPU tensors through the Triton interpreter.

Example:
    >>> from sparsesim.kernels import dense_configs
    >>> len(dense_configs(128, "bf16")) > 0
    True
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BlockMap", "apply_plan", "attention", "block_sparse_attention", "dense_configs", "gna_attention",
           "gna_backward", "gna_forward", "plan_gna", "prepare_block_map", "reference_attention", "run_plan"]

_WHERE = {
    "attention": "sparsesim.kernels.dense",
    "gna_attention": "sparsesim.kernels.gna",
    "gna_forward": "sparsesim.kernels.gna",
    "gna_backward": "sparsesim.kernels.gna_bwd",
    "block_sparse_attention": "sparsesim.kernels.block_sparse",
    "BlockMap": "sparsesim.kernels.block_map",
    "prepare_block_map": "sparsesim.kernels.block_map",
    "reference_attention": "sparsesim.kernels.reference",
    "dense_configs": "sparsesim.kernels._launch",
    "plan_gna": "sparsesim.kernels.gna_plan",
    "run_plan": "sparsesim.kernels.plan_run",
    "apply_plan": "sparsesim.kernels.apply",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        try:
            module = importlib.import_module(_WHERE[name])
        except ModuleNotFoundError as exc:
            if exc.name in ("torch", "triton"):
                raise ModuleNotFoundError(
                    f"sparsesim.kernels.{name} needs {exc.name}, which is not installed; "
                    f"install the kernels extra: pip install 'sparsesim[kernels]'", name=exc.name) from None
            raise
        return getattr(module, name)
    raise AttributeError(f"module 'sparsesim.kernels' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
