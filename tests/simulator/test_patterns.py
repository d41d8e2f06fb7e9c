"""GNA and block-sparse patterns against a brute force written straight from docs/DESIGN.md (Semantics).

The brute force below deliberately does not use ``axis_bounds``/``group_bounds`` (or any other
package helper): it evaluates docs/DESIGN.md's per-axis formulas for every (query, key) position with
plain Python loops, and combines axes with "visible iff visible on every axis".
"""

from __future__ import annotations

import itertools
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sparsesim.simulator import (
    BlockSparsePattern,
    ConfigError,
    GNAPattern,
    dense_mask,
    load_block_map,
    simulate,
    visible_mask,
)
from sparsesim.simulator.tiling import block_sparse_tilemap

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_TOKENS = 600

# --------------------------------------------------------------------------------------------
# Brute force, from docs/DESIGN.md "Semantics: generalized neighborhood attention (GNA)"
# --------------------------------------------------------------------------------------------


def bf_axis_visible(length: int, w: int, s: int, d: int, causal: bool, i: int, j: int) -> bool:
    """Is key ``j`` visible from query ``i`` on one axis of length ``length``?"""
    if i % d != j % d:
        return False
    g = i % d
    glen = math.ceil((length - g) / d)  # the group's own sub-sequence
    qi, kj = i // d, j // d
    if causal:
        leader = min((qi // s) * s + s - 1, glen - 1)
        return kj <= qi and leader - kj < w
    wl = w // 2
    wr = w // 2 + (w % 2) - 1
    leader = min((qi // s) * s + s // 2, glen - 1)
    center = min(max(leader, wl), glen - 1 - wr)
    return center - wl <= kj <= center + wr


def bf_axis_table(length: int, w: int, s: int, d: int, causal: bool) -> list[list[bool]]:
    return [[bf_axis_visible(length, w, s, d, causal, i, j) for j in range(length)] for i in range(length)]


def bf_coords(shape: tuple[int, ...]) -> np.ndarray:
    """Row-major token coordinates, ``[N, rank]`` (last axis fastest)."""
    return np.array(list(itertools.product(*[range(n) for n in shape])), dtype=np.int64).reshape(-1, len(shape))


def bf_mask(shape, window, stride, dilation, causal) -> np.ndarray:
    """``[N, N]`` mask: per-axis tables from loops, combined with AND over axes by coordinates."""
    coords = bf_coords(tuple(shape))
    mask = np.ones((len(coords), len(coords)), dtype=bool)
    for a, n in enumerate(shape):
        table = np.array(bf_axis_table(n, window[a], stride[a], dilation[a], causal[a]), dtype=bool)
        mask &= table[coords[:, a][:, None], coords[:, a][None, :]]
    return mask


def bf_mask_loops(shape, window, stride, dilation, causal) -> np.ndarray:
    """Same as :func:`bf_mask` but a plain loop over every (query, key) token pair (tiny layouts)."""
    tokens = list(itertools.product(*[range(n) for n in shape]))
    out = np.zeros((len(tokens), len(tokens)), dtype=bool)
    for qi, q in enumerate(tokens):
        for ki, k in enumerate(tokens):
            out[qi, ki] = all(bf_axis_visible(shape[a], window[a], stride[a], dilation[a], causal[a], q[a], k[a])
                              for a in range(len(shape)))
    return out


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


@st.composite
def gna_configs(draw, max_tokens: int = MAX_TOKENS, max_len: int = 12, causal=None, min_rank: int = 1):
    """A valid GNA configuration: ``1 <= s <= w``, ``w * d <= L``, at most ``max_tokens`` tokens."""
    rank = draw(st.integers(min_rank, 3))
    shape, window, stride, dilation, causal_flags = [], [], [], [], []
    budget = max_tokens
    for _ in range(rank):
        # Leave room (at least length 1) for the remaining axes.
        cap = max(1, min(max_len, budget))
        n = draw(st.integers(1, cap))
        budget //= n
        w = draw(st.integers(1, n))
        d = draw(st.integers(1, n // w))
        s = draw(st.integers(1, w))
        c = draw(st.booleans()) if causal is None else causal
        shape.append(n)
        window.append(w)
        stride.append(s)
        dilation.append(d)
        causal_flags.append(c)
    assert math.prod(shape) <= max_tokens
    return {"input_size": tuple(shape), "window": tuple(window), "stride": tuple(stride),
            "dilation": tuple(dilation), "causal": tuple(causal_flags)}


def bf_of(cfg) -> np.ndarray:
    return bf_mask(cfg["input_size"], cfg["window"], cfg["stride"], cfg["dilation"], cfg["causal"])


# --------------------------------------------------------------------------------------------
# 1. dense_mask equals the brute force
# --------------------------------------------------------------------------------------------


@FAST
@given(cfg=gna_configs())
@example(cfg={"input_size": (30,), "window": (7,), "stride": (3,), "dilation": (4,), "causal": (False,)})
@example(cfg={"input_size": (7, 9), "window": (4, 3), "stride": (3, 2), "dilation": (1, 3), "causal": (True, False)})
@example(cfg={"input_size": (5, 6, 7), "window": (2, 6, 3), "stride": (2, 4, 3), "dilation": (2, 1, 2),
              "causal": (False, True, True)})
def test_dense_mask_matches_brute_force(cfg):
    got = dense_mask(**cfg)
    want = bf_of(cfg)
    assert got.dtype == bool
    assert got.shape == want.shape
    diff = np.argwhere(got != want)
    assert diff.size == 0, f"{cfg}: first differing (query, key) = {diff[:5].tolist()}"


@settings(max_examples=25, deadline=None)
@given(cfg=gna_configs(max_tokens=90, max_len=10))
def test_dense_mask_matches_pairwise_loop(cfg):
    """Cross-check of the axis combination and the row-major order with a loop over token pairs."""
    want = bf_mask_loops(cfg["input_size"], cfg["window"], cfg["stride"], cfg["dilation"], cfg["causal"])
    np.testing.assert_array_equal(dense_mask(**cfg), want)


@FAST
@given(cfg=gna_configs(), data=st.data())
@example(cfg={"input_size": (30,), "window": (7,), "stride": (3,), "dilation": (4,), "causal": (True,)},
         data=None)
def test_visible_mask_rows_equal_full_mask_rows_and_brute_force(cfg, data):
    """The one predicate on a random subset of query tokens (any order, repeats allowed): the rows of
    the full mask, and the brute force of docs/DESIGN.md's formulas (Semantics)."""
    p = GNAPattern(**cfg)
    n = p.num_tokens
    if data is None:
        rows = np.array([29, 0, 13, 13], dtype=np.int64)
    else:
        rows = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=0, max_size=12)), dtype=np.int64)
    full = visible_mask(p)
    assert full.shape == (n, n) and full.dtype == bool
    got = visible_mask(p, rows)
    assert got.shape == (rows.size, n) and got.dtype == bool
    np.testing.assert_array_equal(got, full[rows])
    np.testing.assert_array_equal(got, bf_of(cfg)[rows])
    np.testing.assert_array_equal(p.mask(rows), got)
    np.testing.assert_array_equal(dense_mask(**cfg), full)


def test_visible_mask_rows_of_a_large_layout():
    """Rows of a layout far beyond :func:`dense_mask`'s limit, against the per-pair brute force."""
    shape, window, stride, dilation, causal = (300, 7, 200), (41, 3, 17), (5, 1, 4), (3, 2, 7), (True, False, False)
    p = GNAPattern(input_size=shape, window=window, stride=stride, dilation=dilation, causal=causal)
    rows = np.array([0, 12345, p.num_tokens - 1, 77777])
    got = visible_mask(p, rows)
    assert got.shape == (4, p.num_tokens)
    coords = bf_coords(shape)
    for r, row in zip(rows, got, strict=True):
        q = coords[r]
        tables = [np.array([bf_axis_visible(shape[a], window[a], stride[a], dilation[a], causal[a], int(q[a]), j)
                            for j in range(shape[a])]) for a in range(3)]
        want = tables[0][:, None, None] & tables[1][None, :, None] & tables[2][None, None, :]
        np.testing.assert_array_equal(row, want.reshape(-1))
    with pytest.raises(ConfigError, match="420000 tokens"):
        visible_mask(p)


@pytest.mark.parametrize("rows", [[-1], [20], [0.5], np.array([True])])
def test_visible_mask_refuses_bad_rows(rows):
    with pytest.raises(ConfigError, match="0 to 19"):
        visible_mask(GNAPattern(input_size=(4, 5), window=3), rows)


def test_brute_force_known_rows():
    """Sanity anchors for the brute force itself (so it cannot silently agree with a wrong package)."""
    # Non-causal sliding window w=3 on L=5: edges clamp to a full window.
    t = np.array(bf_axis_table(5, 3, 1, 1, False), dtype=int)
    np.testing.assert_array_equal(t, [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0],
                                      [0, 0, 1, 1, 1], [0, 0, 1, 1, 1]])
    # Even window w=4: one more key on the left (wl=2, wr=1).
    assert [bf_axis_visible(8, 4, 1, 1, False, 4, j) for j in range(8)] == [0, 0, 1, 1, 1, 1, 0, 0]
    # Causal w=3.
    assert [bf_axis_visible(6, 3, 1, 1, True, 4, j) for j in range(6)] == [0, 0, 1, 1, 1, 0]
    # Dilation 2, w=2: query 4 (group 0, index 2) sees keys 2,4 (indices 1,2).
    assert [bf_axis_visible(8, 2, 1, 2, False, 4, j) for j in range(8)] == [0, 0, 1, 0, 1, 0, 0, 0]
    # Blocked w=s=2 on L=5: the last (partial) block uses the clamped window [3, 4].
    assert [bf_axis_visible(5, 2, 2, 1, False, 4, j) for j in range(5)] == [0, 0, 0, 1, 1]
    assert [bf_axis_visible(5, 2, 2, 1, False, 3, j) for j in range(5)] == [0, 0, 1, 1, 0]


def test_dense_mask_docstring_example_and_scalars():
    np.testing.assert_array_equal(dense_mask(input_size=5, window=3).astype(int)[0], [1, 1, 1, 0, 0])
    # A scalar broadcasts to every axis, a one-entry list too.
    a = dense_mask(input_size=(4, 5), window=3, stride=2, causal=True)
    b = dense_mask(input_size=(4, 5), window=(3, 3), stride=[2], causal=(True, True))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, bf_mask((4, 5), (3, 3), (2, 2), (1, 1), (True, True)))


# --------------------------------------------------------------------------------------------
# 2. Invariants
# --------------------------------------------------------------------------------------------


@FAST
@given(cfg=gna_configs())
def test_every_query_sees_itself(cfg):
    assert dense_mask(**cfg).diagonal().all()


@FAST
@given(cfg=gna_configs(causal=False))
def test_non_causal_rows_have_window_product_keys(cfg):
    rows = dense_mask(**cfg).sum(axis=1)
    assert (rows == math.prod(cfg["window"])).all(), (cfg, np.unique(rows))


@FAST
@given(cfg=gna_configs())
def test_visible_pairs_and_density_match_brute_force(cfg):
    p = GNAPattern(**cfg)
    want = int(bf_of(cfg).sum())
    assert p.visible_pairs() == want
    assert p.num_tokens == math.prod(cfg["input_size"])
    assert p.density() == pytest.approx(want / p.num_tokens**2, rel=1e-12)
    assert p.is_causal == any(cfg["causal"])


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3))
def test_full_window_is_dense(shape):
    m = dense_mask(input_size=tuple(shape), window=tuple(shape), stride=1, dilation=1, causal=False)
    assert m.all()
    assert GNAPattern(input_size=tuple(shape), window=tuple(shape)).visible_pairs() == math.prod(shape) ** 2


@st.composite
def blocked_configs(draw):
    """Blocked (s = w), non-causal, with w dividing every dilation group's length."""
    rank = draw(st.integers(1, 3))
    shape, window, dilation = [], [], []
    for _ in range(rank):
        d = draw(st.integers(1, 3))
        w = draw(st.integers(1, 4))
        blocks = draw(st.integers(1, 3))
        shape.append(d * w * blocks)
        window.append(w)
        dilation.append(d)
    return {"input_size": tuple(shape), "window": tuple(window), "stride": tuple(window),
            "dilation": tuple(dilation), "causal": (False,) * rank}


@settings(max_examples=40, deadline=None)
@given(cfg=blocked_configs())
def test_blocked_mask_is_an_equivalence_relation(cfg):
    assume(math.prod(cfg["input_size"]) <= MAX_TOKENS)
    m = dense_mask(**cfg)
    assert m.diagonal().all()
    np.testing.assert_array_equal(m, m.T)
    mi = m.astype(np.int64)
    # Transitive: m @ m has a nonzero wherever some k links i and j; it must already be in m.
    np.testing.assert_array_equal((mi @ mi) > 0, m)
    # Equivalence classes are the blocks: each has exactly prod(window) members.
    assert (m.sum(axis=1) == math.prod(cfg["window"])).all()


def test_blocked_without_divisibility_is_not_symmetric():
    """Consequence of the clamp (docs/DESIGN.md, Semantics): a partial last block reuses the last full window."""
    m = dense_mask(input_size=5, window=2, stride=2)
    assert m[4, 3] and not m[3, 4]


# --------------------------------------------------------------------------------------------
# 6. Bad input (pattern side)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"input_size": (8,), "window": (9,)}, "window 9"),
    ({"input_size": (8, 6), "window": (3, 7)}, "window 7"),
    ({"input_size": (8,), "window": (3,), "stride": (4,)}, "stride 4"),
    ({"input_size": (0, 4), "window": (1, 1)}, "0"),
    ({"input_size": (5, -2), "window": (1, 1)}, "-2"),
    ({"input_size": (5,), "window": (0,)}, "0"),
    ({"input_size": (5,), "window": (3,), "stride": (0,)}, "0"),
    ({"input_size": (5,), "window": (2,), "dilation": (-1,)}, "-1"),
    ({"input_size": (10,), "window": (4,), "dilation": (3,)}, "12"),
    ({"input_size": (4, 4, 4), "window": (3, 3)}, "[3, 3]"),
    ({"input_size": (4, 4), "window": (3, 3), "stride": (1, 1, 1)}, "[1, 1, 1]"),
    ({"input_size": (4, 4), "window": (3, 3), "causal": (True, 2)}, "2"),
    ({"input_size": (2, 2, 2, 2), "window": 1}, "rank 4"),
    ({"input_size": (6,), "window": (2.5,)}, "2.5"),
])
def test_bad_pattern_raises_config_error(kwargs, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as info:
        GNAPattern(**kwargs)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        dense_mask(**kwargs)


def test_dense_mask_refuses_large_layouts():
    with pytest.raises(ConfigError, match="40000"):
        dense_mask(input_size=(200, 200), window=(3, 3))
    with pytest.raises(ConfigError, match="65"):
        dense_mask(input_size=65, window=3, max_tokens=64)
    assert dense_mask(input_size=64, window=3, max_tokens=64).shape == (64, 64)


# --------------------------------------------------------------------------------------------
# 5. Block-sparse patterns
# --------------------------------------------------------------------------------------------


@st.composite
def block_sparse_configs(draw, require_visit: bool = True):
    heads = draw(st.integers(1, 3))
    q_tile = draw(st.integers(2, 9))
    kv_tile = draw(st.integers(2, 9))
    seq_len = draw(st.integers(1, 70))
    nq, nk = -(-seq_len // q_tile), -(-seq_len // kv_tile)
    flat = draw(st.lists(st.booleans(), min_size=heads * nq * nk, max_size=heads * nq * nk))
    bm = np.array(flat, dtype=bool).reshape(heads, nq, nk)
    if require_visit and not bm.any():
        bm[draw(st.integers(0, heads - 1)), draw(st.integers(0, nq - 1)), draw(st.integers(0, nk - 1))] = True
    return bm, seq_len, q_tile, kv_tile


def bf_block_mask(bm: np.ndarray, head: int, seq_len: int, q_tile: int, kv_tile: int) -> np.ndarray:
    out = np.zeros((seq_len, seq_len), dtype=bool)
    for q in range(seq_len):
        for k in range(seq_len):
            out[q, k] = bm[head, q // q_tile, k // kv_tile]
    return out


@settings(max_examples=60, deadline=None)
@given(cfg=block_sparse_configs())
@example(cfg=(np.array([[[1, 0, 1], [0, 1, 1]]], dtype=bool), 10, 7, 4))
def test_block_sparse_pattern_and_tilemap_match_brute_force(cfg):
    bm, seq_len, q_tile, kv_tile = cfg
    heads, nq, nk = bm.shape
    p = BlockSparsePattern(block_map=bm, seq_len=seq_len, q_tile=q_tile, kv_tile=kv_tile)
    assert p.heads == heads
    masks = [bf_block_mask(bm, h, seq_len, q_tile, kv_tile) for h in range(heads)]
    for h in range(heads):
        np.testing.assert_array_equal(p.dense_mask(h), masks[h])
    pairs = sum(int(m.sum()) for m in masks)
    assert p.visible_pairs() == pairs
    assert p.density() == pytest.approx(pairs / (heads * seq_len**2), rel=1e-12)

    # Brute-force tile classes from the token mask: q tile i, kv tile k.
    visited = np.zeros((heads, nq), np.int64)
    full = np.zeros((heads, nq), np.int64)
    kv_visited = np.zeros((heads, nk), np.int64)
    kv_full = np.zeros((heads, nk), np.int64)
    for h in range(heads):
        for i in range(nq):
            rows = range(i * q_tile, min((i + 1) * q_tile, seq_len))
            for k in range(nk):
                cols = range(k * kv_tile, min((k + 1) * kv_tile, seq_len))
                sub = masks[h][np.ix_(list(rows), list(cols))]
                if sub.any():
                    visited[h, i] += 1
                    kv_visited[h, k] += 1
                    if sub.all() and (k + 1) * kv_tile <= seq_len:
                        full[h, i] += 1
                        kv_full[h, k] += 1
    tm = block_sparse_tilemap(p)
    np.testing.assert_array_equal(tm.visited, visited)
    np.testing.assert_array_equal(tm.full, full)
    np.testing.assert_array_equal(tm.kv_visited, kv_visited)
    np.testing.assert_array_equal(tm.kv_full, kv_full)
    np.testing.assert_array_equal(tm.partial, visited - full)

    # The simulate record of the same map.
    r = simulate(input_size=seq_len, block_map=bm, q_tile=q_tile, kv_tile=kv_tile, heads=heads)
    assert r.density == pytest.approx(pairs / (heads * seq_len**2), rel=1e-12)
    assert r.flop_speedup == pytest.approx(heads * seq_len**2 / pairs, rel=1e-12)
    assert r.tile_speedup == pytest.approx(nk / visited.max(), rel=1e-12)
    assert r.tile_speedup_mean == pytest.approx(nk / visited.mean(), rel=1e-12)
    assert r.max_kv_tiles == visited.max()
    assert r.partial_fraction == pytest.approx((visited - full).sum() / visited.sum(), rel=1e-12)


def test_block_sparse_full_blocks_are_block_sparse():
    # seq_len divisible by both tiles, a diagonal map: no padding, no partial tiles.
    bm = np.eye(4, dtype=bool)
    r = simulate(input_size=32, block_map=bm, q_tile=8, kv_tile=8)
    assert r.partial_fraction == 0.0
    assert r.tile_speedup == pytest.approx(4.0)
    assert r.flop_speedup == pytest.approx(4.0)
    assert r.block_sparse is True


def test_block_sparse_all_empty_map_is_a_config_error():
    with pytest.raises(ConfigError, match="no block"):
        simulate(input_size=10, block_map=np.zeros((1, 3, 3), dtype=bool), q_tile=4, kv_tile=4)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"block_map": np.ones((3, 3), bool), "seq_len": 10, "q_tile": 4, "kv_tile": 3}, "3 x 3"),
    ({"block_map": np.ones((2, 3, 4), bool), "seq_len": 10, "q_tile": 4, "kv_tile": 4}, "3 x 3"),
    ({"block_map": np.array([[0, 2], [1, 1]]), "seq_len": 4, "q_tile": 2, "kv_tile": 2}, "int"),
    ({"block_map": np.full((2, 2), 0.5), "seq_len": 4, "q_tile": 2, "kv_tile": 2}, "float"),
    ({"block_map": np.ones(4, bool), "seq_len": 4, "q_tile": 1, "kv_tile": 1}, "(4,)"),
    ({"block_map": np.ones((2, 2), bool), "seq_len": 0, "q_tile": 2, "kv_tile": 2}, "seq_len=0"),
    ({"block_map": np.ones((2, 2), bool), "seq_len": 4, "q_tile": -2, "kv_tile": 2}, "q_tile=-2"),
])
def test_block_sparse_bad_input(kwargs, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        BlockSparsePattern(**kwargs)


def test_block_sparse_accepts_01_ints_and_is_read_only():
    src = np.array([[1, 0], [0, 1]], dtype=np.int32)
    p = BlockSparsePattern(block_map=src, seq_len=4, q_tile=2, kv_tile=2)
    assert p.block_map.dtype == bool and p.block_map.shape == (1, 2, 2)
    src[0, 1] = 1  # the pattern holds a copy
    assert not p.block_map[0, 0, 1]
    with pytest.raises(ValueError):
        p.block_map[0, 0, 0] = False


# load_block_map ------------------------------------------------------------------------------


def test_load_block_map_npy_round_trip(tmp_path: Path):
    bm = np.random.default_rng(0).random((2, 3, 5)) < 0.5
    path = tmp_path / "map.npy"
    np.save(path, bm)
    got = load_block_map(path)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, bm)
    p = BlockSparsePattern.load(str(path), seq_len=17, q_tile=6, kv_tile=4)
    np.testing.assert_array_equal(p.block_map, bm)


def test_load_block_map_npz_round_trip(tmp_path: Path):
    rng = np.random.default_rng(1)
    a = rng.random((3, 4)) < 0.5
    b = rng.random((1, 3, 4)) < 0.5
    single = tmp_path / "single.npz"
    np.savez(single, whatever=a)
    np.testing.assert_array_equal(load_block_map(single), a)
    many = tmp_path / "many.npz"
    np.savez_compressed(many, other=a, block_map=b)
    np.testing.assert_array_equal(load_block_map(many), b)
    np.testing.assert_array_equal(load_block_map(many, key="other"), a)
    with pytest.raises(ConfigError, match="nope"):
        load_block_map(many, key="nope")
    ambiguous = tmp_path / "ambiguous.npz"
    np.savez(ambiguous, x=a, y=a)
    with pytest.raises(ConfigError, match="key="):
        load_block_map(ambiguous)


def test_load_block_map_refuses_pickle(tmp_path: Path):
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = {"a": 1}, [1, 2]
    path = tmp_path / "evil.npy"
    np.save(path, obj, allow_pickle=True)
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_block_map(path)
    npz = tmp_path / "evil.npz"
    np.savez(npz, block_map=obj)
    with pytest.raises(ConfigError, match="pickle"):
        load_block_map(npz)


def test_load_block_map_refuses_missing_and_garbage(tmp_path: Path):
    missing = tmp_path / "missing.npy"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        load_block_map(missing)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"not a numpy file at all")
    with pytest.raises(ConfigError, match="garbage.npy"):
        load_block_map(garbage)


def test_load_refuses_bad_values_and_shapes(tmp_path: Path):
    bad_values = tmp_path / "values.npy"
    np.save(bad_values, np.array([[0, 3], [1, 1]], dtype=np.int64))
    with pytest.raises(ConfigError, match="0/1"):
        BlockSparsePattern.load(bad_values, seq_len=4, q_tile=2, kv_tile=2)
    bad_shape = tmp_path / "shape.npy"
    np.save(bad_shape, np.ones((3, 3), dtype=bool))
    with pytest.raises(ConfigError, match="3 x 3"):
        BlockSparsePattern.load(bad_shape, seq_len=4, q_tile=2, kv_tile=2)
    with pytest.raises(ConfigError, match="3 x 3"):
        simulate(input_size=4, block_map=str(bad_shape), q_tile=2, kv_tile=2)


# --------------------------------------------------------------------------------------------
# 8. The core imports no heavy packages
# --------------------------------------------------------------------------------------------


def test_import_has_no_heavy_dependencies():
    code = ("import sparsesim.simulator, sys; "
            "bad = [m for m in ('torch', 'triton', 'optuna') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------------------------
# Extra tokens (docs/DESIGN.md, Extra tokens): joint text tokens and attention sinks
# --------------------------------------------------------------------------------------------


def bf_extra_mask(cfg, extra: int, extra_at: str) -> np.ndarray:
    """``[S, S]`` mask of the sequence of N + E tokens, pair by pair, straight from the one rule:
    ``visible(i, j) = reference(i, j) and (i is extra or j is extra or pattern(i, j))``."""
    shape = cfg["input_size"]
    layout = bf_mask(shape, cfg["window"], cfg["stride"], cfg["dilation"], cfg["causal"])
    n = layout.shape[0]
    causal = any(cfg["causal"])
    first = extra if extra_at == "start" else 0  # sequence position of layout token 0

    def layout_index(pos: int) -> int | None:
        return pos - first if first <= pos < first + n else None

    size = n + extra
    out = np.zeros((size, size), dtype=bool)
    for i in range(size):
        for j in range(size):
            li, lj = layout_index(i), layout_index(j)
            if causal:  # sinks at the start: reference = causal over extras, layout queries see every sink
                # extra queries: the extra keys at or before them; layout queries: every extra key, and among
                # layout tokens the pattern's own causal rule
                reference = (lj is None and j <= i) if li is None else True
            else:
                reference = True
            out[i, j] = reference and (li is None or lj is None or bool(layout[li, lj]))
    return out


@FAST
@given(cfg=gna_configs(max_tokens=120, max_len=8), extra=st.integers(0, 7), at_start=st.booleans(),
       data=st.data())
def test_extra_tokens_mask_matches_brute_force(cfg, extra, at_start, data):
    at = "start" if at_start or any(cfg["causal"]) else "end"
    p = GNAPattern(**cfg, extra_tokens=extra, extra_at=at)
    expect = bf_extra_mask(cfg, extra, at)
    full = dense_mask(**cfg, extra_tokens=extra, extra_at=at)
    assert full.shape == (p.seq_tokens, p.seq_tokens)
    np.testing.assert_array_equal(full, expect)
    rows = data.draw(st.lists(st.integers(0, p.seq_tokens - 1), max_size=6))
    np.testing.assert_array_equal(visible_mask(p, rows), expect[rows].reshape(len(rows), p.seq_tokens))
    assert p.visible_pairs() == int(expect.sum())
    assert p.density() == pytest.approx(expect.mean())
    assert p.dense().visible_pairs() == int(bf_extra_mask({**cfg, "window": cfg["input_size"], "stride":
                                                           (1,) * p.rank, "dilation": (1,) * p.rank},
                                                          extra, at).sum())


def test_extra_tokens_known_masks():
    # two text tokens after a 1D layout of 4, window 1: layout rows see themselves and the text, text sees all
    m = dense_mask(input_size=4, window=1, extra_tokens=2).astype(int)
    assert m.tolist() == [[1, 0, 0, 0, 1, 1], [0, 1, 0, 0, 1, 1], [0, 0, 1, 0, 1, 1], [0, 0, 0, 1, 1, 1],
                          [1] * 6, [1] * 6]
    # two causal sinks before a 1D layout of 3, window 1
    m = dense_mask(input_size=3, window=1, causal=True, extra_tokens=2, extra_at="start").astype(int)
    assert m.tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 0, 1]]
    # without extra tokens nothing changes: [R, N]
    p = GNAPattern(input_size=(4, 5), window=3)
    assert visible_mask(p, [3]).shape == (1, 20) and p.seq_tokens == p.num_tokens == 20


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"extra_tokens": -1}, "extra_tokens=-1; allowed: an integer >= 0"),
    ({"extra_tokens": True}, "extra_tokens=True; allowed"),
    ({"extra_tokens": 1.5}, "extra_tokens=1.5; allowed"),
    ({"extra_tokens": 2, "extra_at": "middle"}, "extra_at='middle'; allowed: end, start"),
    ({"extra_tokens": 2, "causal": (False, True)}, "extra_at='end' with causal=[0, 1]"),
    ({"extra_tokens": 2**31 - 20}, "allowed: at most 2^31 - 1"),
])
def test_bad_extra_tokens_raise_one_line(kwargs, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as info:
        GNAPattern(input_size=(4, 5), window=3, **kwargs)
    assert "\n" not in str(info.value)


def test_extra_rows_refused_outside_the_sequence():
    p = GNAPattern(input_size=(4, 5), window=3, extra_tokens=3)
    with pytest.raises(ConfigError, match="from 0 to 22"):
        visible_mask(p, [23])
    assert visible_mask(p, [22]).all()
