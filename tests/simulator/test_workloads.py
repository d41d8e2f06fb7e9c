"""Workloads (data files, one per model), the GEMM roofline and end-to-end speedups."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from sparsesim.hwmodels import load_gpu
from sparsesim.hwmodels.gpus import read_toml
from sparsesim.hwmodels.profiles import load_profile
from sparsesim.simulator import ConfigError, simulate
from sparsesim.simulator.workloads import (
    WORKLOAD_DIR,
    dense_step,
    e2e_speedup,
    gemm_ms,
    list_workloads,
    load_workload,
    parse_workload,
    simulate_e2e,
    sparse_share,
)

GPUS = ["A100", "H100", "H200", "B200"]
PRESETS = ["hunyuan-video", "flux-4k", "cosmos-7b", "wan2.1-14b", "llama-3.1-8b"]


# ---------------------------------------------------------------- the data files


def test_every_builtin_workload_loads():
    names = {w.name for w in list_workloads()}
    assert set(PRESETS) <= names
    for w in list_workloads():
        assert w.layers > 0 and w.steps > 0 and w.tokens == math.prod(w.layout)
        assert w.heads % w.heads_kv == 0
        assert w.patterns, w.name
        assert w.sources, w.name
        assert load_workload(w.name) is w


def test_the_issue_settings():
    h = load_workload("hunyuan-video")
    assert (h.layout, h.heads, h.head_dim, h.steps) == ((30, 48, 80), 24, 128, 50)
    f = load_workload("flux-4k")
    assert (f.layout, f.steps) == ((256, 256), 28)
    c = load_workload("cosmos-7b")
    assert (c.layout, c.steps) == ((16, 44, 80), 35)
    w = load_workload("wan2.1-14b")
    assert w.layout == (21, 45, 80)  # 720p, 81 frames after VAE compression and patchify
    llama = load_workload("llama-3.1-8b")
    assert llama.layout == (131072,) and llama.causal == (True,)
    assert llama.heads_kv < llama.heads  # GQA


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as exc:
        load_workload("nope")
    for name in PRESETS:
        assert name in str(exc.value)


def test_user_workload_file(tmp_path):
    text = (WORKLOAD_DIR / "flux-4k.toml").read_text().replace('name = "flux-4k"', 'name = "my-flux"')
    path = tmp_path / "my-flux.toml"
    path.write_text(text)
    w = load_workload(str(path))
    assert w.name == "my-flux" and w.layout == (256, 256)
    rows = simulate_e2e(preset=str(path), gpu="H100", window=(80, 80), stride=(16, 16))
    assert rows[0].preset == "my-flux"


def test_invalid_workloads():
    good = read_toml(WORKLOAD_DIR / "flux-4k.toml", "workload")
    with pytest.raises(ConfigError, match="layout"):
        parse_workload({**good, "layout": [256, 0]}, "x")
    with pytest.raises(ConfigError, match="blocks"):
        parse_workload({**good, "blocks": []}, "x")
    with pytest.raises(ConfigError, match="heads"):
        parse_workload({**good, "heads": -1}, "x")
    with pytest.raises(ConfigError, match="dtype"):
        parse_workload({**good, "dtype": "fp4"}, "x")
    for bad in (-1, "many", True):
        with pytest.raises(ConfigError, match="elementwise_passes_per_block"):
            parse_workload({**good, "elementwise_passes_per_block": bad}, "x")


# ---------------------------------------------------------------- GEMM roofline


def test_gemm_wave_quantization_one_wave_plus_one():
    g = load_gpu("H100")
    p = load_profile("reference", g)
    tm, tn, sms = p.gemm.tile_m, p.gemm.tile_n, g.sm_count
    assert sms == 132 == 11 * 12 and sms + 1 == 133 == 7 * 19
    k = 4096
    per_tile = 2 * tm * tn * k / (g.tensor_TFLOPs["bf16"] * 1e12 / sms * p.gemm.efficiency)
    # 11 x 12 output tiles: exactly one wave, compute-bound (A and B are reused across the grid).
    m, n = 11 * tm, 12 * tn
    moved = (m * k + k * n + m * n) * 2 / (g.hbm_TBps * 1e12 * p.gemm.hbm_efficiency)
    assert moved < per_tile
    assert gemm_ms(g, p, m, n, k, "bf16") == pytest.approx(per_tile * 1e3, rel=1e-12)
    # 7 x 19 = SMs + 1 output tiles: two waves.
    assert gemm_ms(g, p, 7 * tm, 19 * tn, k, "bf16") == pytest.approx(2 * per_tile * 1e3, rel=1e-12)
    # A ragged edge is a whole tile: one more row of output tiles, one more wave here.
    assert gemm_ms(g, p, 11 * tm + 1, n, k, "bf16") == pytest.approx(2 * per_tile * 1e3, rel=1e-12)


def test_gemm_memory_floor_on_a_skinny_gemm():
    g = load_gpu("H100")
    p = load_profile("reference", g)
    m, n, k = 16, p.gemm.tile_n * g.sm_count, 4096  # one wave of mostly empty tiles, all of B read once
    floor = (m * k + k * n + m * n) * 2 / (g.hbm_TBps * 1e12 * p.gemm.hbm_efficiency)
    per_tile = 2 * p.gemm.tile_m * p.gemm.tile_n * k / (g.tensor_TFLOPs["bf16"] * 1e12 / g.sm_count * p.gemm.efficiency)
    assert floor > per_tile
    assert gemm_ms(g, p, m, n, k, "bf16") == pytest.approx(floor * 1e3, rel=1e-12)


def test_dense_step_parts_by_hand():
    w = load_workload("flux-4k")
    g = load_gpu("B200")
    p = load_profile("reference", g)
    step = dense_step(w, g, p, self_attention_ms=2.0, dense_tflops=1000.0)
    tokens = w.batch * (w.tokens + w.text_tokens)
    gemm = sum(b.count * sum(gemm_ms(g, p, tokens, n, k, "bf16") for n, k in b.gemms) for b in w.blocks)
    assert step.gemm_ms == pytest.approx(gemm, rel=1e-12)
    assert step.self_attention_ms == pytest.approx(57 * 2.0)  # 19 double + 38 single blocks
    n, t = 65536, 512
    other = 57 * 4.0 * 24 * 128 * (t * (n + t) + n * t) / 1000e12 * 1e3  # text rows and text columns
    assert step.other_attention_ms == pytest.approx(other, rel=1e-12)
    assert step.total_ms == pytest.approx(step.gemm_ms + step.elementwise_ms + step.self_attention_ms
                                          + step.other_attention_ms)
    # The workload's own elementwise passes (measured for FLUX), else the profile's: bytes over bandwidth.
    bandwidth = g.hbm_TBps * 1e12 * p.gemm.hbm_efficiency
    per_pass = 57 * tokens * 3072 * 2 / bandwidth * 1e3
    assert w.elementwise_passes_per_block == 291
    assert step.elementwise_ms == pytest.approx(291 * per_pass, rel=1e-12)
    plain = dense_step(dataclasses.replace(w, elementwise_passes_per_block=None), g, p, 2.0, 1000.0)
    assert plain.elementwise_ms == pytest.approx(p.gemm.elementwise_passes_per_block * per_pass, rel=1e-12)


# ---------------------------------------------------------------- end-to-end formulas


def test_e2e_speedup_formula():
    assert e2e_speedup(0.5, 2.0) == pytest.approx(1 / (0.5 + 0.25))
    assert e2e_speedup(0.0, 10.0) == 1.0
    assert e2e_speedup(1.0, 10.0) == pytest.approx(10.0)
    assert e2e_speedup(0.518, 10.24) == pytest.approx(1 / (0.482 + 0.518 / 10.24))


def test_sparse_share():
    assert sparse_share(0.518, 28, 0) == pytest.approx(0.518)
    assert sparse_share(0.5, 28, 7) == pytest.approx(0.5 * 21 / 28)
    assert sparse_share(0.518, 28, 28) == 0.0
    assert e2e_speedup(sparse_share(0.518, 28, 28), 10.0) == 1.0


@pytest.mark.parametrize("kw,key", [
    (dict(attention_share=1.5, steps=28, dense_steps=0), "attention_share"),
    (dict(attention_share=-0.1, steps=28, dense_steps=0), "attention_share"),
    (dict(attention_share=0.5, steps=28, dense_steps=29), "dense_steps"),
    (dict(attention_share=0.5, steps=28, dense_steps=-1), "dense_steps"),
])
def test_sparse_share_rejects_bad_input(kw, key):
    with pytest.raises(ConfigError, match=key):
        sparse_share(**kw)


def test_simulate_e2e_rejects_bad_input():
    with pytest.raises(ConfigError, match="attention_share"):
        simulate_e2e(preset="flux-4k", gpu="H100", window=(80, 80), attention_share=1.2)
    with pytest.raises(ConfigError, match="dense_steps"):
        simulate_e2e(preset="flux-4k", gpu="H100", window=(80, 80), dense_steps=29)


def test_all_steps_dense_gives_speedup_one():
    (row,) = simulate_e2e(preset="flux-4k", gpu="B200", window=(80, 80), stride=(16, 16), dense_steps=28)
    assert row.e2e_flop_speedup == row.e2e_tile_speedup == row.e2e_predicted_speedup == 1.0
    assert row.sparse_run_s == pytest.approx(row.dense_run_s)


def test_e2e_row_uses_the_op_level_speedups():
    kw = dict(window=(80, 80), stride=(16, 1), q_tile=(16, 16), kv_tile=(16, 8))
    (row,) = simulate_e2e(preset="flux-4k", gpu="B200", dense_steps=7, share_from="model", **kw)
    op = simulate(input_size=(256, 256), gpu="B200", heads=24, head_dim=128, **kw)
    f = row.modelled_attention_share * 21 / 28
    assert row.attention_share == row.modelled_attention_share
    assert 0 < f < 1
    assert row.e2e_tile_speedup == pytest.approx(1 / ((1 - f) + f / op.tile_speedup), rel=1e-12)
    assert row.e2e_predicted_speedup == pytest.approx(1 / ((1 - f) + f / op.predicted_speedup), rel=1e-12)
    assert row.self_attention_ms == pytest.approx(57 * op.dense_ms, rel=1e-12)
    assert row.modelled_attention_share == pytest.approx(row.self_attention_ms / row.dense_step_ms)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_workload_on_every_gpu(preset):
    for gpu in GPUS:
        rows = simulate_e2e(preset=preset, gpu=gpu)
        assert len(rows) == len(load_workload(preset).patterns)
        for r in rows:
            assert 0 < r.attention_share < 1
            for kind in ("flop", "tile", "predicted"):
                op, e2e = getattr(r, f"{kind}_speedup"), getattr(r, f"e2e_{kind}_speedup")
                assert op >= 1, (gpu, kind)
                assert 1 <= e2e <= op * (1 + 1e-12), (gpu, kind)


# ---------------------------------------------------------------- the GNA paper's FLUX-4K figures


@pytest.mark.parametrize("stride,expected", [((1, 1), 1.76), ((16, 1), 1.84), ((16, 16), 1.88)])
def test_gna_paper_flux_4k_b200(stride, expected):
    (row,) = simulate_e2e(preset="flux-4k", gpu="B200", window=(80, 80), stride=stride, q_tile=(16, 16),
                          kv_tile=(16, 8), attention_share=0.518)
    assert row.attention_share == 0.518
    assert row.e2e_tile_speedup == pytest.approx(expected, abs=0.01)


FLUX_4K_B200 = dict(preset="flux-4k", gpu="B200", window=(80, 80), q_tile=(16, 16), kv_tile=(16, 8))
#: The GNA paper's FLUX-4K speedups measured on the B200, and the attention share of a step it measured.
FLUX_4K_B200_MEASURED = [((1, 1), 1.65), ((16, 1), 1.72), ((16, 16), 1.82)]
PAPER_ATTENTION_SHARE = 0.518
#: How near the cost model must land. Tight enough that a sparse kernel modelled at 0.30 of the tensor peak
#: instead of 0.88 lands outside it (checked below): predicted within 6.0%, 5.4% and 1.3% at 0.88.
E2E_TOLERANCE = 0.08


def blackwell_with(gpu, **values):
    """reference-blackwell with some forward parameters replaced (a profile file edited, in memory)."""
    p = load_profile("reference", gpu)
    return dataclasses.replace(p, forward=dataclasses.replace(p.forward, **values))


@pytest.mark.parametrize("stride,measured", FLUX_4K_B200_MEASURED)
def test_gna_paper_flux_4k_b200_predicted_near_measured(stride, measured):
    # The paper measured 1.65x / 1.72x / 1.82x on B200 with attention 51.8% of a step; the model lands within 8%.
    (row,) = simulate_e2e(stride=stride, attention_share=PAPER_ATTENTION_SHARE, **FLUX_4K_B200)
    assert row.e2e_predicted_speedup == pytest.approx(measured, rel=E2E_TOLERANCE)
    # The dense attention the speedup is measured against runs at FlashAttention-4's published ~1.6 PFLOP/s
    # bf16 on the B200 (a ratio alone would not see a profile slowing dense and sparse kernels alike).
    w = load_workload("flux-4k")
    blocks = sum(b.count for b in w.blocks)
    flops = 4 * w.batch * w.heads * w.tokens ** 2 * w.head_dim
    assert flops / (row.self_attention_ms / blocks * 1e-3) / 1e12 == pytest.approx(1600, rel=0.12)


@pytest.mark.parametrize("stride,measured", FLUX_4K_B200_MEASURED)
def test_flux_4k_b200_prediction_is_sensitive_to_the_sparse_kernel(stride, measured):
    # The e2e check must see a wrong kernel model: the sparse kernel at 0.30 of the tensor peak instead of
    # 0.88 (the dense baseline unchanged) makes its MMA 2.9x slower. With attention at 51.8% of a step the
    # e2e speedup 1 / (0.482 + 0.518 / s) must then drop by at least 8%, and leave the tolerance above.
    g = load_gpu("B200")
    dense = load_profile("cudnn", g)
    good, cut = (simulate_e2e(stride=stride, attention_share=PAPER_ATTENTION_SHARE, kernel_profile=prof,
                              dense_profile=dense, **FLUX_4K_B200)[0]
                 for prof in (blackwell_with(g), blackwell_with(g, mma_efficiency=0.30)))
    assert good.e2e_predicted_speedup == pytest.approx(measured, rel=E2E_TOLERANCE)
    assert cut.predicted_speedup <= 0.75 * good.predicted_speedup  # attention itself: >= 33% slower
    assert cut.e2e_predicted_speedup <= 0.92 * good.e2e_predicted_speedup
    assert cut.e2e_predicted_speedup != pytest.approx(measured, rel=E2E_TOLERANCE)


def test_gna_paper_flux_4k_b200_modelled_share_near_measured():
    # Without the paper's share, the model's own step (GEMMs, elementwise passes, attention) puts attention at
    # 54.9% of a dense FLUX-4K step on the B200, where the paper measured 51.8%: within 10%. A profile that
    # slows the attention kernels (mma_efficiency 0.30 for dense and sparse alike) puts it at 74.8%.
    (row,) = simulate_e2e(stride=(16, 16), **FLUX_4K_B200)
    assert row.modelled_attention_share == pytest.approx(PAPER_ATTENTION_SHARE, rel=0.10)
    g = load_gpu("B200")
    slow = blackwell_with(g, mma_efficiency=0.30)
    (cut,) = simulate_e2e(stride=(16, 16), kernel_profile=slow, dense_profile=slow, **FLUX_4K_B200)
    assert cut.modelled_attention_share != pytest.approx(PAPER_ATTENTION_SHARE, rel=0.10)


def test_full_workload_on_four_gpus_is_consistent():
    # Each GPU's e2e speedups lie between 1 and the FLOP-wise one, itself under Amdahl's 1 / (1 - share).
    # (The predicted one may pass the tile bound, which is set by the worst Q tile: the schedule
    # spreads many CTAs over the SMs, so the mean load counts.)
    for gpu in GPUS:
        for row in simulate_e2e(preset="hunyuan-video", gpu=gpu):
            f = row.attention_share
            assert 0 < f < 1
            assert 1 < row.e2e_predicted_speedup <= row.e2e_flop_speedup + 1e-9
            assert 1 < row.e2e_tile_speedup <= row.e2e_flop_speedup + 1e-9 < 1 / (1 - f)


# ---------------------------------------------------------------- CLI


def test_cli_e2e_json(cli, capsys):
    code, out, err = cli("e2e", "--preset", "flux-4k", "--gpu", "B200", "--window", "80", "80", "--stride",
                         "16", "16", "--q-tile", "16", "16", "--kv-tile", "16", "8", "--attention-share", "0.518",
                         "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 1
    assert rows[0]["e2e_tile_speedup"] == pytest.approx(1.88, abs=0.01)
    assert rows[0]["attention_share"] == 0.518
    for col in ("e2e_flop_speedup", "e2e_tile_speedup", "e2e_predicted_speedup", "attention_share"):
        assert col in rows[0]


def test_cli_e2e_unknown_preset(cli, capsys):
    code, out, err = cli("e2e", "--preset", "nope")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "nope" in err and "flux-4k" in err


def test_cli_e2e_too_many_dense_steps(cli, capsys):
    code, out, err = cli("e2e", "--preset", "flux-4k", "--dense-steps", "99")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "dense_steps" in err


def test_cli_e2e_bad_attention_share(cli, capsys):
    code, out, err = cli("e2e", "--preset", "flux-4k", "--attention-share", "1.5")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and ("--attention-share" in err or "attention_share" in err)


def test_cli_workloads_lists_the_presets(cli, capsys):
    code, out, err = cli("workloads")
    assert code == 0, err
    for name in PRESETS:
        assert name in out
    code, out, err = cli("workloads", "--format", "json")
    assert code == 0, err
    assert set(PRESETS) <= {r["preset"] for r in json.loads(out)}
