"""The persistent GNA forward under the Triton interpreter: same output as the launch order, and the
simulator's schedule of it is the kernel's own table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kernel_testing import assert_close, randn

from sparsesim.hwmodels import load_gpu
from sparsesim.hwmodels.profiles import load_profile
from sparsesim.kernels.gna import build_launch, gna_attention, gna_forward
from sparsesim.kernels.reference import gna_reference
from sparsesim.simulator import simulate
from sparsesim.simulator.cost import forward_ctas
from sparsesim.simulator.makespan import persistent_schedule, schedule_choice

CASES = [
    # size, window, stride, dilation, causal, q_tile, kv_tile, heads, heads_kv, batch, programs
    ((40,), 8, 4, 1, True, 16, 16, 2, 1, 1, 2),                                     # causal strided 1D
    ((12, 10), (5, 7), (2, 3), (2, 1), (False, True), (4, 4), (4, 4), 2, 1, 1, 3),  # 2D, dilation, causal axis
    ((5, 6, 7), (2, 3, 3), 1, (2, 1, 2), (True, False, False), (1, 4, 4), (2, 2, 4), 2, 1, 1, 4),  # 3D, uneven groups
    ((4, 8, 8), (2, 4, 4), (2, 4, 4), 1, False, (2, 2, 4), (2, 2, 4), 2, 1, 1, 5),  # 3D block-sparse
    ((70,), 21, 4, 1, True, 16, 32, 4, 2, 2, 3),                                    # GQA, batch 2
]


def _qkv(size, heads, heads_kv, batch, dtype, seed, dim=16):
    return (randn(batch, *size, heads, dim, dtype=dtype, seed=seed),
            randn(batch, *size, heads_kv, dim, dtype=dtype, seed=seed + 1),
            randn(batch, *size, heads_kv, dim, dtype=dtype, seed=seed + 2))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_persistent_equals_launch_order_and_reference(case):
    size, window, stride, dilation, causal, q_tile, kv_tile, heads, heads_kv, batch, programs = case
    dtype = torch.float16 if sum(size) % 2 else torch.float32
    q, k, v = _qkv(size, heads, heads_kv, batch, dtype, sum(size))
    kw = {"window": window, "stride": stride, "dilation": dilation, "causal": causal, "q_tile": q_tile,
          "kv_tile": kv_tile}
    outs = {}
    for mode in (False, programs):
        out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
        gna_attention(q, k, v, out=out, persistent=mode, **kw)
        outs[mode] = out
    assert torch.equal(outs[programs], outs[False])  # the same arithmetic per work item: bit-identical
    assert_close(outs[programs], gna_reference(q, k, v, window=window, stride=stride, dilation=dilation,
                                               causal=causal), dtype)


def test_persistent_log_sum_exp():
    q, k, v = _qkv((6, 9), 2, 1, 1, torch.float32, 11)
    kw = {"window": (3, 5), "stride": (1, 2), "causal": (True, False), "q_tile": (2, 8), "kv_tile": (2, 8)}
    o1, l1 = gna_forward(q, k, v, persistent=False, **kw)
    o2, l2 = gna_forward(q, k, v, persistent=2, **kw)
    assert torch.equal(o1, o2) and torch.equal(l1, l2)


def _launch(size, heads, heads_kv, batch, persistent, **kw):
    q = torch.empty(batch, *size, heads, 16)
    k = torch.empty(batch, *size, heads_kv, 16)
    kw = {"stride": 1, "dilation": 1, "causal": False, **kw}
    return build_launch(q, k, k, scale=None, kv_layout=None, persistent=persistent, **kw)


def _simulator_costs(launch):
    """The model's per-CTA seconds (the simulator's CTA order) and its repeat, from ``simulate``'s own record."""
    plan = launch.plan
    p = plan.pattern
    r = simulate(input_size=p.input_size, window=p.window, stride=p.stride, dilation=p.dilation, causal=p.causal,
                 q_tile=plan.schedule.q_tile, kv_tile=plan.schedule.kv_tile, gpu="H200", heads=launch.heads,
                 heads_kv=launch.heads_kv, head_dim=launch.head_dim, batch=launch.batch, dtype="fp16",
                 kernel_profile="triton")
    assert r.kv_layout == launch.kv_layout
    gpu = load_gpu("H200")
    c = forward_ctas(gpu, load_profile("triton", gpu), r.problem, r.tilemap, r.kv_layout)
    return c.seconds(), c.repeat, c.ctas_per_sm


def _decode(launch, item):
    """A launch index -> the simulator's CTA (groups row-major, each group's own Q tiles row-major), brute force."""
    sched = launch.plan.schedule
    rank = launch.plan.pattern.rank
    nq = launch.plan.num_q_tiles
    qt, bh = item % nq, item // nq
    bg = bh // launch.heads
    g = bg % launch.plan.groups
    coords = np.unravel_index(qt, launch.plan.q_grid3)[3 - rank:]
    groups = sched.group_tuples
    own = sched.q_grid(groups[g])
    assert all(c < n for c, n in zip(coords, own, strict=True)), "an item outside its group's Q tiles"
    offset = sum(math.prod(sched.q_grid(x)) for x in groups[:g])
    return offset + int(np.ravel_multi_index(tuple(int(c) for c in coords), own))


ORDER_CASES = [
    # size, window, stride, dilation, causal, q_tile, kv_tile, heads, heads_kv, batch
    ((4096,), 1024, 1, 1, True, 64, 64, 8, 8, 1),                                   # causal 1D
    ((64, 64), (24, 24), (8, 8), 1, False, (8, 8), (8, 8), 6, 2, 1),                 # strided 2D, GQA
    ((64, 48), (16, 24), (4, 8), (2, 1), (True, False), (8, 8), (8, 8), 4, 4, 2),    # dilation: groups, batch 2
    ((12, 16, 24), (6, 8, 8), (2, 4, 4), 1, (True, False, False), (2, 4, 8), (2, 4, 8), 4, 4, 1),  # 3D causal
]


@pytest.mark.parametrize("case", ORDER_CASES, ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("persistent", [True, 7])
def test_kernel_order_is_the_simulators_schedule(case, persistent):
    size, window, stride, dilation, causal, q_tile, kv_tile, heads, heads_kv, batch = case
    launch = _launch(size, heads, heads_kv, batch, persistent, window=window, stride=stride, dilation=dilation,
                     causal=causal, q_tile=q_tile, kv_tile=kv_tile)
    table = launch.sched.cpu().numpy().astype(np.int64)
    programs = launch.programs
    assert launch.grid == (programs, 1, 1) and int(table[0]) == programs + 1
    starts, items = table[:programs + 1] - (programs + 1), table[programs + 1:]
    per_cta, repeat, ctas_per_sm = _simulator_costs(launch)
    # every real work item once: batch x groups x heads x each group's own Q tiles
    assert np.unique(items).size == items.size == per_cta.size * repeat
    cta = np.array([_decode(launch, int(x)) for x in items])
    # the simulator's schedule of the same CTAs (in its own order) deals the same costs to the same programs
    sim = persistent_schedule(np.tile(per_cta, repeat), programs)
    assert np.array_equal(sim.starts, starts)
    assert np.array_equal(np.tile(per_cta, repeat)[sim.order], per_cta[cta])
    if launch.plan.groups == 1:  # one group: the simulator's CTA order is the launch order, items and all
        assert np.array_equal(sim.order, items)
    loads = np.array([per_cta[cta[a:b]].sum() for a, b in zip(starts[:-1], starts[1:], strict=True)])
    assert np.allclose(loads, sim.loads, rtol=1e-12, atol=0)
    if persistent is True:
        assert programs == min(items.size, load_gpu("H200").sm_count * ctas_per_sm)
        assert launch.choice.persistent_s == pytest.approx(sim.makespan(ctas_per_sm), rel=1e-12)


def test_default_runs_persistent_where_the_model_predicts_it_shorter():
    kw = {"window": 4096, "causal": True, "q_tile": 64, "kv_tile": 64}  # causal dense: Q tiles of 1 to 64 KV tiles
    causal = _launch((4096,), 8, 8, 1, None, **kw)
    per_cta, repeat, k = _simulator_costs(causal)
    choice = schedule_choice(per_cta, load_gpu("H200").sm_count, k, repeat)
    assert choice.persistent and causal.choice == choice and causal.grid == (choice.programs, 1, 1)
    even = _launch((64, 64), 4, 4, 1, None, window=(16, 16), stride=(16, 16), q_tile=(8, 8), kv_tile=(8, 8))
    assert not even.choice.persistent and even.sched is None and even.grid == (64, 4, 1)
    off = _launch((4096,), 8, 8, 1, False, **kw)
    assert off.choice is None and off.sched is None and off.grid == (64, 8, 1)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "yes"])
def test_bad_persistent_is_one_line(bad):
    with pytest.raises(ValueError, match=r"persistent=.*allowed: None") as err:
        _launch((64,), 2, 1, 1, bad, window=8, q_tile=16, kv_tile=16)
    assert "\n" not in str(err.value)
