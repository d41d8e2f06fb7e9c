"""Every bad input raises a one-line ValueError naming the value and what is allowed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsesim.kernels import attention, block_sparse_attention, gna_attention
from sparsesim.kernels._launch import check_qkv


def _qkv(*shape, dtype=torch.float16):
    return tuple(torch.zeros(shape, dtype=dtype) for _ in range(3))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(("args", "match"), [
    (_qkv(2, 8, 16), "rank"),                                   # missing head axis
    (_qkv(1, 8, 2, 16, dtype=torch.float64), "dtype"),
    (_qkv(1, 8, 2, 16, dtype=torch.int32), "dtype"),
    (_qkv(1, 8, 2, 48), "head_dim=48"),
    ((torch.zeros(1, 8, 2, 16, dtype=torch.float16), torch.zeros(1, 8, 2, 16, dtype=torch.float32),
      torch.zeros(1, 8, 2, 16, dtype=torch.float16)), "dtype"),
    ((torch.zeros(1, 8, 2, 16), torch.zeros(1, 8, 2, 16), torch.zeros(1, 9, 2, 16)), "k has shape"),
    ((torch.zeros(1, 8, 3, 16), torch.zeros(1, 8, 2, 16), torch.zeros(1, 8, 2, 16)), "heads_kv"),
    ((torch.zeros(1, 8, 2, 16), torch.zeros(2, 8, 2, 16), torch.zeros(2, 8, 2, 16)), "batch"),
    (([[1.0]], torch.zeros(1, 8, 2, 16), torch.zeros(1, 8, 2, 16)), "torch.Tensor"),
])
def test_dense_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match) as exc:
        attention(*args)
    _one_line(exc)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"window": 9}, "larger than the axis length 8"),
    ({"window": (3, 3, 3)}, "rank"),
    ({"window": 3, "stride": 4}, "stride 4 is larger than window 3"),
    ({"window": 3, "dilation": 3}, "dilation"),
    ({"window": 3, "causal": (True, 2)}, "causal"),
    ({"window": 3, "q_tile": (3, 8), "kv_tile": (4, 4)}, "q_tile"),
    ({"window": 3, "q_tile": (4, 4), "kv_tile": (16, 32)}, "kv_tile"),
    ({"window": 3, "scale": -1.0}, "scale"),
    ({"window": 3, "out": torch.zeros(1, 8, 8, 2, 32, dtype=torch.float16)}, "out"),
])
def test_gna_bad_parameters(kwargs, match):
    q, k, v = _qkv(1, 8, 8, 2, 16)
    with pytest.raises(ValueError, match=match) as exc:
        gna_attention(q, k, v, **kwargs)
    _one_line(exc)


def test_gna_bad_rank_and_spatial_mismatch():
    with pytest.raises(ValueError, match="rank"):
        gna_attention(*_qkv(1, 2, 2, 2, 2, 2, 16), window=1)
    q = torch.zeros(1, 8, 8, 2, 16, dtype=torch.float16)
    k = torch.zeros(1, 8, 9, 2, 16, dtype=torch.float16)
    with pytest.raises(ValueError, match="spatial"):
        gna_attention(q, k, k, window=3)


def test_block_sparse_bad_map_values():
    q, k, v = _qkv(1, 32, 2, 16)
    with pytest.raises(ValueError, match="block_map"):
        block_sparse_attention(q, k, v, np.full((2, 2), 3), q_tile=16, kv_tile=16)


def test_cpu_and_fp32_need_the_interpreter(monkeypatch):
    q, k, v = _qkv(1, 8, 2, 16)
    check_qkv(q, k, v)  # interpreter on: CPU fp16 accepted
    with pytest.raises(ValueError, match="bfloat16 under TRITON_INTERPRET=1"):  # the interpreter's bf16 dot is wrong
        check_qkv(*_qkv(1, 8, 2, 16, dtype=torch.bfloat16))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA") as exc:
        check_qkv(q, k, v)
    _one_line(exc)
    with pytest.raises(ValueError, match="float32"):
        check_qkv(*_qkv(1, 8, 2, 16, dtype=torch.float32))
