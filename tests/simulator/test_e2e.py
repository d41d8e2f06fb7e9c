"""End to end with its parts explicit: the attention share and the sparse call's memory passes from published
breakdowns (hwmodels/published/breakdowns.csv), what lies outside the transformer steps by difference."""

from __future__ import annotations

import pytest

from sparsesim.hwmodels import load_gpu
from sparsesim.hwmodels.profiles import PROFILE_DIR
from sparsesim.simulator import ConfigError, simulate
from sparsesim.simulator.e2e import read_breakdowns, simulate_e2e
from sparsesim.simulator.workloads import load_workload

FLUX = dict(preset="flux-4k", window=(80, 80), stride=(16, 16), q_tile=(16, 16), kv_tile=(16, 8))
#: The four B200 NATTEN memory-pass figures of breakdowns.csv, written out: 1/2.8-1/3.2, 1/7.4-1/10.7,
#: 1/4.0-1/5.0, 1/6.7-1/10.2 (share of dense attention time).
B200_MEMORY = (0.0446 + 0.0417 + 0.0500 + 0.0512) / 4
HEADER = "id,model,gpu,layout,part,value,unit,kernel,paper,address,figure,note\n"


def test_shipped_breakdowns_have_a_source_per_row():
    rows = read_breakdowns()
    assert {(r.model, r.gpu) for r in rows if r.part == "self_attention"} >= {
        ("cosmos-7b", "B200"), ("hunyuan-video", "B200"), ("flux-4k", "B200")}
    assert all(r.source.strip(", ") for r in rows)


def test_published_share_and_memory_passes_are_used_on_the_b200():
    (r,) = simulate_e2e(gpu="B200", **FLUX)
    op = simulate(input_size=(256, 256), gpu="B200", heads=24, head_dim=128, window=(80, 80), stride=(16, 16),
                  q_tile=(16, 16), kv_tile=(16, 8))
    layers = load_workload("flux-4k").layers
    assert r.attention_share == 0.518
    assert r.share_source.startswith("gna-b200-flux-4k-attention")
    assert r.dense_run_s == pytest.approx(r.attention_s / 0.518)
    assert r.attention_s == pytest.approx(layers * op.dense_ms * 28 / 1e3)
    assert r.outside_s == pytest.approx(r.dense_run_s - r.attention_s - r.other_s)
    # the call: the modelled kernel plus the published memory passes, not the modelled ones
    assert r.predicted_speedup == pytest.approx(op.dense_ms / (op.predicted_ms + B200_MEMORY * op.dense_ms))
    assert r.predicted_speedup < op.predicted_speedup  # NATTEN's passes cost more than the bytes alone
    assert r.memory_ops_s == pytest.approx(layers * B200_MEMORY * op.dense_ms * 28 / 1e3)
    f = 0.518
    assert r.e2e_predicted_speedup == pytest.approx(1 / ((1 - f) + f / r.predicted_speedup))
    assert r.sparse_run_s == pytest.approx(r.dense_run_s - r.attention_s + r.sparse_attention_s)


def test_model_share_keeps_the_modelled_step_and_call():
    (r,) = simulate_e2e(gpu="B200", share_from="model", dense_steps=7, **FLUX)
    op = simulate(input_size=(256, 256), gpu="B200", heads=24, head_dim=128, window=(80, 80), stride=(16, 16),
                  q_tile=(16, 16), kv_tile=(16, 8))
    assert r.attention_share == r.modelled_attention_share
    assert r.share_source.startswith("modelled")
    assert r.outside_s == 0.0
    assert r.dense_run_s == pytest.approx(r.attention_s + r.other_s)
    assert r.predicted_speedup == pytest.approx(op.predicted_speedup)
    f = r.attention_share * 21 / 28
    assert r.e2e_predicted_speedup == pytest.approx(1 / ((1 - f) + f / op.predicted_speedup))
    assert r.sparse_run_s == pytest.approx(r.dense_run_s - r.attention_s * 21 / 28 + r.sparse_attention_s)


def test_no_breakdown_for_the_gpu_falls_back_to_the_model():
    (r,) = simulate_e2e(gpu="A100", **FLUX)
    (m,) = simulate_e2e(gpu="A100", share_from="model", **FLUX)
    assert r.share_source.startswith("modelled") and r.memory_ops_source in ("modelled", "none")
    assert r.e2e_predicted_speedup == m.e2e_predicted_speedup


def test_given_share_wins_and_user_profiles_keep_their_memory_passes():
    path = str(PROFILE_DIR / "reference-blackwell.toml")
    (r,) = simulate_e2e(gpu="B200", attention_share=0.4, kernel_profile=path, **FLUX)
    op = simulate(input_size=(256, 256), gpu="B200", heads=24, head_dim=128, window=(80, 80), stride=(16, 16),
                  q_tile=(16, 16), kv_tile=(16, 8), kernel_profile=path)
    assert r.attention_share == 0.4 and r.share_source == "given"
    assert r.memory_ops_source == "modelled"
    assert r.predicted_speedup == pytest.approx(op.predicted_speedup)


def test_a_breakdowns_file_of_ones_own(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text(HEADER + "mine,flux-4k,H100,256x256,self_attention,0.5,share_of_run,FA3,my profile,,run 1,\n")
    (r,) = simulate_e2e(gpu="H100", breakdowns=p, **FLUX)
    assert r.attention_share == 0.5 and r.share_source.startswith("mine: my profile")
    # a layout other than the workload's is another setting: not taken
    p.write_text(HEADER + "mine,flux-4k,H100,128x128,self_attention,0.5,share_of_run,FA3,my profile,,run 1,\n")
    (r,) = simulate_e2e(gpu="H100", breakdowns=p, **FLUX)
    assert r.share_source.startswith("modelled")


@pytest.mark.parametrize("row,needle", [
    ("x,flux-4k,H100,256x256,self_attention,1.5,share_of_run,k,p,,f,", "value='1.5'"),
    ("x,flux-4k,H100,256x256,attention,0.5,share_of_run,k,p,,f,", "part='attention'"),
    ("x,flux-4k,H100,256x256,self_attention,0.5,share_of_dense_attention,k,p,,f,", "unit='share_of_dense"),
    ("x,flux-4k,H100,256xa,self_attention,0.5,share_of_run,k,p,,f,", "layout='256xa'"),
    ("x,flux-4k,H100,256x256,self_attention,0.5,share_of_run,k,,,f,", "paper (the source)"),
])
def test_bad_breakdown_rows_are_refused_in_one_line(tmp_path, row, needle):
    p = tmp_path / "b.csv"
    p.write_text(HEADER + row + "\n")
    with pytest.raises(ConfigError, match="line 2") as e:
        read_breakdowns(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_share_from_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="share_from='x'"):
        simulate_e2e(gpu="B200", share_from="x", **FLUX)
    with pytest.raises(ConfigError, match="does not exist"):
        simulate_e2e(gpu="B200", breakdowns=tmp_path / "none.csv", **FLUX)
    (tmp_path / "cols.csv").write_text("id,model\n")
    with pytest.raises(ConfigError, match="lacks columns"):
        read_breakdowns(tmp_path / "cols.csv")


def test_cli_e2e_shows_the_parts_and_names_the_sources(cli):
    code, out, err = cli("e2e", "--preset", "hunyuan-video", "--gpu", "B200")
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert {"attention_share", "attention_s", "other_s", "outside_s", "e2e_predicted_speedup"} <= set(header)
    assert "gna-b200-hunyuan-video-attention" in err and "natten-b200" in err
    assert load_gpu("B200").name == "B200"


def test_cli_e2e_bad_breakdowns_file_is_one_line(cli, tmp_path):
    p = tmp_path / "b.csv"
    p.write_text(HEADER + "x,flux-4k,B200,256x256,self_attention,2,share_of_run,k,p,,f,\n")
    code, out, err = cli("e2e", "--preset", "flux-4k", "--gpu", "B200", "--breakdowns", str(p))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "value='2'" in err
