"""Phase timings of ``simulate validate``: worker stamps from ``spread``, the breakdown, the JSON phases file.

Workers run on CPU with fake devices (as in test_validate_workers.py), forked or spawned; the work functions below
are module-level (a spawned worker imports this module to run them).
"""

from __future__ import annotations

import csv
import doctest
import importlib.util
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
from test_validate_workers import wait_for_peers

from sparsesim.kernels import phases, validate
from sparsesim.kernels.phases import COLUMNS, TaskTiming, breakdown
from sparsesim.kernels.workers import spread
from sparsesim.simulator.errors import ConfigError

CONFIGS = [
    {"input_size": (40,), "window": (9,), "stride": (4,), "causal": (True,), "q_tile": (16,), "kv_tile": (16,),
     "heads": 2, "head_dim": 16},
    {"input_size": (64,), "window": (17,), "q_tile": (16,), "kv_tile": (16,), "heads": 4, "head_dim": 16},
]
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "validate_phases.py"
EPS = 0.02  # seconds: stamps of two processes, both from the system's wall clock


def slow_prepare():
    time.sleep(0.2)
    return {"import_s": 0.15, "cuda_init_s": 0.05}


def noting_work(task):
    """``(index, folder)``: waits (up to 30 s) on its first task until both workers are up, then notes a first call
    of 0.05 s within a task of at least 0.1 s; task 3 raises."""
    index, folder = task
    wait_for_peers(folder)
    with phases.timed("first_call_s"):
        time.sleep(0.05)
    time.sleep(0.05)
    if index == 3:
        raise ValueError("boom")
    return index


def fake_measure(case, seed):
    with phases.timed("check_s"), phases.timed("first_call_s"):
        time.sleep(0.03)
    with phases.timed("time_s"):
        time.sleep(0.02)
    return {"rel_err": 0.001, "unwritten": 0, "ok": True, "kv_layout": "direct", "note": ""}, 1.5


def crash_on_device_1(case, seed):
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "1":
        os._exit(3)
    return fake_measure(case, seed)


def fake_probe(commit):
    return {"gpu": "Fake GPU", "driver": "1.0", "torch": "t", "triton": "tr", "commit": commit, "date": "2026-12-01"}


@pytest.fixture(autouse=True)
def _plain_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SPARSESIM_PHASES", raising=False)
    monkeypatch.delenv("SPARSESIM_WORKER_START", raising=False)
    yield
    assert not mp.active_children()


def run(cases, out, **kw):
    return validate.run(cases, out, commit="abc1234", probe=fake_probe, measure=fake_measure, **kw)


@pytest.mark.parametrize("method", [m for m in ("fork", "spawn") if m in mp.get_all_start_methods()])
def test_spread_stamps_every_task_of_every_worker(tmp_path, method):
    start = time.time()
    outcomes = list(spread(noting_work, [(i, str(tmp_path)) for i in range(6)], (0, 1), prepare=slow_prepare,
                           start_method=method))
    end = time.time()
    assert sorted(o.index for o in outcomes) == list(range(6)) and {o.device for o in outcomes} == {0, 1}
    assert [o.error for o in outcomes if o.error] == [f"worker on cuda:{o.device}: ValueError: boom"
                                                      for o in outcomes if o.index == 3]
    for o in outcomes:  # a failing task is stamped as well
        t = o.timing
        assert t is not None and t.device == o.device and t.index == o.index
        stamps = [start, t.spawned, t.started, t.ready, t.got, t.done, t.received, end]
        assert all(b >= a - EPS for a, b in zip(stamps, stamps[1:], strict=False)), stamps
        assert t.ready - t.started >= 0.2 - EPS  # the prepare step ran before the tasks
        assert dict(t.prepare) == {"import_s": 0.15, "cuda_init_s": 0.05}
        assert dict(t.parts).keys() == {"first_call_s"} and 0.05 <= dict(t.parts)["first_call_s"] < t.done - t.got
        assert t.done - t.got >= 0.1
    for d in (0, 1):
        mine = sorted((o.timing for o in outcomes if o.device == d and o.timing), key=lambda t: t.got)
        assert mine and len({(t.spawned, t.started, t.ready) for t in mine}) == 1  # one worker, one start
        assert sum(t.done - t.got for t in mine) <= mine[-1].done - mine[0].started + EPS
        assert all(b.got >= a.done for a, b in zip(mine, mine[1:], strict=False))  # one task at a time
    b = breakdown([o.timing for o in outcomes if o.timing], start, end)
    assert [r["device"] for r in b["devices"]] == [0, 1]
    for r in b["devices"]:
        assert all(r[c] >= -EPS for c in COLUMNS), r
        assert r["sum_s"] == pytest.approx(end - start, abs=1e-6)
        assert r["import_s"] == 0.15 and r["cuda_init_s"] == 0.05 and r["prepare_other_s"] >= 0
        assert r["compile_s"] >= 0.05 * r["tasks"] and r["measure_s"] == 0
        assert r["busy_s"] >= 0.1 * r["tasks"] and r["task_other_s"] >= 0.05 * r["tasks"] - EPS
    assert min(r["idle_end_s"] for r in b["devices"]) < EPS  # the last to finish has no tail


def test_a_lost_worker_sends_no_stamps(tmp_path):
    cases = validate.make_cases(CONFIGS, ["gna", "dense"])
    outcomes = list(spread(validate._measure_task, [((crash_on_device_1, fake_probe, 0, "c"), c, None) for c in cases],
                           (0, 1)))
    lost = [o for o in outcomes if "exited" in o.error]
    assert len(lost) == 1 and lost[0].timing is None
    assert all(o.timing is not None and o.timing.device == 0 for o in outcomes if not o.error)


def test_breakdown_names_the_tail_of_the_early_worker():
    def task(device, index, got, done):
        return TaskTiming(device, index, 10.0 + device, 11.0 + device, 13.0 + device, (("import_s", 1.5),), got,
                          done, (("first_call_s", 0.5), ("check_s", 0.75), ("time_s", 1.0)), done + 0.25)

    # device 0: tasks 13-16 and 16.5-18; device 1: 14-20. Last result taken at 20.25, the end at 21.
    b = breakdown([task(0, 0, 13.0, 16.0), task(1, 1, 14.0, 20.0), task(0, 2, 16.5, 18.0)], start=9.0, end=21.0)
    r0, r1 = b["devices"]
    assert (r0["device"], r0["tasks"], r1["tasks"]) == (0, 2, 1)
    assert (r0["setup_s"], r0["spawn_s"], r0["import_s"], r0["prepare_other_s"]) == (1.0, 1.0, 1.5, 0.5)
    assert (r0["busy_s"], r0["between_s"], r0["idle_end_s"], r0["stop_s"]) == (4.5, 0.5, 2.25, 0.75)
    assert (r0["compile_s"], r0["check_s"], r0["measure_s"], r0["task_other_s"]) == (1.0, 0.5, 2.0, 1.0)
    assert (r1["setup_s"], r1["busy_s"], r1["between_s"], r1["idle_end_s"]) == (2.0, 6.0, 0.0, 0.25)
    assert r0["lag_s"] == r1["lag_s"] * 2 == 0.5
    assert r0["sum_s"] == r1["sum_s"] == b["wall_s"] == 12.0
    here = breakdown([TaskTiming(None, 0, 1.0, 1.0, 1.5, (), 1.5, 2.0, (), 2.0)], 1.0, 2.5)["devices"]
    assert [(r["device"], r["spawn_s"], r["idle_end_s"], r["stop_s"], r["sum_s"]) for r in here] == \
        [(None, 0.0, 0.0, 0.5, 1.5)]


def rows_of(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_validate_writes_the_phases_beside_the_same_csv(tmp_path, monkeypatch):
    cases = validate.make_cases(CONFIGS, ["gna", "block_sparse", "dense"])
    run(cases, tmp_path / "plain.csv", devices=(0, 1))
    monkeypatch.setenv("SPARSESIM_PHASES", "1")
    run(cases, tmp_path / "two.csv", devices=(0, 1))
    one = run(cases, tmp_path / "one.csv")
    assert not (tmp_path / "plain.csv.phases.json").exists()
    plain, two = rows_of(tmp_path / "plain.csv"), rows_of(tmp_path / "two.csv")
    assert len(plain) == len(two) == len(one) == len(cases)
    strip = {"gpu"}  # which device measured a case may differ between two runs
    assert sorted(tuple((k, v) for k, v in r.items() if k not in strip) for r in plain) == \
        sorted(tuple((k, v) for k, v in r.items() if k not in strip) for r in two)
    assert list(two[0]) == validate.COLUMNS
    for name, devices in (("two", [0, 1]), ("one", [])):
        data = json.loads((tmp_path / f"{name}.csv.phases.json").read_text())
        assert data == phases.load(tmp_path / f"{name}.csv.phases.json")
        assert data["devices"] == devices and data["cases"] == len(cases)
        assert sorted(t["label"] for t in data["tasks"]) == sorted(c.case_id for c in cases)
        b = data["breakdown"]
        assert [r["device"] for r in b["devices"]] == (devices or [None])
        assert sum(r["tasks"] for r in b["devices"]) == len(cases)
        for r in b["devices"]:
            assert r["sum_s"] == pytest.approx(b["wall_s"], abs=1e-6) and all(r[c] >= -EPS for c in COLUMNS)
            assert r["compile_s"] >= 0.03 * r["tasks"] and r["measure_s"] >= 0.02 * r["tasks"]
            assert r["task_other_s"] < r["busy_s"] / 2  # the measurement's parts are most of it
    there = tmp_path / "elsewhere.json"
    monkeypatch.setenv("SPARSESIM_PHASES", str(there))
    run(cases[:2], tmp_path / "three.csv")
    assert phases.load(there)["cases"] == 2


def test_a_bad_phases_path_is_refused_before_the_work(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSESIM_PHASES", str(tmp_path / "missing" / "p.json"))
    cases = validate.make_cases(CONFIGS, ["gna"])
    with pytest.raises(ConfigError, match="SPARSESIM_PHASES") as exc:
        run(cases, tmp_path / "m.csv", devices=(0, 1))
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "m.csv").exists()


def test_the_benchmark_prints_the_breakdown(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("validate_phases", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cases = validate.make_cases(CONFIGS, ["gna", "dense"])
    t0 = time.time()
    run(cases, tmp_path / "m.csv", devices=(0, 1), phases_out=tmp_path / "p.json")
    assert bench.main([str(tmp_path / "p.json"), "--start", str(t0 - 1.0), "--end", str(time.time() + 0.5)]) == 0
    out = capsys.readouterr().out.splitlines()
    head = out[1].split()
    assert head[:3] == ["device", "cases", "setup"] and head[-2:] == ["sum", "wall"]
    rows = {line.split()[0]: line.split() for line in out[2:4]}
    assert set(rows) == {"cuda:0", "cuda:1"}
    for cells in rows.values():  # the columns add up to the wall time
        assert abs(sum(float(c) for c in cells[2:-2]) - float(cells[-1])) < 0.01 * len(COLUMNS)
    assert any(line.startswith("command wall") and "before run() 1." in line for line in out)
    assert bench.main([str(tmp_path / "m.csv")]) == 2  # not a phases file


def test_docstring_example():
    assert doctest.testmod(phases).failed == 0
