"""``simulate validate --jobs``: the check stage (several check workers per device before the timings).

Real checks run here, through the Triton interpreter on tiny cases; where a test needs a check to fail in the
stage, the stage is given a check function of this module (its workers import it).
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import signal

import pytest

from sparsesim.kernels import validate, workers
from sparsesim.kernels.workers import START_ENV, spread

CONFIGS = [
    {"input_size": (40,), "window": (9,), "stride": (4,), "causal": (True,), "q_tile": (16,), "kv_tile": (16,),
     "heads": 2, "head_dim": 16},
    {"input_size": (8, 12), "window": (3, 5), "dilation": (2, 1), "q_tile": (4, 4), "kv_tile": (4, 4), "heads": 2,
     "head_dim": 16},
]


def fake_probe(commit):
    return {"gpu": "Fake GPU", "driver": "1.0", "torch": "t", "triton": "tr", "commit": commit, "date": "2026-12-01"}


def where(task):
    """Which device a worker sees and which process it is."""
    if task == "boom":
        raise ValueError("boom")
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


def fails_or_dies(case, seed):
    """The real check, except that dense cases fail and one causal GNA case takes its worker down."""
    if case.kernel == "dense":
        return {"rel_err": float("nan"), "unwritten": -1, "ok": False, "kv_layout": "", "fwd_kernel": "",
                "note": "ERROR OutOfMemoryError: beside the other checks"}
    if case.kw.get("causal"):
        os._exit(5)
    return validate.check_case(case, seed)


@pytest.fixture(autouse=True)
def _plain(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(START_ENV, raising=False)
    monkeypatch.delenv("SPARSESIM_PHASES", raising=False)
    yield
    assert not mp.active_children()


def rows_of(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_several_workers_share_a_device():
    devices = (0, 0, 1)
    outcomes = list(spread(where, list(range(9)) + ["boom"], devices))
    assert sorted(o.index for o in outcomes) == list(range(10))
    for o in outcomes:
        assert o.device == devices[o.worker]
        if o.index == 9:
            assert o.result is None and o.error == f"worker {o.worker} on cuda:{o.device}: ValueError: boom"
        else:
            assert o.result[0] == str(o.device) and o.timing is not None and o.timing.device == o.device
    pids = {o.worker: o.result[1] for o in outcomes if o.result is not None}
    assert len(set(pids.values())) == len(pids)  # one process per worker
    with pytest.raises(ValueError, match="device indices"):
        list(spread(where, [1], (0, -1)))


def test_default_jobs():
    assert validate.default_jobs((), cpus=16) == 8  # half the cores
    assert validate.default_jobs((), cpus=64) == validate.JOBS_PER_DEVICE  # at most 8 on one GPU
    assert validate.default_jobs((0, 1), cpus=64) == 2 * validate.JOBS_PER_DEVICE
    assert validate.default_jobs((0, 1, 2, 3), cpus=12) == 6
    assert validate.default_jobs((), cpus=1) == 1
    assert validate.default_jobs(()) >= 1


@pytest.mark.parametrize("devices", [(), (0, 1)])
def test_the_check_stage_gives_the_rows_of_serial_checks(tmp_path, monkeypatch, devices):
    cases = validate.make_cases(CONFIGS, ["gna", "dense"])
    serial = validate.run(cases, tmp_path / "serial.csv", commit="c", probe=fake_probe, devices=devices)
    monkeypatch.setenv("SPARSESIM_PHASES", "1")
    staged = validate.run(cases, tmp_path / "staged.csv", commit="c", probe=fake_probe, devices=devices, jobs=3)
    key = ("case_id", "rel_err", "unwritten", "ok", "kv_layout", "fwd_kernel", "predicted_ms")
    assert sorted(tuple(r[k] for k in key) for r in serial) == sorted(tuple(r[k] for k in key) for r in staged)
    assert all(r["ok"] and r["measured_ms"] > 0 for r in staged)
    data = json.loads((tmp_path / "staged.csv.phases.json").read_text())
    stage = data["checks"]
    assert stage["jobs"] == 3 and stage["passed"] == len(cases)
    assert stage["workers_on"] == ([0, 0, 0] if not devices else [0, 1, 0])
    per_worker = stage["breakdown"]["devices"]
    assert sum(r["tasks"] for r in per_worker) == len(cases) and {r["device"] for r in per_worker} <= {0, 1, 2}
    assert all(r["compile_s"] > 0 for r in per_worker)  # the first calls ran in the stage
    assert sum(r["tasks"] for r in data["breakdown"]["devices"]) == len(cases)


def test_the_stage_keeps_only_the_checks_that_passed():
    order = validate.make_cases(CONFIGS, ["gna", "dense"])
    checks, stage = validate.check_stage(order, 2, (), seed=0, check=fails_or_dies)
    passed = [c.case_id for c in order if c.kernel == "gna" and not c.kw.get("causal")]
    assert sorted(checks) == sorted(passed) and stage["passed"] == len(passed) == 1
    assert all(checks[i]["ok"] for i in passed)
    assert stage["jobs"] == 2 and stage["workers_on"] == [0, 0] and stage["wall_s"] > 0


@pytest.mark.parametrize("devices", [(), (0, 1)])
def test_cases_the_stage_did_not_pass_are_checked_by_their_measuring_process(tmp_path, monkeypatch, devices):
    cases = validate.make_cases(CONFIGS, ["gna", "dense"])
    real, given = validate.check_stage, []

    def half(order, *args, **kw):
        checks, stage = real(order, *args, **kw)
        kept = dict(list(checks.items())[::2])
        given.append(kept)
        return kept, {**stage, "passed": len(kept)}

    monkeypatch.setattr(validate, "check_stage", half)
    staged = validate.run(cases, tmp_path / "m.csv", commit="c", probe=fake_probe, devices=devices, jobs=2)
    serial = validate.run(cases, tmp_path / "s.csv", commit="c", probe=fake_probe, devices=devices)
    assert 0 < len(given[0]) < len(cases)
    key = ("case_id", "rel_err", "unwritten", "ok", "kv_layout", "fwd_kernel")
    assert sorted(tuple(r[k] for k in key) for r in serial) == sorted(tuple(r[k] for k in key) for r in staged)
    assert all(r["ok"] and r["measured_ms"] > 0 for r in staged)


def torch_sum(task):
    """A CPU matrix product in a worker, which ends the worker (SIGALRM) if it waits for more than 20 s."""
    import torch

    signal.alarm(20)
    a = torch.randn(512, 512, generator=torch.Generator().manual_seed(task))
    out = float((a @ a).sum()), torch.get_num_threads()
    signal.alarm(0)
    return out


def test_a_forked_worker_runs_torch_after_the_caller_used_its_threads():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    a = torch.randn(512, 512)
    (a @ a).sum()  # the caller's CPU thread pool has run
    outcomes = list(spread(torch_sum, [1, 2], (0, 1), start_method="fork", poll_s=0.1))
    assert sorted(o.index for o in outcomes) == [0, 1] and all(o.result[1] == 1 for o in outcomes)


def test_cli_jobs(monkeypatch, cli, tmp_path):
    torch = pytest.importorskip("torch")
    sweep = tmp_path / "s.toml"
    sweep.write_text("input_size = [40]\nwindow = [9]\nq_tile = [16]\nheads = 2\nhead_dim = 16\n")
    monkeypatch.delenv("TRITON_INTERPRET")  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    runs = []
    monkeypatch.setattr(validate, "run", lambda cases, out, **kw: runs.append((kw["jobs"], kw["devices"])) or [])
    argv = ["validate", "--sweep", str(sweep), "--kernels", "gna", "--out", str(tmp_path / "x.csv")]
    assert cli(*argv)[0] == 0 and cli(*argv, "--jobs", "3", "--devices", "2")[0] == 0
    assert cli(*argv, "--jobs", "AUTO", "--devices", "0,1")[0] == 0
    assert runs == [(16, (0, 1)), (3, (0, 1)), (16, (0, 1))]
    for bad in ("0", "x", "513", "-1"):
        code, out, err = cli(*argv, "--jobs", bad)
        assert code == 2 and "--jobs" in err and "auto" in err and len(err.strip().splitlines()) == 1
