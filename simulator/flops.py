"""The FLOP rule of attention, in one place (docs/DESIGN.md, Units and conventions).

Forward: two GEMMs (``Q K^T`` and ``P V``), 2 FLOPs per multiply-add, so ``4 * D`` FLOPs per
visible (query, key) pair and head: dense forward ``4 * B * H * N^2 * D``. Backward recomputes
``S`` and does ``dP``, ``dV``, ``dK`` and ``dQ``: five GEMMs, 2.5x the forward. A sparse kernel's
"effective" FLOP/s divides the dense count by its time (the GNA paper's convention).
"""

from __future__ import annotations

#: Matrix FLOPs per visible (query, key) pair per head-dim unit, forward and backward.
FWD_FLOPS_PER_PAIR = 4
BWD_FACTOR = 2.5
BWD_FLOPS_PER_PAIR = FWD_FLOPS_PER_PAIR * BWD_FACTOR


def attention_flops(pairs: float, *, heads: int, head_dim: int, batch: int = 1, backprop: bool = False) -> float:
    """FLOPs of attention over ``pairs`` visible (query, key) pairs per head: forward, plus backward.

    Example:
        >>> attention_flops(115200.0 ** 2, heads=24, head_dim=128) / 1e12  # HunyuanVideo, dense
        163.07453952
    """
    per_pair = FWD_FLOPS_PER_PAIR + (BWD_FLOPS_PER_PAIR if backprop else 0.0)
    return per_pair * batch * heads * head_dim * float(pairs)


def dense_flops(tokens: int, *, heads: int, head_dim: int, batch: int = 1, backprop: bool = False) -> float:
    """Dense non-causal attention: ``4 * B * H * N^2 * D`` (x3.5 with the backward)."""
    return attention_flops(float(tokens) ** 2, heads=heads, head_dim=head_dim, batch=batch, backprop=backprop)
