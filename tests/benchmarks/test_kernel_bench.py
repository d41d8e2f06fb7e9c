"""The kernel benchmark's CPU parts: dry run, cases, FlexAttention block masks, the summary (no GPU)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import kernel_bench
import kernel_summary
import numpy as np
import pandas as pd
import pytest
import torch
from kernel_cases import GNA_CASES, dry_run_rows, flex_block_mask, flex_mask_mod, floors, topk_block_map

from sparsesim.hwmodels.measurements import load_ceilings
from sparsesim.kernels.gna_plan import plan_gna
from sparsesim.simulator import simulate


def test_bench_parses_and_dry_run_lists_cases(capsys):
    ast.parse(Path(kernel_bench.__file__).read_text())
    assert kernel_bench.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for case in GNA_CASES:
        assert case.name in out
    assert "4*B*H*N^2*D" in out


def test_floors_use_the_measured_ceilings():
    c = load_ceilings("H200")
    f = floors(None, 16384)
    assert f["dense_flop_ms"] == pytest.approx(4 * 24 * 16384**2 * 128 / (c.gemm_bf16_TFLOPs * 1e12) * 1e3)
    assert f["byte_ms"] == pytest.approx(4 * 16384 * 24 * 128 * 2 / (c.hbm_copy_TBps * 1e12) * 1e3)


def test_bench_cases_are_valid_and_block_sparse_where_claimed():
    rows = {r["case"]: r for r in dry_run_rows()}
    for case in GNA_CASES:
        plan = plan_gna(case.input_size, q_tile=case.q_tile, kv_tile=case.kv_tile, **case.pattern)
        assert plan.block_sparse == rows[case.name]["block_sparse"]
        assert simulate(input_size=case.input_size, q_tile=case.q_tile, kv_tile=case.kv_tile, gpu="H200",
                        **case.pattern).tile_speedup == pytest.approx(rows[case.name]["tile_speedup"])
    assert rows["hunyuan_w18x24x24_s16x8x8"]["block_sparse"] and rows["flux_w80x80_s16x16"]["block_sparse"]


def test_flex_block_mask_equals_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    plan = plan_gna((12, 10), window=(5, 7), stride=(2, 3), causal=(False, True), q_tile=(4, 4), kv_tile=(2, 8))
    ours = flex_block_mask(plan, "cpu")
    mm = flex_mask_mod(plan, "cpu")
    nq, nk = plan.num_q_tiles * plan.q_volume, int(np.prod(plan.kv_grid3)) * plan.kv_volume
    ref = create_block_mask(mm, None, None, nq, nk, device="cpu", BLOCK_SIZE=(16, 16))
    # Same visited blocks; ours may hold blocks whose only visible pairs belong to padded queries.
    ours_dense, ref_dense = ours.to_dense()[0, 0].numpy(), ref.to_dense()[0, 0].numpy()
    assert (ours_dense >= ref_dense).all()
    visited, _ = plan.schedule.tile_classes()
    assert ours_dense.sum() == visited.sum()
    q_idx = torch.arange(nq)[:, None]
    k_idx = torch.arange(nk)[None, :]
    assert mm(0, 0, q_idx, k_idx).dtype == torch.bool


def test_topk_block_map_is_seeded_and_keeps_the_diagonal():
    a, b = topk_block_map(4096, 128, 8), topk_block_map(4096, 128, 8)
    assert np.array_equal(a, b) and a.sum(axis=1).tolist() == [8] * 32 and a.diagonal().all()


def test_summary_of_committed_results(capsys, tmp_path):
    path = kernel_summary.latest_csv()
    df = pd.read_csv(path)
    assert kernel_summary.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA" in out
    g = kernel_summary.gna_table(df).set_index("case")
    # Recompute one ratio by hand from the raw rows.
    case = "flux_w80x80_s16x16"
    ms = df.set_index(["case", "impl"])["ms"]
    want = ms[("dense_N65536", "cudnn_dense")] / ms[(case, "ours_gna_kernel")]
    assert g.loc[case, "vs_cudnn_kernel"] == pytest.approx(want)
    bs = kernel_summary.block_sparse_table(df)
    assert bs["tile_x"].tolist() == [pytest.approx(8.0)]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert kernel_summary.main([str(bad)]) == 2
    assert kernel_summary.main([str(tmp_path / "missing.csv")]) == 2
    assert "error:" in capsys.readouterr().err


def test_flux_block_runs_tiny(tmp_path):
    import flux_block

    assert flux_block.main(["--tiny", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "flux_block.json").read_text())
    assert res["tiny"] and res["step_ms"] > 0 and 0 < res["attention_share"] < 1


def test_tile_ranking_on_synthetic_measurements(tmp_path, capsys):
    """Measured = predicted x noise: rank correlation near 1 and the pick within the noise of the fastest."""
    import numpy as np
    import tile_ranking

    from sparsesim.simulator import simulate

    rng = np.random.default_rng(0)
    rows = []
    base = {"kernel": "gna", "ok": "True", "input_size": "64x64", "window": "16x16", "stride": "", "dilation": "",
            "causal": "", "heads": "24", "heads_kv": "24", "head_dim": "128", "batch": "1", "dtype": "bf16"}
    for q in ((16, 8), (8, 16), (8, 8), (32, 4)):
        for kv in ((16, 8), (8, 8), (8, 16)):
            ms = simulate(input_size=(64, 64), window=16, q_tile=q, kv_tile=kv, gpu="H200",
                          kernel_profile="triton").call_ms
            rows.append({**base, "q_tile": "x".join(map(str, q)), "kv_tile": "x".join(map(str, kv)),
                         "measured_ms": repr(ms * (1 + 0.01 * rng.standard_normal()))})
    path = tmp_path / "tiles.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    table = tile_ranking.rank_table(pd.read_csv(path, dtype=str, keep_default_na=False), "H200", "triton")
    assert len(table) == 1 and table["pairs"][0] == 12
    assert table["spearman"][0] > 0.8 and table["pick_loss"][0] < 0.05
    assert tile_ranking.main(["--measurements", str(path)]) == 0 and "spearman" in capsys.readouterr().out
