"""The GNA backward's ``box`` stream layout under the Triton interpreter: dQ reads K/V and dK/dV reads Q/dO in
place, one 5D TMA box per tile over the tensors' ``[B, L0, L1, L2, H * D]`` views (no permutation pass; the
LSE/Delta rows gathered), where the layout has no dilation and the tile divides it; elsewhere it runs as
``permute``. Gradients against the gather layout's and float64 autograd; which path ran is asserted.
"""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from kernel_testing import check_backward_tuning, gna_kw

if "sparsesim.kernels.gna_bwd" in sys.modules:  # imported before the interpreter was switched on
    importlib.reload(sys.modules["sparsesim.kernels.gna_bwd"])

from sparsesim.kernels import gna_bwd  # noqa: E402

SAME = {torch.float32: 1e-6, torch.float16: 1e-3}
BOX = gna_bwd.BwdTuning(dq_stream_layout="box", dkv_stream_layout="box")


@pytest.fixture
def boxes(monkeypatch):
    """Per streamed pair the backward asked to box: whether it was read by boxes (True) or fell back (False)."""
    seen: list[bool] = []
    real = gna_bwd._box_descriptors

    def spy(*args):
        res = real(*args)
        seen.append(res is not None)
        return res

    monkeypatch.setattr(gna_bwd, "_box_descriptors", spy)
    return seen


_kw = gna_kw


def check(shape, kw, tiles, heads, heads_kv, dtype, seed, batch=1, tuning=BOX):
    check_backward_tuning(shape, kw, tiles, heads, heads_kv, dtype, seed, tuning=tuning, same=SAME, batch=batch)


CASES = [
    # id, shape, pattern, tiles, heads, heads_kv, dtype, batch
    ("2d-causal-gqa", (8, 12), _kw((3, 5), (1, 2), 1, (True, False)), {"q_tile": (4, 4)}, 4, 2, torch.float16, 1),
    ("2d-unequal-tiles-batch", (8, 16), _kw((5, 7), (2, 1)), {"q_tile": (4, 4), "kv_tile": (2, 8)}, 2, 1,
     torch.float32, 2),
    ("2d-block-sparse", (8, 8), _kw((4, 4), (4, 4)), {"q_tile": (4, 4)}, 2, 1, torch.float32, 1),
    ("3d-causal", (4, 4, 8), _kw((2, 3, 3), (1, 2, 1), 1, (False, False, True)), {"q_tile": (2, 2, 4)}, 2, 1,
     torch.float32, 1),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_box_matches_gathered_and_float64(case, boxes):
    _, shape, kw, tiles, heads, heads_kv, dtype, batch = case
    check(shape, kw, tiles, heads, heads_kv, dtype, seed=len(shape) + heads, batch=batch)
    assert boxes == [True, True], "dQ and dK/dV each read their streamed pair by boxes"


def test_box_falls_back_to_permuted_where_it_cannot_run(boxes, modes):
    """Dilation, or a layout the tile does not divide: the permuted path runs instead, with the same results."""
    check((9, 7), _kw((3, 3), (1, 2), (2, 1)), {"q_tile": (4, 4)}, 2, 1, torch.float32, seed=21)
    check((9, 8), _kw((3, 3), 1, 1), {"q_tile": (4, 4)}, 2, 1, torch.float32, seed=22)
    assert boxes == [False] * 4 and modes == [2] * 4


def test_one_kernel_boxed(boxes):
    for layouts in (("box", "gather"), ("gather", "box"), ("box", "permute")):
        tuning = gna_bwd.BwdTuning(dq_stream_layout=layouts[0], dkv_stream_layout=layouts[1])
        check((8, 8), _kw((3, 5)), {"q_tile": (4, 4)}, 2, 2, torch.float32, seed=23, tuning=tuning)
    assert boxes == [True, True, True]
