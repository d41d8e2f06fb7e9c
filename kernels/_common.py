"""The online-softmax tile update shared by the dense, GNA and block-sparse kernels.

FlashAttention-2 style: running row max ``m_i`` and row sum ``l_i`` in base 2, ``qk_scale`` is
``scale * log2(e)`` so one FMA and one ``exp2`` per score. Masked scores become ``-1e6`` (not
``-inf``): a row whose keys are all masked in one tile keeps finite statistics, and the first
tile holding a visible key wipes it (``alpha = exp2(-1e6 - m) = 0``). ``l_i`` starts at 1 and
``acc`` at 0, so a Q tile that visits no KV tile writes zeros instead of NaN.
"""

import triton
import triton.language as tl

#: log2(e): folded into the softmax scale so the kernels use exp2.
LOG2E = 1.4426950408889634
#: ln(2): a base-2 log-sum-exp times this is the natural one (what the kernels save for the backward).
LN2 = 0.6931471805599453


@triton.jit
def attn_tile_update(acc, l_i, m_i, q, k, v, qk_scale, mask, MASKED: tl.constexpr):
    """One KV tile of the online softmax: returns the new ``(acc, l_i, m_i)``.

    ``q`` is ``[BLOCK_M, D]``, ``k`` and ``v`` are ``[BLOCK_N, D]``; ``mask`` (``[BLOCK_M, BLOCK_N]``
    bool, True = visible) is read only when ``MASKED``.
    """
    qk = tl.dot(q, tl.trans(k))
    if MASKED:
        qk = tl.where(mask, qk * qk_scale, -1.0e6)
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        qk = qk - m_ij[:, None]
    else:
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        qk = qk * qk_scale - m_ij[:, None]
    p = tl.math.exp2(qk)
    alpha = tl.math.exp2(m_i - m_ij)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_ij
