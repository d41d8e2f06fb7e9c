"""Tile maps and simulate() records against brute-force counts over the explicit token mask.

The GNA mask brute force is repeated here (not imported from the package nor from another test
module) so this file stands alone: docs/DESIGN.md's per-axis formulas evaluated with plain loops for
every (query, key) position, combined with "visible iff visible on every axis". Tile classes are
then counted from that mask, tile pair by tile pair, with no interval reasoning at all.

Box tiles follow the kernels: every dilation group tuple (positions ``x = g + d * m`` per axis) is
tiled on its own over its group coordinates ``m``; flat tiles are runs of row-major tokens.
"""

from __future__ import annotations

import itertools
import math
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sparsesim.simulator import ConfigError, GNAPattern, dense_mask, simulate, tilemap
from sparsesim.simulator.flat import range_boxes

#: Non-causal: tile_speedup = all KV tiles / the worst Q tile's visited KV tiles (GNA convention).
#: Causal: the dense triangle is load-balanced, so tile_speedup = mean dense visits / mean visits
#: and kv_tiles_dense is the dense baseline's mean.

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_TOKENS = 600

# --------------------------------------------------------------------------------------------
# Brute force mask (docs/DESIGN.md, "Semantics")
# --------------------------------------------------------------------------------------------


def bf_axis_visible(length: int, w: int, s: int, d: int, causal: bool, i: int, j: int) -> bool:
    if i % d != j % d:
        return False
    g = i % d
    glen = math.ceil((length - g) / d)
    qi, kj = i // d, j // d
    if causal:
        leader = min((qi // s) * s + s - 1, glen - 1)
        return kj <= qi and leader - kj < w
    wl = w // 2
    wr = w // 2 + (w % 2) - 1
    leader = min((qi // s) * s + s // 2, glen - 1)
    center = min(max(leader, wl), glen - 1 - wr)
    return center - wl <= kj <= center + wr


def bf_coords(shape) -> np.ndarray:
    return np.array(list(itertools.product(*[range(n) for n in shape])), dtype=np.int64).reshape(-1, len(shape))


def bf_mask(shape, window, stride, dilation, causal) -> np.ndarray:
    coords = bf_coords(shape)
    mask = np.ones((len(coords), len(coords)), dtype=bool)
    for a, n in enumerate(shape):
        table = np.array([[bf_axis_visible(n, window[a], stride[a], dilation[a], causal[a], i, j)
                           for j in range(n)] for i in range(n)], dtype=bool)
        mask &= table[coords[:, a][:, None], coords[:, a][None, :]]
    return mask


# --------------------------------------------------------------------------------------------
# Brute force tiles
# --------------------------------------------------------------------------------------------


def bf_box_tiles(shape, tile, dilation):
    """Per dilation group tuple (row-major): member tokens' tile ids, tile count, padded tiles, grid.

    Tokens are row-major; a token of group tuple ``g`` has group coordinates ``m = x // d`` and its
    tile is ``m // tile`` row-major over the group's grid ``ceil(len_g / tile)``.
    """
    out = []
    coords = list(itertools.product(*[range(n) for n in shape]))
    for group in itertools.product(*[range(d) for d in dilation]):
        glen = [len(range(g, n, d)) for g, n, d in zip(group, shape, dilation, strict=True)]
        grid = [-(-m // t) for m, t in zip(glen, tile, strict=True)]
        members, ids = [], []
        for tok, coord in enumerate(coords):
            if any(c % d != g for c, d, g in zip(coord, dilation, group, strict=True)):
                continue
            tid = 0
            for a in range(len(shape)):
                tid = tid * grid[a] + (coord[a] // dilation[a]) // tile[a]
            members.append(tok)
            ids.append(tid)
        padded = [any((idx[a] + 1) * tile[a] > glen[a] for a in range(len(shape)))
                  for idx in itertools.product(*[range(g) for g in grid])]
        out.append((np.array(members), np.array(ids), math.prod(grid), np.array(padded, dtype=bool), tuple(grid)))
    return out


def bf_flat_tiles(n_tokens, tile):
    count = -(-n_tokens // tile)
    ids = np.array([tok // tile for tok in range(n_tokens)])
    padded = np.array([(k + 1) * tile > n_tokens for k in range(count)], dtype=bool)
    return ids, count, padded


def bf_tile_classes(mask, q_ids, nq, k_ids, nk, k_padded):
    """(visited, full) bool ``[nq, nk]`` from the token mask, tile pair by tile pair."""
    q_members = [np.flatnonzero(q_ids == t) for t in range(nq)]
    k_members = [np.flatnonzero(k_ids == t) for t in range(nk)]
    visited = np.zeros((nq, nk), dtype=bool)
    full = np.zeros((nq, nk), dtype=bool)
    for i in range(nq):
        rows = mask[q_members[i]]
        for k in range(nk):
            sub = rows[:, k_members[k]]
            visited[i, k] = sub.any()
            full[i, k] = sub.all() and not k_padded[k]
    return visited, full


def bf_tiles(mask, shape, q_tile, kv_tile, tiling, dilation=None):
    """(visited, full) per CTA and per KV tile: lists of bool ``[nq_g, nk_g]`` blocks, one per group."""
    if tiling == "box":
        dilation = dilation or (1,) * len(shape)
        blocks, grids = [], []
        for (qm, q_ids, nq, _, q_grid), (km, k_ids, nk, k_pad, kv_grid) in zip(
                bf_box_tiles(shape, q_tile, dilation), bf_box_tiles(shape, kv_tile, dilation), strict=True):
            sub = mask[np.ix_(qm, km)]
            blocks.append(bf_tile_classes(sub, q_ids, nq, k_ids, nk, k_pad))
            grids.append((q_grid, kv_grid))
        return blocks, grids[0][0], grids[0][1]
    n = math.prod(shape)
    q_ids, nq, _ = bf_flat_tiles(n, q_tile)
    k_ids, nk, k_pad = bf_flat_tiles(n, kv_tile)
    return [bf_tile_classes(mask, q_ids, nq, k_ids, nk, k_pad)], (nq,), (nk,)


def per_cta(blocks):
    """Per-CTA and per-KV-tile counts, concatenated over groups: visited, full, kv_visited, kv_full."""
    return (np.concatenate([v.sum(1) for v, _ in blocks]), np.concatenate([f.sum(1) for _, f in blocks]),
            np.concatenate([v.sum(0) for v, _ in blocks]), np.concatenate([f.sum(0) for _, f in blocks]))


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


@st.composite
def gna_configs(draw, max_tokens: int = MAX_TOKENS, max_len: int = 12):
    rank = draw(st.integers(1, 3))
    shape, window, stride, dilation, causal = [], [], [], [], []
    budget = max_tokens
    for _ in range(rank):
        n = draw(st.integers(1, max(1, min(max_len, budget))))
        budget //= n
        w = draw(st.integers(1, n))
        d = draw(st.integers(1, n // w))
        s = draw(st.integers(1, w))
        shape.append(n)
        window.append(w)
        stride.append(s)
        dilation.append(d)
        causal.append(draw(st.booleans()))
    return {"input_size": tuple(shape), "window": tuple(window), "stride": tuple(stride),
            "dilation": tuple(dilation), "causal": tuple(causal)}


def pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@st.composite
def tiled_configs(draw, tiling: str):
    cfg = draw(gna_configs())
    shape = cfg["input_size"]
    if tiling == "box":  # tiles up to the axis rounded up to a power of two (larger ones are refused)
        q = tuple(draw(st.integers(1, pow2(n))) for n in shape)
        kv = tuple(draw(st.integers(1, pow2(n))) for n in shape)
    else:
        n = math.prod(shape)
        sizes = st.one_of(st.integers(1, min(12, pow2(n))), st.integers(1, pow2(n)))
        q, kv = draw(sizes), draw(sizes)
    return cfg, q, kv


def check_tilemap(cfg, q_tile, kv_tile, tiling):
    shape = cfg["input_size"]
    mask = bf_mask(shape, cfg["window"], cfg["stride"], cfg["dilation"], cfg["causal"])
    blocks, q_grid, kv_grid = bf_tiles(mask, shape, q_tile, kv_tile, tiling, cfg["dilation"])
    visited, full, kv_visited, kv_full = per_cta(blocks)
    tm = tilemap(GNAPattern(**cfg), q_tile if tiling == "box" else (q_tile,),
                 kv_tile if tiling == "box" else (kv_tile,), tiling)
    nq, nk = visited.size, kv_visited.size
    assert tm.tiling == tiling
    assert tm.visited.shape == (1, nq) and tm.full.shape == (1, nq)
    assert tm.kv_visited.shape == (1, nk) and tm.kv_full.shape == (1, nk)
    assert tm.num_q_tiles == nq and tm.num_kv_tiles == nk
    assert tuple(tm.q_grid) == tuple(q_grid) and tuple(tm.kv_grid) == tuple(kv_grid)
    assert tm.groups == (math.prod(cfg["dilation"]) if tiling == "box" else 1)
    np.testing.assert_array_equal(tm.visited[0], visited, err_msg="visited")
    np.testing.assert_array_equal(tm.full[0], full, err_msg="full")
    np.testing.assert_array_equal(tm.kv_visited[0], kv_visited, err_msg="kv_visited")
    np.testing.assert_array_equal(tm.kv_full[0], kv_full, err_msg="kv_full")
    np.testing.assert_array_equal(tm.partial[0], visited - full)
    return mask


def expected_record(cfg, q_tile, kv_tile, tiling):
    """simulate()'s tile-level columns, from brute-force masks and tile classes.

    The dense baseline is the undilated layout with the same tiles (its box and flat tiles coincide
    with plain tiles); non-causal it visits every KV tile, causal its mean counts.
    """
    shape = cfg["input_size"]
    mask = bf_mask(shape, cfg["window"], cfg["stride"], cfg["dilation"], cfg["causal"])
    rank = len(shape)
    dmask = bf_mask(shape, shape, (1,) * rank, (1,) * rank, cfg["causal"])
    blocks, _, _ = bf_tiles(mask, shape, q_tile, kv_tile, tiling, cfg["dilation"])
    dblocks, _, _ = bf_tiles(dmask, shape, q_tile, kv_tile, tiling)
    per_q, full_q, _, _ = per_cta(blocks)
    per_q_dense = dblocks[0][0].sum(1)
    pairs, dense_pairs, n = int(mask.sum()), int(dmask.sum()), math.prod(shape)
    partial = int((per_q - full_q).sum())
    flop = Fraction(dense_pairs, pairs)
    if any(cfg["causal"]):
        dense_tiles = Fraction(int(per_q_dense.sum()), len(per_q_dense))
        tile = dense_tiles / Fraction(int(per_q.sum()), len(per_q))
    else:
        dense_tiles = Fraction(int(dblocks[0][0].shape[1]))
        tile = dense_tiles / int(per_q.max())
    return {
        "density": pairs / n**2,
        "flop_speedup": float(flop),
        "tile_speedup": float(tile),
        "tile_speedup_mean": float(dense_tiles / Fraction(int(per_q.sum()), len(per_q))),
        "kv_tiles_dense": float(dense_tiles),
        "max_kv_tiles": int(per_q.max()),
        "mean_kv_tiles": float(per_q.mean()),
        "partial_fraction": partial / int(per_q.sum()),
        "block_sparse": partial == 0 and flop == tile,
    }


def check_record(cfg, q_tile, kv_tile, tiling):
    want = expected_record(cfg, q_tile, kv_tile, tiling)
    got = simulate(**cfg, q_tile=q_tile, kv_tile=kv_tile, tiling=tiling)
    for key in ("density", "flop_speedup", "tile_speedup", "tile_speedup_mean", "mean_kv_tiles", "partial_fraction",
                "kv_tiles_dense"):
        assert getattr(got, key) == pytest.approx(want[key], rel=1e-12, abs=1e-15), key
    assert got.max_kv_tiles == want["max_kv_tiles"]
    assert bool(got.block_sparse) is want["block_sparse"]
    assert got.tiling == tiling


# --------------------------------------------------------------------------------------------
# 3. Tile statistics
# --------------------------------------------------------------------------------------------


@FAST
@given(case=tiled_configs("box"))
@example(case=({"input_size": (7, 10), "window": (3, 4), "stride": (1, 2), "dilation": (2, 1),
                "causal": (False, True)}, (3, 4), (2, 3)))
@example(case=({"input_size": (5, 6, 7), "window": (2, 6, 3), "stride": (2, 4, 3), "dilation": (2, 1, 2),
                "causal": (False, True, True)}, (2, 4, 3), (3, 5, 2)))
@example(case=({"input_size": (11,), "window": (4,), "stride": (4,), "dilation": (1,), "causal": (False,)},
               (4,), (4,)))
def test_box_tilemap_matches_brute_force(case):
    cfg, q, kv = case
    check_tilemap(cfg, q, kv, "box")


@FAST
@given(case=tiled_configs("flat"))
@example(case=({"input_size": (7, 10), "window": (3, 4), "stride": (1, 2), "dilation": (2, 1),
                "causal": (False, True)}, 12, 9))
@example(case=({"input_size": (5, 6, 7), "window": (2, 6, 3), "stride": (2, 4, 3), "dilation": (2, 1, 2),
                "causal": (False, True, True)}, 17, 40))
@example(case=({"input_size": (6, 6), "window": (6, 6), "stride": (1, 1), "dilation": (1, 1),
                "causal": (True, False)}, 5, 7))
def test_flat_tilemap_matches_brute_force(case):
    cfg, q, kv = case
    check_tilemap(cfg, q, kv, "flat")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tiled_configs("box"))
@example(case=({"input_size": (8, 12), "window": (4, 4), "stride": (4, 4), "dilation": (1, 1),
                "causal": (False, False)}, (4, 4), (4, 2)))
@example(case=({"input_size": (9, 8), "window": (3, 8), "stride": (2, 1), "dilation": (1, 1),
                "causal": (True, False)}, (2, 3), (3, 3)))
def test_simulate_box_record_matches_brute_force(case):
    cfg, q, kv = case
    check_record(cfg, q, kv, "box")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tiled_configs("flat"))
@example(case=({"input_size": (12,), "window": (4,), "stride": (4,), "dilation": (1,), "causal": (False,)}, 4, 4))
@example(case=({"input_size": (5, 9), "window": (2, 3), "stride": (1, 3), "dilation": (2, 3),
                "causal": (True, True)}, 7, 4))
def test_simulate_flat_record_matches_brute_force(case):
    cfg, q, kv = case
    check_record(cfg, q, kv, "flat")


def test_block_sparse_flag_examples():
    # Blocked attention with tiles equal to the blocks: perfectly block-sparse.
    r = simulate(input_size=(8, 12), window=(4, 4), stride=(4, 4), q_tile=(4, 4), kv_tile=(4, 4))
    assert r.partial_fraction == 0.0 and r.block_sparse is True
    assert r.tile_speedup == pytest.approx(6.0) and r.flop_speedup == pytest.approx(6.0)
    # Same pattern, KV tiles straddling blocks: partial tiles, not block-sparse.
    r = simulate(input_size=(8, 12), window=(4, 4), stride=(4, 4), q_tile=(4, 4), kv_tile=(4, 3))
    assert r.partial_fraction > 0 and r.block_sparse is False
    # Sliding window: never block-sparse at these tiles.
    r = simulate(input_size=(16,), window=(5,), q_tile=(4,), kv_tile=(4,))
    assert r.block_sparse is False


@pytest.mark.parametrize("causal", [False, True, (True, False)], ids=["non-causal", "causal", "causal-axis0"])
@pytest.mark.parametrize(("tiling", "q", "kv"), [("box", (3, 4), (2, 5)), ("flat", 7, 5)])
def test_dense_pattern_has_speedup_one(causal, tiling, q, kv):
    """A pattern that is its own dense baseline is exactly as fast as dense, by every measure."""
    r = simulate(input_size=(6, 9), window=(6, 9), causal=causal, q_tile=q, kv_tile=kv, tiling=tiling)
    assert r.flop_speedup == pytest.approx(1.0)
    assert r.tile_speedup_mean == pytest.approx(1.0)
    assert r.tile_speedup == pytest.approx(1.0)
    assert r.kv_tiles_dense == pytest.approx(r.mean_kv_tiles if any(np.atleast_1d(causal)) else r.max_kv_tiles)


def test_causal_density():
    r = simulate(input_size=(6, 9), window=(6, 9), causal=True, q_tile=(3, 3), kv_tile=(3, 3))
    assert r.density == pytest.approx((6 * 7 / 2) * (9 * 10 / 2) / 54**2)


# --------------------------------------------------------------------------------------------
# 4. range_boxes
# --------------------------------------------------------------------------------------------


@st.composite
def ranges(draw):
    shape = tuple(draw(st.lists(st.integers(1, 8), min_size=1, max_size=3)))
    n = math.prod(shape)
    start = draw(st.integers(0, n))
    stop = draw(st.integers(start, n))
    return start, stop, shape


@settings(max_examples=300, deadline=None)
@given(case=ranges())
@example(case=(3, 61, (4, 4, 4)))
@example(case=(0, 64, (4, 4, 4)))
@example(case=(5, 5, (3, 3)))
def test_range_boxes_tile_the_range_exactly(case):
    start, stop, shape = case
    boxes = range_boxes(start, stop, shape)
    assert len(boxes) <= max(0, 2 * len(shape) - 1)
    seen: list[int] = []
    for box in boxes:
        assert len(box) == len(shape)
        for (lo, hi), n in zip(box, shape, strict=True):
            assert 0 <= lo <= hi < n, (box, shape)
        for coord in itertools.product(*[range(lo, hi + 1) for lo, hi in box]):
            flat = 0
            for c, n in zip(coord, shape, strict=True):
                flat = flat * n + c
            seen.append(flat)
    assert len(seen) == len(set(seen)), "boxes overlap"
    assert sorted(seen) == list(range(start, stop))


# --------------------------------------------------------------------------------------------
# 6. Bad tiling input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("q", "kv", "tiling", "needle"), [
    ((4, 4), (4, 4), "diagonal", "'diagonal'"),
    ((4, 4, 4), (4, 4), "box", "[4, 4, 4]"),
    ((4, 4), (4,), "box", "kv_tile=[4]"),
    ((4, 4), (4, 4), "flat", "[4, 4]"),
    ((0, 4), (4, 4), "box", "got 0"),
    ((4, 4), (4, -1), "box", "got -1"),
    ((4, 4), (True, 4), "box", "True"),
])
def test_bad_tiles_raise_config_error(q, kv, tiling, needle):
    p = GNAPattern(input_size=(8, 8), window=(3, 3))
    with pytest.raises(ConfigError, match=re.escape(needle)):
        tilemap(p, q, kv, tiling)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        simulate(input_size=(8, 8), window=(3, 3), q_tile=q, kv_tile=kv, tiling=tiling)


def test_simulate_bad_options():
    with pytest.raises(ConfigError, match="window"):
        simulate(input_size=(8,), q_tile=4)
    with pytest.raises(ConfigError, match="window 9"):
        simulate(input_size=(8,), window=(9,), q_tile=4)
    with pytest.raises(ConfigError, match=re.escape("[3, 3]")):
        simulate(input_size=(8, 8, 8), window=(3, 3), q_tile=(4, 4, 4))
    with pytest.raises(ConfigError, match="40000"):
        dense_mask(input_size=(200, 200), window=(3, 3))


def test_lone_tile_sets_the_other():
    a = simulate(input_size=(9, 10), window=(3, 4), q_tile=(4, 3))
    b = simulate(input_size=(9, 10), window=(3, 4), q_tile=(4, 3), kv_tile=(4, 3))
    c = simulate(input_size=(9, 10), window=(3, 4), kv_tile=(4, 3))
    assert a.kv_tile == (4, 3) and c.q_tile == (4, 3)
    assert a.tile_speedup == b.tile_speedup == c.tile_speedup and a.partial_fraction == b.partial_fraction


# --------------------------------------------------------------------------------------------
# 7. Published figures
# --------------------------------------------------------------------------------------------


def test_hunyuan_video_tile_speedup():
    r = simulate(input_size=(30, 48, 80), window=(18, 24, 24), stride=1, q_tile=(4, 8, 8), kv_tile=(2, 8, 8))
    assert r.tile_speedup == pytest.approx(3.27, abs=0.005)
    assert r.tile_speedup == pytest.approx(900 / 275)
    assert r.flop_speedup == pytest.approx(1 / 0.09)
    assert r.block_sparse is False


@pytest.mark.parametrize(("stride", "tile_speedup", "block_sparse"), [
    ((1, 1), 6.10, False),
    ((16, 1), 8.53, False),
    ((16, 16), 10.24, True),
])
def test_flux_tile_speedups(stride, tile_speedup, block_sparse):
    r = simulate(input_size=(256, 256), window=(80, 80), stride=stride, q_tile=(16, 16), kv_tile=(16, 8))
    assert r.tile_speedup == pytest.approx(tile_speedup, abs=0.005)
    assert r.flop_speedup == pytest.approx(10.24)
    assert r.block_sparse is block_sparse
    if block_sparse:
        assert r.tile_speedup == pytest.approx(10.24, rel=1e-12)
        assert r.partial_fraction == 0.0


# --------------------------------------------------------------------------------------------
# 8. The schedule against the package's own dense_mask, and chunk boundaries
# --------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=tiled_configs("box"))
def test_schedule_tile_classes_equal_dense_mask_brute_force(case):
    """Per dilation group, the schedule's (visited, full) classes are what dense_mask says, tile pair by pair."""
    from sparsesim.simulator import box_schedule

    cfg, q, kv = case
    shape = cfg["input_size"]
    mask = dense_mask(**cfg)
    sched = box_schedule(GNAPattern(**cfg), q, kv)
    blocks, _, _ = bf_tiles(mask, shape, q, kv, "box", cfg["dilation"])
    for group, (want_visited, want_full) in zip(sched.group_tuples, blocks, strict=True):
        visited, full = sched.tile_classes(group)
        np.testing.assert_array_equal(visited, want_visited)
        np.testing.assert_array_equal(full, want_full)


@pytest.mark.parametrize("cfg", [
    {"input_size": (9, 11, 7), "window": (5, 4, 3), "stride": (2, 1, 3), "dilation": (1, 1, 1),
     "causal": (False, True, False)},
    {"input_size": (9, 11, 7), "window": (3, 4, 3), "stride": (2, 1, 3), "dilation": (2, 1, 2),
     "causal": (True, False, False)},
])
def test_flat_chunks_do_not_change_the_counts(cfg, monkeypatch):
    import sparsesim.simulator.flat as flat

    p = GNAPattern(**cfg)
    whole = flat.flat_tilemap(p, 13, 10)
    monkeypatch.setattr(flat, "_RUN_CHUNK", 7)
    monkeypatch.setattr(flat, "_PAIR_CHUNK", 50)
    chunked = flat.flat_tilemap(p, 13, 10)
    for name in ("visited", "full", "kv_visited", "kv_full"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name), err_msg=name)


# --------------------------------------------------------------------------------------------
# Extra tokens (docs/DESIGN.md, Extra tokens): their tiles, bounds and cost
# --------------------------------------------------------------------------------------------


def bf_extra_tiles(cfg, q_tile, kv_tile, tiling, extra, at):
    """(visited, full) bool ``[Q tiles, KV tiles]`` of a pattern with extra tokens, tile pair by tile pair over the
    sequence's token mask: layout tiles (group by group) and the extra tokens' own run cut by the tile volumes,
    before the layout's tiles (``start``) or after them."""
    shape = cfg["input_size"]
    n = math.prod(shape)
    mask = dense_mask(**cfg, extra_tokens=extra, extra_at=at)
    first, xfirst = (extra, 0) if at == "start" else (0, n)

    def tiles(tile):
        out = []
        if tiling == "box":
            for members, ids, count, padded, _ in bf_box_tiles(shape, tile, cfg["dilation"]):
                out += [(first + members[ids == t], bool(padded[t])) for t in range(count)]
        else:
            ids, count, padded = bf_flat_tiles(n, tile)
            out += [(first + np.flatnonzero(ids == t), bool(padded[t])) for t in range(count)]
        vol = math.prod(tile) if tiling == "box" else tile
        xs = [(xfirst + np.arange(k * vol, min((k + 1) * vol, extra)), (k + 1) * vol > extra)
              for k in range(-(-extra // vol))]
        return xs + out if at == "start" else out + xs

    qs, ks = tiles(q_tile), tiles(kv_tile)
    visited = np.zeros((len(qs), len(ks)), dtype=bool)
    full = np.zeros_like(visited)
    for i, (qm, _) in enumerate(qs):
        for k, (km, padded) in enumerate(ks):
            sub = mask[np.ix_(qm, km)]
            visited[i, k] = sub.any()
            full[i, k] = sub.all() and not padded
    return visited, full, mask


@st.composite
def extra_configs(draw, tiling: str):
    cfg, q, kv = draw(tiled_configs(tiling))
    extra = draw(st.integers(1, 40))
    at = "start" if any(cfg["causal"]) or draw(st.booleans()) else "end"
    return cfg, q, kv, extra, at


@FAST
@given(case=st.one_of(extra_configs("box"), extra_configs("flat")))
@example(case=({"input_size": (7, 10), "window": (3, 4), "stride": (1, 2), "dilation": (2, 1),
                "causal": (False, False)}, (2, 4), (4, 2), 9, "end"))
@example(case=({"input_size": (12,), "window": (4,), "stride": (1,), "dilation": (1,), "causal": (True,)},
               (4,), (2,), 5, "start"))
def test_extra_tiles_match_brute_force(case):
    cfg, q, kv, extra, at = case
    tiling = "box" if isinstance(q, tuple) else "flat"
    visited, full, mask = bf_extra_tiles(cfg, q, kv, tiling, extra, at)
    p = GNAPattern(**cfg, extra_tokens=extra, extra_at=at)
    tm = tilemap(p, q if tiling == "box" else (q,), kv if tiling == "box" else (kv,), tiling)
    np.testing.assert_array_equal(tm.visited[0], visited.sum(1), err_msg="visited")
    np.testing.assert_array_equal(tm.full[0], full.sum(1), err_msg="full")
    np.testing.assert_array_equal(tm.kv_visited[0], visited.sum(0), err_msg="kv_visited")
    np.testing.assert_array_equal(tm.kv_full[0], full.sum(0), err_msg="kv_full")
    vol_q = math.prod(q) if tiling == "box" else q
    vol_kv = math.prod(kv) if tiling == "box" else kv
    assert tm.extra_q_tiles == -(-extra // vol_q) and tm.extra_kv_tiles == -(-extra // vol_kv)
    # the bounds: FLOPs over the whole sequence, the worst layout Q tile against the dense baseline's KV tiles
    r = simulate(**cfg, extra_tokens=extra, extra_at=at, q_tile=q, kv_tile=kv, tiling=tiling)
    dense = dense_mask(input_size=cfg["input_size"], window=cfg["input_size"], causal=cfg["causal"],
                       extra_tokens=extra, extra_at=at)
    assert r.flop_speedup == pytest.approx(dense.sum() / mask.sum(), rel=1e-12)
    assert r.density == pytest.approx(mask.mean(), rel=1e-12)
    if not any(cfg["causal"]):
        layout_rows = visited.sum(1)[tm.layout_q]
        dense_kv = (math.prod(-(-n // t) for n, t in zip(cfg["input_size"], kv, strict=True)) if tiling == "box"
                    else -(-math.prod(cfg["input_size"]) // kv)) + tm.extra_kv_tiles
        assert r.kv_tiles_dense == dense_kv
        assert r.tile_speedup == pytest.approx(dense_kv / layout_rows.max(), rel=1e-12)


def test_extra_tokens_cost_more_than_none_and_less_than_dense():
    base = {"input_size": (30, 48, 80), "q_tile": (4, 4, 8), "kv_tile": (4, 4, 8), "gpu": "H100"}
    for at in ("end", "start"):
        none = simulate(**base, window=(18, 24, 24))
        sparse = simulate(**base, window=(18, 24, 24), extra_tokens=256, extra_at=at)
        dense = simulate(**base, window=(30, 48, 80), extra_tokens=256, extra_at=at)
        assert none.call_ms < sparse.call_ms < dense.call_ms
        assert none.dense_ms < sparse.dense_ms  # the dense baseline runs the whole sequence too
        assert dense.flop_speedup == 1.0 and dense.tile_speedup == 1.0
        assert sparse.flop_speedup < none.flop_speedup
    sinks = simulate(input_size=4096, window=512, causal=1, extra_tokens=4, extra_at="start", gpu="H100")
    plain = simulate(input_size=4096, window=512, causal=1, gpu="H100")
    assert plain.call_ms < sinks.call_ms and plain.dense_ms < sinks.dense_ms


def test_extra_tokens_config_and_cli(cli):
    with pytest.raises(ConfigError, match="cannot be combined with block_map"):
        simulate(input_size=64, block_map=np.ones((1, 1), bool), q_tile=64, kv_tile=64, extra_tokens=2)
    code, out, err = cli("table", "--input-size", "16", "16", "--window", "4", "--extra-tokens", "32",
                         "--extra-at", "start", "--format", "csv", "--columns", "flop_speedup")
    assert code == 0, err
    assert float(out.splitlines()[-1]) == pytest.approx(simulate(input_size=(16, 16), window=4, extra_tokens=32,
                                                                 extra_at="start").flop_speedup, rel=1e-3)
    code, _, err = cli("table", "--input-size", "16", "--window", "4", "--causal", "1", "--extra-tokens", "2")
    assert code == 2 and "extra_at='end' with causal=[1]" in err and err.count("\n") == 1
