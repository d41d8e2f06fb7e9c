"""``gna_attention(..., heads=...)``: a launch over some of a layer's heads, run in place through a head map.

Checked against the float64 reference on the launched heads, with the other heads of ``out`` left exactly as
they were, for every K/V layout (gather, permute, direct) and GQA; bad head lists are one-line errors.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from sparsesim.kernels.gna import gna_attention  # noqa: E402
from sparsesim.kernels.reference import gna_reference  # noqa: E402

CASES = [  # layout, window, stride, dilation, kv layout, heads, heads_kv, tile per axis
    ((8, 8), (3, 5), (1, 2), (2, 1), "gather", 6, 6, 4),
    ((8, 8), (4, 4), (4, 4), (1, 1), "permute", 6, 3, 4),
    ((4, 4, 4), (2, 3, 3), (1, 1, 1), (1, 1, 1), "permute", 4, 4, 4),
    ((40,), (9,), (1,), (1,), "direct", 4, 2, 16),
]


@pytest.mark.parametrize(("layout", "window", "stride", "dilation", "kv_layout", "h", "hk", "tile"), CASES)
def test_heads_in_place_match_reference_and_leave_the_rest(layout, window, stride, dilation, kv_layout, h, hk, tile):
    gen = torch.Generator().manual_seed(len(layout) * 7 + h)
    q = torch.randn(1, *layout, h, 16, generator=gen)
    k = torch.randn(1, *layout, hk, 16, generator=gen)
    v = torch.randn(1, *layout, hk, 16, generator=gen)
    group = h // hk
    heads = list(range(group, 2 * group))  # the second K/V head's query heads
    out = torch.full_like(q, 7.0)
    tiles = [min(tile, n) for n in layout]
    got = gna_attention(q, k, v, window=window, stride=stride, dilation=dilation, kv_layout=kv_layout,
                        q_tile=tiles, kv_tile=tiles, out=out, heads=heads)
    assert got is out
    ref = gna_reference(q.double(), k.double(), v.double(), window=window, stride=stride, dilation=dilation)
    assert (out[..., heads, :].double() - ref[..., heads, :]).abs().max() < 1e-5
    others = [x for x in range(h) if x not in heads]
    assert bool((out[..., others, :] == 7.0).all())


@pytest.mark.parametrize(("heads", "needle"), [([], "distinct"), ([0, 0], "distinct"), ([9], "distinct"),
                                               ([1, 2], "whole groups of 2"), (["a"], "sequence of head")])
def test_bad_head_lists_are_one_line(heads, needle):
    q, k, v = torch.randn(1, 16, 4, 16), torch.randn(1, 16, 2, 16), torch.randn(1, 16, 2, 16)
    with pytest.raises(ValueError, match=needle):
        gna_attention(q, k, v, window=5, q_tile=16, kv_tile=16, heads=heads)
