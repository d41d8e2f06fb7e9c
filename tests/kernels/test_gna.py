"""GNA kernel vs the reference built from the simulator's dense_mask, under the Triton interpreter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_testing import assert_close, randn

from sparsesim.kernels import gna_attention
from sparsesim.kernels.gna_plan import default_tiles, plan_gna
from sparsesim.kernels.reference import gna_reference
from sparsesim.simulator import GNAPattern, tilemap

CASES = [
    # size, window, stride, dilation, causal, q_tile, kv_tile
    ((37,), 9, 1, 1, False, 16, 16),                          # non-divisible sliding window
    ((40,), 8, 4, 1, True, 16, 16),                            # causal strided
    ((45,), 5, 2, 3, False, 16, 16),                           # dilation: groups of length 15
    ((12, 10), (5, 7), (2, 3), 1, (False, True), (4, 4), (4, 4)),
    ((16, 16), (8, 8), (8, 8), 1, False, (4, 4), (4, 4)),      # perfectly block-sparse
    ((13, 11), (3, 4), (1, 2), (2, 2), (True, False), (4, 4), (2, 8)),  # groups of unequal length
    ((4, 5, 6), (3, 3, 4), (1, 2, 3), (1, 1, 1), (False, False, True), (2, 2, 4), (2, 4, 2)),
    ((4, 8, 8), (2, 4, 4), (2, 4, 4), 1, False, (2, 2, 4), (2, 2, 4)),  # 3D block-sparse
    ((5, 6, 7), (2, 3, 3), 1, (2, 1, 2), (True, False, False), (1, 4, 4), (2, 2, 4)),
]


def _run(size, window, stride, dilation, causal, q_tile, kv_tile, dtype, seed, heads=2, heads_kv=1, dim=16,
         use_desc=None):
    q = randn(1, *size, heads, dim, dtype=dtype, seed=seed)
    k = randn(1, *size, heads_kv, dim, dtype=dtype, seed=seed + 1)
    v = randn(1, *size, heads_kv, dim, dtype=dtype, seed=seed + 2)
    kw = {"window": window, "stride": stride, "dilation": dilation, "causal": causal}
    out = torch.full_like(q, float("nan"))
    if use_desc is None:
        gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, out=out, **kw)
    else:
        from sparsesim.kernels.gna import launch_gna, permute_qkv, unpermute_out

        plan = plan_gna(size, q_tile=q_tile, kv_tile=kv_tile, **kw)
        qp, kp, vp = permute_qkv(plan, q, k, v)
        op = launch_gna(plan, qp, kp, vp, torch.empty_like(qp), dim ** -0.5, use_desc=use_desc)
        unpermute_out(plan, op, out)
    assert_close(out, gna_reference(q, k, v, **kw), dtype)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_gna_matches_reference(case):
    dtype = torch.float16 if sum(case[0]) % 2 else torch.float32
    _run(*case, dtype=dtype, seed=sum(case[0]))


@pytest.mark.parametrize("use_desc", [False, True])
def test_gna_pointer_and_descriptor_paths(use_desc):
    _run((12, 10), (5, 7), (2, 3), (2, 1), (False, True), (4, 4), (4, 4), torch.float16, 7, use_desc=use_desc)


def test_gna_default_tiles_and_gqa():
    # 1D default tiles (128/128) on a short sequence: one padded tile, 4 query heads on 2 KV heads.
    assert default_tiles(1) == ((128,), (128,))
    _run((50,), 11, 3, 1, False, None, None, torch.float16, 3, heads=4, heads_kv=2)


@st.composite
def gna_configs(draw):
    rank = draw(st.integers(1, 3))
    shapes = {1: [(16,)], 2: [(4, 4), (2, 8), (8, 2)], 3: [(2, 2, 4), (1, 4, 4), (2, 4, 2)]}[rank]
    size, window, stride, dilation, causal = [], [], [], [], []
    for _ in range(rank):
        n = draw(st.integers(3, {1: 40, 2: 12, 3: 6}[rank]))
        d = draw(st.integers(1, min(3, n)))
        w = draw(st.integers(1, n // d))
        size.append(n)
        dilation.append(d)
        window.append(w)
        stride.append(draw(st.integers(1, w)))
        causal.append(draw(st.booleans()))
    q_tile = draw(st.sampled_from(shapes))
    kv_tile = draw(st.sampled_from(shapes))
    return tuple(size), tuple(window), tuple(stride), tuple(dilation), tuple(causal), q_tile, kv_tile


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(gna_configs())
def test_gna_property_matches_reference(config):
    _run(*config, dtype=torch.float32, seed=11, heads=1)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(gna_configs())
def test_plan_agrees_with_simulator_tilemap(config):
    """Without dilation the kernel's schedule is the simulator's tile map, tile for tile."""
    size, window, stride, _, causal, q_tile, kv_tile = config
    plan = plan_gna(size, window=window, stride=stride, causal=causal, q_tile=q_tile, kv_tile=kv_tile)
    tm = tilemap(GNAPattern(input_size=size, window=window, stride=stride, causal=causal), q_tile, kv_tile)
    assert np.array_equal(plan.visited[0], tm.visited[0])
    assert plan.block_sparse == (int(tm.partial.sum()) == 0)
    assert plan.tile_speedup == pytest.approx(tm.num_kv_tiles / tm.visited.max())


def test_plan_block_sparse_flag_on_bench_cases():
    assert plan_gna((256, 256), window=80, stride=16, q_tile=(16, 8), kv_tile=(16, 8)).block_sparse
    assert plan_gna((30, 48, 80), window=(18, 24, 24), stride=(16, 8, 8), q_tile=(2, 8, 8),
                    kv_tile=(2, 8, 8)).block_sparse
    stride1 = plan_gna((30, 48, 80), window=(18, 24, 24), q_tile=(8, 4, 4), kv_tile=(2, 8, 4))
    assert not stride1.block_sparse and all(stride1.mask_axes)


def test_plan_dilation_groups_have_their_own_lengths():
    # L = 13, d = 2: groups of 7 and 6 positions; window 5 is clamped inside each group.
    plan = plan_gna((13,), window=5, dilation=2, q_tile=16, kv_tile=16)
    lo, hi = plan.lohi[2, 0, :7, 0], plan.lohi[2, 0, :7, 1]
    assert lo.tolist() == [0, 0, 0, 1, 2, 2, 2] and hi.tolist() == [4, 4, 4, 5, 6, 6, 6]
    lo1, hi1 = plan.lohi[2, 1, :6, 0], plan.lohi[2, 1, :6, 1]
    assert lo1.tolist() == [0, 0, 0, 1, 1, 1] and hi1.tolist() == [4, 4, 4, 5, 5, 5]
    assert plan.q_layout.groups == 2 and math.prod(plan.q_layout.grid) == 1
