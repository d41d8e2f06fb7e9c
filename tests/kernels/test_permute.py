"""Token permutation into box tiles (with dilation folded into the batch) and its inverse."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from kernel_testing import randn

from sparsesim.kernels.permute import make_layout, tile_permute, tile_unpermute


def _permute_reference(x: torch.Tensor, tile: tuple, dilation: tuple) -> torch.Tensor:
    """Plain-Python permutation: groups row-major into the batch, tiles row-major, zero padding."""
    size = tuple(x.shape[1:-2])
    layout = make_layout(size, tile, dilation)
    batch, heads, dim = x.shape[0], x.shape[-2], x.shape[-1]
    out = torch.zeros(batch * layout.groups, heads, layout.padded_tokens, dim, dtype=x.dtype)
    groups = list(itertools.product(*(range(d) for d in dilation)))
    for b in range(batch):
        for gi, g in enumerate(groups):
            for t, t_idx in enumerate(itertools.product(*(range(n) for n in layout.grid))):
                for r, r_idx in enumerate(itertools.product(*(range(s) for s in tile))):
                    coord = tuple((ti * s + ri) * d + ga
                                  for ti, s, ri, d, ga in zip(t_idx, tile, r_idx, dilation, g, strict=True))
                    if all(c < n for c, n in zip(coord, size, strict=True)):
                        out[b * layout.groups + gi, :, t * layout.volume + r] = x[(b, *coord)]
    return out


@pytest.mark.parametrize(("size", "tile", "dilation"), [
    ((37,), (16,), (1,)),
    ((23,), (16,), (3,)),
    ((5, 7), (4, 4), (1, 2)),
    ((6, 5, 9), (2, 2, 4), (2, 1, 2)),
])
def test_permute_matches_python_and_round_trips(size, tile, dilation):
    x = randn(2, *size, 3, 16, dtype=torch.float16, seed=sum(size))
    xp = tile_permute(x, tile, dilation=dilation)
    assert torch.equal(xp, _permute_reference(x, tile, dilation))
    back = tile_unpermute(xp, size, tile, dilation=dilation)
    assert torch.equal(back, x)


def test_inverse_writes_only_real_tokens():
    size, tile = (5, 6), (4, 4)
    x = randn(1, *size, 2, 32, dtype=torch.float32, seed=3)
    xp = tile_permute(x, tile)
    assert xp.shape == (1, 2, math.prod((8, 8)), 32)
    out = torch.full_like(x, float("nan"))
    tile_unpermute(xp, size, tile, out=out)
    assert torch.equal(out, x)


def test_head_dim_not_power_of_two_round_trips():
    x = randn(1, 9, 2, 24, dtype=torch.float16, seed=5)
    assert torch.equal(tile_unpermute(tile_permute(x, 16), (9,), 16), x)


@pytest.mark.parametrize("tile", [(3, 8), (4, 2), (8, 64), (0, 16)])
def test_bad_tile_raises(tile):
    x = randn(1, 8, 8, 1, 16, dtype=torch.float16, seed=0)
    with pytest.raises(ValueError, match="tile"):
        tile_permute(x, tile)
