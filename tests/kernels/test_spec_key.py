"""The launch key of repeated backward launches: what Triton specializes runtime arguments on."""

from __future__ import annotations

import torch

from sparsesim.kernels._launch import spec_key


def test_integers_differ_by_one_by_sixteen_and_by_width():
    assert spec_key((1,)) != spec_key((2,))
    assert spec_key((16,)) != spec_key((17,))
    assert spec_key((2**31,)) != spec_key((2**31 - 16,))
    assert spec_key((32,)) == spec_key((48,))  # both divisible by 16, neither 1, both 32-bit: one compile
    assert spec_key((3,)) == spec_key((5,))


def test_tensors_differ_by_alignment_and_dtype():
    buf = torch.zeros(64, dtype=torch.float16)
    assert spec_key((buf,)) == spec_key((buf[8:],))  # 16 bytes further: still aligned
    assert spec_key((buf,)) != spec_key((buf[1:],))  # 2 bytes further
    assert spec_key((buf,)) != spec_key((buf.float(),))


def test_floats_are_not_specialized():
    assert spec_key((0.125, 3)) == spec_key((0.5, 3))
