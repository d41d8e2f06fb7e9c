"""BlockMap: lists against brute force, validation once, raw maps found by identity and version (never by
content)."""

from __future__ import annotations

import doctest
import gc

import numpy as np
import pytest
import torch
from kernel_testing import assert_close, randn

import sparsesim.kernels.block_map as block_map_mod
from sparsesim.kernels import BlockMap, block_sparse_attention, prepare_block_map
from sparsesim.kernels.reference import block_sparse_reference
from sparsesim.simulator.errors import ConfigError


@pytest.mark.parametrize(("n", "q_tile", "kv_tile", "heads"), [(70, 32, 16, 3), (64, 16, 32, 1), (33, 16, 16, 2)])
def test_lists_match_brute_force(n, q_tile, kv_tile, heads):
    rng = np.random.default_rng(n)
    qb, kb = -(-n // q_tile), -(-n // kv_tile)
    bm = rng.random((heads, qb, kb)) < 0.4
    prepared = prepare_block_map(bm, seq_len=n, q_tile=q_tile, kv_tile=kv_tile) if bm.any() else None
    assert prepared is not None
    has_tail = n % kv_tile != 0
    for h in range(heads):
        for i in range(qb):
            cols = [j for j in range(kb) if bm[h, i, j] and not (has_tail and j == kb - 1)]
            assert prepared.kv_num[h, i] == len(cols)
            assert prepared.kv_idx[h, i, :len(cols)].tolist() == cols
            assert sorted(prepared.kv_idx[h, i].tolist()) == list(range(kb))
            assert prepared.tail[h, i] == int(has_tail and bm[h, i, -1])
        for j in range(kb):  # transposed: the Q blocks whose map row holds KV block j (the padded one too)
            rows = [i for i in range(qb) if bm[h, i, j]]
            assert prepared.q_num[h, j] == len(rows)
            assert prepared.q_idx[h, j, :len(rows)].tolist() == rows
    assert torch.equal(prepared.dense(), torch.from_numpy(bm))
    for t in (prepared.kv_num, prepared.kv_idx, prepared.tail, prepared.q_num, prepared.q_idx):
        assert t.dtype == torch.int32 and t.is_contiguous()


def test_numpy_torch_and_int_maps_prepare_alike():
    bm = np.random.default_rng(1).random((2, 2, 4)) < 0.5
    bm[0, 0, 0] = True
    a = prepare_block_map(bm, seq_len=50, q_tile=32, kv_tile=16)
    b = prepare_block_map(torch.from_numpy(bm.astype(np.int64)), seq_len=50, q_tile=32, kv_tile=16)
    for name in ("kv_num", "kv_idx", "tail", "q_num", "q_idx"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.heads == 2 and (a.q_blocks, a.kv_blocks) == (2, 4) and a.has_tail
    assert a.to("cpu") is a
    assert doctest.testmod(block_map_mod).failed == 0


@pytest.mark.parametrize(("block_map", "kwargs", "match"), [
    (np.ones((3, 2), dtype=bool), {}, "blocks"),
    (np.zeros((3, 3), dtype=bool), {}, "visits no block"),
    (np.full((3, 3), 2), {}, "0/1"),
    (np.ones((3, 3), dtype=np.float32), {}, "0/1"),
    (np.ones((1, 1, 3, 3), dtype=bool), {}, "shape"),
    (np.ones((3, 4), dtype=bool), {"kv_tile": 12}, "kv_tile"),
    (np.ones((3, 3), dtype=bool), {"seq_len": 0}, "seq_len"),
])
def test_validated_once_with_one_line_errors(block_map, kwargs, match):
    args = {"seq_len": 40, "q_tile": 16, "kv_tile": 16, **kwargs}
    with pytest.raises(ConfigError, match=match):
        prepare_block_map(block_map, **args)


def _count_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = BlockMap.from_mask.__func__  # type: ignore[attr-defined]

    def counting(cls, *args, **kwargs):
        calls[0] += 1
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(BlockMap, "from_mask", classmethod(counting))
    return calls


def test_per_call_path_never_reads_the_map(monkeypatch):
    """Repeated calls build (validate, list) a raw map once; a prepared map never; no content is read per call:
    a tensor changed behind its version counter keeps its old lists, one changed by a torch op is rebuilt."""
    calls = _count_builds(monkeypatch)
    n, tile = 48, 16
    q, k, v = (randn(1, n, 2, 16, dtype=torch.float32, seed=s) for s in (1, 2, 3))
    raw = torch.ones(3, 3, dtype=torch.bool)
    first = block_sparse_attention(q, k, v, raw, q_tile=tile, kv_tile=tile)
    for _ in range(3):
        block_sparse_attention(q, k, v, raw, q_tile=tile, kv_tile=tile)
    assert calls[0] == 1
    prepared = prepare_block_map(raw, seq_len=n, q_tile=tile, kv_tile=tile)
    assert calls[0] == 2
    for _ in range(3):
        block_sparse_attention(q, k, v, prepared)
    assert calls[0] == 2

    raw.numpy()[0, :] = False  # behind the version counter: not seen (the content is not read per call)
    assert torch.equal(block_sparse_attention(q, k, v, raw, q_tile=tile, kv_tile=tile), first)
    assert calls[0] == 2
    raw[0, :] = False  # a torch op bumps the version: prepared again, the new map runs
    out = block_sparse_attention(q, k, v, raw, q_tile=tile, kv_tile=tile)
    assert calls[0] == 3
    assert_close(out, block_sparse_reference(q, k, v, raw.numpy(), q_tile=tile, kv_tile=tile), torch.float32)
    assert torch.count_nonzero(out[:, :tile]) == 0


def test_numpy_map_found_by_identity_and_forgotten_when_freed(monkeypatch):
    calls = _count_builds(monkeypatch)
    q = randn(1, 32, 2, 16, dtype=torch.float32, seed=4)
    raw = np.eye(2, dtype=bool)
    for _ in range(3):
        block_sparse_attention(q, q, q, raw, q_tile=16, kv_tile=16)
    assert calls[0] == 1
    block_sparse_attention(q, q, q, raw.copy(), q_tile=16, kv_tile=16)  # another array: prepared anew
    assert calls[0] == 2
    key = id(raw)
    assert key in block_map_mod._RAW
    del raw
    gc.collect()
    assert key not in block_map_mod._RAW


def test_content_hash_is_gone():
    import sparsesim.kernels.block_sparse as bs

    assert not hasattr(bs, "block_map_key")
