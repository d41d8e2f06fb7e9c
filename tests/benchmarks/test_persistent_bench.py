"""The persistent benchmark's CPU side: the dry run prints the model's choice for every case (no GPU)."""

from __future__ import annotations

import persistent_bench


def test_dry_run_lists_every_case_with_the_models_choice(capsys):
    assert persistent_bench.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    for case in persistent_bench.CASES:
        assert case.name in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[0] in
            {c.name for c in persistent_bench.CASES}}
    # Uneven causal Q tiles: the model predicts a gain, below PERSISTENT_MIN_GAIN (the H200 measured it slower).
    assert float(rows["causal1d_32k"][5]) > 1.0 and rows["causal1d_32k"][-1] == "order"
    assert float(rows["hunyuan_w18x24x24_s16x8x8"][5]) == 1.0  # perfectly block-sparse: even costs, no gain


def test_unknown_case_is_refused(capsys):
    assert persistent_bench.main(["--dry-run", "--cases", "nope"]) == 2
    assert "unknown nope" in capsys.readouterr().err
