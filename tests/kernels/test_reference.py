"""The torch reference and the row-subset masks used by the benchmark."""

from __future__ import annotations

import numpy as np
import torch

from sparsesim.kernels.reference import gna_reference, reference_attention, rel_error, row_reference
from sparsesim.simulator import GNAPattern, dense_mask, visible_mask


def test_reference_matches_explicit_loops():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 6, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = dense_mask(input_size=6, window=3, causal=True)
    out = reference_attention(q, k, v, mask)
    for h in range(2):
        for i in range(6):
            keys = np.flatnonzero(mask[i])
            s = torch.stack([q[0, i, h] @ k[0, j, h] for j in keys]) / 2.0
            want = (torch.softmax(s, 0)[:, None] * v[0, keys, h]).sum(0)
            assert torch.allclose(out[0, i, h], want)


def test_reference_gqa_and_empty_rows():
    q = torch.randn(1, 4, 4, 8)
    k = torch.randn(1, 4, 2, 8)
    mask = np.ones((4, 4), dtype=bool)
    mask[1] = False
    out = reference_attention(q, k, k, mask)
    assert torch.count_nonzero(out[0, 1]) == 0
    full = reference_attention(q, k.repeat_interleave(2, dim=2), k.repeat_interleave(2, dim=2))
    assert torch.allclose(out[0, [0, 2, 3]], full[0, [0, 2, 3]])


def test_row_mask_matches_dense_mask_rows():
    size, window, stride, dilation = (5, 9), (3, 4), (1, 2), (1, 2)
    rows = [0, 3, 17, 34]
    want = dense_mask(input_size=size, window=window, stride=stride, dilation=dilation)[rows]
    pattern = GNAPattern(input_size=size, window=window, stride=stride, dilation=dilation)
    assert np.array_equal(visible_mask(pattern, rows), want)


def test_gna_reference_uses_the_pattern_mask():
    """GNA reference on a 2D layout (dilated, causal axis) equals the explicit per-row softmax over the keys
    the pattern's mask names, with tokens flattened row-major."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, 6, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    kw = {"window": (2, 3), "stride": (1, 2), "dilation": (2, 1), "causal": (False, True)}
    out = gna_reference(q, k, v, **kw).reshape(1, 24, 2, 8)
    mask = visible_mask(GNAPattern(input_size=(4, 6), **kw))
    qf, kf, vf = (x.reshape(1, 24, 2, 8) for x in (q, k, v))
    for i in (0, 7, 23):
        keys = np.flatnonzero(mask[i])
        s = (kf[0, keys, 1] @ qf[0, i, 1]) / np.sqrt(8)
        assert torch.allclose(out[0, i, 1], torch.softmax(s, 0) @ vf[0, keys, 1])


def test_row_reference_equals_full_reference_rows():
    q, k, v = (torch.randn(1, 10, 4, 8) for _ in range(3))
    kv = k[:, :, :2], v[:, :, :2]
    mask = dense_mask(input_size=10, window=5)
    rows = torch.tensor([1, 4, 9])
    got = row_reference(q[:, rows], *kv, torch.from_numpy(mask[rows.numpy()]), head_chunk=3)
    want = reference_attention(q, *kv, mask, dtype=torch.float32)[:, rows]
    assert rel_error(got, want) < 1e-6
    assert rel_error(torch.full_like(got, float("nan")), want) == float("inf")
