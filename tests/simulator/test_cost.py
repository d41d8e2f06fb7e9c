"""The hardware-realistic cost model: every term on hand-computable cases, then invariants.

Expected values are computed here with explicit arithmetic from the GPU and profile figures
(never by calling the function under test twice). Published figures are regression tests.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsesim.cli.main import main
from sparsesim.hwmodels import load_gpu
from sparsesim.hwmodels.profiles import load_profile
from sparsesim.simulator import ConfigError, simulate
from sparsesim.simulator.cost import (
    BREAKDOWN,
    PassTime,
    Problem,
    combine,
    forward_time,
    pair_cost,
)
from sparsesim.simulator.flops import FWD_FLOPS_PER_PAIR as FWD_FLOPS
from sparsesim.simulator.predict import COST_COLUMNS
from sparsesim.simulator.tiling import TileMap

GPUS = ["A100", "H100", "H200", "B200"]
SETTINGS = settings(max_examples=25, deadline=None)


def ref(gpu: str):
    g = load_gpu(gpu)
    return g, load_profile("reference", g)


def hand_terms(g, p, *, head_dim, dtype, q, kv, flops, eff, load_bytes):
    """The pair-cost terms, written out from the figures (seconds on one SM)."""
    f = p.forward
    sms = g.sm_count
    elements = q * kv
    mma = elements * flops * head_dim / (g.tensor_TFLOPs[dtype] * 1e12 / sms * eff)
    exp_per_sm = g.exp_per_clk_per_SM * g.clock_GHz * 1e9 * f.exp_throughput_scale
    fp32_per_sm = g.fp32_TFLOPs * 1e12 / sms
    softmax = elements / exp_per_sm + elements * f.softmax_fp32_ops_per_element / fp32_per_sm
    # K/V reads: l2_hit_fraction from L2, the rest from HBM (harmonic blend of the two rates).
    seconds_per_byte = (f.l2_hit_fraction / (g.l2_TBps * 1e12)
                        + (1 - f.l2_hit_fraction) / (g.hbm_TBps * 1e12 * f.hbm_efficiency))
    load = load_bytes * seconds_per_byte * sms
    mask = elements * f.mask_ops_per_element / fp32_per_sm
    core = max(mma, softmax) + (1 - f.softmax_overlap) * min(mma, softmax)
    # Per KV tile: the O accumulator (q rows x head_dim) rescaled, and a fixed loop overhead.
    per_tile = q * head_dim * f.rescale_ops_per_element / fp32_per_sm + f.kv_tile_overhead_ns * 1e-9
    return {"mma": mma, "softmax": softmax, "load": load, "mask": mask, "full": max(core, load) + per_tile,
            "core": core}


def fwd_pair(gpu, *, head_dim=128, dtype="bf16", q=128, kv=128, profile="reference"):
    g = load_gpu(gpu)
    p = load_profile(profile, g)
    b = 1 if dtype == "fp8" else 2
    problem = Problem(heads=1, head_dim=head_dim, dtype=dtype)
    got = pair_cost(g, p, problem, q, kv, flops_per_element=FWD_FLOPS, mma_efficiency=p.forward.mma_efficiency,
                    load_bytes=2 * kv * head_dim * b)
    want = hand_terms(g, p, head_dim=head_dim, dtype=dtype, q=q, kv=kv, flops=4, eff=p.forward.mma_efficiency,
                      load_bytes=2 * kv * head_dim * b)
    return got, want


# ---------------------------------------------------------------- pair_cost, term by term


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("head_dim,q,kv", [(128, 128, 128), (64, 256, 128), (16, 16, 128), (256, 64, 64)])
@pytest.mark.parametrize("profile", ["reference", "triton"])
def test_pair_cost_terms(gpu, head_dim, q, kv, profile):
    got, want = fwd_pair(gpu, head_dim=head_dim, q=q, kv=kv, profile=profile)
    assert got.elements == q * kv
    for term in ("mma", "softmax", "load", "mask", "full"):
        assert getattr(got, term) == pytest.approx(want[term], rel=1e-12), term
    assert got.partial == pytest.approx(want["full"] + want["mask"], rel=1e-12)


def test_pair_cost_h100_by_hand():
    # H100: 989 TFLOP/s bf16 over 132 SMs at 76% (reference-hopper), 16 exp/clk/SM at 1.83 GHz,
    # 67 TFLOP/s fp32 (6 ops per element), softmax 85% hidden under the matrix units.
    g, p = ref("H100")
    assert (g.sm_count, g.tensor_TFLOPs["bf16"], p.forward.mma_efficiency) == (132, 989.0, 0.76)
    got, _ = fwd_pair("H100")
    mma = 128 * 128 * 4 * 128 / (989e12 / 132 * 0.76)  # ~1.473 us
    softmax = 128 * 128 / (16 * 1.83e9) + 128 * 128 * 6 / (67e12 / 132)  # ~0.753 us
    assert got.mma == pytest.approx(mma, rel=1e-9)
    assert got.softmax == pytest.approx(softmax, rel=1e-9)
    assert got.mma == pytest.approx(1.473e-6, rel=1e-3)
    core = max(mma, softmax) + (1 - 0.85) * min(mma, softmax)
    assert got.full == pytest.approx(max(core, got.load), rel=1e-9)
    assert got.bound == "compute"


@pytest.mark.parametrize("gpu", GPUS)
def test_memory_bound_pair_tiny_head_dim(gpu):
    # Head dim 16 with a 16-row Q tile: almost no matrix work, each 128-key KV tile is loaded for 16 queries.
    got, want = fwd_pair(gpu, head_dim=16, q=16, kv=128)
    assert want["load"] > want["core"] > want["mma"]
    assert got.bound == "memory"
    assert got.full == pytest.approx(want["load"], rel=1e-12)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_exp_bound_b200(head_dim):
    # B200: 2.25 PFLOP/s of matrix units but only 16 exp/clk/SM: the forward pass is exp-bound.
    got, want = fwd_pair("B200", head_dim=head_dim, q=256, kv=128)
    assert want["softmax"] > want["mma"]
    assert want["softmax"] > want["load"]
    assert got.bound == "exp"
    g, p = ref("B200")
    overlap = p.forward.softmax_overlap
    assert got.full == pytest.approx(want["softmax"] + (1 - overlap) * want["mma"], rel=1e-12)


@pytest.mark.parametrize("gpu", ["H100", "H200", "A100"])
def test_compute_bound_case(gpu):
    got, want = fwd_pair(gpu, head_dim=128, q=128, kv=128)
    assert want["mma"] > want["softmax"] and want["mma"] > want["load"]
    assert got.bound == "compute"
    g, p = ref(gpu)
    assert got.full == pytest.approx(want["mma"] + (1 - p.forward.softmax_overlap) * want["softmax"], rel=1e-12)


def test_fp8_halves_matrix_time_on_hopper():
    bf16, _ = fwd_pair("H100", dtype="bf16")
    fp8, _ = fwd_pair("H100", dtype="fp8")
    g = load_gpu("H100")
    assert fp8.mma == pytest.approx(bf16.mma * g.tensor_TFLOPs["bf16"] / g.tensor_TFLOPs["fp8"], rel=1e-12)
    assert fp8.load == pytest.approx(bf16.load / 2, rel=1e-12)  # one byte per element
    assert fp8.softmax == bf16.softmax


# ---------------------------------------------------------------- forward_time / schedule_pass


def one_cta_map(full: int, partial: int, n_ctas: int = 1, tile: int = 128) -> TileMap:
    visited = np.full((1, n_ctas), full + partial, dtype=np.int64)
    kv = np.full((1, full + partial), n_ctas, dtype=np.int64)
    return TileMap(tiling="flat", q_tile=(tile,), kv_tile=(tile,), q_grid=(n_ctas,), kv_grid=(full + partial,),
                   visited=visited, full=np.full((1, n_ctas), full, dtype=np.int64), kv_visited=kv, kv_full=kv)


def fixed_seconds(g, p, *, q=128, head_dim=128, b=2):
    """Per-CTA fixed cost in slot time: the profile's latency, hidden behind the other resident CTAs
    (1/ctas of it), plus the Q load and O store at one SM's HBM share."""
    hbm_per_sm = g.hbm_TBps * 1e12 * p.forward.hbm_efficiency / g.sm_count
    return p.forward.cta_overhead_us * 1e-6 / p.forward.ctas_per_SM + 2 * q * head_dim * b / hbm_per_sm


@pytest.mark.parametrize("gpu", GPUS)
def test_forward_time_one_cta_crafted_map(gpu):
    g, p = ref(gpu)
    problem = Problem(heads=1, head_dim=128)
    got = forward_time(g, p, problem, one_cta_map(full=3, partial=2), tokens=5 * 128, useful_pairs_per_head=1.0)
    _, t = fwd_pair(gpu)
    cta = fixed_seconds(g, p) + 3 * t["full"] + 2 * (t["full"] + t["mask"])
    assert got.num_ctas == 1
    assert got.ms == pytest.approx(cta * p.forward.ctas_per_SM * 1e3, rel=1e-12)
    assert got.breakdown["memory_ms"] == 0.0


@pytest.mark.parametrize("gpu", ["H100", "B200", "A100"])
def test_forward_time_one_wave_plus_one(gpu):
    g, p = ref(gpu)
    slots = g.sm_count * p.forward.ctas_per_SM
    problem = Problem(heads=1, head_dim=128)
    _, t = fwd_pair(gpu)
    cta = (fixed_seconds(g, p) + 4 * t["full"]) * p.forward.ctas_per_SM
    one = forward_time(g, p, problem, one_cta_map(4, 0, n_ctas=slots), tokens=slots * 128, useful_pairs_per_head=1.0)
    plus = forward_time(g, p, problem, one_cta_map(4, 0, n_ctas=slots + 1), tokens=slots * 128,
                        useful_pairs_per_head=1.0)
    assert one.ms == pytest.approx(cta * 1e3, rel=1e-12)
    assert plus.ms == pytest.approx(2 * cta * 1e3, rel=1e-12)
    assert one.wave_efficiency == pytest.approx(1.0)
    assert plus.wave_efficiency == pytest.approx((slots + 1) / (2 * slots))
    assert plus.breakdown["imbalance_ms"] > 0


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("case", ["full", "padded", "causal"])
def test_single_cta_through_simulate(gpu, case):
    # One Q tile, batch 1, one head: the kernel time is that CTA's cost (x ctas_per_SM co-resident share).
    g, p = ref(gpu)
    n = {"full": 128, "padded": 100, "causal": 128}[case]
    r = simulate(input_size=n, window=n, causal=case == "causal", q_tile=128, kv_tile=128, gpu=gpu, heads=1,
                 batch=1, head_dim=128)
    _, t = fwd_pair(gpu)
    pair = t["full"] if case == "full" else t["full"] + t["mask"]  # padding and the diagonal need masks
    assert r.visits.tolist() == [[1]]
    assert r.full_visits.tolist() == [[1 if case == "full" else 0]]
    hbm_floor = n * 4 * 128 * 2 / (g.hbm_TBps * 1e12 * p.forward.hbm_efficiency)  # Q, K, V, O once
    cta = fixed_seconds(g, p) + pair
    assert hbm_floor < cta  # the HBM floor does not bind here
    assert r.predicted_ms == pytest.approx(cta * p.forward.ctas_per_SM * 1e3, rel=1e-12)
    assert r.memory_ms == 0.0
    assert r.bound == t_bound(t)


def t_bound(t):
    return max((t["mma"], "compute"), (t["softmax"], "exp"), (t["load"], "memory"))[1]


def test_hbm_floor_binds():
    # Window 1 on a long sequence at head dim 256: each CTA visits one KV tile; moving Q, K, V and O
    # through HBM takes longer than the CTAs' own work.
    g, p = ref("H100")
    r = simulate(input_size=32768, window=1, q_tile=128, kv_tile=128, gpu="H100", heads=24, head_dim=256)
    floor_ms = 32768 * (2 * 24 + 2 * 24) * 256 * 2 / (g.hbm_TBps * 1e12 * p.forward.hbm_efficiency) * 1e3
    assert r.bound == "memory"
    assert r.memory_ms > 0
    assert r.predicted_ms == pytest.approx(floor_ms, rel=1e-12)


@pytest.mark.parametrize("gpu", GPUS)
def test_dense_useful_time_and_flops(gpu):
    # Dense 1D with the profile's dense tiles: every tile full, no masking; useful time is the FLOPs at
    # the kernel's matrix rate; TFLOP/s columns are FLOPs over the predicted time.
    g, p = ref(gpu)
    q, kv = p.forward.dense_q_tile, p.forward.dense_kv_tile
    n, heads, d = 8192, 16, 128
    r = simulate(input_size=n, window=n, q_tile=q, kv_tile=kv, gpu=gpu, heads=heads, head_dim=d,
                 dense_profile="reference")
    flops = 4 * 1 * heads * n * n * d
    assert r.masking_ms == pytest.approx(0.0, abs=1e-12)
    assert r.useful_ms == pytest.approx(flops / (g.tensor_TFLOPs["bf16"] * 1e12 * p.forward.mma_efficiency) * 1e3,
                                           rel=1e-9)
    assert r.dense_TFLOPs == pytest.approx(flops / (r.dense_ms * 1e-3) / 1e12, rel=1e-9)
    assert r.achieved_TFLOPs == pytest.approx(flops / (r.predicted_ms * 1e-3) / 1e12, rel=1e-9)
    assert r.predicted_speedup == pytest.approx(1.0, abs=1e-12)


def test_permute_ms_by_hand():
    g, p = ref("H100")
    r = simulate(input_size=(64, 64), window=(16, 16), gpu="H100", heads=8, head_dim=64, batch=2)
    # NATTEN style (reference): q, k, v in and out of tile order, and o back: 8 tensor passes of
    # B x N x H x D x 2 bytes, two launches.
    moved = 2 * 64 * 64 * (4 * 8 + 4 * 8) * 64 * 2
    launches = 2 * p.forward.launch_latency_us * 1e-3
    hbm = g.hbm_TBps * 1e12 * p.forward.hbm_efficiency
    assert r.kv_layout == "qkvo"
    assert r.permute_ms == pytest.approx(moved / hbm * 1e3 + launches, rel=1e-12)
    assert r.call_ms == pytest.approx(r.predicted_ms + r.permute_ms)
    bp = simulate(input_size=(64, 64), window=(16, 16), gpu="H100", heads=8, head_dim=64, batch=2, backprop=True)
    assert bp.permute_ms == pytest.approx(2 * moved / hbm * 1e3 + launches, rel=1e-12)
    # Ours: only k and v, read once and written as padded tiles (64x64 with 16x8 tiles: no padding), one launch.
    t = load_profile("triton", g)
    ours = simulate(input_size=(64, 64), window=(16, 16), gpu="H100", heads=8, head_dim=64, batch=16,
                    kernel_profile="triton")
    assert ours.kv_layout == "permute"
    kv_moved = 16 * 64 * 64 * 8 * 64 * 2 * 2 * 2
    assert ours.permute_ms == pytest.approx(kv_moved / (g.hbm_TBps * 1e12 * t.forward.hbm_efficiency) * 1e3
                                            + t.forward.launch_latency_us * 1e-3, rel=1e-12)


def test_combine_adds_passes():
    a = PassTime(ms=1.0, breakdown={k: 0.1 for k in BREAKDOWN}, bound="exp", wave_efficiency=0.5, num_ctas=3)
    b = PassTime(ms=3.0, breakdown={k: 0.2 for k in BREAKDOWN}, bound="compute", wave_efficiency=1.0, num_ctas=4)
    c = combine(a, b)
    assert c.ms == 4.0
    assert c.breakdown == {k: pytest.approx(0.3) for k in BREAKDOWN}
    assert c.bound == "compute"
    assert c.wave_efficiency == pytest.approx((0.5 * 1 + 1.0 * 3) / 4)
    assert c.num_ctas == 7


def test_problem_validation():
    assert Problem(heads=32, heads_kv=8).group == 4
    assert Problem(heads=8).heads_kv == 8
    with pytest.raises(ConfigError, match="heads_kv"):
        Problem(heads=32, heads_kv=5)
    with pytest.raises(ConfigError, match="dtype"):
        Problem(dtype="fp32")
    with pytest.raises(ConfigError, match="head_dim"):
        Problem(head_dim=0)


# ---------------------------------------------------------------- invariants through simulate

layouts = st.sampled_from([(1024,), (3000,), (48, 40), (64, 64), (8, 16, 24), (12, 10, 16)])


@st.composite
def configs(draw):
    size = draw(layouts)
    window = tuple(draw(st.integers(1, n)) for n in size)
    stride = tuple(draw(st.integers(1, w)) for w in window)
    causal = tuple(draw(st.booleans()) for _ in size) if draw(st.booleans()) else False
    heads = draw(st.sampled_from([1, 4, 8, 24]))
    heads_kv = draw(st.sampled_from([h for h in (1, 2, 4, 8, 24) if heads % h == 0]))
    gpu = draw(st.sampled_from(GPUS))
    dtype = draw(st.sampled_from(["bf16", "fp16"] + ([] if gpu == "A100" else ["fp8"])))
    tiling = draw(st.sampled_from(["box", "flat"]))
    return dict(input_size=size, window=window, stride=stride, causal=causal, heads=heads, heads_kv=heads_kv,
                gpu=gpu, dtype=dtype, tiling=tiling, batch=draw(st.integers(1, 3)),
                head_dim=draw(st.sampled_from([32, 64, 128])), backprop=draw(st.booleans()))


@SETTINGS
@given(cfg=configs())
def test_breakdown_sums_to_predicted_ms(cfg):
    r = simulate(**cfg)
    parts = sum(getattr(r, k) for k in BREAKDOWN)
    assert parts == pytest.approx(r.predicted_ms, rel=1e-9)
    assert all(getattr(r, k) >= 0 for k in BREAKDOWN)
    assert 0 < r.wave_efficiency <= 1 + 1e-12
    assert r.bound in ("compute", "exp", "memory")
    assert r.predicted_ms > 0 and r.dense_ms > 0
    assert r.predicted_speedup == pytest.approx(r.dense_ms / r.call_ms)
    assert r.kernel_speedup == pytest.approx(r.dense_ms / r.predicted_ms)
    assert r.call_ms == pytest.approx(r.predicted_ms + r.permute_ms)
    assert r.achieved_TFLOPs <= r.effective_TFLOPs * (1 + 1e-12)


def no_mask_profile(gpu: str):
    """The reference profile with free masking: a partial tile costs what a full one does."""
    _, p = ref(gpu)
    return dataclasses.replace(p, forward=dataclasses.replace(p.forward, mask_ops_per_element=0))


@SETTINGS
@given(size=st.sampled_from([(2048,), (1000,), (40, 48), (32, 64)]), gpu=st.sampled_from(GPUS), data=st.data())
def test_more_visited_tiles_never_predict_less_time(size, gpu, data):
    # Stride 1: a larger window sees a superset of keys, so no Q tile visits fewer KV tiles.
    w1 = tuple(data.draw(st.integers(1, n)) for n in size)
    w2 = tuple(data.draw(st.integers(a, n)) for a, n in zip(w1, size, strict=True))
    kw = dict(input_size=size, heads=4, gpu=gpu)
    a, b = simulate(window=w1, **kw), simulate(window=w2, **kw)
    assert (b.visits >= a.visits).all()
    # Per CTA the cost is fixed + visited x full + partial x mask, so with no fewer partial tiles the time
    # cannot drop. (A growing window can turn partial tiles full and save their masking: see below.)
    if ((b.visits - b.full_visits) >= (a.visits - a.full_visits)).all():
        assert b.predicted_ms >= a.predicted_ms * (1 - 1e-12)
    # With free masking, more visited tiles never predict less time, whatever turns full.
    prof = no_mask_profile(gpu)
    a, b = simulate(window=w1, kernel_profile=prof, **kw), simulate(window=w2, kernel_profile=prof, **kw)
    assert b.predicted_ms >= a.predicted_ms * (1 - 1e-12)


@pytest.mark.parametrize("size,windows", [
    ((4096,), [(w,) for w in range(1, 4097, 61)] + [(4096,)]),
    ((64, 64), [(w, w) for w in range(1, 65, 3)] + [(64, 64)]),
])
@pytest.mark.parametrize("gpu", ["H100", "A100"])
def test_growing_window_is_monotone_with_free_masking(size, windows, gpu):
    prof = no_mask_profile(gpu)
    ms = [simulate(input_size=size, window=w, heads=8, gpu=gpu, kernel_profile=prof).predicted_ms for w in windows]
    assert all(b >= a * (1 - 1e-12) for a, b in zip(ms, ms[1:], strict=False))


def test_growing_window_can_save_masking():
    # Not a bug: 1D 4096, tiles 128, window 505 -> 512 visits the same KV tiles, but at 512 more of them
    # are full, so the kernel masks less and is predicted faster.
    a = simulate(input_size=4096, window=505, gpu="H100", heads=8)
    b = simulate(input_size=4096, window=512, gpu="H100", heads=8)
    assert (b.visits == a.visits).all()
    assert (b.full_visits >= a.full_visits).all() and (b.full_visits > a.full_visits).any()
    assert b.predicted_ms < a.predicted_ms


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("causal", [False, True])
def test_dense_pattern_with_dense_tiles_predicts_exactly_one(gpu, causal):
    _, p = ref(gpu)
    r = simulate(input_size=8192, window=8192, causal=causal, q_tile=p.forward.dense_q_tile,
                 kv_tile=p.forward.dense_kv_tile, gpu=gpu, heads=16, dense_profile="reference")
    assert r.predicted_speedup == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("size,tiling", [((8192,), "box"), ((64, 128), "box"), ((16, 32, 32), "box"),
                                         ((64, 128), "flat"), ((30, 48, 80), "box")])
def test_dense_pattern_predicts_about_one(gpu, size, tiling):
    r = simulate(input_size=size, window=size, tiling=tiling, gpu=gpu, heads=16, dense_profile="reference")
    assert r.kernel_speedup == pytest.approx(1.0, rel=0.15)


@pytest.mark.parametrize("gpu", GPUS)
def test_perfectly_block_sparse_predicts_close_to_flop_bound(gpu):
    r = simulate(input_size=(256, 256), window=(80, 80), stride=(16, 16), q_tile=(16, 16), kv_tile=(16, 8), gpu=gpu,
                 dense_profile="reference")
    assert r.block_sparse
    assert r.flop_speedup == pytest.approx(10.24)
    assert r.kernel_speedup == pytest.approx(r.flop_speedup, rel=0.10)
    assert r.kernel_speedup <= r.flop_speedup


@pytest.mark.parametrize("gpu", GPUS)
def test_permutation_cost_only_for_multi_dimensional_box_tiles(gpu):
    flat = simulate(input_size=(64, 64), window=(16, 16), tiling="flat", gpu=gpu)
    one_d = simulate(input_size=4096, window=512, gpu=gpu)
    box2 = simulate(input_size=(64, 64), window=(16, 16), gpu=gpu)
    box3 = simulate(input_size=(16, 32, 32), window=(8, 8, 8), gpu=gpu)
    assert flat.permute_ms == 0.0 and one_d.permute_ms == 0.0
    assert flat.kv_layout == one_d.kv_layout == "direct"
    assert box2.permute_ms > 0 and box3.permute_ms > 0
    assert box3.predicted_speedup < box3.kernel_speedup


@pytest.mark.parametrize("gpu", GPUS)
def test_backprop_costs_more_than_forward(gpu):
    kw = dict(input_size=(32, 64), window=(16, 16), gpu=gpu, heads=8)
    fwd, both = simulate(**kw), simulate(backprop=True, **kw)
    assert both.predicted_ms > fwd.predicted_ms
    assert both.dense_ms > fwd.dense_ms
    assert sum(getattr(both, k) for k in BREAKDOWN) == pytest.approx(both.predicted_ms, rel=1e-9)


@pytest.mark.parametrize("gpu", GPUS)
def test_dense_backward_over_forward_is_plausible(gpu):
    kw = dict(input_size=16384, window=16384, gpu=gpu, heads=16, head_dim=128)
    fwd, both = simulate(**kw), simulate(backprop=True, **kw)
    ratio = (both.dense_ms - fwd.dense_ms) / fwd.dense_ms  # backward alone over forward
    assert 2.0 <= ratio <= 4.5


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("size,window", [(4096, 512), (16384, 16384), ((64, 64), (16, 16)), ((16, 32, 32), (8, 8, 8))])
@pytest.mark.parametrize("heads_kv", [1, 8])
def test_gqa_forward_never_slower_than_mha(gpu, size, window, heads_kv):
    kw = dict(input_size=size, window=window, gpu=gpu, heads=32, batch=2)
    gqa, mha = simulate(heads_kv=heads_kv, **kw), simulate(**kw)
    assert gqa.predicted_ms <= mha.predicted_ms * (1 + 1e-12)
    assert gqa.dense_ms <= mha.dense_ms * (1 + 1e-12)


def test_gqa_backward_costs_at_most_its_dkdv_reduction_over_mha():
    # dK/dV are computed per query head and summed per KV head afterwards: a memory-bound extra.
    kw = dict(input_size=1024, window=1024, gpu="H100", heads=32, backprop=True)
    gqa, mha = simulate(heads_kv=1, **kw), simulate(**kw)
    assert gqa.predicted_ms <= mha.predicted_ms * 1.10
    assert gqa.memory_ms > mha.memory_ms


def test_fp8_faster_than_bf16_on_h100():
    kw = dict(input_size=(256, 256), window=(80, 80), stride=(16, 16), q_tile=(16, 16), kv_tile=(16, 8), gpu="H100")
    fp8, bf16 = simulate(dtype="fp8", **kw), simulate(dtype="bf16", **kw)
    assert fp8.predicted_ms < bf16.predicted_ms
    assert fp8.dense_ms < bf16.dense_ms
    b200 = dict(kw, gpu="B200")
    assert simulate(dtype="fp8", **b200).predicted_ms <= simulate(dtype="bf16", **b200).predicted_ms


def test_fp8_on_a100_is_a_config_error():
    with pytest.raises(ConfigError, match="fp8"):
        simulate(input_size=4096, window=512, gpu="A100", dtype="fp8")


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("size,window", [(4096, 512), ((64, 64), (16, 16)), ((16, 32, 32), (8, 8, 8))])
@pytest.mark.parametrize("backprop", [False, True])
def test_every_gpu_works(gpu, size, window, backprop):
    r = simulate(input_size=size, window=window, gpu=gpu, backprop=backprop)
    assert r.gpu == gpu
    for col in COST_COLUMNS:
        assert col in r.to_dict()
    assert 0 < r.wave_efficiency <= 1
    assert r.kernel_profile == f"reference-{load_gpu(gpu).architecture}"
    assert np.isfinite([r.predicted_ms, r.dense_ms, r.predicted_speedup]).all()


# ---------------------------------------------------------------- published figures (regression)


def dense_16k(gpu, dtype):
    # The reference profiles model the published kernels (FA2/FA3/FA4): their own dense baseline.
    return simulate(input_size=16384, window=16384, causal=False, head_dim=128, heads=16, batch=1, gpu=gpu,
                    dtype=dtype, dense_profile="reference")


def test_flashattention2_a100_forward():
    # FlashAttention-2 paper: forward reaches 50-73% of the A100's 312 TFLOP/s.
    r = dense_16k("A100", "fp16")
    assert 0.50 * 312 <= r.dense_TFLOPs <= 0.73 * 312


def test_flashattention3_h100_forward_curve():
    # FlashAttention-3 paper, head dim 128, no causal mask, 16K tokens as batch x sequence: the
    # reference-hopper profile was set from this curve (benchmarks/published.py holds the figures).
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "published.py"
    spec = importlib.util.spec_from_file_location("published", path)
    assert spec is not None and spec.loader is not None
    published = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(published)
    for n, (_, fa3) in published.FA3_H100_HDIM128.items():
        assert published.dense("H100", "fp16", n).dense_TFLOPs == pytest.approx(fa3, rel=0.08), n


def test_flashattention4_b200_forward_is_exp_bound():
    # FlashAttention-4: ~1.6 PFLOP/s bf16 forward on B200, limited by exponentials.
    r = dense_16k("B200", "bf16")
    assert r.dense_TFLOPs == pytest.approx(1600, rel=0.12)
    assert r.bound == "exp"


# ---------------------------------------------------------------- CLI


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_table_has_the_cost_columns(capsys):
    code, out, err = run(capsys, "table", "--input-size", "4096", "--window", "512", "--backprop", "--heads-kv", "8",
                         "--heads", "32", "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    for col in COST_COLUMNS:
        assert col in row, col
    assert row["backprop"] is True and row["heads_kv"] == 8 and row["heads"] == 32
    assert sum(row[k] for k in BREAKDOWN) == pytest.approx(row["predicted_ms"], rel=1e-9)
    direct = simulate(input_size=4096, window=512, backprop=True, heads_kv=8, heads=32)
    assert row["predicted_ms"] == pytest.approx(direct.predicted_ms, rel=1e-12)


def test_cli_table_fp8_on_a100_exits_2(capsys):
    code, out, err = run(capsys, "table", "--input-size", "4096", "--window", "512", "--gpu", "A100",
                         "--dtype", "fp8")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "fp8" in err
