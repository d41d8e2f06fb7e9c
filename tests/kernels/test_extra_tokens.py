"""Extra tokens (joint text tokens, attention sinks) in the kernels, under the Triton interpreter.

The expected output is computed here, in float64, from a brute force of the agreed rule (issue 15, item 2):
``visible(i, j) = reference(i, j) and (i is extra or j is extra or pattern(i, j))`` over the sequence of
``N + E`` tokens, pair by pair, with the layout's ``pattern(i, j)`` from the core's dense mask and the softmax
written out here (not the kernels' reference module).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from kernel_testing import assert_close, randn

from sparsesim.kernels import block_sparse_attention, gna_attention
from sparsesim.kernels.plan_run import plan_extras, run_plan
from sparsesim.kernels.reference import gna_reference, sequence_mask
from sparsesim.simulator import GNAPattern
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import dense_mask


def rule_mask(size, window, stride, dilation, causal, extra, at):
    """The rule, one (query, key) pair at a time, positions in the sequence of N + E tokens."""
    layout = dense_mask(input_size=size, window=window, stride=stride, dilation=dilation, causal=causal)
    n = layout.shape[0]
    is_causal = any(causal) if isinstance(causal, (list, tuple)) else bool(causal)
    first_layout = extra if at == "start" else 0
    first_extra = 0 if at == "start" else n
    total = n + extra
    mask = np.zeros((total, total), dtype=bool)
    for i in range(total):
        xi = first_extra <= i < first_extra + extra
        for j in range(total):
            xj = first_extra <= j < first_extra + extra
            if not is_causal:
                reference = True
            elif xi:  # sinks: extra queries see the extra keys at or before them, no layout key
                reference = xj and j <= i
            else:  # layout queries: every extra key; among layout tokens the pattern's own causal rule
                reference = True
            pattern = not xi and not xj and bool(layout[i - first_layout, j - first_layout])
            mask[i, j] = reference and (xi or xj or pattern)
    return mask


def brute_attention(q, k, v, mask, scale=None):
    """softmax(q k^T * scale, masked) v in float64, on flat [B, T, H, D] tensors (GQA by repeating K/V heads)."""
    group = q.shape[-2] // k.shape[-2]
    qf = q.double()
    kf = k.double().repeat_interleave(group, dim=-2)
    vf = v.double().repeat_interleave(group, dim=-2)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.einsum("bihd,bjhd->bhij", qf, kf) * scale
    s = s.masked_fill(~torch.as_tensor(mask)[None, None], float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", torch.softmax(s, dim=-1), vf)


def sequence(size, extra, heads, heads_kv, dtype, seed, batch=1, dim=16):
    tokens = math.prod(size) + extra
    return (randn(batch, tokens, heads, dim, dtype=dtype, seed=seed),
            randn(batch, tokens, heads_kv, dim, dtype=dtype, seed=seed + 1),
            randn(batch, tokens, heads_kv, dim, dtype=dtype, seed=seed + 2))


CASES = [
    # size, window, stride, dilation, causal, tile, extra, at, dtype, kv_layout, heads, heads_kv
    ((37,), 9, 1, 1, False, 16, 1, "end", torch.float32, "direct", 2, 1),
    ((37,), 9, 2, 1, False, 16, 7, "start", torch.float16, "gather", 2, 2),
    ((40,), 8, 4, 1, False, 16, 19, "end", torch.float16, "permute", 4, 2),      # 16 extras + a partial tile
    ((45,), 5, 2, 3, False, 16, 16, "start", torch.float32, None, 2, 1),         # dilation, whole extra tile
    ((40,), 8, 4, 1, True, 16, 1, "start", torch.float32, "direct", 2, 1),       # causal sinks
    ((40,), 8, 1, 1, True, 16, 7, "start", torch.float16, "gather", 2, 2),
    ((33,), 12, 3, 1, True, 16, 20, "start", torch.float32, "permute", 2, 1),
    ((12, 10), (5, 7), (2, 3), 1, False, (4, 4), 7, "end", torch.float16, "gather", 2, 1),
    ((13, 11), (3, 4), (1, 2), (2, 2), False, (4, 4), 19, "start", torch.float32, "permute", 2, 2),
    ((16, 16), (8, 8), (8, 8), 1, False, (4, 4), 16, "end", torch.float32, None, 2, 1),  # block-sparse, no masks
    ((12, 10), (5, 7), 1, 1, (False, True), (4, 4), 7, "start", torch.float16, "gather", 2, 1),  # 2D with sinks
    ((4, 5, 6), (3, 3, 4), (1, 2, 3), 1, False, (2, 2, 4), 1, "end", torch.float16, "gather", 2, 1),
    ((4, 8, 8), (2, 4, 4), (2, 4, 4), 1, False, (2, 2, 4), 17, "start", torch.float32, "permute", 2, 2),
]


def _id(case):
    return f"{'x'.join(map(str, case[0]))}-E{case[6]}-{case[7]}{'-causal' if np.any(case[4]) else ''}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_extra_tokens_match_the_rule(case):
    size, window, stride, dilation, causal, tile, extra, at, dtype, kv_layout, h, hk = case
    q, k, v = sequence(size, extra, h, hk, dtype, seed=len(size) * 100 + extra)
    out = torch.full_like(q, float("nan"))  # poisoned: every row, layout and extra, must be written
    got = gna_attention(q, k, v, window=window, stride=stride, dilation=dilation, causal=causal, q_tile=tile,
                        kv_tile=tile, kv_layout=kv_layout, out=out, extra_tokens=extra, extra_at=at, input_size=size)
    assert got is out
    assert_close(out, brute_attention(q, k, v, rule_mask(size, window, stride, dilation, causal, extra, at)), dtype)


def test_batch_and_default_1d_layout():
    """A batch of 2, the layout left implicit (1D: tokens - E), default tiles."""
    q, k, v = sequence((30,), 5, 2, 1, torch.float16, seed=3, batch=2)
    got = gna_attention(q, k, v, window=7, extra_tokens=5, extra_at="start")
    assert_close(got, brute_attention(q, k, v, rule_mask((30,), 7, 1, 1, False, 5, "start")), torch.float16)


HEAD_CASES = [
    # size, window, causal, tile, extra, at, kv_layout, heads, heads_kv, launched heads
    ((8, 8), (3, 5), False, (4, 4), 7, "end", "gather", 6, 3, [0, 1, 4, 5]),  # two runs of heads
    ((40,), 9, True, 16, 5, "start", "direct", 4, 2, [2, 3]),                  # causal sinks
    ((24,), 7, False, 16, 3, "end", "permute", 2, 2, [1]),
]


@pytest.mark.parametrize("case", HEAD_CASES, ids=lambda c: f"{'x'.join(map(str, c[0]))}-{c[-1]}")
def test_head_subset_in_place_with_extras(case):
    size, window, causal, tile, extra, at, kv_layout, h, hk, heads = case
    q, k, v = sequence(size, extra, h, hk, torch.float32, seed=41 + h)
    out = torch.full_like(q, 7.0)
    got = gna_attention(q, k, v, window=window, causal=causal, q_tile=tile, kv_tile=tile, kv_layout=kv_layout,
                        out=out, heads=heads, extra_tokens=extra, extra_at=at, input_size=size)
    assert got is out
    want = brute_attention(q, k, v, rule_mask(size, window, 1, 1, causal, extra, at))
    assert_close(out[..., heads, :], want[..., heads, :], torch.float32)
    others = [x for x in range(h) if x not in heads]
    assert bool((out[..., others, :] == 7.0).all())


def test_no_extras_on_a_flat_sequence_is_the_layout_call():
    q, k, v = sequence((8, 6), 0, 2, 1, torch.float32, seed=5)
    flat = gna_attention(q, k, v, window=(3, 3), q_tile=(4, 4), input_size=(8, 6))
    spatial = gna_attention(*(x.unflatten(1, (8, 6)) for x in (q, k, v)), window=(3, 3), q_tile=(4, 4))
    assert flat.shape == q.shape
    assert_close(flat.unflatten(1, (8, 6)), spatial, torch.float32)


def test_repeated_calls_with_other_extra_counts():
    """The launch cache tells calls apart by their extra count and place."""
    for extra, at in [(3, "end"), (5, "end"), (3, "end"), (3, "start")]:
        q, k, v = sequence((32,), extra, 2, 1, torch.float32, seed=extra)
        got = gna_attention(q, k, v, window=5, q_tile=16, extra_tokens=extra, extra_at=at)
        assert_close(got, brute_attention(q, k, v, rule_mask((32,), 5, 1, 1, False, extra, at)), torch.float32)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"causal": True, "extra_tokens": 4}, "causal extra tokens at the start"),
    ({"extra_tokens": 4, "extra_at": "middle"}, "extra_at='middle'"),
    ({"extra_tokens": -1}, "extra_tokens=-1"),
    ({"extra_tokens": True}, "extra_tokens=True"),
    ({"extra_tokens": 4, "input_size": (5, 5)}, "plus extra_tokens=4 is 29"),
    ({"extra_tokens": 36}, "leaves no layout token"),
])
def test_bad_extra_arguments_are_one_line(kwargs, needle):
    q, k, v = sequence((32,), 4, 2, 1, torch.float32, seed=1)
    with pytest.raises(ValueError, match=needle) as info:
        gna_attention(q, k, v, window=5, q_tile=16, **kwargs)
    assert "\n" not in str(info.value)


def test_extra_tokens_need_a_flat_sequence():
    q = randn(1, 6, 6, 2, 16, dtype=torch.float32, seed=1)
    with pytest.raises(ValueError, match="flat sequence"):
        gna_attention(q, q, q, window=3, extra_tokens=2)
    q, k, _ = sequence((32,), 4, 2, 1, torch.float32, seed=1)
    with pytest.raises(ValueError, match="one sequence for all"):
        gna_attention(q, k[:, 1:], k[:, 1:], window=5, extra_tokens=4)


@pytest.mark.parametrize(("size", "window", "stride", "dilation", "causal", "extra", "at"), [
    ((9,), 3, 1, 1, False, 4, "end"),
    ((9,), 4, 2, 1, True, 4, "start"),
    ((5, 4), (3, 2), (1, 2), (1, 2), False, 3, "start"),
    ((3, 4, 3), 2, 1, 1, (True, False, False), 2, "start"),
    ((6,), 3, 1, 2, False, 0, "end"),
])
def test_sequence_mask_is_the_rule(size, window, stride, dilation, causal, extra, at):
    pattern = GNAPattern(input_size=size, window=window, stride=stride, dilation=dilation, causal=causal)
    want = rule_mask(size, window, stride, dilation, causal, extra, at)
    assert np.array_equal(sequence_mask(pattern, extra, at), want)
    rows = np.array([0, want.shape[0] - 1, want.shape[0] // 2])
    assert np.array_equal(sequence_mask(pattern, extra, at, rows), want[rows])


def test_sequence_mask_refuses_causal_extras_at_the_end():
    with pytest.raises(ConfigError, match="extra_at=.start."):
        sequence_mask(GNAPattern(input_size=8, window=3, causal=True), 2, "end")


def test_reference_with_extras_matches_the_brute_force():
    q, k, v = sequence((5, 6), 4, 4, 2, torch.float32, seed=9)
    kw = {"window": (3, 3), "stride": (1, 2), "causal": (True, False)}
    got = gna_reference(q, k, v, extra_tokens=4, extra_at="start", input_size=(5, 6), **kw)
    want = brute_attention(q, k, v, rule_mask((5, 6), (3, 3), (1, 2), 1, (True, False), 4, "start"))
    assert got.dtype == torch.float64
    assert float((got - want).abs().max()) < 1e-12


def test_block_sparse_map_over_the_whole_sequence_covers_extras():
    """A block map of the whole sequence with the extra rows and columns on runs extras as they are: exact
    where the extras fill whole blocks and the layout's pattern is block-aligned (no helper needed)."""
    n, extra, tile = 48, 16, 16
    q, k, v = sequence((n,), extra, 2, 1, torch.float32, seed=13)
    blocks = (n + extra) // tile
    bm = np.eye(blocks, dtype=bool)
    bm[-1, :] = True  # extra queries (the last block) see every key
    bm[:, -1] = True  # every query sees the extra keys
    got = block_sparse_attention(q, k, v, bm, q_tile=tile, kv_tile=tile)
    assert_close(got, brute_attention(q, k, v, rule_mask((n,), tile, tile, 1, False, extra, "end")), torch.float32)


def _plan(causal=(False, False), heads_kv=2):
    from sparsesim.simulator.plan import FORMAT, VERSION, parse_plan

    sparse = {"window": [3, 5], "stride": [1, 2], "dilation": [1, 1]}
    dense = {"window": [8, 8], "stride": [1, 1], "dilation": [1, 1]}
    heads = [{"head": h, **(sparse if h < 2 else dense), "dense": h >= 2, "error": 0.0, "mass": 1.0}
             for h in range(4)]
    layer = {"layer": 0, "name": "l0", "heads": heads, "predicted_ms": 0.02, "dense_ms": 0.03,
             "launches": [{"heads": [0, 1], **sparse, "dense": False, "predicted_ms": 0.01},
                          {"heads": [2, 3], **dense, "dense": True, "predicted_ms": 0.01}]}
    return parse_plan({"format": FORMAT, "version": VERSION, "workload": "tiny", "gpu": "H200",
                       "kernel_profile": "triton", "dense_profile": "cudnn", "layout": [8, 8], "causal": list(causal),
                       "heads": 4, "heads_kv": heads_kv, "head_dim": 16, "batch": 1, "dtype": "fp32", "q_tile": [4, 4],
                       "kv_tile": [4, 4], "error_budget": {"mean": 0.1, "max": None, "target_speedup": None},
                       "mean_error": 0.0, "max_error": 0.0, "attention_speedup": 1.0, "e2e_predicted_speedup": 1.0,
                       "predicted": {}, "search": None, "layers": [layer]}, "test plan")


@pytest.mark.parametrize(("causal", "heads_kv"), [((False, False), 2), ((False, True), 2), ((False, False), 1)])
def test_run_plan_passes_extra_tokens(causal, heads_kv):
    """Whole GQA groups in place, partial groups gathered (heads_kv=1), dense heads dense, causal with sinks."""
    plan = _plan(causal, heads_kv)
    q, k, v = sequence((8, 8), 6, 4, heads_kv, torch.float32, seed=17)
    got = run_plan(plan, 0, q, k, v, extra_tokens=6, extra_at="start")
    sparse = rule_mask((8, 8), (3, 5), (1, 2), 1, causal, 6, "start")
    dense = rule_mask((8, 8), (8, 8), 1, 1, causal, 6, "start")
    assert_close(got[..., :2, :], brute_attention(q, k, v, sparse)[..., :2, :], torch.float32)
    assert_close(got[..., 2:, :], brute_attention(q, k, v, dense)[..., 2:, :], torch.float32)


def test_run_plan_reads_the_plans_extra_fields_and_checks_shapes():
    assert plan_extras(SimpleNamespace(extra_tokens=7, extra_at="start")) == (7, "start")
    assert plan_extras(SimpleNamespace(), 3, None) == (3, "end")
    assert plan_extras(SimpleNamespace()) == (0, "end")
    q, k, v = sequence((8, 8), 5, 4, 2, torch.float32, seed=1)
    with pytest.raises(ConfigError, match="plus 6 extra tokens"):
        run_plan(_plan(), 0, q, k, v, extra_tokens=6)
