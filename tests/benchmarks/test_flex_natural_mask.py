"""backward_bench's natural-order FlexAttention baseline on CPU (no GPU, no torch.compile): its ``mask_mod`` on
row-major token indices against the core's dense GNA mask, its block mask, and eager Flex against the reference."""

from __future__ import annotations

import math

import backward_bench
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kernel_cases import flex_natural_block_mask, flex_natural_mask_mod
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

from sparsesim.kernels.reference import gna_reference
from sparsesim.simulator.patterns import dense_mask

#: layout, window, stride, dilation, causal: odd sizes, strided, blocked, dilated, causal and full (skipped) axes.
CONFIGS = [
    ((37,), 9, 1, 1, False),
    ((37,), 9, 4, 1, True),
    ((37,), 5, 5, 3, False),
    ((11, 13), (5, 4), (2, 3), 1, (False, True)),
    ((11, 13), (3, 4), 1, (3, 2), False),
    ((12, 10), (12, 3), 1, 1, False),
    ((5, 9, 6), (3, 4, 5), (1, 2, 3), (1, 2, 1), (False, True, False)),
    ((4, 6, 7), (4, 3, 7), (2, 3, 1), 1, False),
    ((3, 5, 7), (2, 3, 3), (2, 3, 3), 1, (True, False, True)),
    ((4, 5), (4, 5), 1, 1, False),  # dense: no restricted axis
]


def _all_pairs(mask_mod, n: int) -> np.ndarray:
    """The ``mask_mod`` on every (query, key) pair, with plain broadcast tensors."""
    zero = torch.tensor(0)
    return mask_mod(zero, zero, torch.arange(n)[:, None], torch.arange(n)[None, :]).numpy()


def _reference(layout, window, stride, dilation, causal) -> np.ndarray:
    return dense_mask(input_size=layout, window=window, stride=stride, dilation=dilation, causal=causal)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_mask_mod_is_the_dense_gna_mask(cfg):
    layout, window, stride, dilation, causal = cfg
    mm = flex_natural_mask_mod(layout, window, stride, dilation, causal, device="cpu")
    got = _all_pairs(mm, math.prod(layout))
    ref = _reference(*cfg)
    assert got.dtype == np.bool_ and got.shape == ref.shape
    assert np.array_equal(got, ref), f"{(got != ref).sum()} of {ref.size} pairs differ"
    assert 0 < ref.sum() < ref.size or window == layout  # not vacuous: the mask masks something


@st.composite
def gna_cfgs(draw):
    rank = draw(st.integers(1, 3))
    layout, window, stride, dilation, causal = [], [], [], [], []
    for _ in range(rank):
        n = draw(st.integers(1, 9 if rank == 3 else 13))
        w = draw(st.integers(1, n))
        layout.append(n)
        window.append(w)
        dilation.append(draw(st.integers(1, n // w)))
        stride.append(draw(st.integers(1, w)))
        causal.append(draw(st.booleans()))
    return tuple(layout), tuple(window), tuple(stride), tuple(dilation), tuple(causal)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=gna_cfgs())
@example(cfg=((30,), (7,), (3,), (4,), (False,)))
@example(cfg=((7, 9), (4, 3), (3, 2), (1, 3), (True, False)))
def test_mask_mod_is_the_dense_gna_mask_random(cfg):
    mm = flex_natural_mask_mod(*cfg, device="cpu")
    assert np.array_equal(_all_pairs(mm, math.prod(cfg[0])), _reference(*cfg))


@pytest.mark.parametrize("cfg", CONFIGS[3:7], ids=str)
def test_mask_mod_through_flex_create_mask(cfg):
    """Flex evaluates the mask_mod under vmap on scalar indices (tensor indexing rewritten): same mask."""
    n = math.prod(cfg[0])
    mm = flex_natural_mask_mod(*cfg, device="cpu")
    assert np.array_equal(create_mask(mm, None, None, n, n, device="cpu")[0, 0].numpy(), _reference(*cfg))


@pytest.mark.parametrize("cfg", CONFIGS[3:], ids=str)
def test_block_mask_in_row_ranges_equals_one_create_block_mask(cfg):
    n = math.prod(cfg[0])
    mm = flex_natural_mask_mod(*cfg, device="cpu")
    one = create_block_mask(mm, None, None, n, n, device="cpu", BLOCK_SIZE=16)
    assert flex_natural_block_mask(mm, n, "cpu", block=16).kv_num_blocks.equal(one.kv_num_blocks)
    split = flex_natural_block_mask(mm, n, "cpu", block=16, max_elements=2 * 16 * n)  # 2 Q blocks per call
    for f in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices", "q_num_blocks", "q_indices",
              "full_q_num_blocks", "full_q_indices"):
        assert torch.equal(getattr(split, f), getattr(one, f)), f
    assert tuple(split.seq_lengths) == (n, n)
    # Blocks against the dense mask: visited iff a pair is visible, full iff every pair (padding excluded) is.
    ref = _reference(*cfg)
    nb = -(-n // 16)
    padded = np.zeros((nb * 16, nb * 16), dtype=bool)
    padded[:n, :n] = ref
    blocks = padded.reshape(nb, 16, nb, 16)
    assert np.array_equal(split.to_dense()[0, 0].numpy().astype(bool), blocks.any(axis=(1, 3)))
    assert int(one.full_kv_num_blocks.sum()) < int(one.kv_num_blocks.sum() + one.full_kv_num_blocks.sum())


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[4], CONFIGS[6]], ids=str)
def test_eager_flex_in_natural_order_is_gna(cfg):
    """The bench's layout: q/k/v ``[B, *layout, H, D]`` to ``[B, H, N, D]`` and back, against gna_reference."""
    layout, window, stride, dilation, causal = cfg
    n, b, h, d = math.prod(layout), 2, 3, 16
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(b, *layout, h, d, generator=g, dtype=torch.float64) for _ in range(3))
    mm = flex_natural_mask_mod(*cfg, device="cpu")
    bm = flex_natural_block_mask(mm, n, "cpu", block=128, max_elements=128 * n)

    def natural(x):
        return x.reshape(b, n, h, d).transpose(1, 2).contiguous()

    out = flex_attention(natural(q), natural(k), natural(v), block_mask=bm)  # eager: Flex's unfused path
    out = out.transpose(1, 2).reshape(b, *layout, h, d)
    ref = gna_reference(q, k, v, window=window, stride=stride, dilation=dilation, causal=causal)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_bench_lists_the_natural_variant(capsys):
    assert "flex_gna_natural" in backward_bench.__doc__
    assert "create_block_mask" in backward_bench.__doc__
    with pytest.raises(SystemExit) as exc:
        backward_bench.main(["--help"])
    assert exc.value.code == 0
    assert "--budget-s" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_bench_natural_rows_check_against_ours(monkeypatch):
    """run_flex_natural end to end on CPU: its layout round trip, its ratio and its check against ours. Eager Flex
    has no CPU backward: the fwdbwd pass runs SDPA with Flex's own mask_mod as a dense mask in its place."""
    import torch.nn.functional as F

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # time_ms: the host clock
    size, kw = (6, 7), {"window": (3, 4), "stride": (1, 2)}
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, *size, backward_bench.HEADS, backward_bench.HEAD_DIM, generator=g)
                   for _ in range(4))
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = gna_reference(*leaves, **kw, dtype=torch.float32)
    grads = torch.autograd.grad(out, leaves, do)

    def flex(q, k, v, *, block_mask, scale):
        if not q.requires_grad:
            return flex_attention(q, k, v, block_mask=block_mask, scale=scale)
        mask = create_mask(block_mask.mask_mod, None, None, q.shape[-2], k.shape[-2], device="cpu")
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    right = {"out": out.detach(), "grads": list(grads)}
    wrong = {"out": out.detach().flip(1), "grads": [grads[0], grads[1], grads[2].flip(2)]}  # tokens out of order
    for ours in (right, wrong):
        state = {"times": {("ours", "fwd"): 2.0, ("ours", "fwdbwd"): 4.0}, **ours}
        rows = backward_bench.Rows({}, None, 1e9)
        for p in ("fwd", "fwdbwd"):
            backward_bench.run_flex_natural(rows, "c", size, kw, flex, p, q, k, v, do, state)
        fwd, fb = rows.rows
        assert [fwd["impl"], fwd["pass"], fb["pass"]] == ["flex_gna_natural", "fwd", "fwdbwd"]
        assert "natural token order, create_block_mask BLOCK_SIZE=128" in fwd["note"]
        assert fwd["vs_flex"] == pytest.approx(fwd["ms"] / 2.0) and fb["vs_flex"] == pytest.approx(fb["ms"] / 4.0)
        assert state["times"]["flex_natural", "fwdbwd"] == fb["ms"]
        if ours is right:
            assert fwd["rel_err"] < 1e-5 and fb["rel_err"] < 1e-5
        else:
            assert fwd["rel_err"] > 0.5 and fb["rel_err"] > 0.5


@pytest.mark.parametrize("case", backward_bench.CASES, ids=lambda c: c[0])
def test_mask_mod_on_rows_of_the_bench_cases(case):
    """The bench's own shapes (too large for a dense mask): sampled query rows against the core's visible_mask."""
    from sparsesim.simulator.patterns import GNAPattern, visible_mask

    _, size, window, stride, _ = case
    n = math.prod(size)
    rows = np.random.default_rng(n).choice(n, 24, replace=False)
    rows = np.concatenate([rows, [0, n - 1, n // 2]])
    mm = flex_natural_mask_mod(size, window, stride, device="cpu")
    zero = torch.tensor(0)
    got = mm(zero, zero, torch.from_numpy(rows)[:, None], torch.arange(n)[None, :]).numpy()
    ref = visible_mask(GNAPattern(input_size=size, window=window, stride=stride), rows)
    assert np.array_equal(got, ref)
    assert (ref.sum(axis=1) == math.prod(window)).all()  # non-causal: a full window per query
