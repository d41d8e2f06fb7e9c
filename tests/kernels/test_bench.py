"""The benchmark's CPU parts: dry run, cases, FlexAttention block masks (no GPU needed)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sparsesim.kernels import bench
from sparsesim.kernels.bench_cases import GNA_CASES, dry_run_rows, flex_block_mask, flex_mask_mod, tile_classes_3d
from sparsesim.kernels.gna_plan import plan_gna
from sparsesim.simulator import GNAPattern, tilemap


def test_bench_parses_and_dry_run_lists_cases(capsys):
    ast.parse(Path(bench.__file__).read_text())
    assert bench.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for case in GNA_CASES:
        assert case.name in out
    assert "4*B*H*N^2*D" in out


def test_bench_cases_are_valid_and_block_sparse_where_claimed():
    rows = {r["case"]: r for r in dry_run_rows()}
    for case in GNA_CASES:
        plan = plan_gna(case.input_size, window=case.window, stride=case.stride, q_tile=case.q_tile,
                        kv_tile=case.kv_tile)
        assert plan.tile_speedup == pytest.approx(rows[case.name]["tile_speedup"])
        assert plan.block_sparse == rows[case.name]["block_sparse"]
    assert rows["hunyuan_w18x24x24_s16x8x8"]["block_sparse"] and rows["flux_w80x80_s16x16"]["block_sparse"]


def test_flex_tile_classes_match_tilemap():
    size, window, stride = (12, 10), (5, 7), (2, 3)
    plan = plan_gna(size, window=window, stride=stride, q_tile=(4, 4), kv_tile=(2, 8))
    visited, full = tile_classes_3d(plan)
    tm = tilemap(GNAPattern(input_size=size, window=window, stride=stride), (4, 4), (2, 8))
    assert np.array_equal(visited.sum(1), tm.visited[0]) and np.array_equal(full.sum(1), tm.full[0])


def test_flex_block_mask_equals_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    plan = plan_gna((12, 10), window=(5, 7), stride=(2, 3), causal=(False, True), q_tile=(4, 4), kv_tile=(2, 8))
    ours = flex_block_mask(plan, "cpu")
    mm = flex_mask_mod(plan, "cpu")
    nq, nk = plan.q_layout.padded_tokens, plan.kv_layout.padded_tokens
    ref = create_block_mask(mm, None, None, nq, nk, device="cpu", BLOCK_SIZE=(16, 16))
    # Same visited blocks; ours may hold blocks whose only visible pairs belong to padded queries.
    ours_dense, ref_dense = ours.to_dense()[0, 0].numpy(), ref.to_dense()[0, 0].numpy()
    assert (ours_dense >= ref_dense).all()
    q_idx = torch.arange(nq)[:, None]
    k_idx = torch.arange(nk)[None, :]
    assert mm(0, 0, q_idx, k_idx).dtype == torch.bool


def test_summary_of_committed_results(capsys, tmp_path):
    from sparsesim.kernels import summary

    path = summary.latest_csv()
    df = pd.read_csv(path)
    assert summary.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA" in out and all(c.name in out for c in GNA_CASES)
    g = summary.gna_table(df).set_index("case")
    # Recompute one ratio by hand from the raw rows.
    case = "flux_w80x80_s16x16"
    ms = df.set_index(["case", "impl"])["ms"]
    want = ms[("dense_N65536", "cudnn_dense")] / ms[(case, "ours_gna_kernel")]
    assert g.loc[case, "vs_cudnn_kernel"] == pytest.approx(want)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert summary.main([str(bad)]) == 2
    assert summary.main([str(tmp_path / "missing.csv")]) == 2
    assert "error:" in capsys.readouterr().err
