"""Optuna studies: resume after an interruption, workers sharing a study through PostgreSQL, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from sparsesim.search import study as study_mod  # noqa: E402
from sparsesim.search.run import search_plan  # noqa: E402
from sparsesim.search.samples import save_samples, synthetic  # noqa: E402
from sparsesim.search.study import SearchSettings, head_study_name, open_storage  # noqa: E402


@pytest.fixture()
def tiny(tiny_workload: Path) -> tuple[str, object]:
    return str(tiny_workload), synthetic(layout=(32, 32), layers=2, heads=3, head_dim=32, rows=16, seed=3)


def _trials(storage: str, study: str, layer: int, head: int) -> list:
    try:
        st = optuna.load_study(study_name=head_study_name(study, layer, head), storage=open_storage(storage))
    except KeyError:  # a head the interrupted run never reached
        return []
    return st.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def test_interrupted_search_resumes_with_every_trial_once(tiny, tmp_path, monkeypatch):
    workload, src = tiny
    url = f"sqlite:///{tmp_path}/s.db"
    settings = SearchSettings(study="t", storage=url, trials=7)
    real = study_mod.evaluate
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12:  # mid-way through the second head
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(study_mod, "evaluate", interrupting)
    with pytest.raises(KeyboardInterrupt):
        search_plan(src=src, workload=workload, gpu="H100", settings=settings, sampler="tpe", error_budget=0.1)
    before = {(li, h): [(t.number, t.params, t.values) for t in _trials(url, "t", li, h)]
              for li in range(2) for h in range(3)}
    assert sum(map(len, before.values())) > 0  # finished trials survived the interruption
    monkeypatch.setattr(study_mod, "evaluate", real)
    result = search_plan(src=src, workload=workload, gpu="H100", settings=settings, sampler="tpe", error_budget=0.1)
    assert result.report.found == sum(map(len, before.values()))
    assert result.report.ran == 2 * 3 * 7 - result.report.found
    for key, old in before.items():
        now = [(t.number, t.params, t.values) for t in _trials(url, "t", *key)]
        assert len(now) == 7  # none lost, none repeated
        assert now[:len(old)] == old  # the finished ones are the same trials
    again = search_plan(src=src, workload=workload, gpu="H100", settings=settings, sampler="tpe", error_budget=0.1)
    assert (again.report.found, again.report.ran) == (42, 0)
    assert again.plan.layers == result.plan.layers


def test_other_settings_on_the_same_study_are_refused(tiny, tmp_path):
    workload, src = tiny
    settings = SearchSettings(study="t", storage=f"sqlite:///{tmp_path}/s.db", trials=2)
    search_plan(src=src, workload=workload, gpu="H100", settings=settings, sampler="tpe", error_budget=0.1)
    with pytest.raises(study_mod.ConfigError, match="pass another --study"):
        search_plan(src=src, workload=workload, gpu="B200", settings=settings, sampler="tpe", error_budget=0.1)


def _cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsesim.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=600)


@pytest.mark.skipif("SPARSESIM_POSTGRES_URL" not in os.environ,
                    reason="needs a PostgreSQL server: .ci/run starts one and sets SPARSESIM_POSTGRES_URL")
def test_two_workers_share_one_study_through_postgresql(tiny, tmp_path):
    workload, src = tiny
    samples = save_samples(src.materialize(), tmp_path / "s.npz")
    url = os.environ["SPARSESIM_POSTGRES_URL"]
    # as the help shows it (postgresql://, no driver named), from the environment rather than the command line
    plain = "postgresql://" + url.split("://", 1)[1]
    study = f"pg-{os.getpid()}-{tmp_path.name}"
    res = _cli("search", "--workload", workload, "--samples", str(samples), "--gpu", "H100", "--sampler", "tpe",
               "--trials", "6",
               "--study", study, "--n-jobs", "2", "--out", str(tmp_path / "plan.json"), "--format", "json",
               env={"SPARSESIM_STORAGE": plain})
    assert res.returncode == 0, res.stderr
    workers = set()
    for li in range(2):
        for h in range(3):
            trials = _trials(url, study, li, h)
            assert 6 <= len(trials) <= 7  # the budget, counted over both workers (a race may add one)
            workers |= {t.user_attrs["point"][4] for t in trials}
    assert len(workers) == 2  # both processes ran trials
    records = json.loads(res.stdout)
    assert records[0]["name"] == "plan" and {"mean_error", "max_error", "e2e_predicted_speedup"} <= set(records[0])


def test_cli_search_resume_message_and_plan_show(tiny, tmp_path):
    workload, src = tiny
    samples = save_samples(src.materialize(), tmp_path / "s.npz")
    args = ["search", "--workload", workload, "--samples", str(samples), "--gpu", "H100", "--sampler", "tpe",
            "--trials", "3",
            "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "plan.json")]
    first = _cli(*args)
    assert first.returncode == 0, first.stderr
    assert "resumed" not in first.stderr
    second = _cli(*args)
    assert second.returncode == 0, second.stderr
    assert "found 18 finished trials, ran 0 more" in second.stderr
    for name in ("plan", "uniform", "sparse-vdit", "sta"):
        assert any(line.split()[0:1] == [name] for line in second.stdout.splitlines())
    shown = _cli("plan", "show", str(tmp_path / "plan.json"))
    assert shown.returncode == 0 and "predicted_ms" in shown.stdout


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "--trials 0"),
    (["--error-budget", "-1"], "--error-budget -1"),
    (["--storage", "nosuchdb://x"], "--storage 'nosuchdb://x'"),
    (["--layers", "5:2"], "--layers '5:2'"),
    (["--gpu", "Z9"], "Z9"),
])
def test_cli_search_bad_input_is_one_line_and_exit_2(tiny, tmp_path, args, message):
    workload, _ = tiny
    res = _cli("search", "--workload", workload, "--synthetic", "--sampler", "tpe", "--trials", "2", "--rows", "8",
               "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "p.json"), *args)
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_cli_plan_show_bad_file(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text('{"format": "sparsesim-plan", "version": 1, "work')
    res = _cli("plan", "show", str(bad))
    assert res.returncode == 2 and "not valid JSON" in res.stderr and len(res.stderr.strip().splitlines()) == 1
