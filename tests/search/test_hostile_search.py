"""Hostile input to ``simulate plan show`` and ``simulate search``: each case is one line on stderr naming the
bad value, exit code 2, and nothing written (the --out path absent or unchanged); storage URLs never show a
password."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from sparsesim.search.plan import Plan, load_plan
from sparsesim.search.study import redact_url, storage_url

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plan_flux-4k_h100.json"  # read only: every case writes its copy under tmp_path


def one_line_exit_2(cli, argv, needle: str) -> str:
    code, out, err = cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    return lines[0]


# --------------------------------------------------------------------------------------------
# plan show: malformed plan files
# --------------------------------------------------------------------------------------------

def _data() -> dict:
    return json.loads(EXAMPLE.read_text())


def edit(fn):
    def make():
        data = _data()
        fn(data)
        return json.dumps(data)
    return make


def text(value):
    return lambda: value


def _set(path, value):
    def fn(data):
        obj = data
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return edit(fn)


def _del(*path):
    def fn(data):
        obj = data
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]
    return edit(fn)


def _literal(path, literal):
    """Set a field to a raw JSON token (NaN, Infinity, 1e400, a 5,000-digit integer)."""
    def make():
        data = _data()
        obj = data
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = "@@LITERAL@@"
        return json.dumps(data).replace('"@@LITERAL@@"', literal)
    return make


def _dup_layer(data):
    data["layers"].append(data["layers"][0])


def _head_twice(data):
    la = data["layers"][0]["launches"]
    la.append(dict(la[0], heads=[la[0]["heads"][0]]))  # a second launch of a head already launched


def _head_missing(data):
    data["layers"][0]["launches"][0]["heads"].pop()


def _launch_pattern(data):
    la = data["layers"][0]["launches"][0]
    la["window"] = [16, 16]


def _version(v):
    return _set(("version",), v)


PLAN_CASES = {
    "predicted-missing": (_del("predicted"), "missing field 'predicted'"),
    "predicted-string": (_set(("predicted",), "fast"), "'fast'"),
    "predicted-negative": (_set(("predicted", "A100", "attention_speedup"), -1.5), "-1.5"),
    "predicted-unknown-gpu": (edit(lambda d: d["predicted"].update(Z9=d["predicted"]["A100"])), "Z9"),
    "gpu-unknown": (_set(("gpu",), "Z9"), "'Z9'"),
    "launch-ms-negative": (_set(("layers", 0, "launches", 0, "predicted_ms"), -2.5), "-2.5"),
    "launch-ms-nan": (_literal(("layers", 0, "launches", 0, "predicted_ms"), "NaN"), "predicted_ms' is NaN"),
    "dense-ms-infinite": (_literal(("layers", 0, "dense_ms"), "Infinity"), "'layers[0].dense_ms' is Infinity"),
    "layer-ms-zero": (_set(("layers", 0, "predicted_ms"), 0), "predicted_ms' is 0"),
    "error-negative": (_set(("layers", 0, "heads", 3, "error"), -0.25), "-0.25"),
    "error-overflow": (_literal(("layers", 0, "heads", 0, "error"), "1e400"), "inf"),
    "mean-error-nan": (_literal(("mean_error",), "NaN"), "'mean_error' is NaN"),
    "mass-negative": (_set(("layers", 0, "heads", 0, "mass"), -1), "mass' is -1"),
    "budget-infinite": (_literal(("error_budget", "mean"), "-Infinity"), "'error_budget.mean' is -Infinity"),
    "nan-mass-in-version-2": (_literal(("layers", 0, "heads", 0, "mass"), "NaN"), "heads[0].mass' is NaN"),
    "speedup-string": (_set(("attention_speedup",), "1.4x"), "'1.4x'"),
    "duplicate-layer": (edit(_dup_layer), "layers[1].layer' is 0"),
    "head-out-of-range": (_set(("layers", 0, "launches", 0, "heads", 0), 24), "is 24"),
    "head-in-two-launches": (edit(_head_twice), "launch 0 runs it"),
    "head-not-run": (edit(_head_missing), "is not run"),
    "launch-pattern-differs": (edit(_launch_pattern), "[16, 16]"),
    "window-too-large": (_set(("layers", 0, "heads", 0, "window"), [512, 80]), "512"),
    "stride-over-window": (_set(("layers", 0, "heads", 0, "stride"), [100, 16]), "stride 100"),
    "dilation-zero": (_set(("layers", 0, "heads", 0, "dilation"), [0, 1]), "[0, 1]"),
    "window-float": (_set(("layers", 0, "heads", 0, "window"), [80.5, 80]), "80.5"),
    "dense-flag-wrong": (_set(("layers", 0, "heads", 0, "dense"), True), "heads[0].dense' is True"),
    "causal-wrong-length": (_set(("causal",), [False]), "causal' is [False]"),
    "causal-not-bool": (_set(("causal",), ["yes", False]), "'yes'"),
    "heads-huge": (_set(("heads",), 10**30), str(10**30)),
    "head-dim-huge": (_set(("head_dim",), 10**12), str(10**12)),
    "heads-kv-not-divisor": (_set(("heads_kv",), 5), "heads_kv' is 5"),
    "huge-integer-literal": (_literal(("batch",), "9" * 5000), "not a readable JSON plan"),
    "dtype-unknown": (_set(("dtype",), "fp64"), "'fp64'"),
    "layers-empty": (_set(("layers",), []), "layers' is []"),
    "layers-not-list": (_set(("layers",), {"0": 1}), "an object"),
    "trials-zero": (_set(("search", "trials"), 0), "trials' is 0"),
    "unknown-field": (_set(("colour",), "blue"), "unknown field 'colour'"),
    "duplicate-key": (lambda: EXAMPLE.read_text().replace('"gpu": "H100",', '"gpu": "H100", "gpu": "B200",'),
                      "'gpu' appears twice"),
    "version-future": (_version(99), "version' is 99"),
    "version-string": (_version("2"), "version' is '2'"),
    "format-wrong": (_set(("format",), "natten-plan"), "'natten-plan'"),
    "deeply-nested": (text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
    "not-json": (text("this is not a plan"), "not valid JSON"),
    "empty-file": (text(""), "not valid JSON"),
    "truncated": (lambda: EXAMPLE.read_text()[:500], "not valid JSON"),
    "top-level-list": (text("[1, 2]"), "(top level)' is [1, 2]"),
    "top-level-string": (text('"plan"'), "(top level)' is 'plan'"),
    "top-level-null": (text("null"), "(top level)' is None"),
    "non-utf8": (lambda: b"\xff\xfe{\"format\": 1}", "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(PLAN_CASES))
def test_plan_show_hostile_file(cli, case, tmp_path, capsys):
    make, needle = PLAN_CASES[case]
    content = make()
    path = tmp_path / "plan.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    before = path.read_bytes()
    line = one_line_exit_2(cli, ["plan", "show", str(path)], needle)
    assert str(path) in line or "plan.json" in line
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["plan.json"]


@pytest.mark.parametrize("case", ["directory", "missing", "device", "long-name"])
def test_plan_show_hostile_path(cli, case, tmp_path, capsys):
    path = {"directory": str(tmp_path), "missing": str(tmp_path / "none.json"), "device": "/dev/zero",
            "long-name": str(tmp_path / ("p" * 300))}[case]
    needle = {"directory": "not a regular file", "missing": "No such file", "device": "not a regular file",
              "long-name": "too long"}[case]
    one_line_exit_2(cli, ["plan", "show", path], needle)


def test_plan_show_of_the_example_reads_attributes(cli, capsys):
    code, out, err = cli(*["plan", "show", str(EXAMPLE)])
    assert code == 0 and "predicted_ms" in out and "flux-4k on H100" in err


# --------------------------------------------------------------------------------------------
# search: flags, output paths, storage URLs (all refused before any work)
# --------------------------------------------------------------------------------------------

@pytest.fixture()
def tiny(tiny_workload: Path) -> Path:
    return tiny_workload


def search_argv(tiny: Path, tmp_path: Path, *extra: str, out: str | None = None) -> list[str]:
    return ["search", "--workload", str(tiny), "--sampler", "tpe", "--trials", "2", "--rows", "8",
            "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(tmp_path / "p.json") if out is None else out,
            *extra]


SEARCH_FLAG_CASES = {
    "budget-inf": (["--error-budget", "inf"], "inf"),
    "budget-nan": (["--error-budget", "nan"], "nan"),
    "budget-negative": (["--error-budget", "-1"], "-1"),
    "budget-zero": (["--error-budget", "0"], "--error-budget 0"),
    "max-error-inf": (["--max-error", "inf"], "inf"),
    "max-error-negative": (["--max-error", "-0.5"], "-0.5"),
    "target-nan": (["--target-speedup", "nan"], "nan"),
    "target-zero": (["--target-speedup", "0"], "--target-speedup 0"),
    "budget-and-target": (["--error-budget", "0.1", "--target-speedup", "1.2"], "--target-speedup"),
    "seed-negative": (["--seed", "-1"], "--seed -1"),
    "seed-huge": (["--seed", "99999999999"], "99999999999"),
    "trials-zero": (["--trials", "0"], "--trials 0"),
    "trials-huge": (["--trials", "1000000000"], "1000000000"),
    "n-jobs-zero": (["--n-jobs", "0"], "--n-jobs 0"),
    "n-jobs-huge": (["--n-jobs", "100000"], "100000"),
    "rows-zero": (["--rows", "0"], "--rows 0"),
    "rows-huge": (["--rows", "1000000000"], "1000000000"),
    "synthetic-layers-zero": (["--synthetic-layers", "0"], "--synthetic-layers 0"),
    "columns-unknown": (["--columns", "nope"], "nope"),
    "storage-sqlite-no-file": (["--storage", "sqlite:///"], "'sqlite:///'"),
    "storage-not-url": (["--storage", "just-a-name"], "'just-a-name'"),
    "storage-unknown-scheme": (["--storage", "nosuchdb://x"], "nosuchdb://x"),
    "storage-unreachable-password": (["--storage", "postgresql://u:secret@127.0.0.1:1/db"], "u:***@127.0.0.1:1/db"),
    "layers-backwards": (["--storage", "sqlite:///:memory:", "--layers", "5:2"], "'5:2'"),
    "gpu-unknown": (["--storage", "sqlite:///:memory:", "--gpu", "Z9"], "Z9"),
}


@pytest.mark.parametrize("case", sorted(SEARCH_FLAG_CASES))
@pytest.mark.parametrize("existing", [False, True], ids=["no-plan", "old-plan"])
def test_search_hostile_flag(cli, case, existing, tiny, tmp_path, capsys):
    extra, needle = SEARCH_FLAG_CASES[case]
    out = tmp_path / "p.json"
    if existing:
        out.write_text("an older plan\n")
    line = one_line_exit_2(cli, search_argv(tiny, tmp_path, *extra), needle)
    assert "secret" not in line
    assert (out.read_text() == "an older plan\n") if existing else not out.exists()
    if not case.startswith(("layers", "gpu")):  # refused before the storage is opened: no database file either
        assert not (tmp_path / "s.db").exists()


def test_search_minilm_with_another_workload_is_refused(cli, tmp_path, capsys):
    one_line_exit_2(cli, ["search", "--minilm", "--preset", "flux-4k", "--storage", f"sqlite:///{tmp_path}/s.db",
                     "--out", str(tmp_path / "p.json")], "'flux-4k'")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("source", [["--samples", "s.npz"], ["--minilm"], ["--stats", "s.npz"]])
def test_search_mix_without_synthetic_samples_is_refused(cli, source, tmp_path, capsys):
    preset = [] if source == ["--minilm"] else ["--preset", "flux-4k"]
    one_line_exit_2(cli, ["search", *source, *preset, "--mix", "basic", "--out", str(tmp_path / "p.json")],
                    "--mix basic with")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case", ["directory", "empty", "proc", "too-long", "missing-folder", "device-null",
                                  "device-full", "symlink-to-device"])
def test_search_hostile_out(cli, case, tiny, tmp_path, capsys):
    before = sorted(os.listdir(tmp_path))
    if case == "symlink-to-device":
        (tmp_path / "link.json").symlink_to("/dev/null")
        before = sorted(os.listdir(tmp_path))
    out, needle = {
        "directory": (str(tmp_path), "is a directory"),
        "empty": ("", "--out ''"),
        "proc": ("/proc/sparsesim/plan.json", "/proc/sparsesim/plan.json"),
        "too-long": (str(tmp_path / ("p" * 300)), "too long"),
        "missing-folder": (str(tmp_path / "no" / "p.json"), "does not exist"),
        "device-null": ("/dev/null", "character device"),
        "device-full": ("/dev/full", "character device"),
        "symlink-to-device": (str(tmp_path / "link.json"), "character device"),
    }[case]
    if case == "device-full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    one_line_exit_2(cli, search_argv(tiny, tmp_path, out=out), needle)
    assert sorted(os.listdir(tmp_path)) == before  # no plan, no database, no temporary file
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_search_storage_from_environment_is_checked(cli, tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPARSESIM_STORAGE", "sqlite:///")
    argv = [a for a in search_argv(tiny, tmp_path) if a not in ("--storage", f"sqlite:///{tmp_path}/s.db")]
    one_line_exit_2(cli, argv, "'sqlite:///'")
    assert not (tmp_path / "p.json").exists()


def test_search_out_dash_writes_the_plan_to_stdout(cli, tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*search_argv(tiny, tmp_path, "--storage", "sqlite:///:memory:", out="-"))
    assert code == 0, err
    plan = Plan.from_json(out)  # stdout is the plan alone
    assert plan.workload == "tiny" and "plan at uniform's error" in err
    assert sorted(os.listdir(tmp_path)) == ["s.db", "tiny.toml"] or sorted(os.listdir(tmp_path)) == ["tiny.toml"]
    assert not (tmp_path / "-").exists()


# --------------------------------------------------------------------------------------------
# Storage URLs: redaction, drivers, environment
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://user:secret@db.example:5432/optuna", "postgresql://user:***@db.example:5432/optuna"),
    ("postgresql+psycopg2://u:secret@127.0.0.1:1/db", "postgresql+psycopg2://u:***@127.0.0.1:1/db"),
    ("postgresql://u:se:cr/et@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
    ("postgresql://:secret@host/db", "postgresql://:***@host/db"),
    ("postgresql://host/db?user=u&password=secret&sslmode=require",
     "postgresql://host/db?user=u&password=***&sslmode=require"),
    ("postgresql://u@host/db", "postgresql://u@host/db"),
    ("sqlite:///runs/a@b.db", "sqlite:///runs/a@b.db"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert "secret" not in redact_url(url)
    assert redact_url(redact_url(url)) == redact_url(url)


def test_storage_url_picks_an_installed_driver():
    pytest.importorskip("psycopg2")
    assert storage_url("postgresql://u:pw@h/db") == "postgresql+psycopg2://u:pw@h/db"
    assert storage_url("postgres://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert storage_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert storage_url("sqlite:///a.db") == "sqlite:///a.db"


def test_password_never_reaches_plan_or_messages(cli, tiny, tmp_path, capsys, monkeypatch):
    """A PostgreSQL URL with a password (its connection replaced by an SQLite file): the plan, the resume
    line and the interrupt line show it redacted."""
    from sparsesim.search import run as run_mod
    from sparsesim.search import study as study_mod

    real_open = study_mod.open_storage
    monkeypatch.setattr(study_mod, "open_storage", lambda url: real_open(f"sqlite:///{tmp_path}/s.db"))
    url = "postgresql://u:secret@127.0.0.1:1/db"
    monkeypatch.setenv("SPARSESIM_STORAGE", url)  # from the environment: not in argv
    argv = ["search", "--workload", str(tiny), "--sampler", "tpe", "--trials", "2", "--rows", "8", "--out",
            str(tmp_path / "p.json")]
    outputs = []
    for _ in range(2):  # the second run resumes
        code, out, err = cli(*argv)
        assert code == 0, err
        outputs.append(out + err)
    assert "resumed study" in outputs[1] and "u:***@127.0.0.1:1/db" in outputs[1]
    plan_text = (tmp_path / "p.json").read_text()
    assert load_plan(tmp_path / "p.json").search.storage == "postgresql://u:***@127.0.0.1:1/db"

    def interrupted(**_kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "search_plan", interrupted)
    code, out, err = cli(*argv)
    assert code == 130 and "interrupted" in err and "u:***@" in err
    for text in (*outputs, plan_text, out + err):
        assert "secret" not in text


def test_engine_never_prints_progress_goes_to_the_callback(tiny, tmp_path, capsys):
    from sparsesim.search.run import search_plan
    from sparsesim.search.samples import synthetic
    from sparsesim.search.study import SearchSettings

    src = synthetic(layout=(32, 32), layers=1, heads=3, head_dim=32, rows=8, seed=1)
    calls: list[tuple[int, int]] = []
    search_plan(src=src, workload=str(tiny), gpu="H100", error_budget=0.1, progress=lambda d, t: calls.append((d, t)),
                settings=SearchSettings(study="t", storage="sqlite:///:memory:", trials=2), sampler="tpe")
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert calls[0] == (0, 6) and calls[-1] == (6, 6)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
