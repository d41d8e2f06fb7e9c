"""Every face refuses bad input with one line naming the value and what is allowed (CLI: exit code 2).

The table below is the contract: each row is a command (or a file it reads) and a piece of the message.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparsesim.hwmodels.gpus import GPU_DIR
from sparsesim.simulator import ConfigError, simulate, simulate_many

P = ["--input-size", "64", "--window", "8"]  # a valid pattern


def files(tmp: Path) -> dict[str, str]:
    """Bad (and good) input files, written fresh for each test."""
    np.save(tmp / "eye4.npy", np.eye(4, dtype=bool))
    np.save(tmp / "three_heads.npy", np.ones((3, 4, 4), dtype=bool))
    np.save(tmp / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp / "not_npy.npy").write_text("hello")
    gpu = (GPU_DIR / "H100.toml").read_text()
    (tmp / "gpu_missing.toml").write_text(gpu.replace("hbm_TBps", "hbm_TBps_typo"))
    (tmp / "gpu_nan.toml").write_text(gpu.replace("hbm_TBps = 3.35", "hbm_TBps = nan"))
    (tmp / "profile.toml").write_text('name = "x"\narchitecture = "hopper"\ntoken_permutation = "qkvo"\n[forward]\n')
    (tmp / "malformed.toml").write_text("input_size = [30\n")
    (tmp / "float_size.toml").write_text("input_size = 4096.5\nwindow = 8\n")
    (tmp / "unknown_key.toml").write_text("input_size = 64\nwindow = 8\nwindw = 4\n")
    (tmp / "invalid.toml").write_text("input_size = [30]\nwindow = [[10], [40]]\n")
    (tmp / "zero_heads.toml").write_text("input_size = 64\nwindow = 8\nheads = 0\n")
    (tmp / "adir").mkdir()
    return {p.name: str(p) for p in tmp.iterdir()}


BAD_CLI = [
    (["table", "--input-size", "30", "48", "80", "--window", "40", "24", "24"], "window 40 is larger than"),
    (["table", "--input-size", "30", "--window", "8", "--stride", "9"], "stride 9 is larger than window 8"),
    (["table", "--input-size", "0", "--window", "1"], "--input-size: '0' is out of range"),
    (["table", "--input-size", "30", "x", "--window", "8"], "'x' is not an integer"),
    (["table", "--input-size", "1000000000000", "--window", "8"], "an integer from 1 to 2147483647"),
    (["table", *P, "--heads", "100000000000000000000"], "out of range; allowed: an integer from 1 to 4096"),
    (["table", *P, "--batch", "100000000000000000000"], "--batch: '100000000000000000000' is out of range"),
    (["table", *P, "--heads-kv", "5"], "heads_kv=5; allowed: a positive divisor of heads=24"),
    (["table", *P, "--head-dim", "0"], "--head-dim: '0' is out of range"),
    (["table", *P, "--q-tile", "1024"], "1024 is larger than axis 0's length 64"),
    (["table", *P, "--q-tile", "0"], "--q-tile: '0' is out of range"),
    (["table", "--input-size", "30", "48", "--window", "8", "--q-tile", "8", "8", "8"], "q_tile=[8, 8, 8]"),
    (["table", *P, "--gpu", "Z9000"], "unknown GPU 'Z9000'"),
    (["table", *P, "--format", "xml"], "invalid choice: 'xml'"),
    (["table", *P, "--tiling", "diagonal"], "invalid choice: 'diagonal'"),
    (["table", *P, "--causal", "2"], "'2' is not a causal flag"),
    (["table", "--input-size", "64"], "--window is required"),
    (["table", *P, "--dtype", "fp64"], "invalid choice: 'fp64'"),
    (["table", *P, "--dtype", "fp8", "--gpu", "A100"], "dtype='fp8' has no tensor-core rate on A100"),
    (["table", *P, "--columns", "nope"], "unknown column(s) ['nope']"),
    (["table", *P, "--kernel-profile", "nope"], "unknown kernel profile 'nope'"),
    (["table", *P, "--kernel-profile", "@profile.toml"], "[forward] is missing 'dense_q_tile'"),
    (["table", *P, "--gpu", "@gpu_missing.toml"], "missing key 'hbm_TBps'"),
    (["table", *P, "--gpu", "@gpu_nan.toml"], "hbm_TBps=nan; allowed: a finite number from"),
    (["table", "--input-size", "512", "--block-map", "@eye4.npy", "--window", "8"], "cannot be combined with"),
    (["table", "--input-size", "512", "--block-map", "/nonexistent/map.npy"], "does not exist"),
    (["table", "--input-size", "512", "--block-map", "@not_npy.npy"], "not a readable .npy/.npz"),
    (["table", "--input-size", "512", "--block-map", "@pickled.npy"], "without pickle"),
    (["table", "--input-size", "512", "--block-map", "@three_heads.npy", "--q-tile", "128"], "3 heads"),
    (["table", "--input-size", "100", "--block-map", "@eye4.npy", "--q-tile", "128"], "4 x 4 blocks"),
    (["table", *P, "--out", "/nonexistent/dir/r.csv"], "folder '/nonexistent/dir' does not exist"),
    (["table", *P, "--out", "@adir"], "is a directory"),
    (["table", *P, "--out", "/proc/version"], "cannot be written"),
    (["table", *P, "--out", ""], "--out ''"),
    (["sweep", "/nonexistent/s.toml"], "does not exist"),
    (["sweep", "@malformed.toml"], "not valid TOML"),
    (["sweep", "@float_size.toml"], "input_size=4096.5"),
    (["sweep", "@unknown_key.toml"], "unknown key(s) ['windw']"),
    (["sweep", "@invalid.toml"], "skip_invalid"),
    (["sweep", "@zero_heads.toml"], "heads=0"),
    (["e2e", "--preset", "nope"], "unknown preset 'nope'"),
    (["e2e", "--preset", "flux-4k", "--dense-steps", "99"], "dense_steps=99"),
    (["e2e", "--preset", "flux-4k", "--attention-share", "2"], "--attention-share: '2' is out of range"),
    (["e2e", "--preset", "flux-4k", "--window", "300", "300"], "window 300 is larger than"),
    (["gpus", "--gpu", "nope"], "unknown GPU 'nope'"),
    (["tiles"], "give --rank or --input-size"),
    (["tiles", "--rank", "4"], "--rank: '4' is out of range; allowed: an integer from 1 to 3"),
    (["tiles", "--rank", "2", "--q-volume", "24"], "--q-volume 24"),
    (["--bogus-flag"], "unrecognized arguments"),
    (["fly"], "invalid choice: 'fly'"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD_CLI, ids=[" ".join(a)[:60] for a, _ in BAD_CLI])
def test_bad_cli_input_is_one_line_and_exit_2(cli, capsys, tmp_path, argv, needle):
    paths = files(tmp_path)
    argv = [paths[a[1:]] if a.startswith("@") else a for a in argv]
    code, out, err = cli(*argv)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err, err
    assert "Traceback" not in err and out == ""


def test_at_least_25_bad_inputs_across_all_subcommands():
    assert len(BAD_CLI) >= 25
    commands = {a[0] for a, _ in BAD_CLI}
    assert {"table", "sweep", "e2e", "gpus", "tiles"} <= commands


BAD_API = [
    ({"input_size": 4096.5, "window": 8}, "input_size=4096.5"),
    ({"input_size": (64,), "window": "8"}, "window='8'"),
    ({"input_size": 64, "window": 8, "heads": 10**20}, "heads="),
    ({"input_size": 64, "window": 8, "backprop": "yes"}, "backprop='yes'"),
    ({"input_size": 64, "window": 8, "stride": 0}, "got 0"),
    ({"input_size": 64, "window": 8, "tiling": "diag"}, "tiling='diag'"),
    ({"input_size": 64, "window": 8, "q_tile": 2.5}, "q_tile=2.5"),
    ({"input_size": 10**12, "window": 8}, "2^31 - 1"),
    ({"input_size": 512, "block_map": np.eye(4, dtype=bool), "causal": True}, "cannot be combined with block_map"),
]


@pytest.mark.parametrize(("kwargs", "needle"), BAD_API)
def test_bad_python_api_input_is_a_config_error(kwargs, needle):
    with pytest.raises(ConfigError) as exc:
        simulate(**kwargs)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_simulate_many_names_unknown_settings():
    with pytest.raises(ConfigError, match="unknown setting"):
        simulate_many([{"input_size": 64, "window": 8, "windw": 4}])


def test_a_good_run_after_the_bad_ones(cli, tmp_path):
    code, out, _ = cli("table", *P, "--format", "json")
    assert code == 0 and json.loads(out)[0]["input_size"] == [64]
