"""backprop_judge: each measured implementation priced by its own model, unmodelled rows skipped (CPU)."""

from __future__ import annotations

import backprop_judge
import pandas as pd
import pytest

from sparsesim.hwmodels import load_gpu
from sparsesim.hwmodels.profiles import load_profile
from sparsesim.simulator import simulate
from sparsesim.simulator.route import without_ws

BASE = {"gpu": "NVIDIA H200", "commit": "abc1234", "case": "issue_3d_16x32x48_w8x16x16"}


def _row(impl: str, pass_: str, ms: str, tiles: str = "") -> dict[str, str]:
    return {**BASE, "impl": impl, "pass": pass_, "ms": ms, "q_tile": tiles, "kv_tile": tiles}


def test_each_implementation_is_predicted_by_its_own_profile_and_pass():
    df = pd.DataFrame([_row("ours_gna", "fwdbwd", "10.0", "4x8x4"), _row("cudnn_dense", "fwd", "10.0"),
                       _row("ours_dense", "fwd", "10.0"), _row("flex_gna", "fwd", "10.0"),
                       _row("ours_gna", "fwd", ""), {**_row("ours_gna", "fwd", "1.0"), "case": "unknown"}])
    out = backprop_judge.judge(df)
    assert list(out["impl"]) == ["ours_gna", "cudnn_dense", "ours_dense"]  # flex, empty ms, unknown case skipped
    kw = dict(input_size=(16, 32, 48), window=(8, 16, 16), heads=24, head_dim=128, gpu="H200")
    # backward_bench files record no fwd_kernel and the judged one predates the ws forward: the Triton kernels
    # ran every call, so `triton` prices every forward itself
    ours = without_ws(load_profile("triton", load_gpu("H200")))
    gna = simulate(q_tile=(4, 8, 4), kv_tile=(4, 8, 4), backprop=True, kernel_profile=ours, **kw).call_ms
    cudnn = simulate(dense_profile="cudnn", **kw).dense_ms
    ours_dense = simulate(dense_profile=ours, **kw).dense_ms
    fwd = simulate(q_tile=(4, 8, 4), kv_tile=(4, 8, 4), kernel_profile=ours, **kw).call_ms
    assert cudnn != ours_dense and gna > 2 * fwd
    assert ours_dense != simulate(dense_profile="triton", **kw).dense_ms  # this dense call would route to ws now
    assert list(out["predicted_ms"]) == pytest.approx([gna, cudnn, ours_dense], rel=1e-12)
    assert list(out["error"]) == pytest.approx([gna / 10 - 1, cudnn / 10 - 1, ours_dense / 10 - 1], rel=1e-12)


def test_missing_file_is_a_one_line_error(tmp_path, capsys):
    assert backprop_judge.main(["--measurements", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("backprop_judge: error:") and len(err.strip().splitlines()) == 1


def test_a_file_without_modelled_rows_is_a_one_line_error(tmp_path, capsys):
    f = tmp_path / "flex_only.csv"
    pd.DataFrame([_row("flex_gna", "fwd", "1.0")]).to_csv(f, index=False)
    assert backprop_judge.main(["--measurements", str(f)]) == 2
    err = capsys.readouterr().err
    assert "no modelled rows" in err and len(err.strip().splitlines()) == 1


def test_route_model_prices_the_forward_the_kernels_would_run():
    """``route="model"``: a HunyuanVideo GNA call, which the kernels run on the ws forward, priced by `triton-ws`
    (the model's route rule); ``route="triton"`` keeps the Triton kernels' profile."""
    df = pd.DataFrame([{**_row("ours_gna", "fwd", "25.0", "2x8x8"), "case": "hunyuan_w18x24x24_s16x8x8"}])
    kw = dict(input_size=(30, 48, 80), window=(18, 24, 24), stride=(16, 8, 8), heads=24, head_dim=128, gpu="H200",
              batch=1, dtype="bf16", q_tile=(2, 8, 8), kv_tile=(2, 8, 8))
    via_model = simulate(kernel_profile="triton", **kw).call_ms
    via_triton = simulate(kernel_profile=without_ws(load_profile("triton", load_gpu("H200"))), **kw).call_ms
    assert via_model != via_triton
    assert float(backprop_judge.judge(df, route="model")["predicted_ms"].iloc[0]) == pytest.approx(via_model)
    assert float(backprop_judge.judge(df)["predicted_ms"].iloc[0]) == pytest.approx(via_triton)

