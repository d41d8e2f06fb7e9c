"""capture_attention: q, k, v as attention receives them (after QK-norm and 3D RoPE), steps, items, GQA, refusals.

The DiT-like stack below computes its attention probabilities itself (a reference path, from its own q and k
after norm and RoPE); the captured samples, through the search's own head_quality, must reproduce them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
nn = torch.nn

from sparsesim.search.capture import AttentionCapture, capture_attention  # noqa: E402
from sparsesim.search.quality import head_quality  # noqa: E402
from sparsesim.search.samples import load_samples, save_samples  # noqa: E402
from sparsesim.simulator.errors import ConfigError  # noqa: E402

LAYOUT = (2, 4, 4)
N = math.prod(LAYOUT)
DIM, HEADS, HD = 32, 4, 16
ROPE_SPLIT = (4, 6, 6)  # head_dim channels rotated by the T, H, W coordinates


def rope(x: torch.Tensor, layout: tuple[int, ...] = LAYOUT) -> torch.Tensor:
    """3D rotary embedding of x [B, N, H, D]: each axis rotates its own channel pairs by its coordinate."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in layout], indexing="ij"), -1).reshape(-1, 3)
    parts, start = [], 0
    for axis, width in enumerate(ROPE_SPLIT):
        xs = x[..., start:start + width]
        freq = 1.0 / (10.0 ** (torch.arange(0, width, 2, dtype=torch.float32) / width))
        ang = coords[:, axis, None].float() * freq  # [N, width/2]
        cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
        a, b = xs[..., 0::2], xs[..., 1::2]
        parts.append(torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2))
        start += width
    return torch.cat(parts, -1)


class Block(nn.Module):
    """A DiT-like block: fused qkv projection, QK RMSNorm, 3D RoPE, SDPA (GQA when heads_kv < heads)."""

    def __init__(self, heads_kv: int = HEADS, scale: float | None = 0.3) -> None:
        super().__init__()
        self.hkv, self.scale = heads_kv, scale
        self.qkv = nn.Linear(DIM, (HEADS + 2 * heads_kv) * HD)
        self.q_norm, self.k_norm = nn.RMSNorm(HD), nn.RMSNorm(HD)
        with torch.no_grad():  # norms that matter
            self.q_norm.weight.uniform_(0.5, 2.0)
            self.k_norm.weight.uniform_(0.5, 2.0)
        self.proj = nn.Linear(HEADS * HD, DIM)
        self.probs: list[torch.Tensor] = []  # the model's own probabilities, one per call (reference path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).split([HEADS * HD, self.hkv * HD, self.hkv * HD], -1)
        q = rope(self.q_norm(q.view(b, n, HEADS, HD))).transpose(1, 2)
        k = rope(self.k_norm(k.view(b, n, self.hkv, HD))).transpose(1, 2)
        v = v.view(b, n, self.hkv, HD).transpose(1, 2)
        scale = self.scale if self.scale is not None else 1 / math.sqrt(HD)
        kk = k.repeat_interleave(HEADS // self.hkv, 1)
        self.probs.append(torch.softmax(q @ kk.transpose(-1, -2) * scale, -1).detach())
        o = F.scaled_dot_product_attention(q, k, v, scale=self.scale, enable_gqa=self.hkv < HEADS)
        return x + self.proj(o.transpose(1, 2).reshape(b, n, HEADS * HD))


class Stack(nn.Module):
    def __init__(self, layers: int = 3, heads_kv: int = HEADS, scale: float | None = 0.3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(heads_kv, scale) for _ in range(layers))
        self.skip_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks[:-1] if self.skip_last else self.blocks:
            x = blk(x)
        return x


def model_and_input(batch: int = 1, heads_kv: int = HEADS, seed: int = 0, scale: float | None = 0.3):
    torch.manual_seed(seed)
    return Stack(heads_kv=heads_kv, scale=scale).eval(), torch.randn(batch, N, DIM)


def probs_from_samples(samples, layer: int, head: int) -> np.ndarray:
    """The attention probabilities of the sampled rows as the search computes them (head_quality)."""
    q, k, v = samples.head(layer, head)
    hq = head_quality(q, k, v, samples.rows_of(layer), samples.layout)
    return hq.p / hq.z[:, None]


@pytest.mark.parametrize("heads_kv,scale", [(HEADS, 0.3), (2, None), (1, 0.2)])
def test_captured_qk_reproduce_model_probabilities(heads_kv: int, scale: float | None) -> None:
    model, x = model_and_input(heads_kv=heads_kv, scale=scale)
    with torch.no_grad(), capture_attention(model, layout=LAYOUT, rows=12, seed=3) as cap:
        model(x)
    s = cap.samples()
    assert s.layout == LAYOUT and s.num_layers == 3
    assert [la.name for la in s.layers] == ["blocks.0", "blocks.1", "blocks.2"]
    for li, blk in enumerate(model.blocks):
        la = s.layers[li]
        assert la.q.shape == (HEADS, 12, HD) and la.k.shape == (heads_kv, N, HD) == la.v.shape
        assert cap.layers[li].scale == pytest.approx(scale if scale is not None else 1 / math.sqrt(HD))
        for h in range(HEADS):
            want = blk.probs[-1][0, h, la.rows].numpy()
            np.testing.assert_allclose(probs_from_samples(s, li, h), want, atol=2e-6, rtol=1e-4)
    # the projection outputs (what capture() hooks) do not reproduce them: norm and RoPE matter here
    blk = model.blocks[0]
    q_proj = blk.qkv(x)[0, :, :HD].detach()
    k_proj = blk.qkv(x)[0, :, HEADS * HD:HEADS * HD + HD].detach()
    wrong = torch.softmax(q_proj @ k_proj.T * (scale or 1 / math.sqrt(HD)), -1)[s.layers[0].rows].numpy()
    assert np.abs(wrong - blk.probs[-1][0, 0, s.layers[0].rows].numpy()).max() > 1e-2


def test_steps_tagged_and_selected() -> None:
    model, _ = model_and_input()
    xs = [torch.randn(1, N, DIM, generator=torch.Generator().manual_seed(t)) for t in range(4)]
    with torch.no_grad(), capture_attention(model, layout=LAYOUT, rows=8, steps=(1, 3)) as cap:
        for t, x in enumerate(xs):
            cap.step = t
            model(x)
    assert cap.passes == 4 and cap.steps == (1, 3)
    assert {(c.layer, c.step) for c in cap.calls} == {(li, t) for li in range(3) for t in (1, 3)}
    with pytest.raises(ConfigError, match="choose one with step="):
        cap.samples()
    s3 = cap.samples(step=3)
    for li, blk in enumerate(model.blocks):  # the 4th call of each block is step 3
        want = blk.probs[3][0, 2, s3.layers[li].rows].numpy()
        np.testing.assert_allclose(probs_from_samples(s3, li, 2), want, atol=2e-6, rtol=1e-4)
        assert not np.allclose(probs_from_samples(cap.samples(step=1), li, 2), want, atol=1e-3)
    with pytest.raises(ConfigError, match="step=2; kept steps: 1, 3"):
        cap.samples(step=2)


def test_passes_default_to_step_numbers_and_rows_are_seeded() -> None:
    model, x = model_and_input()
    runs = []
    for _ in range(2):
        with torch.no_grad(), capture_attention(model, layout=LAYOUT, rows=8, seed=5) as cap:
            model(x)
            model(x)
        runs.append(cap)
    assert runs[0].steps == (0, 1)
    np.testing.assert_array_equal(runs[0].samples(step=1).rows_of(2), runs[1].samples(step=0).rows_of(2))


def test_batch_items_and_cfg_branches_as_items(tmp_path) -> None:
    model, x2 = model_and_input(batch=2)
    with torch.no_grad(), capture_attention(model, layout=LAYOUT, rows=6, batch_items=(1,)) as cap:
        model(x2)
    assert cap.batch_items(0) == (1,)
    s = cap.samples()
    want = model.blocks[1].probs[-1][1, 3, s.layers[1].rows].numpy()
    np.testing.assert_allclose(probs_from_samples(s, 1, 3), want, atol=2e-6, rtol=1e-4)
    # CFG run as two passes per step: the second pass of a step is the next batch item
    with torch.no_grad(), capture_attention(model, layout=LAYOUT, rows=6) as cap:
        for t in range(2):
            cap.step = t
            model(x2[:1])
            model(x2[1:])
    assert cap.steps == (0, 1) and cap.batch_items(1) == (0, 1)
    with pytest.raises(ConfigError, match="choose one with batch_item="):
        cap.samples(step=1)
    s = cap.samples(step=1, batch_item=1)
    want = model.blocks[0].probs[-1][0, 0, s.layers[0].rows].numpy()
    np.testing.assert_allclose(probs_from_samples(s, 0, 0), want, atol=2e-6, rtol=1e-4)
    back = load_samples(save_samples(s, tmp_path / "cap.npz"))  # the existing file format, unchanged
    assert back.layout == LAYOUT and back.layers[0].k.shape == s.layers[0].k.shape
    np.testing.assert_allclose(probs_from_samples(back, 0, 0), want, atol=5e-3)


def test_sdpa_restored_and_nesting_refused() -> None:
    original = F.scaled_dot_product_attention
    model, x = model_and_input()
    with pytest.raises(RuntimeError, match="boom"), capture_attention(model, layout=LAYOUT):
        assert F.scaled_dot_product_attention is not original
        raise RuntimeError("boom")
    assert F.scaled_dot_product_attention is original
    with capture_attention(layout=LAYOUT):
        with pytest.raises(ConfigError, match="one replacement"), capture_attention(layout=LAYOUT):
            pass
    assert F.scaled_dot_product_attention is original
    assert not model._forward_pre_hooks and not model.blocks[0]._forward_hooks  # hooks removed


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_refusals_name_the_mismatch() -> None:
    model, x = model_and_input()
    with pytest.raises(ConfigError) as exc, torch.no_grad(), capture_attention(model, layout=(2, 4, 5)):
        model(x)
    assert "32 query tokens; the layout 2x4x5 has 40" in one_line(exc)
    q = torch.randn(1, HEADS, N, HD)
    kv = torch.randn(1, HEADS, N + 3, HD)
    with pytest.raises(ConfigError) as exc, capture_attention(layout=LAYOUT):
        F.scaled_dot_product_attention(q, kv, kv)
    assert "35 keys for 32 queries" in one_line(exc)
    pad = torch.ones(N, N, dtype=torch.bool)
    pad[:, -2:] = False
    with pytest.raises(ConfigError) as exc, capture_attention(layout=LAYOUT):
        F.scaled_dot_product_attention(q, q, q, attn_mask=pad)
    assert "padding" in one_line(exc)
    with pytest.raises(ConfigError) as exc, capture_attention(layout=LAYOUT):
        F.scaled_dot_product_attention(q, q, q, attn_mask=torch.randn(N, N))
    assert "bias" in one_line(exc)
    with pytest.raises(ConfigError) as exc, capture_attention(layout=LAYOUT):
        F.scaled_dot_product_attention(q, torch.randn(1, 3, N, HD), torch.randn(1, 3, N, HD))
    assert "4 query heads, 3 K/V heads" in one_line(exc)
    with pytest.raises(ConfigError) as exc, torch.no_grad(), capture_attention(model, layout=LAYOUT):
        model(x)
        model.skip_last = True
        model(x)
    assert "forward pass 1 (step 1) made 2 attention calls; the first pass made 3" in one_line(exc)
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"
    with capture_attention(layout=LAYOUT) as cap:
        pass
    with pytest.raises(ConfigError) as exc:
        cap.samples()
    assert "no attention call was captured" in one_line(exc)


def test_masks_none_or_causal() -> None:
    q = torch.randn(1, HEADS, N, HD)
    causal_float = torch.zeros(N, N).masked_fill(~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf"))
    with capture_attention(layout=LAYOUT) as cap:
        cap.begin_pass()
        F.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(1, 1, N, N, dtype=torch.bool))
        F.scaled_dot_product_attention(q, q, q, attn_mask=causal_float)
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert [la.causal for la in cap.layers] == [False, True, True]


def test_record_adapter_for_custom_attention() -> None:
    """An attention function that does not call SDPA hands its tensors in, by name or by layer number."""
    cap = AttentionCapture(layout=LAYOUT, rows=4)
    g = torch.Generator().manual_seed(0)
    for step in range(2):
        cap.begin_pass(step=10 + step)
        for name in ("double.0", "single.0"):
            q, k, v = (torch.randn(2, HEADS, N, HD, generator=g) for _ in range(3))
            cap.record(q, k, v, layer=name)
    cap.end_pass()
    assert [la.name for la in cap.layers] == ["double.0", "single.0"] and cap.steps == (10, 11)
    assert cap.samples(step=11, batch_item=1).layers[1].name == "single.0"
    cap.begin_pass(step=12)
    q = torch.randn(1, HEADS, N, HD)
    cap.record(q, q, q, layer=1)
    with pytest.raises(ConfigError, match="layer 1 was recorded twice"):
        cap.record(q, q, q, layer=1)


def test_multihead_attention_captured_with_its_head_dim() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(DIM, HEADS, batch_first=True).eval()
    x = torch.randn(1, N, DIM)
    with torch.no_grad():
        _, weights = mha(x, x, x, need_weights=True, average_attn_weights=False)
        with capture_attention(mha, layout=LAYOUT, rows=10) as cap:
            out, _ = mha(x, x, x, need_weights=False)
        torch.testing.assert_close(out, mha(x, x, x, need_weights=False)[0])  # fast path outside: same output
    s = cap.samples()
    la = s.layers[0]
    assert la.q.shape == (HEADS, 10, DIM // HEADS) and la.k.shape == (HEADS, N, DIM // HEADS)
    for h in range(HEADS):
        np.testing.assert_allclose(probs_from_samples(s, 0, h), weights[0, h, la.rows].numpy(), atol=2e-6,
                                   rtol=1e-4)
    with pytest.raises(ConfigError) as exc, torch.no_grad(), capture_attention(mha, layout=LAYOUT):
        mha(x, x, x)
    assert "need_weights=True" in one_line(exc)


# --------------------------------------------------------------------------------------------
# Extra tokens: joint text tokens (MM-DiT) before or after the layout's tokens
# --------------------------------------------------------------------------------------------


class JointBlock(nn.Module):
    """Joint attention: text tokens concatenated with the layout's tokens (after RoPE on the layout's only)."""

    def __init__(self, at: str) -> None:
        super().__init__()
        self.at = at
        self.qkv = nn.Linear(DIM, 3 * HEADS * HD)
        self.probs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]

        def heads(t: torch.Tensor, rotate: bool) -> list[torch.Tensor]:
            q, k, v = (y.view(b, t.shape[1], HEADS, HD) for y in self.qkv(t).split(HEADS * HD, -1))
            return [rope(q) if rotate else q, rope(k) if rotate else k, v]

        img, txt = heads(x, True), heads(text, False)
        q, k, v = (torch.cat([t, i] if self.at == "start" else [i, t], 1).transpose(1, 2)
                   for i, t in zip(img, txt, strict=True))
        self.probs.append(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HD), -1).detach())
        return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("at", ["end", "start"])
def test_joint_text_tokens_captured_with_the_samples(at: str, tmp_path) -> None:
    torch.manual_seed(1)
    blk, extra = JointBlock(at).eval(), 5
    x, text = torch.randn(1, N, DIM), torch.randn(1, extra, DIM)
    with torch.no_grad(), capture_attention(layout=LAYOUT, rows=10, extra_tokens=extra, extra_at=at) as cap:
        blk(x, text)
    s = cap.samples()
    assert (s.extra_tokens, s.extra_at) == (extra, at)
    first = extra if at == "start" else 0
    rows = s.rows_of(0)
    assert rows.min() >= first and rows.max() < first + N  # layout tokens, by sequence position
    assert s.layers[0].k.shape == (HEADS, N + extra, HD)
    for h in range(HEADS):
        q, k, v = s.head(0, h)
        hq = head_quality(q, k, v, rows, LAYOUT, extra_tokens=extra, extra_at=at)
        np.testing.assert_allclose(hq.p / hq.z[:, None], blk.probs[-1][0, h, rows].numpy(), atol=2e-6, rtol=1e-4)
    back = load_samples(save_samples(s, tmp_path / "s.npz"))
    assert (back.extra_tokens, back.extra_at) == (extra, at)
    np.testing.assert_array_equal(back.rows_of(0), rows)


def test_extra_tokens_refused_when_they_do_not_match() -> None:
    blk = JointBlock("end").eval()
    x, text = torch.randn(1, N, DIM), torch.randn(1, 3, DIM)
    with pytest.raises(ConfigError, match=f"{N + 3} query tokens; the layout 2x4x4 has {N} \\(extra tokens\\? pass "
                                          "extra_tokens=\\)"), torch.no_grad(), capture_attention(layout=LAYOUT):
        blk(x, text)
    with pytest.raises(ConfigError, match=f"{N + 3} query tokens; the layout 2x4x4 with 4 extra tokens has {N + 4}"), \
            torch.no_grad(), capture_attention(layout=LAYOUT, extra_tokens=4):
        blk(x, text)
    cap = AttentionCapture(layout=(N,), extra_tokens=2)
    q = torch.randn(1, HEADS, N + 2, HD)
    with pytest.raises(ConfigError, match="causal call with 2 extra tokens after the layout"):
        cap.record(q, q, q, is_causal=True)
    with pytest.raises(ConfigError, match="extra_at='middle'; allowed: end, start"):
        AttentionCapture(layout=LAYOUT, extra_tokens=2, extra_at="middle")
