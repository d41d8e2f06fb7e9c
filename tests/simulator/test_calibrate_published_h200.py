"""``calibrate --published --arch hopper`` also fits this repository's H200 cuDNN measurements; GQA rows (heads_kv)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from sparsesim.hwmodels import load_gpu
from sparsesim.simulator.calibrate import (
    H200_MEASUREMENTS,
    PUBLISHED_COLUMNS,
    calibrate_published,
    measured_rows,
    published_profile_toml,
    published_ratio,
    read_published,
    reference_prior,
)
from sparsesim.simulator.errors import ConfigError

COLUMNS = [*PUBLISHED_COLUMNS, "heads_kv"]


def _write(path: Path, recs: list[dict[str, object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for rec in recs:
            w.writerow({c: rec.get(c, "") for c in COLUMNS})
    return path


def _dense(ident: str, n: int, heads_kv: object = "", **kw: object) -> dict[str, object]:
    rec: dict[str, object] = {"id": ident, "paper": "synthetic", "address": "test", "figure": "test", "gpu": "H100",
                              "dtype": "bf16", "kernel": "cuDNN", "passes": "fwd", "batch": 1, "heads": 32,
                              "heads_kv": heads_kv, "head_dim": 128, "input_size": n, "window": n, "stride": 1,
                              "dilation": 1, "causal": 0, "value": 1.0, "unit": "ms", "timed": "kernel", "use": "fit"}
    rec.update(kw)
    return rec


def test_measured_rows_are_h200_cudnn_rows_predicted_with_the_h200_file():
    rows = measured_rows()
    assert len(rows) > 20 and all(r.measured and r.use == "fit" for r in rows)
    assert {r.gpu.name for r in rows} == {"H200"} and {r.kernel for r in rows} == {"cuDNN"}
    assert all(r.tm is None and r.unit == "ms" for r in rows)  # dense cuDNN, timed over the whole input
    prior = reference_prior("hopper")
    h100 = load_gpu("H100")
    # the same row on the H100's file (same SMs and clocks, less bandwidth) is never predicted faster
    for r in rows[:10]:
        assert published_ratio(r, prior) <= published_ratio(dataclasses.replace(r, gpu=h100), prior) * (1 + 1e-9)


def test_heads_kv_column_is_read_and_separates_configurations(tmp_path):
    path = _write(tmp_path / "p.csv", [_dense("mha", 4096), _dense("gqa", 4096, heads_kv=8)])
    mha, gqa = read_published(path)
    assert mha.problem.heads_kv == 32 and gqa.problem.heads_kv == 8
    assert mha.config_id != gqa.config_id


@pytest.mark.parametrize("value", ["5", "0", "x"])
def test_bad_heads_kv_is_one_line(tmp_path, value):
    path = _write(tmp_path / "p.csv", [_dense("gqa", 4096, heads_kv=value)])
    with pytest.raises(ConfigError, match="row 2") as err:
        read_published(path)
    assert "\n" not in str(err.value) and "heads_kv" in str(err.value)


def test_hopper_fit_uses_the_h200_measurements_in_the_same_split(tmp_path):
    recs = [_dense(f"d{n}", n, value=0.01 * (n / 1024) ** 2) for n in (1024, 2048, 4096, 8192, 16384, 32768)]
    path = _write(tmp_path / "p.csv", recs)
    result = calibrate_published(path, arch="hopper", holdout=0.3, seed=0, max_nfev=3)
    assert result.measurements == H200_MEASUREMENTS
    measured = [r for r in result.train + result.heldout if r.measured]
    assert len(measured) == len(measured_rows()) and any(r.measured for r in result.heldout)
    # split by configuration: no configuration on both sides, published or measured
    assert not {r.config_id for r in result.train} & {r.config_id for r in result.heldout}
    assert result.measured_heldout_mape == result.measured_heldout_mape  # not NaN: scored apart
    text = published_profile_toml(result)
    assert "fitted_to" in text and "H200" in text and H200_MEASUREMENTS[0] in text
    # without measurements (and on other architectures by default) only published rows are fitted
    alone = calibrate_published(path, arch="hopper", holdout=0.3, seed=0, max_nfev=3, measurements=())
    assert alone.measurements == () and not any(r.measured for r in alone.train + alone.heldout)
