"""GPU data files: validated on load, never repeated in Python."""

from __future__ import annotations

import pytest

from sparsesim.hwmodels import ConfigError, list_gpus, load_gpu
from sparsesim.hwmodels.gpus import GPU_DIR, parse_gpu, read_toml


def test_builtin_gpus_and_their_tiles():
    names = {g.name for g in list_gpus()}
    assert {"A100", "H100", "H200", "B200"} <= names
    assert load_gpu("h100-sxm5-80gb").name == "H100"
    assert load_gpu("A100").tiles_for(3) == ((4, 4, 4), (4, 4, 4))
    assert load_gpu("H200").tiles_for(2) == ((16, 8), (16, 8))
    assert load_gpu("B200").tiles_for(1) == ((256,), (128,))


def test_figures_match_the_datasheets():
    h100 = load_gpu("H100")
    # 132 SMs x 4096 FLOP/clk x 1.83 GHz = 989 TFLOP/s
    assert h100.sm_count * 4096 * h100.clock_GHz * 1e9 == pytest.approx(h100.tensor_flops_per_s("bf16"), rel=1e-3)
    assert h100.exp_per_s == pytest.approx(3.9e12, rel=0.02)  # FlashAttention-3's figure
    assert load_gpu("A100").tensor_flops_per_s("bf16") == 312e12
    with pytest.raises(ConfigError, match="fp8"):
        load_gpu("A100").tensor_flops_per_s("fp8")


def test_every_builtin_names_its_sources():
    for gpu in list_gpus():
        assert {"compute", "memory", "tiles"} <= set(gpu.sources), gpu.name


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda d: d["compute"].pop("sm_count"), "sm_count"),
    (lambda d: d["compute"].update(sm_count=-3), "sm_count=-3"),
    (lambda d: d["compute"].update(tensor_TFLOPs={"fp4x": 1.0}), "fp4x"),
    (lambda d: d["tiles"].update(q_2d=[16]), "q_2d"),
    (lambda d: d.pop("memory"), "[memory]"),
])
def test_invalid_gpu_data_is_refused(edit, needle):
    data = read_toml(GPU_DIR / "H100.toml", "GPU")
    edit(data)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        parse_gpu(data, "test")


def test_unknown_gpu_and_missing_file():
    with pytest.raises(ConfigError, match="unknown GPU 'V100'"):
        load_gpu("V100")
    with pytest.raises(ConfigError, match="does not exist"):
        load_gpu("/nope/gpu.toml")
