"""The report's roofline counts bytes with the cost model's rule: the dtype's bytes, K and V at heads_kv."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from sparsesim.reports.build import roofline_points  # noqa: E402
from sparsesim.simulator import simulate  # noqa: E402


def _rec(**kw):
    base = {"gpu": "H100", "batch": 1, "heads": 2, "heads_kv": 2, "head_dim": 16, "dtype": "bf16",
            "input_size": (2, 5), "achieved_TFLOPs": 1.0, "predicted_ms": 1.0}
    return {**base, **kw}


def test_hand_worked_bytes():
    """10 tokens, 2 heads of 16, bf16: Q, K, V, O are 4 x 10 x 2 x 16 x 2 bytes = 2560; with one KV head
    K and V halve: 2 x 640 + 2 x 320 = 1920; fp8 halves everything."""
    dense, gqa, fp8 = roofline_points([_rec(), _rec(heads_kv=1), _rec(dtype="fp8")])
    assert dense["io_bytes"] == 2560
    assert gqa["io_bytes"] == 1920
    assert fp8["io_bytes"] == 1280
    assert dense["intensity"] == pytest.approx(1e9 / 2560)


@pytest.mark.parametrize("heads_kv", [8, 2])
def test_fp8_halves_the_bytes_of_bf16(heads_kv):
    recs = [simulate(input_size=(16, 16), window=(4, 4), heads=8, heads_kv=heads_kv, dtype=dt, gpu="H100").to_dict()
            for dt in ("bf16", "fp8")]
    bf16, fp8 = roofline_points(recs)
    assert fp8["io_bytes"] * 2 == bf16["io_bytes"]


def test_gqa_lowers_the_bytes_and_raises_the_intensity():
    recs = [simulate(input_size=(16, 16), window=(4, 4), heads=8, heads_kv=kv, gpu="H100").to_dict()
            for kv in (8, 4, 1)]
    mha, gqa, mqa = roofline_points(recs)
    assert mha["io_bytes"] > gqa["io_bytes"] > mqa["io_bytes"]
    # Q and O stay, K and V shrink with heads_kv: from 4 tensors' worth to 2 + 2/8.
    assert mqa["io_bytes"] / mha["io_bytes"] == pytest.approx((2 + 2 / 8) / 4)
    flops = [r["achieved_TFLOPs"] * r["predicted_ms"] for r in (mha, mqa)]
    assert mqa["intensity"] / mha["intensity"] == pytest.approx(flops[1] / flops[0] * 4 / (2 + 2 / 8))
