"""``simulate validate`` end to end under the Triton interpreter: rows, checks, resume, interruption."""

from __future__ import annotations

import csv

import pytest

from sparsesim.cli.main import main
from sparsesim.kernels import validate

CONFIGS = [
    {"input_size": (40,), "window": (9,), "stride": (4,), "causal": (True,), "q_tile": (16,), "kv_tile": (16,),
     "heads": 2, "head_dim": 16},
    {"input_size": (8, 12), "window": (3, 5), "dilation": (2, 1), "q_tile": (4, 4), "kv_tile": (4, 4), "heads": 2,
     "head_dim": 16},
]


def rows_of(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_cases_per_kernel_without_duplicates():
    cases = validate.make_cases(CONFIGS + CONFIGS, ["gna", "block_sparse", "dense"])
    kinds = [c.kernel for c in cases]
    assert kinds.count("gna") == 2 and kinds.count("block_sparse") == 1 and kinds.count("dense") == 2
    assert len({c.case_id for c in cases}) == len(cases)


def test_run_checks_times_predicts_and_resumes(tmp_path):
    out = tmp_path / "m.csv"
    cases = validate.make_cases(CONFIGS, ["gna", "block_sparse", "dense"])

    class Stop(Exception):
        pass

    def stop_after_two(done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        validate.run(cases, out, progress=stop_after_two)
    kept = rows_of(out)
    assert len(kept) == 2  # every finished row survives the interruption
    rows = validate.run(cases, out, resume=True)
    assert len(rows) == len(cases) - 2
    every = rows_of(out)
    assert [r["case_id"] for r in every] == [c.case_id for c in cases]
    for r in every:
        assert r["ok"] == "True", r["note"]
        assert float(r["rel_err"]) < 1e-2 and r["unwritten"] == "0"
        assert float(r["measured_ms"]) > 0 and float(r["predicted_ms"]) > 0
        assert r["predicted_profile"] == "triton"
        assert r["fwd_kernel"] == "triton"  # the interpreter runs the Triton kernels
    assert validate.error_table(every)


def test_rows_record_the_forward_kernel_the_route_rules_pick(monkeypatch):
    """``fwd_kernel`` comes from the kernels' own route rules for the case's tensors (here forced: no Hopper GPU)."""
    from sparsesim.kernels import block_sparse, dense

    cases = validate.make_cases(CONFIGS, ["block_sparse", "dense"])
    before = {c.kernel: validate.build_call(c, 0)[-1] for c in cases}
    assert before == {"block_sparse": "triton", "dense": "triton"}
    monkeypatch.setattr(dense, "takes_ws", lambda *a, **k: True)
    monkeypatch.setattr(block_sparse, "takes_ws", lambda *a, **k: True)
    after = {c.kernel: validate.build_call(c, 0)[-1] for c in cases}
    assert after == {"block_sparse": "ws", "dense": "ws"}


def test_a_failing_case_is_a_row_not_the_end(tmp_path):
    out = tmp_path / "m.csv"
    cases = validate.make_cases(CONFIGS[:1], ["cudnn", "gna"])  # torch SDPA needs CUDA: recorded, not raised
    rows = validate.run(cases, out)
    by = {r["kernel"]: r for r in rows}
    assert by["cudnn"]["ok"] is False and "CUDA" in by["cudnn"]["note"]
    assert by["gna"]["ok"] is True


def test_cli_validate_refuses_an_existing_file_without_resume(capsys, tmp_path):
    sweep = tmp_path / "s.toml"
    sweep.write_text("input_size = [40]\nwindow = [9]\nq_tile = [16]\nheads = 2\nhead_dim = 16\n")
    out = tmp_path / "m.csv"
    assert main(["validate", "--sweep", str(sweep), "--kernels", "gna", "--out", str(out)]) == 0
    assert len(rows_of(out)) == 1
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--sweep", str(sweep), "--kernels", "gna", "--out", str(out)])
    assert exc.value.code == 2 and "--resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["validate", "--sweep", str(sweep), "--kernels", "gna,tpu", "--out", str(tmp_path / "x.csv")])
    assert "tpu" in capsys.readouterr().err


def test_backprop_cases_time_forward_backward_and_check_dq(tmp_path):
    out = tmp_path / "b.csv"
    tiny = [{"input_size": (8, 12), "window": (3, 5), "q_tile": (4, 4), "kv_tile": (4, 4), "heads": 2, "heads_kv": 1,
             "head_dim": 16}]
    cases = validate.make_cases(tiny, ["gna", "dense"], backprop=True)
    fwd = validate.make_cases(tiny, ["gna", "dense"])
    assert [c.config_id for c in cases] == [c.config_id for c in fwd]  # same split in calibrate
    assert {c.case_id for c in cases}.isdisjoint(c.case_id for c in fwd)
    for b, f in zip(cases, fwd, strict=True):  # the prediction beside a row prices its backward too
        assert validate.predict(b)["predicted_ms"] > 2 * validate.predict(f)["predicted_ms"]
    rows = validate.run(cases, out)
    for r in rows_of(out):
        assert r["passes"] == "fwd+bwd" and r["ok"] == "True", r["note"]
        assert float(r["rel_err"]) < 1e-2 and float(r["measured_ms"]) > 0 and float(r["predicted_ms"]) > 0
    assert len(rows) == 2


def test_backprop_check_catches_a_wrong_dq(monkeypatch):
    case = validate.make_cases(CONFIGS[1:], ["gna"], backprop=True)[0]
    good = validate.build_grad_call

    def broken(c, seed):
        step, *rest = good(c, seed)

        def bad():
            out, dq, dk, dv = step()
            return out, dq * 1.1, dk, dv

        return (bad, *rest)

    assert validate.check_case(case, 0)["ok"] is True
    monkeypatch.setattr(validate, "build_grad_call", broken)
    res = validate.check_case(case, 0)
    assert res["ok"] is False and 0.05 < res["rel_err"] < 0.2


def test_cli_validate_backprop_refuses_a_plan(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["validate", "--plan", str(tmp_path / "p.json"), "--backprop", "--out", str(tmp_path / "x.csv")])
    assert exc.value.code == 2 and "--backprop" in capsys.readouterr().err
