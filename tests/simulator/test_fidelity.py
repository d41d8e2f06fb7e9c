"""Held-out error by kernel and size band (simulator/fidelity.py) and its place in `simulate calibrate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsesim.cli.main import main
from sparsesim.simulator.calibrate import calibrate
from sparsesim.simulator.fidelity import band_errors, heldout_errors, judge_errors, size_band

ROOT = Path(__file__).resolve().parents[2]
DENSE = str(ROOT / "hwmodels/measurements/validate_h200_dense_2026-11-29_828261d.csv")


@pytest.mark.parametrize(("tokens", "band"), [(1, "<=4K"), (4096, "<=4K"), (4097, "4K-16K"), (16384, "4K-16K"),
                                              (65536, "16K-64K"), (65537, ">64K")])
def test_size_band_edges(tokens: int, band: str) -> None:
    assert size_band(tokens) == band


def test_band_errors_groups_by_kernel_and_size() -> None:
    got = band_errors([("dense", 1000, "a", 0.1), ("dense", 1000, "b", -0.3), ("cudnn", 20000, "c", 0.05),
                       ("dense", 70000, "d", 0.02), ("dense", 1000, "a", 0.0)])
    cells = {(e.kernel, e.size): e for e in got}
    assert list(cells) == [("dense", "<=4K"), ("dense", ">64K"), ("dense", "*"), ("cudnn", "16K-64K"),
                           ("cudnn", "*")]
    small = cells[("dense", "<=4K")]
    assert (small.rows, small.configs) == (3, 2)
    assert small.mape == pytest.approx(0.4 / 3)
    assert small.mean_error == pytest.approx(-0.2 / 3)
    assert small.max_abs_error == pytest.approx(0.3)
    assert cells[("dense", "*")].rows == 4


def test_heldout_errors_are_the_fit_heldout_rows() -> None:
    fit = calibrate([DENSE], kernel_profile="cudnn", holdout=0.3, seed=0, max_nfev=5)
    got = heldout_errors([DENSE], fit, holdout=0.3, seed=0)
    whole = [e for e in got if e.size == "*"]
    assert len(whole) == 1 and whole[0].rows == fit.n_heldout
    assert whole[0].mape == pytest.approx(fit.heldout_mape)
    assert sum(e.rows for e in got if e.size != "*") == fit.n_heldout
    judged = judge_errors([DENSE], fit)
    assert [e for e in judged if e.size == "*"][0].rows == fit.n_train + fit.n_heldout


def test_calibrate_json_has_the_bands(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    main(["calibrate", "--measurements", DENSE, "--kernel-profile", "cudnn", "--dry-run", "--format", "json",
          "--out", str(out)])
    data = json.loads(out.read_text())
    assert {r["size"] for r in data["heldout_by_band"]} >= {"<=4K", "*"}
    assert sum(r["rows"] for r in data["heldout_by_band"] if r["size"] == "*") == data["n_heldout"]


FIDELITY = str(ROOT / "hwmodels/measurements/validate_h200_dense_fidelity_heldout_2026-11-30_953c6b0.csv")


def test_calibrate_judge_files_are_reported_not_fitted(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    main(["calibrate", "--measurements", DENSE, "--kernel-profile", "cudnn", "--dry-run", "--format", "json",
          "--out", str(out), "--judge", FIDELITY])
    data = json.loads(out.read_text())
    whole = [r for r in data["judge_by_band"] if r["size"] == "*"]
    cudnn_rows = sum(1 for line in Path(FIDELITY).read_text().splitlines()[1:] if ",cudnn," in line)
    assert len(whole) == 1 and whole[0]["rows"] == cudnn_rows > 0
    plain = tmp_path / "p.json"
    main(["calibrate", "--measurements", DENSE, "--kernel-profile", "cudnn", "--dry-run", "--format", "json",
          "--out", str(plain)])
    fitted = json.loads(plain.read_text())
    assert "judge_by_band" not in fitted
    assert fitted["fit_mma_efficiency"] == data["fit_mma_efficiency"]  # the judge file changes no fitted term


def test_calibrate_judge_refused_with_published(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--published", "--judge", FIDELITY, "--dry-run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--judge goes with --measurements" in err[0]
