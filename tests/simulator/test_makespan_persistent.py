"""The persistent GNA forward's static schedule (longest first, in rounds) and the default's choice."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsesim.simulator.makespan import (
    PERSISTENT_MIN_GAIN,
    makespan,
    persistent_programs,
    persistent_schedule,
    schedule_choice,
)

costs_st = st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, 7.25]) | st.floats(0.01, 10.0), min_size=1,
                    max_size=60)


def _programs(data, n):
    return data.draw(st.integers(1, n))


@settings(max_examples=150, deadline=None)
@given(costs=costs_st, data=st.data())
def test_every_item_once_and_loads_are_the_sums(costs, data):
    c = np.array(costs)
    p = _programs(data, c.size)
    s = persistent_schedule(c, p)
    assert s.programs == p and s.starts[0] == 0 and s.starts[-1] == c.size
    assert np.all(np.diff(s.starts) >= 1)  # every program runs something (p <= items)
    assert sorted(s.order.tolist()) == list(range(c.size))
    for q in range(p):
        mine = c[s.order[s.starts[q]:s.starts[q + 1]]]
        assert s.loads[q] == pytest.approx(mine.sum(), rel=1e-12)
        assert np.all(np.diff(mine) <= 0)  # a program runs its items longest first


@settings(max_examples=150, deadline=None)
@given(costs=costs_st, data=st.data())
def test_bounds(costs, data):
    c = np.array(costs)
    p = _programs(data, c.size)
    span = persistent_schedule(c, p).makespan()
    assert span >= max(c.sum() / p, c.max()) - 1e-9
    assert span <= c.sum() / p + c.max() + 1e-9  # each round keeps the spread of the loads under the longest item


@settings(max_examples=100, deadline=None)
@given(costs=costs_st, data=st.data())
def test_rounds_give_the_longest_to_the_least_loaded(costs, data):
    c = np.array(costs)
    p = _programs(data, c.size)
    s = persistent_schedule(c, p)
    owner = np.empty(c.size, dtype=np.int64)
    for q in range(p):
        owner[s.order[s.starts[q]:s.starts[q + 1]]] = q
    ranked = np.argsort(-c, kind="stable")  # longest first, ties in launch order
    loads = np.zeros(p)
    for r in range(0, c.size, p):
        items = ranked[r:r + p]
        before = loads[owner[items]]
        assert np.unique(owner[items]).size == items.size  # one item per program and round
        assert np.all(np.diff(before) >= 0)  # the round's longer items went to the less loaded programs
        loads[owner[items]] += c[items]


@settings(max_examples=100, deadline=None)
@given(costs=costs_st, data=st.data())
def test_loads_depend_only_on_the_costs_not_their_order(costs, data):
    # the kernel lists its items in launch order, the model in its own CTA order: the same schedule either way
    c = np.array(costs)
    p = _programs(data, c.size)
    perm = np.array(data.draw(st.permutations(range(c.size))))
    a, b = persistent_schedule(c, p), persistent_schedule(c[perm], p)
    assert np.array_equal(a.loads, b.loads) and np.array_equal(a.starts, b.starts)
    assert np.array_equal(c[a.order], c[perm][b.order])


def test_one_program_runs_everything_longest_first_ties_in_launch_order():
    s = persistent_schedule(np.array([2.0, 5.0, 2.0, 1.0, 5.0]), 1)
    assert s.order.tolist() == [1, 4, 0, 2, 3] and s.loads.tolist() == [15.0]


def test_first_round_deals_the_longest_in_program_order():
    c = np.array([1.0, 4.0, 3.0, 2.0, 6.0, 5.0])
    s = persistent_schedule(c, 3)
    firsts = s.order[s.starts[:-1]]
    assert c[firsts].tolist() == [6.0, 5.0, 4.0]


@pytest.mark.parametrize("programs", [0, -1, 4])
def test_bad_program_count(programs):
    with pytest.raises(ValueError, match="programs="):
        persistent_schedule(np.ones(3), programs)


def test_programs_one_per_slot():
    assert persistent_programs(10_000, 132, 2) == 264
    assert persistent_programs(100, 132, 2) == 100
    assert persistent_programs(0, 132) == 0


@settings(max_examples=100, deadline=None)
@given(costs=costs_st, sms=st.integers(1, 8), k=st.integers(1, 3), repeat=st.integers(1, 4))
def test_choice_is_the_shorter_schedule(costs, sms, k, repeat):
    c = np.array(costs)
    ch = schedule_choice(c, sms, k, repeat)
    assert ch.launch_s == makespan(c, sms, k, repeat=repeat)
    items = np.tile(c, repeat)
    assert ch.programs == min(items.size, sms * k)
    assert ch.persistent_s == persistent_schedule(items, ch.programs).makespan(k)
    assert ch.persistent == (ch.persistent_s < ch.launch_s * (1 - PERSISTENT_MIN_GAIN))
    assert ch.makespan == (ch.persistent_s if ch.persistent else ch.launch_s) <= ch.launch_s


def test_a_causal_triangle_prefers_persistent():
    # Q tile i of a causal pass visits i + 1 KV tiles; launch order puts the longest CTAs last.
    # Two waves on 8 SMs: launch order pairs CTA i with i + 8 (longest pair 8 + 16), longest first pairs
    # 16 with 1, 15 with 2, ... (every SM 17, the lower bound): 29% shorter.
    ch = schedule_choice(np.arange(1.0, 17.0), sm_count=8)
    assert ch.launch_s == pytest.approx(24.0) and ch.persistent_s == pytest.approx(17.0)
    assert ch.persistent
