"""Calibration: held-out split by configuration, parameter recovery on data the model generated, the
written profile loads back, and the CLI's JSON keys."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from sparsesim.cli.main import main
from sparsesim.hwmodels import load_gpu
from sparsesim.hwmodels.gpus import read_toml
from sparsesim.hwmodels.profiles import PROFILE_DIR, load_profile, parse_profile
from sparsesim.simulator.calibrate import calibrate, predicted_ms, prepare, profile_toml, split, with_params
from sparsesim.simulator.errors import ConfigError

H200 = load_gpu("H200")
CONFIGS = [  # input_size, window, stride, dilation, causal, q_tile, kv_tile, heads, heads_kv, head_dim
    ("4096", "512", "1", "1", "0", "128", "128", 8, 8, 128),
    ("8192", "2048", "1", "1", "1", "128", "128", 16, 4, 128),
    ("8192", "2048", "256", "1", "0", "128", "64", 16, 16, 64),
    ("8192", "1024", "1", "1", "0", "64", "128", 8, 8, 128),
    ("64x64", "16x16", "1x1", "1x1", "00", "16x8", "16x8", 24, 24, 128),
    ("128x128", "32x32", "16x16", "1x1", "00", "16x8", "16x8", 24, 24, 128),
    ("128x128", "32x32", "1x1", "2x2", "00", "16x8", "8x8", 24, 24, 128),
    ("96x96", "24x24", "1x1", "1x1", "00", "8x8", "8x8", 16, 16, 64),
    ("8x16x16", "4x8x8", "1x1x1", "1x1x1", "000", "2x8x8", "2x8x8", 24, 24, 128),
    ("16x32x32", "8x16x16", "1x1x1", "1x1x1", "000", "4x4x8", "2x8x4", 24, 24, 128),
    ("16x32x32", "8x16x16", "8x8x8", "1x1x1", "000", "2x8x8", "2x8x8", 24, 24, 128),
    ("12x24x40", "6x12x20", "2x4x4", "1x1x1", "100", "2x8x8", "1x8x16", 16, 16, 64),
]


def records(true_profile, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, (size, w, s, d, c, q, kv, h, hkv, dim) in enumerate(CONFIGS):
        base = {"config_id": f"c{i:02d}", "kernel": "gna", "input_size": size, "window": w, "stride": s,
                "dilation": d, "causal": c, "q_tile": q, "kv_tile": kv, "heads": str(h), "heads_kv": str(hkv),
                "head_dim": str(dim), "batch": "1", "dtype": "bf16", "ok": "True"}
        tokens = int(np.prod([int(x) for x in size.split("x")]))
        dense = {**base, "config_id": f"d{i:02d}", "kernel": "dense", "input_size": str(tokens), "window": "",
                 "stride": "", "dilation": "", "causal": "", "q_tile": "", "kv_tile": ""}
        for rec in (base, dense):
            ms = predicted_ms(prepare({**rec, "measured_ms": "1"}, H200), H200, true_profile)
            out.append({**rec, "measured_ms": repr(ms * (1 + noise * rng.standard_normal()))})
    return out


def write(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def prior():
    return parse_profile(read_toml(PROFILE_DIR / "triton.toml", "kernel profile"), "triton")


def test_split_is_by_configuration_and_seeded():
    rows = [prepare({**r, "measured_ms": "1"}, H200) for r in records(prior())]
    train, held = split(rows, 0.3, seed=3)
    assert {r.config_id for r in train}.isdisjoint({r.config_id for r in held})
    assert len({r.config_id for r in held}) == round(0.3 * len({r.config_id for r in rows}))
    again = split(rows, 0.3, seed=3)
    assert [r.config_id for r in again[1]] == [r.config_id for r in held]


def test_recovers_a_known_profile_from_its_own_predictions(tmp_path):
    truth = with_params(prior(), {"mma_efficiency": 0.66, "softmax_overlap": 0.1, "cta_overhead_us": 4.0,
                                  "kv_tile_overhead_ns": 300.0, "launch_latency_us": 8.0})
    path = tmp_path / "m.csv"
    write(path, records(truth, noise=0.01))
    out = tmp_path / "triton.toml"
    result = calibrate([str(path)], gpu="H200", kernel_profile="triton", holdout=0.3, seed=1, max_nfev=40)
    out.write_text(profile_toml(result, [str(path)], 0.3, 1))
    assert result.n_train + result.n_heldout == 2 * len(CONFIGS)
    assert result.heldout_mape < 0.03 < result.prior_heldout_mape  # the prior misses, the fit does not
    assert result.params["mma_efficiency"] == pytest.approx(0.66, rel=0.15)
    loaded = parse_profile(read_toml(out, "kernel profile"), str(out))
    assert loaded.forward.mma_efficiency == pytest.approx(result.params["mma_efficiency"])
    assert loaded.fit["n_train"] == result.n_train and loaded.fit["heldout_mape"] == pytest.approx(result.heldout_mape)


def test_cli_json_keys(capsys, tmp_path):
    path = tmp_path / "m.csv"
    write(path, records(prior(), noise=0.02, seed=2))
    code = main(["calibrate", "--gpu", "H200", "--measurements", str(path), "--kernel-profile", "triton",
                 "--format", "json", "--profile-out", str(tmp_path / "t.toml")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("train_mape", "heldout_mape", "n_train", "n_heldout", "worst"):
        assert key in out
    assert out["worst"] and {"row", "measured_ms", "predicted_ms", "error"} <= set(out["worst"][0])


def test_bad_measurements_are_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    try:
        code = main(["calibrate", "--gpu", "H200", "--measurements", str(bad),
                     "--profile-out", str(tmp_path / "t.toml")])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "lacks columns" in err and len(err.strip().splitlines()) == 1


def test_dry_run_writes_no_profile(capsys, tmp_path):
    path = tmp_path / "m.csv"
    write(path, records(prior(), noise=0.02, seed=4))
    out = tmp_path / "t.toml"
    code = main(["calibrate", "--gpu", "H200", "--measurements", str(path), "--profile-out", str(out), "--dry-run",
                 "--format", "json"])
    assert code == 0 and not out.exists()
    assert json.loads(capsys.readouterr().out)["n_train"] > 0


@pytest.mark.parametrize(("name", "family"), [("cudnn-hopper", "cudnn"), ("triton-ws", "triton-ws")])
def test_committed_fit_is_reproducible(tmp_path, name, family):
    """Re-fitting the committed measurements as the committed profile records gives its held-out error."""
    from pathlib import Path

    from sparsesim.hwmodels.profiles import CALIBRATION_DIR

    root = Path(__file__).resolve().parents[2]
    committed = read_toml(CALIBRATION_DIR / f"{name}.toml", "kernel profile")
    fit = committed["fit"]
    result = calibrate([str(root / m) for m in fit["measurements"]], gpu=fit["gpu"], kernel_profile=family,
                       holdout=fit["holdout"], seed=fit["seed"], kernels=fit["kernels"])
    assert result.n_train == fit["n_train"] and result.n_heldout == fit["n_heldout"]
    assert result.heldout_mape == pytest.approx(fit["heldout_mape"], rel=1e-6)
    assert result.params["mma_efficiency"] == pytest.approx(committed["forward"]["mma_efficiency"], rel=1e-6)


WS_CONFIGS = [  # dense token counts and GNA blocked layouts the warp-specialized forward runs (tiles of 128 rows)
    ("dense", "4096", "", "", "", 24, 128), ("dense", "8192", "", "", "", 8, 64),
    ("dense", "16384", "", "", "", 16, 128), ("dense", "6000", "", "", "", 64, 128),
    ("dense", "12000", "", "", "", 24, 64), ("dense", "24576", "", "", "", 8, 128),
    ("gna", "16x32x48", "8x16x16", "2x8x8", "2x8x8", 24, 128),
    ("gna", "16x32x48", "8x16x16", "2x8x8", "1x8x8", 24, 128),
    ("gna", "32x32x32", "16x16x16", "2x8x8", "2x8x8", 24, 128), ("gna", "128x128", "32x32", "8x16", "8x16", 24, 128),
    ("gna", "160x160", "32x32", "8x16", "8x8", 24, 64), ("gna", "16x64x64", "16x16x16", "2x8x8", "2x8x8", 16, 128),
]


def ws_records(truth, route="ws"):
    out = []
    for i, (kernel, size, w, q, kv, h, dim) in enumerate(WS_CONFIGS):
        rec = {"config_id": f"w{i:02d}", "kernel": kernel, "input_size": size, "window": w, "stride": w,
               "dilation": "", "causal": "", "q_tile": q, "kv_tile": kv, "heads": str(h), "heads_kv": str(h),
               "head_dim": str(dim), "batch": "1", "dtype": "bf16", "ok": "True", "fwd_kernel": route}
        ms = predicted_ms(prepare({**rec, "measured_ms": "1"}, H200), H200, truth)
        out.append({**rec, "measured_ms": repr(ms)})
    return out


def test_ws_rows_fit_the_ws_profile_and_the_triton_fit_leaves_them_out(tmp_path):
    ws_prior = parse_profile(read_toml(PROFILE_DIR / "triton-ws.toml", "kernel profile"), "triton-ws")
    truth = with_params(ws_prior, {"mma_efficiency": 0.82, "softmax_overlap": 0.6, "cta_overhead_us": 6.0})
    triton_rows = records(prior())
    for r in triton_rows:
        r["fwd_kernel"] = "triton"
    path = tmp_path / "m.csv"
    write(path, ws_records(truth) + triton_rows)
    ws = calibrate([str(path)], gpu="H200", kernel_profile="triton-ws", holdout=0.25, seed=0, max_nfev=60)
    assert ws.n_train + ws.n_heldout == len(WS_CONFIGS)  # only the rows the ws forward ran
    assert ws.heldout_mape < 0.03 < ws.prior_heldout_mape
    assert "forward_kernel = \"ws\"" in profile_toml(ws, [str(path)], 0.25, 0)
    tr = calibrate([str(path)], gpu="H200", kernel_profile="triton", holdout=0.3, seed=0, max_nfev=5)
    assert tr.n_train + tr.n_heldout == len(triton_rows)
    assert "ws_profile = \"triton-ws\"" in profile_toml(tr, [str(path)], 0.3, 0)


def test_a_row_run_by_the_ws_forward_is_priced_by_the_ws_profile():
    rec = ws_records(prior(), "ws")[0]
    triton = load_profile("triton", H200)
    ws_ms = predicted_ms(prepare(rec, H200), H200, triton)
    tr_ms = predicted_ms(prepare({**rec, "fwd_kernel": "triton"}, H200), H200, triton)
    assert ws_ms == pytest.approx(predicted_ms(prepare(rec, H200), H200, load_profile("triton-ws", H200)))
    assert ws_ms != pytest.approx(tr_ms, rel=1e-3)
    with pytest.raises(ConfigError, match="fwd_kernel='cuda'.*allowed: triton, ws"):
        prepare({**rec, "fwd_kernel": "cuda"}, H200)
