"""The training smoke run at a tiny size on CPU: our GNA kernel (Triton interpreter) against SDPA with the same mask.

The interpreter is enabled as tests/kernels/conftest.py does: the variable is set before the kernels are decorated,
and kernel modules imported earlier in the process are reloaded.
"""

from __future__ import annotations

import csv
import importlib
import os
import re
import sys

import pytest

os.environ["TRITON_INTERPRET"] = "1"
for _name in ("_common", "permute", "dense", "dense_bwd", "gna", "gna_bwd", "block_sparse", "block_sparse_bwd"):
    _mod = sys.modules.get(f"sparsesim.kernels.{_name}")
    if _mod is not None:
        importlib.reload(_mod)

pytest.importorskip("torch")
pytest.importorskip("triton")

import training_smoke  # noqa: E402

TINY = ["--device", "cpu", "--dtype", "fp32", "--layout", "8x8", "--window", "5", "--heads", "2", "--head-dim", "16",
        "--blocks", "2", "--batch", "2", "--channels", "8", "--lr", "3e-3", "--lr-warmup", "0", "--commit", "test"]


def test_tiny_run_falls_the_same_with_our_kernel_and_sdpa(tmp_path, capsys):
    out = tmp_path / "smoke.csv"
    steps = 8
    code = training_smoke.main([*TINY, "--steps", str(steps), "--max-ratio", "0.8", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "verdict: PASS" in printed
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == training_smoke.COLUMNS
        rows = list(reader)
    assert [int(r["step"]) for r in rows] == list(range(steps))
    assert {r["commit"] for r in rows} == {"test"} and {r["layout"] for r in rows} == {"8x8"}
    ours = [float(r["loss_ours"]) for r in rows]
    sdpa = [float(r["loss_sdpa"]) for r in rows]
    # Same weights, same data: step 0 is the same forward up to the kernel's fp32 rounding.
    assert ours[0] == pytest.approx(sdpa[0], rel=1e-5)
    # The same trajectory: fp32 rounding differences stay small over the steps.
    for a, b, r in zip(ours, sdpa, rows, strict=True):
        assert abs(a - b) / b < 1e-3
        assert float(r["rel_gap"]) == pytest.approx(abs(a - b) / b, abs=1e-12)
        assert float(r["ms_ours"]) > 0 and float(r["ms_sdpa"]) > 0
    # Both fall (the denoising target is learnable within a few steps).
    for losses in (ours, sdpa):
        assert sum(losses[-2:]) / 2 < 0.8 * losses[0]
    # The step-0 gradients of every parameter agree (a different mask or token order moves them by ~1e-2).
    grad_diff = re.search(r"step-0 gradient relative difference: (\S+)", printed)
    assert grad_diff is not None and float(grad_diff.group(1)) < 1e-4


def test_summary_verdict_fails_when_the_losses_part():
    rows = [{"loss_ours": lo, "loss_sdpa": ls, "rel_gap": abs(lo - ls) / ls, "ms_ours": 1.0, "ms_sdpa": 2.0}
            for lo, ls in [(2.0, 2.0), (1.5, 1.0), (1.2, 0.8)]]
    sm = training_smoke.summarize(rows, 0.0, warmup=0, tol=0.02, max_ratio=0.5)
    assert not sm.passed and sm.final == (1.2, 0.8) and sm.final_gap == pytest.approx(0.5)
    assert sm.ratios == pytest.approx((0.6, 0.4)) and sm.max_rel_gap == pytest.approx(0.5)
    same = [{**r, "loss_ours": r["loss_sdpa"], "rel_gap": 0.0} for r in rows]
    assert training_smoke.summarize(same, 0.0, warmup=0, tol=0.02, max_ratio=0.5).passed


@pytest.mark.parametrize(("flag", "value", "named"), [("--layout", "8x0", "8x0"), ("--window", "5x5x5", "5x5x5"),
                                                    ("--window", "9", "9"), ("--q-tile", "3x3", "q_tile")])
def test_bad_arguments_are_one_line_and_exit_2(flag, value, named, capsys):
    assert training_smoke.main([*TINY, "--steps", "1", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0]
