"""GNA kernel vs the reference built from the simulator's dense_mask, under the Triton interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_testing import assert_close, randn

from sparsesim.hwmodels import load_gpu
from sparsesim.kernels import gna_attention
from sparsesim.kernels.gna import KV_LAYOUTS, choose_kv_layout
from sparsesim.kernels.gna_plan import packed_counts, plan_gna
from sparsesim.kernels.reference import gna_reference
from sparsesim.simulator import simulate

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
         kv_layout=None, batch=1):
    q = randn(batch, *size, heads, dim, dtype=dtype, seed=seed)
    k = randn(batch, *size, heads_kv, dim, dtype=dtype, seed=seed + 1)
    v = randn(batch, *size, heads_kv, dim, dtype=dtype, seed=seed + 2)
    kw = {"window": window, "stride": stride, "dilation": dilation, "causal": causal}
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    gna_attention(q, k, v, q_tile=q_tile, kv_tile=kv_tile, out=out, kv_layout=kv_layout, **kw)
    assert_close(out, gna_reference(q, k, v, **kw), dtype)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_gna_matches_reference(case):
    dtype = torch.float16 if sum(case[0]) % 2 else torch.float32
    _run(*case, dtype=dtype, seed=sum(case[0]))


@pytest.mark.parametrize("kv_layout", ["gather", "permute"])
def test_gna_every_kv_layout_with_dilation_and_batch(kv_layout):
    _run((12, 10), (5, 7), (2, 3), (2, 1), (False, True), (4, 4), (4, 4), torch.float16, 7, kv_layout=kv_layout,
         batch=2)


@pytest.mark.parametrize("kv_layout", KV_LAYOUTS)
def test_gna_1d_every_kv_layout(kv_layout):
    _run((70,), 21, 4, 1, True, 16, 32, torch.float16, 9, kv_layout=kv_layout, batch=2, heads=4, heads_kv=2)


def test_gna_strided_inputs():
    # q, k, v as views of one fused qkv tensor (non-contiguous, heads not innermost-contiguous).
    qkv = randn(1, 9, 11, 3, 2, 16, dtype=torch.float16, seed=5)
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    kw = {"window": (3, 5), "stride": (1, 2)}
    for kv_layout in ("gather", "permute"):
        out = gna_attention(q, k, v, q_tile=(4, 4), kv_tile=(4, 4), kv_layout=kv_layout, **kw)
        assert_close(out, gna_reference(q, k, v, **kw), torch.float16)


@pytest.mark.parametrize("kv_layout", ["gather", "permute", None])
def test_gna_k_and_v_with_different_strides(kv_layout):
    # k normalized into a fresh tensor, v still a view of the fused projection (a QK-norm block's shapes).
    qkv = randn(2, 6, 8, 3, 2, 16, dtype=torch.float16, seed=11)
    q, k, v = qkv[:, :, :, 0].contiguous(), qkv[:, :, :, 1].contiguous(), qkv[:, :, :, 2]
    assert k.stride() != v.stride()
    kw = {"window": (3, 5), "stride": (1, 2)}
    out = gna_attention(q, k, v, q_tile=(4, 4), kv_tile=(4, 4), kv_layout=kv_layout, **kw)
    assert_close(out, gna_reference(q, k, v, **kw), torch.float16)


def test_gna_default_tiles_and_gqa():
    # 1D default tiles (128/128, the H200 file) shrink to a 50-token sequence (64); 4 query heads on 2 KV heads.
    assert load_gpu("H200").tiles_for(1) == ((128,), (128,))
    assert plan_gna((50,), window=11, stride=3).schedule.q_tile == (64,)
    _run((50,), 11, 3, 1, False, None, None, torch.float16, 3, heads=4, heads_kv=2)


def test_kv_layout_choice():
    from sparsesim.kernels.gna import PERMUTE_MIN_KV_ROWS

    plan = plan_gna((64, 64), window=8)
    heads = PERMUTE_MIN_KV_ROWS // 4096
    assert choose_kv_layout(plan, 1, heads - 1) == "gather"
    assert choose_kv_layout(plan, 1, heads) == "permute"
    one_d = plan_gna((4096,), window=512)
    assert choose_kv_layout(one_d, 1, heads) == "direct" and choose_kv_layout(one_d, 1, heads - 1) == "gather"
    assert choose_kv_layout(plan_gna((4096,), window=512, dilation=2), 1, heads) == "permute"


def test_repeated_call_reuses_the_launch():
    from sparsesim.kernels import gna

    q = randn(1, 8, 8, 2, 16, dtype=torch.float16, seed=1)
    items = gna._LAUNCHES.items
    gna_attention(q, q, q, window=3, q_tile=(4, 4))
    n = len(items)
    first = items[next(reversed(items))]
    gna_attention(q + 1, q, q, window=3, q_tile=(4, 4))
    assert len(items) == n and items[next(reversed(items))] is first
    gna_attention(q, q, q, window=5, q_tile=(4, 4))
    assert len(items) == n + 1


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


@settings(max_examples=80, deadline=None, derandomize=True)
@given(gna_configs())
def test_launch_arrays_equal_the_simulated_schedule(config):
    """What the kernel is told to visit (its launch arrays) is what simulate() counts, CTA for CTA."""
    size, window, stride, dilation, causal, q_tile, kv_tile = config
    plan = plan_gna(size, window=window, stride=stride, dilation=dilation, causal=causal, q_tile=q_tile,
                    kv_tile=kv_tile)
    rec = simulate(input_size=size, window=window, stride=stride, dilation=dilation, causal=causal, q_tile=q_tile,
                   kv_tile=kv_tile, gpu="H200")
    visited, full = packed_counts(plan)
    assert np.array_equal(visited, rec.visits[0])
    assert np.array_equal(full, rec.full_visits[0])
    assert plan.block_sparse == (rec.partial_fraction == 0)
    assert rec.max_kv_tiles == visited.max()


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
    assert plan.groups == 2 and plan.num_q_tiles == 1
