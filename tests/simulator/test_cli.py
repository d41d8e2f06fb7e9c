"""The `simulate` CLI: every subcommand, the formats, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sparsesim.simulator.cli import main
from sparsesim.simulator.simulate import TILE_COLUMNS


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_default_table_has_every_preset_on_three_gpus(capsys):
    code, out, err = run(capsys)
    assert code == 0, err
    for preset in ("hunyuan-video", "flux-4k", "cosmos-7b", "llm-32k-prefill"):
        assert preset in out
    lines = [line for line in out.splitlines()[1:] if line.strip()]
    assert {line.split()[1] for line in lines} == {"A100", "H100", "B200"}


def test_table_json_has_the_issue_keys(capsys):
    code, out, _ = run(capsys, "table", "--input-size", "30", "48", "80", "--window", "18", "24", "24",
                       "--q-tile", "4", "8", "8", "--kv-tile", "2", "8", "8", "--gpu", "H100", "B200",
                       "--format", "json")
    assert code == 0
    records = json.loads(out)
    assert [r["gpu"] for r in records] == ["H100", "B200"]
    for key in TILE_COLUMNS:
        assert key in records[0]
    assert records[0]["input_size"] == [30, 48, 80]
    assert records[0]["tile_speedup"] == pytest.approx(3.2727, abs=1e-3)


def test_flat_tiling_takes_one_tile_size(capsys):
    code, out, _ = run(capsys, "table", "--input-size", "8", "12", "--window", "3", "5", "--tiling", "flat",
                       "--q-tile", "16", "--kv-tile", "8", "--format", "csv")
    assert code == 0
    header, row = out.strip().splitlines()
    assert "tile_speedup" in header and ",16,8," in row


@pytest.mark.parametrize("fmt", ["table", "csv", "markdown", "json"])
def test_formats_and_out_file(capsys, tmp_path, fmt):
    out_file = tmp_path / f"r.{fmt}"
    code, out, _ = run(capsys, "table", "--input-size", "64", "--window", "16", "--format", fmt, "--out", str(out_file))
    assert code == 0 and out == ""
    text = out_file.read_text()
    assert "tile_speedup" in text


def test_block_map_file(capsys, tmp_path):
    bm = np.eye(4, dtype=bool)
    np.save(tmp_path / "bm.npy", bm)
    code, out, _ = run(capsys, "table", "--input-size", "512", "--block-map", str(tmp_path / "bm.npy"),
                       "--q-tile", "128", "--format", "json")
    assert code == 0
    rec = json.loads(out)[0]
    assert rec["flop_speedup"] == pytest.approx(4.0) and rec["tile_speedup"] == pytest.approx(4.0)
    assert rec["block_sparse"] is True


def test_sweep_product_and_skip_invalid(capsys, tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('gpu = ["H100", "B200"]\nskip_invalid = true\n'
                 "[[group]]\ninput_size = [[30, 48, 80]]\nwindow = [[18, 24, 24], [40, 24, 24]]\n"
                 "stride = [[1, 1, 1], [16, 8, 8]]\n"
                 "[[group]]\ninput_size = [[256, 256]]\nwindow = [[80, 80]]\n")
    code, out, err = run(capsys, "sweep", str(f), "--format", "json", "--progress")
    assert code == 0
    records = json.loads(out)
    assert len(records) == 2 * 2 + 2  # window 40 > 30 dropped
    assert "skipped 4 invalid" in err and "[" in err  # progress bar went to stderr


def test_sweep_invalid_without_skip_is_one_line(capsys, tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("input_size = [30]\nwindow = [[10], [40]]\n")
    code, _, err = run(capsys, "sweep", str(f))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "skip_invalid" in err


def test_gpus_lists_builtin_and_user_file(capsys, tmp_path):
    code, out, _ = run(capsys, "gpus")
    assert code == 0
    for name in ("A100", "H100", "H200", "B200"):
        assert name in out
    src = (__import__("sparsesim.hwmodels.gpus", fromlist=["GPU_DIR"]).GPU_DIR / "H100.toml").read_text()
    mine = tmp_path / "mygpu.toml"
    mine.write_text(src.replace('name = "H100"', 'name = "MyGPU"'))
    code, out, _ = run(capsys, "gpus", "--gpu", str(mine))
    assert code == 0 and "MyGPU" in out
    code, out, _ = run(capsys, "table", "--input-size", "64", "--window", "8", "--gpu", str(mine))
    assert code == 0 and "MyGPU" in out


BAD = [
    (["table", "--input-size", "30", "--window", "40"], "window 40"),
    (["table", "--input-size", "30", "--window", "8", "--stride", "9"], "stride 9"),
    (["table", "--input-size", "0", "--window", "1"], "input_size"),
    (["table", "--input-size", "-4", "--window", "1"], "input_size"),
    (["table", "--input-size", "30", "x", "--window", "8"], "'x'"),
    (["table", "--input-size", "30", "--window", "8", "--dilation", "4"], "dilation 4"),
    (["table", "--input-size", "30", "48", "--window", "8", "8", "8"], "window=[8, 8, 8]"),
    (["table", "--input-size", "30", "48", "--window", "8", "--q-tile", "8"], "q_tile=[8]"),
    (["table", "--input-size", "30", "--window", "8", "--gpu", "Z9000"], "Z9000"),
    (["table", "--input-size", "30", "--window", "8", "--format", "xml"], "xml"),
    (["table", "--input-size", "30", "--window", "8", "--tiling", "diagonal"], "diagonal"),
    (["table", "--input-size", "30", "--window", "8", "--causal", "2"], "'2'"),
    (["table", "--input-size", "30"], "--window"),
    (["sweep", "/nonexistent/s.toml"], "does not exist"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err


def test_malformed_toml_is_one_line(capsys, tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("input_size = [30\n")
    code, _, err = run(capsys, "sweep", str(f))
    assert code == 2 and "not valid TOML" in err and len(err.strip().splitlines()) == 1


def test_console_script_exit_code():
    proc = subprocess.run([sys.executable, "-m", "sparsesim.simulator.cli", "table", "--input-size", "5",
                           "--window", "9"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
