"""The hostile-input table: every subcommand and every file reader refuses bad input the same way.

Each case runs ``simulate`` in-process inside a fresh folder of input files and asserts: exit code 2, exactly
one line on stderr, no traceback, nothing written (no new file anywhere in the folder or the current
directory), nothing replaced (every file there keeps its kind, inode and bytes), and ``/dev/null`` and
``/dev/full`` still character devices. ``@name`` in a case stands for a file the fixture wrote.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest

from sparsesim.cli.main import main
from sparsesim.hwmodels.gpus import GPU_DIR

P = ["--input-size", "64", "--window", "8"]  # a valid pattern
H100 = (GPU_DIR / "H100.toml").read_text()
LONG = "x" * 300
CSV_HEAD = ("config_id,case_id,kernel,input_size,window,stride,dilation,causal,q_tile,kv_tile,heads,heads_kv,"
            "head_dim,batch,dtype,measured_ms,ok,gpu\n")


def _csv_row(measured: str = "0.04", heads: str = "24", gpu: str = "NVIDIA H200") -> str:
    return f"a1,a1-gna,gna,1024,256,1,,0,128,128,{heads},24,128,1,bf16,{measured},True,{gpu}\n"


def _gpu(old: str, new: str) -> str:
    assert old in H100, old
    return H100.replace(old, new)


def _samples(**change: object) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {
        "format": np.array("sparsesim-samples"), "version": np.array(1), "layout": np.array([64], dtype=np.int64),
        "names": np.array(["l0"]), "q0": rng.standard_normal((2, 4, 16)).astype(np.float16),
        "rows0": np.arange(4, dtype=np.int64), "k0": rng.standard_normal((2, 64, 16)).astype(np.float16),
        "v0": rng.standard_normal((2, 64, 16)).astype(np.float16), "kinds0": np.array(["", ""]),
    }
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value  # type: ignore[assignment]
    return arrays


TEXT_FILES = {
    # GPU files
    "gpu_sm_1e20.toml": _gpu("sm_count = 132", "sm_count = 1e20"),
    "gpu_sm_huge.toml": _gpu("sm_count = 132", "sm_count = 100000000000000000"),
    "gpu_sm_neg.toml": _gpu("sm_count = 132", "sm_count = -1"),
    "gpu_sm_str.toml": _gpu("sm_count = 132", 'sm_count = "132"'),
    "gpu_clock_nan.toml": _gpu("clock_GHz = 1.83", "clock_GHz = nan"),
    "gpu_hbm_inf.toml": _gpu("hbm_TBps = 3.35", "hbm_TBps = inf"),
    "gpu_no_l2.toml": _gpu("l2_MB = 50", "l2_MiB = 50"),
    "gpu_no_memory.toml": _gpu("[memory]", "[memoria]"),
    "gpu_tflops_neg.toml": _gpu("bf16 = 989.0", "bf16 = -1.0"),
    "gpu_tflops_fp64.toml": _gpu("tf32 = 495.0", "fp64 = 67.0"),
    "gpu_tile_rank.toml": _gpu("q_3d = [4, 4, 8]", "q_3d = [4, 4]"),
    "gpu_tile_huge.toml": _gpu("q_1d = [128]", "q_1d = [100000000000]"),
    "gpu_empty_name.toml": _gpu('name = "H100"', 'name = ""'),
    "gpu_sources_str.toml": _gpu('name = "H100"', 'name = "H100"\nsources = "none"').replace("[sources]", "[old]"),
    "gpu_smem_block.toml": _gpu("smem_per_block_KB = 227", "smem_per_block_KB = 500"),
    "gpu_regs_float.toml": _gpu("registers_per_SM = 65536", "registers_per_SM = 65536.5"),
    "gpu_bad.toml": "name = [\n",
    # sweep files
    "sweep_good.toml": "input_size = 64\nwindow = [[8], [16]]\n",
    "sweep_skip_str.toml": 'skip_invalid = "no"\ninput_size = [30]\nwindow = [[10], [40]]\n',
    "sweep_skip_int.toml": "skip_invalid = 1\ninput_size = [30]\nwindow = [[10], [40]]\n",
    "sweep_heads_str.toml": 'input_size = 64\nwindow = 8\nheads = "x"\n',
    "sweep_heads_float.toml": "input_size = 64\nwindow = 8\nheads = 2.5\n",
    "sweep_huge.toml": "input_size = 64\nwindow = 8\n" + "".join(
        f"{k} = [{', '.join(str(i) for i in range(1, 101))}]\n" for k in ("heads", "head_dim", "batch", "heads_kv")),
    "sweep_all_invalid.toml": "skip_invalid = true\ninput_size = [30]\nwindow = [[40], [50]]\n",
    "sweep_group_int.toml": "input_size = 64\nwindow = 8\ngroup = 5\n",
    "sweep_gpu_unknown.toml": 'input_size = 64\nwindow = 8\ngpu = "Z9000"\n',
    "sweep_gpu_long.toml": f'input_size = 64\nwindow = 8\ngpu = "{LONG}"\n',
    "sweep_no_window.toml": "input_size = 64\n",
    "sweep_tiling.toml": 'input_size = 64\nwindow = 8\ntiling = "diag"\n',
    "sweep_deep.toml": "window = 8\ninput_size = " + "[" * 400 + "]" * 400 + "\n",
    # measurement CSVs
    "m_good.csv": CSV_HEAD + _csv_row(),
    "m_fast.csv": CSV_HEAD + _csv_row("fast"),
    "m_zero.csv": CSV_HEAD + _csv_row("0"),
    "m_neg.csv": CSV_HEAD + _csv_row("-0.5"),
    "m_inf.csv": CSV_HEAD + _csv_row("inf"),
    "m_heads.csv": CSV_HEAD + _csv_row(heads="\u0663"),
    "m_cols.csv": "a,b\n1,2\n",
    "m_empty.csv": "",
    "m_two_gpus.csv": CSV_HEAD + _csv_row() + _csv_row(gpu="NVIDIA H100"),
    "m_no_heads.csv": CSV_HEAD.replace("heads,heads_kv", "hx,heads_kv") + _csv_row(),
    "m_window.csv": CSV_HEAD + _csv_row().replace(",256,", ",4096,"),
    # plan (for plan show's --out)
    "existing.csv": "keep me\n",
}
BYTE_FILES = {
    "gpu_latin1.toml": H100.encode("utf-8").replace(b"NVIDIA", b"NVIDI\xe9"),
    "sweep_latin1.toml": b"input_size = 64\nwindow = 8\n# caf\xe9\n",
    "m_latin1.csv": (CSV_HEAD + _csv_row()).encode().replace(b"NVIDIA", b"NVIDI\xe9"),
    "not_npy.npy": b"hello",
    "not_npz.npz": b"hello",
}


def _world(tmp: Path) -> dict[str, str]:
    """Every input file of the table, written fresh into ``tmp``."""
    for name, text in TEXT_FILES.items():
        (tmp / name).write_text(text)
    for name, data in BYTE_FILES.items():
        (tmp / name).write_bytes(data)
    np.save(tmp / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp / "three_heads.npy", np.ones((3, 4, 4), dtype=bool))
    np.save(tmp / "no_block.npy", np.zeros((4, 4), dtype=bool))
    np.save(tmp / "half.npy", np.full((4, 4), 0.5))
    np.save(tmp / "four_d.npy", np.ones((1, 1, 4, 4), dtype=bool))
    np.savez(tmp / "two_maps.npz", a=np.eye(4, dtype=bool), b=np.eye(4, dtype=bool))
    np.savez(tmp / "s_format.npz", **_samples(format=np.array("other")))
    np.savez(tmp / "s_version.npz", **_samples(version=np.array(9)))
    np.savez(tmp / "s_nan.npz", **_samples(q0=np.full((2, 4, 16), np.nan, dtype=np.float16)))
    np.savez(tmp / "s_q2d.npz", **_samples(q0=np.zeros((4, 16), dtype=np.float16)))
    np.savez(tmp / "s_no_k.npz", **_samples(k0=None))
    np.savez(tmp / "s_rows.npz", **_samples(rows0=np.array([0, 1, 2, 999], dtype=np.int64)))
    np.savez(tmp / "s_text_q.npz", **_samples(q0=np.array([["a"]])))
    np.savez(tmp / "s_layout.npz", **_samples(layout=np.array([0], dtype=np.int64)))
    np.save(tmp / "s_single.npy", np.zeros(3))
    (tmp / "adir").mkdir()
    (tmp / "adir.toml").mkdir()
    (tmp / "d.png").mkdir()
    (tmp / "scratch").mkdir()
    (tmp / "cwd").mkdir()
    os.mkfifo(tmp / "fifo")
    os.symlink("/dev/null", tmp / "link_devnull")
    os.symlink(tmp / "fifo", tmp / "link_fifo")
    os.symlink(tmp / "missing" / "x.csv", tmp / "link_dangling_dir")
    names = {p.name: str(p) for p in tmp.iterdir()}
    names["missing"] = str(tmp / "missing")
    names["long"] = str(tmp / LONG)
    names["db"] = f"sqlite:///{tmp / 'scratch' / 's.db'}"
    return names


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (outside scratch/): its kind, inode, and bytes for regular files."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "scratch"]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_ino, digest)
    return out


S = "@m_good.csv"
CAL = ["calibrate", "--gpu", "H200", "--measurements"]
SEARCH = ["search", "--preset", "flux-4k", "--trials", "1", "--storage", "@db", "--out", "@scratch/plan.json",
          "--samples"]
VAL = ["validate", "--preset", "flux-4k", "--out"]

CASES: list[tuple[list[str], str]] = [
    # --- outputs of every subcommand: devices, FIFOs, links, folders, odd names -----------------------------
    (["table", *P, "--out", "/dev/null"], "is a character device"),
    (["table", *P, "--out", "/dev/full"], "is a character device"),
    (["table", *P, "--out", "@fifo"], "is a FIFO"),
    (["table", *P, "--out", "@link_devnull"], "the link's target '/dev/null'"),
    (["table", *P, "--out", "@link_fifo"], "is a FIFO"),
    (["table", *P, "--out", "@adir"], "is a directory"),
    (["table", *P, "--out", ""], "--out ''"),
    (["table", *P, "--out", " "], "allowed: a file path"),
    (["table", *P, "--out", "/proc/x"], "cannot be written"),
    (["table", *P, "--out", "@long"], "the name is too long"),
    (["table", *P, "--out", "@missing/r.csv"], "does not exist (it is not created)"),
    (["table", *P, "--out", "@link_dangling_dir"], "does not exist"),
    (["table", "--input-size", "64", "--window", "99", "--out", "@existing.csv"], "window 99 is larger"),
    (["sweep", "@sweep_good.toml", "--out", "/dev/null"], "is a character device"),
    (["sweep", "@sweep_good.toml", "--out", "@fifo"], "is a FIFO"),
    (["gpus", "--out", "@fifo"], "is a FIFO"),
    (["gpus", "--out", "/dev/full"], "is a character device"),
    (["tiles", "--rank", "2", "--out", "@adir"], "is a directory"),
    (["tiles", "--rank", "2", "--out", "@link_devnull"], "is a character device"),
    (["e2e", "--preset", "flux-4k", "--out", "/dev/full"], "is a character device"),
    (["e2e", "--preset", "flux-4k", "--out", "@missing/e.csv"], "does not exist"),
    (["workloads", "--out", "@link_devnull"], "is a character device"),
    (["workloads", "--out", "/proc/x"], "cannot be written"),
    (["--out", "/dev/null"], "is a character device"),
    (["--out", "@missing/x.txt"], "does not exist"),
    (["--format", "csv", "--out", "@fifo"], "is a FIFO"),
    (["plan", "show", "@scratch/none.json", "--out", "/dev/full"], "is a character device"),
    ([*CAL, S, "--out", "/dev/null"], "is a character device"),
    ([*CAL, S, "--profile-out", "/dev/null"], "--profile-out '/dev/null' is a character device"),
    ([*CAL, S, "--profile-out", "@adir"], "--profile-out"),
    ([*CAL, S, "--profile-out", "@fifo"], "is a FIFO"),
    ([*CAL, S, "--profile-out", ""], "--profile-out ''"),
    ([*CAL, S, "--profile-out", "-"], "cannot go to standard output"),
    ([*CAL, S, "--profile-out", "@missing/p.toml"], "does not exist"),
    ([*CAL, S, "--profile-out", "@long"], "too long"),
    (["report", *P[:2], "--window", "8", "--out", ""], "--out ''"),
    (["report", *P[:2], "--window", "8", "--out", "/proc/report"], "cannot be written"),
    (["report", *P[:2], "--window", "8", "--out", "@existing.csv"], "allowed: a folder"),
    (["report", *P[:2], "--window", "8", "--out", "@missing/deeper"], "does not exist"),
    (["report", *P[:2], "--window", "8", "--out", "/dev/null"], "is a character device"),
    (["report", *P[:2], "--window", "8", "--out", "@fifo"], "is a FIFO"),
    ([*VAL, "/dev/null"], "is a character device"),
    ([*VAL, "-"], "cannot go to standard output"),
    ([*VAL, "@fifo"], "is a FIFO"),
    ([*VAL, "@scratch/m.csv"], "needs a CUDA GPU"),
    (["table", *P, "--plot", "x.txt"], "ending in .png"),
    (["table", *P, "--plot", "@adir"], "ending in .png"),
    (["table", *P, "--plot", "@d.png"], "is a directory"),
    (["table", *P, "--plot", "-"], "cannot go to standard output"),
    (["table", *P, "--plot", "@missing/p.png"], "does not exist"),
    (["table", *P, "--plot", "/dev/null"], "ending in .png"),
    # --- numbers: ASCII integers, finite numbers, bounds ---------------------------------------------------
    (["table", *P, "--heads", "\u0663"], "is not an integer"),
    (["table", *P, "--heads", "\uff12\uff14"], "is not an integer"),
    (["table", *P, "--heads", "1_000"], "is not an integer"),
    (["table", *P, "--heads", " 24"], "is not an integer"),
    (["table", *P, "--heads", "+24"], "is not an integer"),
    (["table", *P, "--heads", "24.0"], "is not an integer"),
    (["table", *P, "--heads", "0"], "an integer from 1 to 4096"),
    (["table", *P, "--heads", "4097"], "an integer from 1 to 4096"),
    (["table", *P, "--heads", "9" * 5000], "out of range"),
    (["table", *P, "--heads-kv", "0"], "out of range"),
    (["table", *P, "--head-dim", "1025"], "an integer from 1 to 1024"),
    (["table", *P, "--batch", "65536"], "an integer from 1 to 65535"),
    (["table", *P, "--batch", "-1"], "out of range"),
    (["table", "--input-size", "64.0", "--window", "8"], "is not an integer"),
    (["table", "--input-size", "2147483648", "--window", "8"], "an integer from 1 to 2147483647"),
    (["table", "--input-size", "64", "--window", "0"], "--window: '0' is out of range"),
    (["table", "--input-size", "64", "--window", "\uff17"], "is not an integer"),
    (["table", *P, "--stride", "-1"], "out of range"),
    (["table", *P, "--dilation", "0"], "out of range"),
    (["table", *P, "--q-tile", "1" + "0" * 45], "out of range"),
    (["table", *P, "--causal", "2"], "is not a causal flag"),
    (["table", *P, "--gpu", LONG], "unknown GPU"),
    (["table", *P, "--gpu", LONG + ".toml"], "GPU file"),
    (["table", *P, "--kernel-profile", LONG], "unknown kernel profile"),
    (["e2e", "--preset", "flux-4k", "--attention-share", "nan"], "is not a number"),
    (["e2e", "--preset", "flux-4k", "--attention-share", "inf"], "is not a number"),
    (["e2e", "--preset", "flux-4k", "--attention-share", "1e999"], "out of range"),
    (["e2e", "--preset", "flux-4k", "--attention-share", "0"], "a finite number > 0 and <= 1"),
    (["e2e", "--preset", "flux-4k", "--attention-share", "\u0661.\u0665"], "is not a number"),
    (["e2e", "--preset", "flux-4k", "--attention-share", "0_5"], "is not a number"),
    (["e2e", "--preset", "flux-4k", "--dense-steps", "-1"], "out of range"),
    (["e2e", "--preset", LONG], "preset"),
    (["tiles", "--rank", "0"], "an integer from 1 to 3"),
    (["tiles", "--rank", "2", "--top", "0"], "an integer >= 1"),
    (["tiles", "--rank", "2", "--q-volume", "1_6"], "is not an integer"),
    ([*CAL, S, "--seed", "-5"], "an integer from 0 to 4294967295"),
    ([*CAL, S, "--seed", "99999999999"], "an integer from 0 to 4294967295"),
    ([*CAL, S, "--holdout", "0"], "> 0 and < 1"),
    ([*CAL, S, "--holdout", "1"], "> 0 and < 1"),
    ([*CAL, S, "--holdout", "nan"], "is not a number"),
    (["validate", "--preset", "flux-4k", "--out", "@scratch/v.csv", "--seed", "-1"], "out of range"),
    (["validate", "--preset", "flux-4k", "--out", "@scratch/v.csv", "--jobs", "0"], "out of range"),
    (["report", "--input-size", "0", "--window", "1", "--out", "@scratch/r"], "out of range"),
    (["report", "--window", "8", "--out", "@scratch/r"], "--window needs --input-size"),
    (["report", "--preset", "flux-4k", "--stride", "2", "--out", "@scratch/r"], "--stride needs --input-size"),
    (["report", "--gpu", "Z9", "--out", "@scratch/r"], "unknown GPU 'Z9'"),
    # --- GPU files ------------------------------------------------------------------------------------------
    (["table", *P, "--gpu", "@gpu_sm_1e20.toml"], "sm_count=1e+20 has the wrong type"),
    (["table", *P, "--gpu", "@gpu_sm_huge.toml"], "sm_count=100000000000000000; allowed"),
    (["table", *P, "--gpu", "@gpu_sm_neg.toml"], "sm_count=-1; allowed"),
    (["table", *P, "--gpu", "@gpu_sm_str.toml"], "sm_count='132' has the wrong type"),
    (["table", *P, "--gpu", "@gpu_clock_nan.toml"], "clock_GHz=nan; allowed"),
    (["table", *P, "--gpu", "@gpu_hbm_inf.toml"], "hbm_TBps=inf; allowed"),
    (["table", *P, "--gpu", "@gpu_no_l2.toml"], "missing key 'l2_MB'"),
    (["table", *P, "--gpu", "@gpu_no_memory.toml"], "missing section [memory]"),
    (["table", *P, "--gpu", "@gpu_tflops_neg.toml"], "tensor_TFLOPs.'bf16'=-1.0"),
    (["table", *P, "--gpu", "@gpu_tflops_fp64.toml"], "tensor_TFLOPs.'fp64'"),
    (["table", *P, "--gpu", "@gpu_tile_rank.toml"], "q_3d=[4, 4]"),
    (["table", *P, "--gpu", "@gpu_tile_huge.toml"], "q_1d=[100000000000]"),
    (["table", *P, "--gpu", "@gpu_empty_name.toml"], "name=''"),
    (["table", *P, "--gpu", "@gpu_sources_str.toml"], "sources='none'"),
    (["table", *P, "--gpu", "@gpu_smem_block.toml"], "smem_per_block_KB=500"),
    (["table", *P, "--gpu", "@gpu_regs_float.toml"], "registers_per_SM=65536.5 has the wrong type"),
    (["table", *P, "--gpu", "@gpu_bad.toml"], "not valid TOML"),
    (["table", *P, "--gpu", "@gpu_latin1.toml"], "not UTF-8"),
    (["table", *P, "--gpu", "@adir.toml"], "not a regular file"),
    (["table", *P, "--gpu", "/dev/zero"], "not a regular file"),
    (["table", *P, "--gpu", "@missing/g.toml"], "does not exist"),
    (["gpus", "--gpu", "@gpu_sm_neg.toml"], "sm_count=-1"),
    (["e2e", "--preset", "flux-4k", "--gpu", "@gpu_clock_nan.toml"], "clock_GHz=nan"),
    (["report", *P[:2], "--window", "8", "--gpu", "@gpu_hbm_inf.toml", "--out", "@scratch/r"], "hbm_TBps=inf"),
    (["tiles", "--rank", "2", "--gpu", "@gpu_no_l2.toml"], "missing key 'l2_MB'"),
    ([*CAL, S, "--gpu", "@gpu_sm_str.toml"], "sm_count='132'"),
    # --- sweep files ----------------------------------------------------------------------------------------
    (["sweep", "@sweep_skip_str.toml"], "skip_invalid='no'; allowed: true or false"),
    (["sweep", "@sweep_skip_int.toml"], "skip_invalid=1"),
    (["sweep", "@sweep_heads_str.toml"], "heads='x'"),
    (["sweep", "@sweep_heads_float.toml"], "heads=2.5"),
    (["sweep", "@sweep_huge.toml"], "100000000 configurations; allowed: at most"),
    (["sweep", "@sweep_all_invalid.toml"], "no valid configuration (2 skipped"),
    (["sweep", "@sweep_group_int.toml"], "'group' must be an array of tables"),
    (["sweep", "@sweep_gpu_unknown.toml"], "unknown GPU 'Z9000'"),
    (["sweep", "@sweep_gpu_long.toml"], "unknown GPU"),
    (["sweep", "@sweep_no_window.toml"], "needs input_size and window"),
    (["sweep", "@sweep_tiling.toml"], "tiling='diag'"),
    (["sweep", "@sweep_deep.toml"], "every entry must be a positive integer"),
    (["sweep", "@sweep_latin1.toml"], "not UTF-8"),
    (["sweep", "/dev/zero"], "not a regular file"),
    (["sweep", "@fifo"], "not a regular file"),
    (["sweep", "@adir"], "not a regular file"),
    (["sweep", "@missing/s.toml"], "does not exist"),
    (["report", "--sweep", "@sweep_skip_str.toml", "--out", "@scratch/r"], "skip_invalid='no'"),
    (["validate", "--sweep", "@sweep_skip_str.toml", "--out", "@existing.csv"], "needs a CUDA GPU"),
    # --- measurement CSVs (calibrate and report) ------------------------------------------------------------
    ([*CAL, "@m_fast.csv"], "measured_ms='fast'; allowed: a positive finite time"),
    ([*CAL, "@m_zero.csv"], "measured_ms='0'"),
    ([*CAL, "@m_neg.csv"], "measured_ms='-0.5'"),
    ([*CAL, "@m_inf.csv"], "measured_ms='inf'"),
    ([*CAL, "@m_heads.csv"], "heads='\u0663'"),
    ([*CAL, "@m_cols.csv"], "lacks columns"),
    ([*CAL, "@m_empty.csv"], "is not a readable CSV"),
    ([*CAL, "@m_latin1.csv"], "is not UTF-8"),
    ([*CAL, "@m_no_heads.csv"], "no 'heads' column"),
    ([*CAL, "@m_window.csv"], "row 2: axis 0: window 4096 is larger"),
    ([*CAL, "@adir"], "is not a regular file"),
    ([*CAL, "/dev/zero"], "is not a regular file"),
    ([*CAL, "@missing/m.csv", "--dry-run"], "no such file"),
    (["calibrate", "--measurements", "@m_two_gpus.csv", "--dry-run"], "name 2 GPUs"),
    (["calibrate", "--measurements", "@m_latin1.csv", "--dry-run"], "is not UTF-8"),
    (["report", *P[:2], "--window", "8", "--measurements", "@m_fast.csv", "--out", "@scratch/r"], "measured_ms='fast'"),
    (["report", *P[:2], "--window", "8", "--measurements", "@m_latin1.csv", "--out", "@scratch/r"], "not UTF-8"),
    (["report", *P[:2], "--window", "8", "--measurements", "@missing/m.csv", "--out", "@scratch/r"], "no such file"),
    # --- block maps -----------------------------------------------------------------------------------------
    (["table", "--input-size", "512", "--block-map", "@not_npy.npy"], "not a readable .npy/.npz"),
    (["table", "--input-size", "512", "--block-map", "@pickled.npy"], "without pickle"),
    (["table", "--input-size", "512", "--block-map", "@three_heads.npy", "--q-tile", "128"], "3 heads"),
    (["table", "--input-size", "512", "--block-map", "@no_block.npy", "--q-tile", "128"], "visits no block"),
    (["table", "--input-size", "512", "--block-map", "@half.npy", "--q-tile", "128"], "block_map"),
    (["table", "--input-size", "512", "--block-map", "@four_d.npy", "--q-tile", "128"], "block_map"),
    (["table", "--input-size", "512", "--block-map", "@two_maps.npz", "--q-tile", "128"], "block"),
    (["table", "--input-size", "512", "--block-map", "@adir"], "block"),
    (["table", "--input-size", "512", "--block-map", "@missing/m.npy"], "does not exist"),
    # --- samples (search --samples) -------------------------------------------------------------------------
    ([*SEARCH, "@not_npz.npz"], "not a readable samples file"),
    ([*SEARCH, "@s_format.npz"], "format 'other'"),
    ([*SEARCH, "@s_version.npz"], "version 9"),
    ([*SEARCH, "@s_nan.npz"], "NaN or infinite"),
    ([*SEARCH, "@s_q2d.npz"], "array 'q0'"),
    ([*SEARCH, "@s_no_k.npz"], "lacks array 'k0'"),
    ([*SEARCH, "@s_rows.npz"], "sampled rows outside"),
    ([*SEARCH, "@s_text_q.npz"], "array 'q0'"),
    ([*SEARCH, "@s_layout.npz"], "layout [0]; allowed"),
    ([*SEARCH, "@s_single.npy"], "single array"),
    ([*SEARCH, "@adir"], "not a regular file"),
    # --- the main command and the output options ------------------------------------------------------------
    (["--bogus-flag"], "unrecognized arguments"),
    (["fly"], "invalid choice: 'fly'"),
    (["--format", "xml"], "invalid choice: 'xml'"),
    (["--columns", "nope"], "unknown column(s) ['nope']"),
    (["table", *P, "--columns", ","], "--columns"),
    (["workloads", "--columns", "nope"], "unknown column"),
]


def _resolve(arg: str, paths: dict[str, str], tmp: Path) -> str:
    if not arg.startswith("@"):
        return arg
    name, _, rest = arg[1:].partition("/")
    base = paths.get(name, str(tmp / name))
    return f"{base}/{rest}" if rest else base


def _run(argv: list[str]) -> tuple[object, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - a traceback is the failure this table looks for
        return "traceback", "", traceback.format_exc()
    return code, "", ""


@pytest.mark.parametrize(("argv", "needle"), CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_hostile_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, monkeypatch, argv, needle):
    paths = _world(tmp_path)
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("SPARSESIM_STORAGE", raising=False)
    before = _snapshot(tmp_path)
    argv = [_resolve(a, paths, tmp_path) for a in argv]
    code, _, tb = _run(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, tb or err)
    assert len(err.strip().splitlines()) == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    assert needle in err, err
    assert _snapshot(tmp_path) == before  # nothing written, created or replaced (devices, FIFOs, links intact)
    for dev in ("/dev/null", "/dev/full"):
        assert stat.S_ISCHR(os.stat(dev).st_mode), dev


def test_the_table_is_large_and_covers_every_subcommand_and_reader():
    assert len(CASES) >= 90
    commands = {a[0] if not a[0].startswith("-") else "main" for a, _ in CASES}
    assert {"table", "sweep", "gpus", "tiles", "e2e", "validate", "calibrate", "report", "workloads", "main",
            "search", "plan"} <= commands
    flat = " ".join(" ".join(a) for a, _ in CASES)
    for reader in ("@gpu_", "@sweep_", "@m_", "--block-map", "--samples"):
        assert reader in flat, reader


def test_plot_without_matplotlib_names_the_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, tb = _run(["table", *P, "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert code == 2, tb
    assert err.count("\n") == 1 and "pip install 'sparsesim[reports]'" in err
    assert list(tmp_path.iterdir()) == []


def test_out_through_a_symlink_writes_the_target_and_keeps_the_link(capsys, tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    code, _, tb = _run(["table", *P, "--format", "csv", "--out", str(link)])
    assert code == 0, tb
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("gpu,") and "tile_speedup" in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "real.csv"]


def test_plot_writes_the_named_png_and_says_so(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, _, tb = _run(["table", *P, "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert code == 0, tb
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {tmp_path / 'p.png'}" in err and [p.name for p in tmp_path.iterdir()] == ["p.png"]


def test_sweep_names_the_skipped_configurations(capsys, tmp_path):
    f = tmp_path / "s.toml"
    f.write_text("skip_invalid = true\ninput_size = [30]\nwindow = [[10], [40], [50]]\n")
    code, _, tb = _run(["sweep", str(f), "--format", "csv"])
    err = capsys.readouterr().err
    assert code == 0, tb
    assert "skipped 2 invalid" in err and "window=40" in err and "window=50" in err


def test_calibrate_checks_its_profile_path_before_fitting(capsys, tmp_path, monkeypatch):
    import sparsesim.simulator.calibrate as cal

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("fitted before the output was checked")

    monkeypatch.setattr(cal, "calibrate", boom)
    code, _, tb = _run(["calibrate", "--gpu", "H200", "--measurements", str(tmp_path / "none.csv"),
                        "--profile-out", str(tmp_path / "missing" / "p.toml")])
    assert code == 2, tb
    assert "--profile-out" in capsys.readouterr().err


def test_report_takes_a_gpu_file_like_table(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    gpu = tmp_path / "my.toml"
    gpu.write_text(H100.replace('name = "H100"', 'name = "MyGPU"'))
    code, _, tb = _run(["report", "--input-size", "256", "--window", "64", "--gpu", str(gpu), "--measurements",
                        "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 0, tb or err
    assert "MyGPU" in (tmp_path / "r" / "index.html").read_text()


def test_dense_patterns_are_noted_in_the_table(capsys):
    code, _, tb = _run(["table", "--input-size", "1024", "--window", "1024"])
    out, err = capsys.readouterr()
    assert code == 0, tb
    header, row = out.splitlines()[:2]
    assert "note" in header.split() and "dense" in row.split() and "dense or near-dense" in err
    code, _, _ = _run(["table", "--input-size", "1024", "--window", "64"])
    out, _ = capsys.readouterr()
    assert code == 0 and "note" not in out.splitlines()[0].split()


def test_report_summarises_a_launch_too_large_to_draw(capsys, tmp_path, monkeypatch):
    # At the largest layouts the SM timeline would schedule millions of CTAs one by one (the report once
    # exhausted 24 GB there); past TIMELINE_MAX_CTAS it says so instead of drawing.
    pytest.importorskip("matplotlib")
    import sparsesim.reports.build as build

    monkeypatch.setattr(build, "TIMELINE_MAX_CTAS", 4)
    code, _, tb = _run(["report", "--input-size", "4096", "--window", "256", "--measurements", "--out",
                        str(tmp_path / "r")])
    assert code == 0, tb
    page = (tmp_path / "r" / "index.html").read_text()
    assert "more than the timeline draws (4)" in page and not (tmp_path / "r" / "sm_timeline.png").exists()
