"""Which forward kernel the model prices a call with: the rules of the warp-specialized Hopper forward."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsesim.hwmodels import load_gpu
from sparsesim.hwmodels.launch import WS_MIN_WORK
from sparsesim.hwmodels.profiles import load_profile
from sparsesim.simulator.cost import Problem
from sparsesim.simulator.patterns import BlockSparsePattern, GNAPattern
from sparsesim.simulator.predict import dense_pass, full_tilemap, sparse_call
from sparsesim.simulator.route import forward_profile, takes_ws
from sparsesim.simulator.tiling import block_sparse_tilemap, tilemap

H200, A100, B200 = load_gpu("H200"), load_gpu("A100"), load_gpu("B200")
P24 = Problem(heads=24, head_dim=128)


def test_dense_takes_it_on_hopper_from_the_minimum_work():
    n = 4096  # 4096^2 x 16 heads = 2^28
    assert takes_ws(H200, Problem(heads=16), None, n)
    assert not takes_ws(H200, Problem(heads=16), None, n - 1)
    assert not takes_ws(A100, P24, None, 65536) and not takes_ws(B200, P24, None, 65536)
    assert not takes_ws(H200, Problem(heads=24, head_dim=256), None, 65536)
    assert not takes_ws(H200, Problem(heads=24, dtype="fp8"), None, 65536)
    assert takes_ws(H200, Problem(heads=24, head_dim=64, dtype="fp16"), None, 65536)


def _blocked(size, window, q, kv, **kw):
    return tilemap(GNAPattern(input_size=size, window=window, stride=window, **kw), q, kv, "box")


def test_gna_takes_it_only_perfectly_block_sparse_without_padding_or_groups():
    size, window = (16, 32, 48), (8, 16, 16)
    tokens = math.prod(size)
    assert takes_ws(H200, P24, _blocked(size, window, (2, 8, 8), (2, 8, 8)), tokens)
    assert takes_ws(H200, P24, _blocked(size, window, (2, 8, 8), (1, 8, 8)), tokens)  # 64-key KV tiles
    assert not takes_ws(H200, P24, _blocked(size, window, (1, 8, 8), (1, 8, 8)), tokens)  # 64-row Q tiles
    sliding = tilemap(GNAPattern(input_size=size, window=window), (2, 8, 8), (2, 8, 8), "box")
    assert sliding.partial.any() and not takes_ws(H200, P24, sliding, tokens)
    padded = (16, 32, 44)  # the tiles do not divide the last axis
    assert not takes_ws(H200, P24, _blocked(padded, (8, 16, 4), (2, 8, 8), (2, 8, 8)), math.prod(padded))
    dilated = tilemap(GNAPattern(input_size=size, window=(8, 8, 8), stride=(8, 8, 8), dilation=(1, 2, 2)),
                      (2, 8, 8), (2, 8, 8), "box")
    assert dilated.groups > 1 and not takes_ws(H200, P24, dilated, tokens)
    assert not takes_ws(H200, Problem(heads=1), _blocked(size, window, (2, 8, 8), (2, 8, 8)), tokens)  # too small
    assert not takes_ws(A100, P24, _blocked(size, window, (2, 8, 8), (2, 8, 8)), tokens)


def test_block_maps_count_their_work_as_dense():
    import numpy as np

    n = 8192
    blocks = np.eye(n // 128, n // 64, dtype=bool)[None]
    tm = block_sparse_tilemap(BlockSparsePattern(block_map=blocks, seq_len=n, q_tile=128, kv_tile=64))
    assert takes_ws(H200, Problem(heads=4), tm, n)  # 8192^2 x 4 = 2^28 although one block per row is visited
    assert not takes_ws(H200, Problem(heads=3), tm, n)
    tm64 = block_sparse_tilemap(BlockSparsePattern(block_map=np.eye(n // 64, dtype=bool)[None], seq_len=n,
                                                   q_tile=64, kv_tile=64))
    assert not takes_ws(H200, Problem(heads=24), tm64, n)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([(8, 16, 32), (16, 16), (32, 24, 16), (4096,)]), st.data())
def test_the_model_and_the_kernel_plan_agree_on_the_gna_route(size, data):
    """The model's rule (tile map) against the kernels' (their plan's ``block_sparse``, groups, tiles dividing the
    layout), on random windows, strides and tiles: two implementations of one rule."""
    from sparsesim.kernels.gna_plan import plan_gna

    rank = len(size)
    window = tuple(data.draw(st.sampled_from([w for w in (1, 2, 4, 8, 16, 32) if w <= n])) for n in size)
    stride = window if data.draw(st.booleans()) else tuple(
        data.draw(st.sampled_from([s for s in (1, 2, 4, 8, 16) if s <= w])) for w in window)  # blocked: often ws
    shapes = {1: [(128,), (64,)], 2: [(8, 16), (16, 8), (8, 8), (4, 16)], 3: [(2, 8, 8), (1, 8, 16), (1, 8, 8),
                                                                             (2, 4, 8)]}[rank]
    q, kv = data.draw(st.sampled_from(shapes)), data.draw(st.sampled_from(shapes))
    if any(t > n for t, n in zip((*q, *kv), size * 2, strict=True)):
        return
    pattern = GNAPattern(input_size=size, window=window, stride=stride)
    plan = plan_gna(size, window=window, stride=stride, q_tile=q, kv_tile=kv)
    tokens = math.prod(size)
    problem = Problem(heads=64, batch=4)
    kernel_rule = (plan.block_sparse and plan.groups == 1 and plan.q_volume == 128 and plan.kv_volume in (64, 128)
                   and all(n % t == 0 for n, t in zip(size, q, strict=True))
                   and all(n % t == 0 for n, t in zip(size, kv, strict=True)))
    tm = tilemap(pattern, q, kv, "box")
    work = int(tm.visited.sum()) * problem.heads * problem.batch * math.prod(q) * math.prod(kv)
    assert takes_ws(H200, problem, tm, tokens) == (kernel_rule and work >= WS_MIN_WORK)
    if kernel_rule:  # the ws launch may run persistent, round-robin: the launch order's schedule only if the
        # work items cost alike; every Q tile of a route-taking plan visits the same number of whole KV tiles
        assert not tm.partial.any() and len(set(tm.visited.ravel().tolist())) == 1


def test_the_agreement_test_sees_both_routes():
    """The sizes and tiles above reach the ws route (else the agreement would hold vacuously)."""
    tm = tilemap(GNAPattern(input_size=(8, 16, 32), window=(8, 16, 16), stride=(8, 16, 16)), (1, 8, 16), (1, 8, 16),
                 "box")
    assert takes_ws(H200, Problem(heads=64, batch=4), tm, 8 * 16 * 32)


def test_the_triton_profile_prices_ws_calls_with_its_ws_profile():
    prof = load_profile("triton", H200)
    assert prof.ws_profile == "triton-ws"
    ws = load_profile("triton-ws", H200)
    assert ws.forward_kernel == "ws" and not ws.ws_profile
    assert forward_profile(H200, prof, P24, None, 65536).name == "triton-ws"
    assert forward_profile(H200, prof, P24, None, 65536, route="triton") is prof
    assert forward_profile(H200, prof, P24, None, 1024) is prof
    assert forward_profile(H200, prof, P24, None, 1024, route="ws").name == "triton-ws"  # as measured
    assert forward_profile(A100, prof, P24, None, 65536) is prof
    cudnn = load_profile("cudnn", H200)
    assert forward_profile(H200, cudnn, P24, None, 65536) is cudnn


def test_a_ws_gna_call_reads_its_tiles_in_place_and_runs_the_ws_forward():
    """The ws forward reads each box tile by TMA from the layout (token permutation ``none``): no permutation
    pass, the call is the kernel; the Triton route of the same 3D call permutes (``permute``) or gathers K/V."""
    prof = load_profile("triton", H200)
    size, window = (16, 32, 48), (8, 16, 16)
    pattern = GNAPattern(input_size=size, window=window, stride=window)
    tm = tilemap(pattern, (2, 8, 8), (2, 8, 8), "box")
    tokens, pairs = math.prod(size), float(pattern.visible_pairs())
    ws = sparse_call(H200, prof, P24, tm, tokens, pairs)
    triton = sparse_call(H200, prof, P24, tm, tokens, pairs, route="triton")
    assert ws.fwd_prof is not None and ws.fwd_prof.name == "triton-ws"
    assert ws.fwd_prof.token_permutation == "none" and ws.kv_layout == "direct"
    assert ws.permute_ms == 0.0 and ws.call_ms == ws.kernel.ms
    assert triton.fwd_prof is prof and triton.kv_layout in ("permute", "gather")
    assert ws.kernel.ms != triton.kernel.ms
    # forward+backward: the backward stays the Triton kernels' (the same on both routes)
    both_ws = sparse_call(H200, prof, P24, tm, tokens, pairs, backprop=True)
    both_triton = sparse_call(H200, prof, P24, tm, tokens, pairs, backprop=True, route="triton")
    assert both_ws.kernel.ms - ws.kernel.ms == pytest.approx(both_triton.kernel.ms - triton.kernel.ms)


def test_dense_ws_forward_keeps_the_triton_backward():
    prof = load_profile("triton", H200)
    n = 32768
    fwd_ws = dense_pass(H200, prof, P24, None, n, full_tilemap(1, 1, 1), False)
    fwd_tr = dense_pass(H200, prof, P24, None, n, full_tilemap(1, 1, 1), False, route="triton")
    both_ws = dense_pass(H200, prof, P24, None, n, full_tilemap(1, 1, 1), True)
    both_tr = dense_pass(H200, prof, P24, None, n, full_tilemap(1, 1, 1), True, route="triton")
    assert fwd_ws.ms != fwd_tr.ms
    assert both_ws.ms - fwd_ws.ms == pytest.approx(both_tr.ms - fwd_tr.ms)


def test_a_ws_profile_with_other_dense_tiles_prices_the_forward_at_its_own_tiles(tmp_path):
    """``ws_profile`` may name a profile file; a dense forward it prices runs at that profile's dense tiles."""
    import dataclasses

    from sparsesim.hwmodels.profiles import CALIBRATION_DIR
    from sparsesim.simulator.cost import forward_time

    text = (CALIBRATION_DIR / "triton-ws.toml").read_text()
    path = tmp_path / "ws64.toml"
    path.write_text(text.replace("dense_kv_tile = 128", "dense_kv_tile = 64"))
    prof = dataclasses.replace(load_profile("triton", H200), ws_profile=str(path))
    ws64 = load_profile(str(path), H200)
    n = 32768
    got = dense_pass(H200, prof, P24, None, n, full_tilemap(1, 1, 1), False)
    want = forward_time(H200, ws64, P24, full_tilemap(n, 128, 64), n, float(n) ** 2)
    assert got.ms == pytest.approx(want.ms) and got.ms != pytest.approx(
        dense_pass(H200, load_profile("triton", H200), P24, None, n, full_tilemap(1, 1, 1), False).ms)
