"""The `simulate` CLI: every subcommand, the formats, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sparsesim.simulator.engine import TILE_COLUMNS


def test_default_table_has_every_preset_on_three_gpus(cli):
    code, out, err = cli()
    assert code == 0, err
    for preset in ("hunyuan-video", "flux-4k", "cosmos-7b", "llm-32k-prefill"):
        assert preset in out
    lines = [line for line in out.splitlines()[1:] if line.strip()]
    assert {line.split()[1] for line in lines} == {"A100", "H100", "B200"}


def test_table_json_has_the_issue_keys(cli, capsys):
    code, out, _ = cli("table", "--input-size", "30", "48", "80", "--window", "18", "24", "24",
                       "--q-tile", "4", "8", "8", "--kv-tile", "2", "8", "8", "--gpu", "H100", "B200",
                       "--format", "json")
    assert code == 0
    records = json.loads(out)
    assert [r["gpu"] for r in records] == ["H100", "B200"]
    for key in TILE_COLUMNS:
        assert key in records[0]
    assert records[0]["input_size"] == [30, 48, 80]
    assert records[0]["tile_speedup"] == pytest.approx(3.2727, abs=1e-3)


def test_flat_tiling_takes_one_tile_size(cli, capsys):
    code, out, _ = cli("table", "--input-size", "8", "12", "--window", "3", "5", "--tiling", "flat",
                       "--q-tile", "16", "--kv-tile", "8", "--format", "csv")
    assert code == 0
    header, row = out.strip().splitlines()
    assert "tile_speedup" in header and ",16,8," in row


@pytest.mark.parametrize("fmt", ["table", "csv", "markdown", "json"])
def test_formats_and_out_file(cli, capsys, tmp_path, fmt):
    out_file = tmp_path / f"r.{fmt}"
    code, out, _ = cli("table", "--input-size", "64", "--window", "16", "--format", fmt, "--out", str(out_file))
    assert code == 0 and out == ""
    text = out_file.read_text()
    assert "tile_speedup" in text


def test_block_map_file(cli, capsys, tmp_path):
    bm = np.eye(4, dtype=bool)
    np.save(tmp_path / "bm.npy", bm)
    code, out, _ = cli("table", "--input-size", "512", "--block-map", str(tmp_path / "bm.npy"),
                       "--q-tile", "128", "--format", "json")
    assert code == 0
    rec = json.loads(out)[0]
    assert rec["flop_speedup"] == pytest.approx(4.0) and rec["tile_speedup"] == pytest.approx(4.0)
    assert rec["block_sparse"] is True


def test_sweep_product_and_skip_invalid(cli, capsys, tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('gpu = ["H100", "B200"]\nskip_invalid = true\n'
                 "[[group]]\ninput_size = [[30, 48, 80]]\nwindow = [[18, 24, 24], [40, 24, 24]]\n"
                 "stride = [[1, 1, 1], [16, 8, 8]]\n"
                 "[[group]]\ninput_size = [[256, 256]]\nwindow = [[80, 80]]\n")
    code, out, err = cli("sweep", str(f), "--format", "json", "--progress")
    assert code == 0
    records = json.loads(out)
    assert len(records) == 2 * 2 + 2  # window 40 > 30 dropped
    assert "skipped 4 invalid" in err and "[" in err  # progress bar went to stderr


def test_sweep_invalid_without_skip_is_one_line(cli, capsys, tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("input_size = [30]\nwindow = [[10], [40]]\n")
    code, _, err = cli("sweep", str(f))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "skip_invalid" in err


def test_gpus_lists_builtin_and_user_file(cli, capsys, tmp_path):
    code, out, _ = cli("gpus")
    assert code == 0
    for name in ("A100", "H100", "H200", "B200"):
        assert name in out
    src = (__import__("sparsesim.hwmodels.gpus", fromlist=["GPU_DIR"]).GPU_DIR / "H100.toml").read_text()
    mine = tmp_path / "mygpu.toml"
    mine.write_text(src.replace('name = "H100"', 'name = "MyGPU"'))
    code, out, _ = cli("gpus", "--gpu", str(mine))
    assert code == 0 and "MyGPU" in out
    code, out, _ = cli("table", "--input-size", "64", "--window", "8", "--gpu", str(mine))
    assert code == 0 and "MyGPU" in out


def test_malformed_toml_is_one_line(cli, capsys, tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("input_size = [30\n")
    code, _, err = cli("sweep", str(f))
    assert code == 2 and "not valid TOML" in err and len(err.strip().splitlines()) == 1


def test_console_script_exit_code():
    proc = subprocess.run([sys.executable, "-m", "sparsesim.cli.main", "table", "--input-size", "5",
                           "--window", "9"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_output_flags_before_or_after_the_subcommand(cli, capsys):
    args = ["--input-size", "64", "--window", "8", "--gpu", "H100"]
    _, before, _ = cli("--format", "csv", "table", *args)
    _, after, _ = cli("table", *args, "--format", "csv")
    assert before == after and before.startswith("gpu,")
    _, both, _ = cli("--format", "json", "table", *args, "--format", "csv")
    assert both == after  # the subcommand's own flag wins


def test_out_dash_is_stdout_and_files_follow_the_umask(cli, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("table", "--input-size", "64", "--window", "8", "--out", "-")
    assert code == 0 and "tile_speedup" in out and not (tmp_path / "-").exists()
    import os

    old = os.umask(0o027)
    try:
        code, _, _ = cli("table", "--input-size", "64", "--window", "8", "--out", "r.txt")
    finally:
        os.umask(old)
    assert code == 0 and (tmp_path / "r.txt").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["r.txt"]  # no temporary file left behind


def test_version_and_help_show_defaults(cli, capsys):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("simulate ")
    code, out, _ = cli("table", "--help")
    assert code == 0
    body = " ".join(out[out.index("options:"):].split())
    for flag, default in (("--heads HEADS", "24"), ("--head-dim HEAD_DIM", "128"), ("--gpu GPU", "H100"),
                          ("--dtype {fp16,bf16,fp8}", "bf16"), ("--tiling {box,flat}", "box"),
                          ("--kernel-profile KERNEL_PROFILE", "reference")):
        block = body[body.index(flag):]
        assert f"(default: {default})" in block[:300], flag


def test_every_flag_has_help(capsys):
    from sparsesim.cli.main import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for p in [parser, *subs.choices.values()]:
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (p.prog, action.option_strings)


def test_default_tables_fit_120_columns(cli, capsys):
    for argv in ([], ["table", "--input-size", "30", "48", "80", "--window", "18", "24", "24", "--dilation", "1", "2",
                      "1", "--causal", "0", "0", "1", "--gpu", "A100", "H100", "H200", "B200"],
                 ["e2e", "--preset", "hunyuan-video", "--gpu", "H100", "B200"], ["gpus"], ["workloads"],
                 ["tiles", "--rank", "3"]):
        code, out, err = cli(*argv)
        assert code == 0, err
        assert max(len(line) for line in out.splitlines()) <= 120, argv
    code, out, _ = cli("--wide")
    assert max(len(line) for line in out.splitlines()) > 120


def test_columns_pick_and_order(cli, capsys):
    code, out, _ = cli("table", "--input-size", "64", "--window", "8", "--columns", "tile_speedup,gpu",
                       "--format", "csv")
    assert code == 0 and out.splitlines()[0] == "tile_speedup,gpu"


def test_infeasible_tiles_are_flagged_not_refused(cli, capsys):
    code, out, err = cli("table", "--input-size", "64", "--window", "8", "--q-tile", "24", "--kv-tile", "16",
                         "--format", "json")
    rec = json.loads(out)[0]
    assert code == 0 and rec["feasible"] is False and "power of two" in rec["infeasible_because"]
    assert "cannot run" in err and len(err.strip().splitlines()) == 1


def test_tiles_lists_feasible_pairs(cli, capsys):
    code, out, _ = cli("tiles", "--input-size", "64", "--head-dim", "256", "--format", "json")
    pairs = json.loads(out)
    assert code == 0 and pairs and all(p["kv_volume"] == 64 or p["q_volume"] == 64 for p in pairs)


def test_missing_torch_names_the_extra():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['triton'] = None\n"
            "from sparsesim.kernels import attention")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "pip install 'sparsesim[kernels]'" in proc.stderr
