"""Kernel profiles: data files per architecture, validated on load, picked by name or path."""

from __future__ import annotations

import copy
import re

import pytest

from sparsesim.hwmodels import ConfigError, list_gpus, load_gpu
from sparsesim.hwmodels.gpus import read_toml
from sparsesim.hwmodels.profiles import PROFILE_DIR, KernelProfile, list_profiles, load_profile, parse_profile
from sparsesim.simulator import simulate
from sparsesim.simulator.workloads import simulate_e2e

HOPPER = PROFILE_DIR / "reference-hopper.toml"


def good() -> dict:
    return read_toml(HOPPER, "kernel profile")


def user_profile(tmp_path, name: str = "my-hopper", mma_efficiency: float | None = None):
    """A copy of reference-hopper under another name, optionally with another forward mma_efficiency."""
    text = HOPPER.read_text().replace('name = "reference-hopper"', f'name = "{name}"')
    if mma_efficiency is not None:  # the first occurrence is the [forward] one
        text = re.sub(r"^mma_efficiency = [0-9.]+", f"mma_efficiency = {mma_efficiency}", text, count=1,
                      flags=re.M)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("gpu,profile", [("A100", "reference-ampere"), ("H100", "reference-hopper"),
                                         ("H200", "reference-hopper"), ("B200", "reference-blackwell")])
def test_reference_resolves_per_architecture(gpu, profile):
    p = load_profile("reference", load_gpu(gpu))
    assert p.name == profile
    assert p.architecture == load_gpu(gpu).architecture
    assert simulate(input_size=4096, window=512, gpu=gpu).kernel_profile == profile


def test_every_builtin_profile_is_valid_and_sourced():
    profiles = list_profiles()
    assert {"reference-ampere", "reference-hopper", "reference-blackwell"} <= {p.name for p in profiles}
    for p in profiles:
        assert isinstance(p, KernelProfile)
        assert p.sources and p.description
        assert 0 < p.forward.mma_efficiency <= 1 and 0 < p.backward.mma_efficiency <= 1
        assert p.forward.ctas_per_SM >= 1
    # Every built-in GPU has a reference profile for its architecture.
    for g in list_gpus():
        assert load_profile("reference", g).architecture == g.architecture


def test_a_named_profile_overrides_the_architecture():
    assert load_profile("reference-ampere", load_gpu("H100")).name == "reference-ampere"


def test_user_profile_file_loads_and_is_used(tmp_path):
    path = user_profile(tmp_path, mma_efficiency=0.41)
    p = load_profile(str(path), load_gpu("H100"))
    assert p.name == "my-hopper" and p.forward.mma_efficiency == 0.41 and p.path == str(path)
    ours = simulate(input_size=4096, window=4096, gpu="H100", kernel_profile=str(path))
    ref = simulate(input_size=4096, window=4096, gpu="H100")
    assert ours.kernel_profile == "my-hopper"
    assert ours.predicted_ms > ref.predicted_ms  # half the matrix efficiency: slower


def test_simulate_e2e_with_a_user_profile_file(tmp_path):
    path = user_profile(tmp_path, mma_efficiency=0.41)
    kw = dict(preset="flux-4k", gpu="H100", window=(80, 80), stride=(16, 16))
    (ours,) = simulate_e2e(kernel_profile=str(path), **kw)
    op = simulate(input_size=(256, 256), window=(80, 80), stride=(16, 16), gpu="H100", heads=24,
                  kernel_profile=str(path))
    assert ours.predicted_speedup == pytest.approx(op.predicted_speedup)


def test_simulate_e2e_user_profile_named_like_a_builtin_is_not_replaced(tmp_path):
    path = user_profile(tmp_path, name="reference-hopper", mma_efficiency=0.41)
    kw = dict(preset="flux-4k", gpu="H100", window=(80, 80), stride=(16, 16))
    (ours,) = simulate_e2e(kernel_profile=str(path), dense_profile=str(path), **kw)
    (ref,) = simulate_e2e(dense_profile="reference", **kw)
    assert ours.self_attention_ms > ref.self_attention_ms


@pytest.mark.parametrize("section,key,value,message", [
    ("forward", "mma_efficiency", None, "mma_efficiency"),  # missing
    ("forward", "softmax_overlap", 1.5, "softmax_overlap"),  # fraction > 1
    ("forward", "hbm_efficiency", 0.0, "hbm_efficiency"),  # fraction must be > 0
    ("forward", "cta_overhead_us", -1.0, "cta_overhead_us"),  # negative
    ("backward", "cta_overhead_us", -0.5, "cta_overhead_us"),
    ("forward", "persistent", 1, "persistent"),  # not a bool
    ("forward", "persistent", "yes", "persistent"),
    ("forward", "ctas_per_SM", 0, "ctas_per_SM"),  # positive integer
    ("forward", "dense_q_tile", 127.5, "dense_q_tile"),
    ("forward", "mask_ops_per_element", True, "mask_ops_per_element"),  # a bool is not a number
    ("gemm", "efficiency", 2, "efficiency"),
    ("gemm", "tile_m", None, "tile_m"),
])
def test_invalid_profile_values_name_the_key(section, key, value, message):
    data = copy.deepcopy(good())
    if value is None:
        del data[section][key]
    else:
        data[section][key] = value
    with pytest.raises(ConfigError, match=message) as exc:
        parse_profile(data, "bad.toml")
    assert "bad.toml" in str(exc.value)


@pytest.mark.parametrize("missing", ["forward", "backward", "gemm", "name", "architecture"])
def test_missing_sections_and_names(missing):
    data = copy.deepcopy(good())
    del data[missing]
    with pytest.raises(ConfigError, match=missing):
        parse_profile(data, "bad.toml")


def test_invalid_profile_file_on_disk(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(HOPPER.read_text().replace("persistent = true", "persistent = 1"))
    with pytest.raises(ConfigError, match="persistent"):
        load_profile(str(path), load_gpu("H100"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile(str(tmp_path / "none.toml"), load_gpu("H100"))
    (tmp_path / "broken.toml").write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profile(str(tmp_path / "broken.toml"), load_gpu("H100"))


def test_unknown_profile_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as exc:
        load_profile("nope", load_gpu("B200"))
    msg = str(exc.value)
    assert "nope" in msg
    for name in ("reference", "reference-ampere", "reference-hopper", "reference-blackwell"):
        assert name in msg
    with pytest.raises(ConfigError, match="nope"):
        simulate(input_size=4096, window=512, kernel_profile="nope")


@pytest.mark.parametrize("argv", [
    ("table", "--input-size", "4096", "--window", "512", "--kernel-profile", "nope"),
    ("e2e", "--preset", "flux-4k", "--kernel-profile", "nope"),
])
def test_cli_unknown_kernel_profile_exits_2(cli, capsys, argv):
    code, out, err = cli(*argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "nope" in err and "reference-hopper" in err


def test_cli_kernel_profile_file(cli, capsys, tmp_path):
    path = user_profile(tmp_path)
    code, out, err = cli("table", "--input-size", "4096", "--window", "512", "--kernel-profile", str(path),
                         "--format", "json")
    assert code == 0, err
    assert '"kernel_profile": "my-hopper"' in out
