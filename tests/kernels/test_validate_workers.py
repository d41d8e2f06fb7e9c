"""``simulate validate`` on several devices: worker processes on CPU with fake devices and a fake measurement.

The measurements below are module-level functions (a spawned worker imports this module to run them); they
read ``CUDA_VISIBLE_DEVICES`` where a test needs to know which device's worker runs them. Where this process may
fork (:func:`~sparsesim.kernels.workers.fork_safe`: a torch without CUDA, or none) the workers are forked, else
spawned; the tests that name a start method run both.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import types

import pytest

from sparsesim.kernels import validate, workers
from sparsesim.kernels.workers import START_ENV, WorkersLost, choose_start, fork_safe, next_task, parse_devices, spread
from sparsesim.simulator.errors import ConfigError

METHODS = [m for m in ("fork", "spawn") if m in mp.get_all_start_methods()]

CONFIGS = [
    {"input_size": (40,), "window": (9,), "stride": (4,), "causal": (True,), "q_tile": (16,), "kv_tile": (16,),
     "heads": 2, "head_dim": 16},
    {"input_size": (64,), "window": (17,), "q_tile": (16,), "kv_tile": (16,), "heads": 4, "head_dim": 16},
    {"input_size": (8, 12), "window": (3, 5), "dilation": (2, 1), "q_tile": (4, 4), "kv_tile": (4, 4), "heads": 2,
     "head_dim": 16},
]
KERNELS = ["gna", "block_sparse", "dense", "cudnn"]
COMMIT = "abc1234"


def fake_measure(case, seed):
    time.sleep(0.05)  # long enough that both workers get cases
    return {"rel_err": 0.001, "unwritten": 0, "ok": True, "kv_layout": "direct", "note": ""}, \
        float(len(case.case_id) + len(case.kernel) + seed)


def fake_probe(commit):
    return {"gpu": "Fake GPU", "driver": "1.0", "torch": "t", "triton": "tr", "commit": commit, "date": "2026-12-01"}


def crash_on_device_1(case, seed):
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "1":
        os._exit(3)
    return fake_measure(case, seed)


def always_crash(case, seed):
    os._exit(4)


def raise_on_dense(case, seed):
    if case.kernel == "dense":
        raise ValueError("boom\nsecond line")
    return fake_measure(case, seed)


@pytest.fixture
def cases():
    return validate.make_cases(CONFIGS, KERNELS)


@pytest.fixture(autouse=True)
def _plain_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(START_ENV, raising=False)
    yield
    assert not mp.active_children()  # no worker outlives its run


def run(cases, out, **kw):
    return validate.run(cases, out, commit=COMMIT, probe=fake_probe, **kw)


def rows_of(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def without_gpu(rows):
    return {tuple((k, v) for k, v in r.items() if k != "gpu") for r in rows}


def wait_for_peers(folder, workers=2):
    """On a worker's first call, wait (up to 30 s) until ``workers`` workers have marked ``folder``, so neither takes
    every task while the other is still starting."""
    mark = os.path.join(folder, str(os.getpid()))
    if not os.path.exists(mark):
        open(mark, "w").close()
        deadline = time.monotonic() + 30
        while len(os.listdir(folder)) < workers and time.monotonic() < deadline:
            time.sleep(0.01)


def sleepy(task):
    """``(index, folder)``: the first task of each worker waits until both workers are up (:func:`wait_for_peers`);
    then each task sleeps 0.1 s."""
    index, folder = task
    wait_for_peers(folder)
    time.sleep(0.1)
    return index


def test_next_task_prefers_what_the_worker_compiled_then_what_nobody_did():
    keys = ["a", "b", "a", "c", "b"]
    assert next_task([0, 1, 2, 3, 4], None, set(), set()) == 0  # no keys: the given order
    assert next_task([1, 2, 3, 4], keys, {"a"}, {"a", "b"}) == 1  # its own key first (task 2)
    assert next_task([1, 3, 4], keys, {"a"}, {"a", "b"}) == 1  # then a key nobody has (task 3, "c")
    assert next_task([1, 4], keys, {"a"}, {"a", "b", "c"}) == 0  # else the first: no worker waits


def test_two_workers_keep_each_key_on_one_device(tmp_path):
    keys = ["a", "a", "b", "b"] * 2  # in the given order, plain turns would put each key on both devices
    outcomes = list(spread(sleepy, [(i, str(tmp_path)) for i in range(8)], (0, 1), keys=keys))
    assert sorted(o.result for o in outcomes) == list(range(8))
    on = {k: [o.device for o in outcomes if keys[o.index] == k] for k in ("a", "b")}
    # both workers busy from the first task on: each key stays on one device (a worker takes the other's key
    # only when its own ran out first, at most once here)
    majority = {k: max(set(d), key=d.count) for k, d in on.items()}
    assert majority["a"] != majority["b"], on
    assert all(on[k].count(majority[k]) >= 3 for k in on), on
    with pytest.raises(ValueError, match="one key per task"):
        list(spread(sleepy, [(1, str(tmp_path)), (2, str(tmp_path))], (0, 1), keys=["a"]))


def test_parse_devices():
    assert parse_devices("all", 4) == (0, 1, 2, 3) and parse_devices(" ALL ", 2) == (0, 1)
    assert parse_devices("all", 1) == () and parse_devices("all", 0) == () and parse_devices("1", 0) == ()
    assert parse_devices("2", 4) == (0, 1) and parse_devices("1", 4) == ()
    assert parse_devices("0,2", 4) == (0, 2) and parse_devices("3,", 4) == (3,) and parse_devices("1, 0", 2) == (1, 0)
    for bad, visible in [("0", 4), ("5", 4), ("2", 1), ("0,0", 4), ("0,4", 4), ("-1", 4), ("x", 4), ("", 4),
                         ("1.5", 4), ("\u0663", 4), (",", 4), ("0,1", 0)]:
        with pytest.raises(ConfigError, match="--devices") as exc:
            parse_devices(bad, visible)
        assert "\n" not in str(exc.value) and repr(bad) in str(exc.value)


def test_two_devices_write_the_rows_of_one(tmp_path, cases):
    serial = run(cases, tmp_path / "one.csv", measure=fake_measure)
    spread = run(cases, tmp_path / "two.csv", measure=fake_measure, devices=(0, 1))
    one, two = rows_of(tmp_path / "one.csv"), rows_of(tmp_path / "two.csv")
    assert len(serial) == len(spread) == len(one) == len(two) == len(cases)
    assert without_gpu(one) == without_gpu(two)  # the same rows, columns and formats
    with open(tmp_path / "one.csv") as a, open(tmp_path / "two.csv") as b:
        assert a.readline() == b.readline()  # the same header
    gpu = one[0]["gpu"]
    assert {r["gpu"] for r in two} == {f"{gpu} (cuda:0)", f"{gpu} (cuda:1)"}  # both devices measured
    assert all(r["ok"] == "True" and float(r["measured_ms"]) > 0 for r in two)


def test_one_device_takes_the_longest_first_and_resume_skips(tmp_path, cases):
    out = tmp_path / "m.csv"
    run(cases[:3], out, measure=fake_measure)
    rows = run(cases, out, resume=True, measure=raise_on_dense, devices=(1,))
    assert len(rows) == len(cases) - 3 and not {r["case_id"] for r in rows} & {c.case_id for c in cases[:3]}
    predicted = [float(r["predicted_ms"]) for r in rows]
    assert predicted == sorted(predicted, reverse=True)
    every = rows_of(out)
    assert sorted(r["case_id"] for r in every) == sorted(c.case_id for c in cases)  # nothing twice
    dense = [r for r in rows if r["kernel"] == "dense"]
    assert dense and all(not r["ok"] and r["note"] == "ERROR worker on cuda:1: ValueError: boom" for r in dense)
    assert all(r["ok"] for r in rows if r["kernel"] != "dense")  # the worker went on after the error


def test_a_crashing_worker_loses_only_its_case(tmp_path, cases):
    out = tmp_path / "m.csv"
    rows = run(cases, out, measure=crash_on_device_1, devices=(0, 1))
    written = rows_of(out)
    assert len(rows) == len(written) == len(cases)
    lost = [r for r in written if r["ok"] == "False"]
    assert len(lost) == 1 and lost[0]["note"] == "ERROR worker on cuda:1 exited (code 3)"
    assert lost[0]["gpu"] == "(cuda:1)" and lost[0]["measured_ms"] == "" and lost[0]["commit"] == COMMIT
    assert all(r["gpu"].endswith("(cuda:0)") for r in written if r["ok"] == "True")
    again = run(cases, out, resume=True, measure=fake_measure, devices=(0, 1))
    assert [r["case_id"] for r in again] == [lost[0]["case_id"]]  # resume measures the lost case
    assert run(cases, out, resume=True, measure=always_crash, devices=(0, 1)) == []  # nothing left: no worker


def test_every_worker_lost_keeps_the_rows_and_says_so(tmp_path, cases):
    out = tmp_path / "m.csv"
    with pytest.raises(WorkersLost) as exc:
        run(cases, out, measure=always_crash, devices=(0, 1))
    text = str(exc.value)
    assert "\n" not in text and f"{len(cases) - 2} case(s) not measured" in text and "--resume" in text
    assert "cuda:0 code 4" in text and "cuda:1 code 4" in text
    assert len(rows_of(out)) == 2 and all(r["ok"] == "False" for r in rows_of(out))


def test_interrupted_run_keeps_its_rows(tmp_path, cases):
    out = tmp_path / "m.csv"

    def stop_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cases, out, measure=fake_measure, devices=(0, 1), progress=stop_after_two)
    assert len(rows_of(out)) == 2


def test_cli_refuses_bad_devices(capsys, tmp_path):
    from sparsesim.cli.main import main

    sweep = tmp_path / "s.toml"
    sweep.write_text("input_size = [40]\nwindow = [9]\nq_tile = [16]\nheads = 2\nhead_dim = 16\n")
    for bad in ("3", "0,x"):
        with pytest.raises(SystemExit) as exc:
            main(["validate", "--sweep", str(sweep), "--kernels", "gna", "--devices", bad,
                  "--out", str(tmp_path / "x.csv")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"--devices {bad!r}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()


def test_compile_keys_group_cases_that_compile_the_same_kernels():
    cfg = {"input_size": (64,), "window": (17,), "q_tile": (16,), "kv_tile": (16,), "heads": 4, "head_dim": 16}
    bigger = {**cfg, "input_size": (128,), "window": (33,), "heads": 8}  # other sizes, same kernels
    other_tiles = {**cfg, "q_tile": (32,), "kv_tile": (32,)}
    causal = {**cfg, "causal": (True,)}
    key = {name: [validate.compile_key(c) for c in validate.make_cases([c], ["gna", "cudnn"])]
           for name, c in (("cfg", cfg), ("bigger", bigger), ("tiles", other_tiles), ("causal", causal))}
    assert key["cfg"] == key["bigger"] and key["cfg"][1] == ("cudnn",)
    assert key["tiles"][0] != key["cfg"][0] and key["causal"][0] != key["cfg"][0]


# --- forked or spawned workers, and their stop ------------------------------------------------------------------

#: Set in the test process: a forked worker sees it set, a spawned one imports this module anew.
MARK = {"parent": False}


def what_it_inherited(task):
    return MARK["parent"], signal.getsignal(signal.SIGINT) == signal.SIG_IGN, \
        signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def lingering(task):
    """A result larger than a pipe's buffer, and a thread that would keep the process 30 s at a normal exit (as
    torch's and CUDA's teardown keep a worker most of a second)."""
    threading.Thread(target=time.sleep, args=(30,), name="teardown").start()
    return bytes([task]) * 200_000


def boom():
    raise ImportError("no triton")


def test_fork_only_where_fork_safe_says_so(monkeypatch):
    monkeypatch.setitem(MARK, "parent", True)
    preloaded = []
    old = signal.signal(signal.SIGTERM, lambda *a: None)  # a caller's handler: a forked worker must not keep it
    try:
        for safe in (False, True):
            monkeypatch.setattr(workers, "fork_safe", lambda safe=safe: safe)
            outcomes = list(spread(what_it_inherited, [0, 1, 2], (0, 1), preload=lambda: preloaded.append(1)))
            forked = safe and "fork" in METHODS
            assert [o.result for o in outcomes] == [(forked, True, True)] * 3
    finally:
        signal.signal(signal.SIGTERM, old)
    assert preloaded == [1]  # run here once, before forking only


def test_choose_start(monkeypatch):
    calls = []
    monkeypatch.setattr(workers, "fork_safe", lambda: False)
    assert choose_start(lambda: calls.append("x")) == "spawn" and calls == []
    monkeypatch.setattr(workers, "fork_safe", lambda: True)
    assert choose_start(lambda: calls.append("x")) == "fork" and calls == ["x"]
    answers = iter([True, False])  # the preload's imports started CUDA
    monkeypatch.setattr(workers, "fork_safe", lambda: next(answers))
    assert choose_start(lambda: None) == "spawn"
    monkeypatch.setattr(workers, "fork_safe", lambda: True)
    assert choose_start(boom) == "spawn"  # the spawned workers meet the failure
    assert choose_start(boom, "fork") == "fork" and choose_start(None, "spawn") == "spawn"
    monkeypatch.setenv(START_ENV, "spawn")
    assert choose_start(lambda: calls.append("y")) == "spawn" and calls == ["x"]
    monkeypatch.setattr(workers, "fork_safe", lambda: False)
    monkeypatch.setenv(START_ENV, " Fork ")
    assert choose_start() == "fork"  # forced: measuring one against the other
    monkeypatch.setenv(START_ENV, "threads")
    with pytest.raises(ConfigError, match=START_ENV) as exc:
        choose_start()
    assert "\n" not in str(exc.value) and "'threads'" in str(exc.value)
    with pytest.raises(ValueError, match="start method"):
        choose_start(None, "threads")


def test_fork_safe_rule(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(workers, "_driver_library_loaded", lambda: False)
    monkeypatch.setattr(workers, "_triton_driver_created", lambda: False)
    # a CUDA build whose CUDA is not initialised and whose devices NVML counts: the only case with torch that forks
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: False)
    monkeypatch.setattr(torch.cuda, "_cached_device_count", None)
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 2)
    assert fork_safe() is ("fork" in mp.get_all_start_methods())
    if not fork_safe():
        return
    unsure = [(torch.cuda, "is_initialized", lambda: True), (torch.cuda, "_is_in_bad_fork", lambda: True),
              (torch.cuda, "_cached_device_count", 2), (torch.cuda, "_device_count_nvml", lambda: -1),
              (torch.cuda, "_device_count_nvml", boom), (workers, "_driver_library_loaded", lambda: True),
              (workers, "_driver_library_loaded", lambda: None), (workers, "_triton_driver_created", lambda: True),
              (workers, "_triton_driver_created", lambda: None), (sys, "platform", "darwin")]
    for owner, name, value in unsure:
        with monkeypatch.context() as m:
            m.setattr(owner, name, value)
            assert not fork_safe(), (name, value)
    with monkeypatch.context() as m:
        m.delattr(torch.cuda, "_device_count_nvml")  # a torch without NVML counting: unsure
        assert not fork_safe()
    # the driver library mapped (imports may map it): its own answer to a device count says whether cuInit ran
    import ctypes

    for status, safe in ((workers.CUDA_ERROR_NOT_INITIALIZED, True), (0, False), (100, False)):
        with monkeypatch.context() as m:
            m.setattr(workers, "_driver_library_loaded", lambda: True)
            m.setattr(ctypes, "CDLL", lambda name, mode=0, status=status: types.SimpleNamespace(
                cuDeviceGetCount=lambda ref: status))
            assert fork_safe() is safe, status
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with monkeypatch.context() as m:
        m.setattr(torch.backends.cuda, "is_built", lambda: False)  # a build without CUDA never starts it
        assert fork_safe()
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "torch")  # torch not imported
        assert fork_safe()
        m.setattr(workers, "_driver_library_loaded", lambda: True)  # ...but something else started the driver
        assert not fork_safe()


def test_driver_state_is_read_without_touching_it(tmp_path, monkeypatch):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f10 r-xp 00000000 fd:01 7 /usr/lib/x86_64-linux-gnu/libcudart.so.12\n"
                    "7f10-7f20 r-xp 00000000 fd:01 8 /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1\n")
    assert workers._driver_library_loaded(str(maps)) is False
    with open(maps, "a") as fh:
        fh.write("7f20-7f30 r-xp 00000000 fd:01 9 /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15\n")
    assert workers._driver_library_loaded(str(maps)) is True
    assert workers._driver_library_loaded(str(tmp_path / "missing")) is None
    if "triton.runtime.driver" in sys.modules:  # this Triton's driver state is one the rule can read
        assert workers._triton_driver_created() is not None
    fake = types.ModuleType("triton.runtime.driver")
    monkeypatch.setitem(sys.modules, "triton.runtime.driver", fake)
    fake.driver = types.SimpleNamespace(_default=None, _active=None)  # Triton >= 3.2
    assert workers._triton_driver_created() is False
    fake.driver._active = object()
    assert workers._triton_driver_created() is True
    proxy = types.SimpleNamespace(_init_fn=None, _obj=None)  # Triton 3.0/3.1: LazyProxy
    fake.driver = types.SimpleNamespace(default=proxy, active=proxy)
    assert workers._triton_driver_created() is False
    proxy._obj = object()
    assert workers._triton_driver_created() is True
    fake.driver = types.SimpleNamespace(backend="cuda")
    assert workers._triton_driver_created() is None  # unknown: spawn
    monkeypatch.delitem(sys.modules, "triton.runtime.driver")
    assert workers._triton_driver_created() is False


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_told_to_end_exits_at_once_with_its_results_sent(method):
    ctx = mp.get_context(method)
    inbox, outbox = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=workers._serve, args=(0, 0, lingering, inbox, outbox), daemon=True)
    p.start()
    try:
        for i in range(4):
            inbox.put((i, i))
        inbox.put(None)  # told to end right behind its tasks, before any result is read
        got: list = []  # read by a thread: a result cut short by the exit would block its reader for good
        reader = threading.Thread(target=lambda: got.extend(outbox.get(timeout=20) for _ in range(4)), daemon=True)
        reader.start()
        reader.join(30)
        got.sort(key=lambda r: r[1])
        assert [(i, r, e) for _, i, r, e, _ in got] == [(i, bytes([i]) * 200_000, "") for i in range(4)]
        t0 = time.monotonic()
        p.join(5)
        assert p.exitcode == 0 and time.monotonic() - t0 < 2  # not held by its threads or the teardown
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    start = time.monotonic()
    outcomes = list(spread(lingering, [1, 2, 3], (0, 1), start_method=method))
    assert sorted(o.result[:1] for o in outcomes) == [b"\x01", b"\x02", b"\x03"]
    assert time.monotonic() - start < 10  # JOIN_S: a worker that did not end at once would be waited for


@pytest.mark.skipif("fork" not in METHODS, reason="no fork here")
def test_fork_and_spawn_write_the_same_rows(tmp_path, cases, monkeypatch):
    rows, lost = {}, {}
    for method in ("fork", "spawn"):
        monkeypatch.setenv(START_ENV, method)
        run(cases, tmp_path / f"{method}.csv", measure=raise_on_dense, devices=(0, 1))
        rows[method] = rows_of(tmp_path / f"{method}.csv")
        with pytest.raises(WorkersLost) as exc:
            run(cases, tmp_path / f"{method}-lost.csv", measure=always_crash, devices=(0, 1))
        lost[method] = str(exc.value)
    assert len(rows["fork"]) == len(cases) and without_gpu(rows["fork"]) == without_gpu(rows["spawn"])
    assert {r["gpu"] for r in rows["fork"]} == {r["gpu"] for r in rows["spawn"]}
    assert lost["fork"] == lost["spawn"] and "cuda:0 code 4; cuda:1 code 4" in lost["fork"]


def test_cli_counts_devices_without_starting_cuda(tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    from sparsesim.cli.main import main

    sweep = tmp_path / "s.toml"
    sweep.write_text("input_size = [40]\nwindow = [9]\nq_tile = [16]\nheads = 2\nhead_dim = 16\n")
    monkeypatch.delenv("TRITON_INTERPRET")  # as on a GPU machine
    started, runs = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: started.append(1) or True)  # starts the driver
    monkeypatch.setattr(validate, "run", lambda cases, out, **kw: runs.append(kw["devices"]) or [])
    argv = ["validate", "--sweep", str(sweep), "--kernels", "gna", "--out", str(tmp_path / "x.csv"), "--devices"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main([*argv, "2"]) == 0 and main([*argv, "all"]) == 0
    assert runs == [(0, 1), (0, 1)] and not started  # workers on both: nothing started CUDA here
    assert main([*argv, "1"]) == 0 and runs[-1] == () and not started  # measured here: validate.run checks CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*argv, "all"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "needs a CUDA GPU" in err and len(err.strip().splitlines()) == 1
    assert len(runs) == 3


def test_a_run_measured_here_needs_cuda(tmp_path, monkeypatch, cases):
    torch = pytest.importorskip("torch")
    monkeypatch.delenv("TRITON_INTERPRET")  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as exc:
        run(cases, tmp_path / "m.csv")
    assert "\n" not in str(exc.value) and not (tmp_path / "m.csv").exists()
    assert len(run(cases[:2], tmp_path / "f.csv", measure=fake_measure)) == 2  # a given measurement needs none
