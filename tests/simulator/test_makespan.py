"""Scheduling CTAs onto SMs: waves and their quantization, LPT for persistent kernels, bounds."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsesim.hwmodels import load_gpu
from sparsesim.simulator.makespan import makespan, wave_count

SETTINGS = settings(max_examples=60, deadline=None)

costs_st = st.lists(st.floats(min_value=0.0, max_value=100.0, allow_nan=False), min_size=1, max_size=40)
sms_st = st.integers(min_value=1, max_value=6)
k_st = st.integers(min_value=1, max_value=3)


def greedy_list_schedule(costs, slots: int) -> float:
    """Reference: each CTA, in order, starts on the slot that frees first (Graham's list schedule)."""
    free = [0.0] * slots
    for c in costs:
        heapq.heappush(free, heapq.heappop(free) + float(c))
    return max(free)


# ---------------------------------------------------------------- hand-computed cases


@pytest.mark.parametrize("ctas_per_sm", [1, 2, 4])
def test_one_cta_costs_its_time_times_ctas_per_sm(ctas_per_sm):
    # ctas_per_sm co-resident CTAs share the SM: each runs at 1/ctas_per_sm speed.
    assert makespan(np.array([3.5]), sm_count=132, ctas_per_sm=ctas_per_sm) == pytest.approx(3.5 * ctas_per_sm)
    assert makespan(np.array([3.5]), 132, ctas_per_sm, persistent=True) == pytest.approx(3.5 * ctas_per_sm)


def test_empty_launch_takes_no_time():
    assert makespan(np.array([]), 132) == 0.0


@pytest.mark.parametrize("gpu", ["A100", "H100", "H200", "B200"])
@pytest.mark.parametrize("persistent", [False, True])
def test_one_wave_and_one_wave_plus_one(gpu, persistent):
    sms = load_gpu(gpu).sm_count
    assert makespan(np.ones(sms), sms, persistent=persistent) == 1.0  # exactly one wave
    assert makespan(np.ones(sms + 1), sms, persistent=persistent) == 2.0  # one wave plus one: a second wave
    assert makespan(np.ones(3 * sms), sms, persistent=persistent) == 3.0
    assert makespan(np.ones(3 * sms + 1), sms, persistent=persistent) == 4.0
    assert wave_count(sms, sms) == 1
    assert wave_count(sms + 1, sms) == 2


def test_two_ctas_per_sm_semantics():
    sms = 132
    # 2 * SMs slots, each at half speed: 2 * SMs unit CTAs fill one wave that lasts 2 units.
    assert makespan(np.ones(2 * sms), sms, ctas_per_sm=2) == 2.0
    # One more CTA needs a second (half-speed) wave.
    assert makespan(np.ones(2 * sms + 1), sms, ctas_per_sm=2) == 4.0
    # SMs CTAs still run at half speed (the model charges a co-resident share, not a whole SM).
    assert makespan(np.ones(sms), sms, ctas_per_sm=2) == 2.0
    assert wave_count(2 * sms, sms, 2) == 1
    assert wave_count(2 * sms + 1, sms, 2) == 2
    # Same total work as one CTA per SM for full waves.
    assert makespan(np.ones(4 * sms), sms, ctas_per_sm=2) == makespan(np.ones(4 * sms), sms, ctas_per_sm=1)


def test_persistent_lpt_beats_launch_order_on_a_crafted_list():
    # Two SMs, launch order [1, 1, 2]: the first wave runs the two short CTAs, the long one comes last:
    # 1 + 2 = 3. LPT starts the long one first: [2 | 1, 1] -> 2.
    costs = np.array([1.0, 1.0, 2.0])
    assert makespan(costs, sm_count=2, persistent=False) == 3.0
    assert makespan(costs, sm_count=2, persistent=True) == 2.0


def test_persistent_ignores_launch_order():
    rng = np.random.default_rng(0)
    costs = rng.random(50)
    assert makespan(costs, 7, persistent=True) == makespan(rng.permutation(costs), 7, persistent=True)


def test_launch_order_matters_without_persistence():
    assert makespan(np.array([2.0, 1.0, 1.0]), 2) == 2.0
    assert makespan(np.array([1.0, 1.0, 2.0]), 2) == 3.0


# ---------------------------------------------------------------- invariants


@SETTINGS
@given(costs=costs_st, sms=sms_st, k=k_st, persistent=st.booleans())
def test_lower_bounds(costs, sms, k, persistent):
    c = np.array(costs)
    span = makespan(c, sms, k, persistent)
    assert span >= c.max() * k * (1 - 1e-12)  # the longest CTA, at 1/k speed
    assert span >= c.sum() / sms * (1 - 1e-12)  # all the work spread evenly over the SMs


@SETTINGS
@given(costs=costs_st, sms=sms_st, k=k_st)
def test_persistent_meets_the_greedy_bound(costs, sms, k):
    d = np.array(costs) * k
    slots = sms * k
    assert makespan(np.array(costs), sms, k, persistent=True) <= d.sum() / slots + d.max() + 1e-9


@SETTINGS
@given(costs=costs_st, sms=sms_st, k=k_st)
def test_launch_order_within_the_sum_of_wave_maxima(costs, sms, k):
    # Waves: the kernel never takes longer than running each wave of slots CTAs to its longest CTA.
    d = np.array(costs) * k
    slots = sms * k
    waves = sum(d[i:i + slots].max() for i in range(0, d.size, slots))
    assert makespan(np.array(costs), sms, k) <= waves + 1e-9


def test_launch_order_meets_the_greedy_bound():
    costs = np.array([10.0, 1.0, 1.0, 10.0, 1.0, 10.0])
    assert greedy_list_schedule(costs, 2) == 21.0
    span = makespan(costs, sm_count=2)
    assert span <= costs.sum() / 2 + costs.max()  # 16.5 + 10 = 26.5
    assert span == pytest.approx(greedy_list_schedule(costs, 2))


@SETTINGS
@given(costs=st.lists(st.floats(min_value=0.0, max_value=100.0, allow_nan=False), min_size=1, max_size=30),
       sms=sms_st, k=k_st, persistent=st.booleans(), data=st.data())
def test_more_work_never_takes_less_time(costs, sms, k, persistent, data):
    c = np.array(costs)
    extra = np.array(data.draw(st.lists(st.floats(min_value=0.0, max_value=50.0, allow_nan=False),
                                        min_size=c.size, max_size=c.size)))
    assert makespan(c + extra, sms, k, persistent) >= makespan(c, sms, k, persistent) - 1e-9


@SETTINGS
@given(n=st.integers(min_value=1, max_value=500), sms=st.integers(min_value=1, max_value=150), k=k_st,
       cost=st.floats(min_value=0.01, max_value=10.0), persistent=st.booleans())
def test_equal_costs_are_exact_waves(n, sms, k, cost, persistent):
    expected = wave_count(n, sms, k) * cost * k
    assert wave_count(n, sms, k) == -(-n // (sms * k))
    assert makespan(np.full(n, cost), sms, k, persistent) == pytest.approx(expected, rel=1e-12)
    assert makespan(np.full(n, cost), sms, k) == pytest.approx(greedy_list_schedule(np.full(n, cost * k), sms * k))


def test_accepts_any_shape():
    c = np.arange(12.0).reshape(3, 4)
    assert makespan(c, 4) == makespan(c.ravel(), 4)


# ---------------------------------------------------------------- bulk runs, repeats, fluid


@st.composite
def run_sequences(draw):
    """A launch of runs of equal costs (as tile maps make them) and how often it repeats (heads x batch)."""
    values = draw(st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.25]), min_size=1, max_size=6))
    lengths = draw(st.lists(st.integers(1, 40), min_size=len(values), max_size=len(values)))
    return np.repeat(values, lengths), draw(st.integers(1, 4))


@settings(max_examples=150, deadline=None)
@given(case=run_sequences(), sms=st.integers(1, 9), k=k_st, persistent=st.booleans())
def test_bulk_runs_and_repeats_equal_the_greedy_schedule(case, sms, k, persistent):
    costs, repeat = case
    launch = np.tile(costs, repeat) * k
    if persistent:
        launch = np.sort(launch)[::-1]
    want = greedy_list_schedule(launch, sms * k)
    assert makespan(costs, sms, k, persistent, repeat=repeat) == pytest.approx(want, rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(costs=st.lists(st.floats(0.01, 5.0), min_size=20, max_size=200), sms=st.integers(1, 8),
       persistent=st.booleans())
def test_fluid_placement_ends_within_one_cta_of_the_greedy(costs, sms, persistent):
    import sparsesim.simulator.makespan as m

    c = np.array(costs)
    exact = makespan(c, sms, persistent=persistent)
    old = m.EXACT_LIMIT
    m.EXACT_LIMIT = 4  # force the fluid path on every stretch of short runs
    try:
        fluid = makespan(c, sms, persistent=persistent)
    finally:
        m.EXACT_LIMIT = old
    assert abs(fluid - exact) <= c.max() + 1e-9


@pytest.mark.parametrize("persistent", [False, True])
def test_a_long_1d_launch_in_bulk_equals_the_greedy(persistent):
    # Edge tiles with their own costs around one long run of interior tiles, x 24 heads: a few bulk steps.
    costs = np.r_[np.linspace(1.0, 2.0, 33), np.full(7_800, 2.0), np.linspace(2.0, 1.0, 33)]
    launch = np.tile(costs, 24)
    want = greedy_list_schedule(np.sort(launch)[::-1] if persistent else launch, 132)
    assert makespan(costs, 132, persistent=persistent, repeat=24) == pytest.approx(want, rel=1e-12)
