"""Dense kernel vs the torch reference under the Triton interpreter."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_close, randn

from sparsesim.hwmodels import load_gpu
from sparsesim.kernels import attention, dense_configs, reference_attention
from sparsesim.kernels._launch import DENSE_SPACE, keep_dense_config


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize(("n_q", "n_kv", "heads", "heads_kv", "head_dim"), [
    (50, 50, 2, 2, 16),     # ragged last tiles
    (64, 40, 4, 2, 32),     # cross attention, GQA
    (33, 70, 3, 1, 16),     # MQA
])
def test_dense_matches_reference(dtype, n_q, n_kv, heads, heads_kv, head_dim):
    q = randn(2, n_q, heads, head_dim, dtype=dtype, seed=1)
    k = randn(2, n_kv, heads_kv, head_dim, dtype=dtype, seed=2)
    v = randn(2, n_kv, heads_kv, head_dim, dtype=dtype, seed=3)
    assert_close(attention(q, k, v), reference_attention(q, k, v), dtype)


@pytest.mark.parametrize("use_desc", [False, True])
def test_dense_strided_layout_scale_and_out(use_desc):
    from sparsesim.kernels.dense import launch_dense

    # [B, H, N, D] storage viewed as [B, N, H, D]: the kernel only sees strides.
    q = randn(1, 2, 40, 16, dtype=torch.float16, seed=4).transpose(1, 2)
    k = randn(1, 2, 40, 16, dtype=torch.float16, seed=5).transpose(1, 2)
    v = randn(1, 2, 40, 16, dtype=torch.float16, seed=6).transpose(1, 2)
    out = torch.full((1, 40, 2, 16), float("nan"), dtype=torch.float16)
    launch_dense(q, k, v, out, 0.3, None, use_desc)
    assert_close(out, reference_attention(q, k, v, scale=0.3), torch.float16)


def test_dense_out_buffer_fully_written():
    q = randn(1, 45, 2, 16, dtype=torch.float32, seed=7)
    out = torch.full_like(q, float("nan"))
    res = attention(q, q, q, out=out)
    assert res is out and torch.isfinite(out).all()


def test_dense_configs_listed_and_pruned():
    h200 = load_gpu("H200")
    for head_dim in (64, 128, 256):
        for dtype in ("fp16", "bf16"):
            configs = dense_configs(head_dim, dtype)
            assert 1 <= len(configs) <= 8
            assert all(keep_dense_config(c, head_dim, dtype, h200, h200.smem_per_block_bytes) for c in configs)
            assert all(set(c) == set(DENSE_SPACE) for c in configs)
    assert dense_configs(128, torch.bfloat16) == dense_configs(128, "bf16")
    # Head dim 256 keeps the key tile at 64 (registers); A100's 163 KB lets fewer stages fit than the H200's 227 KB.
    assert {c["BLOCK_N"] for c in dense_configs(256, "bf16")} == {64}
    assert len(dense_configs(128, "bf16", "A100")) < len(dense_configs(128, "bf16", "H200"))
