"""Samples: the .npz format and its errors, the synthetic generator, and capture from a torch model."""

from __future__ import annotations

import numpy as np
import pytest

from sparsesim.search.quality import evaluate, head_quality
from sparsesim.search.samples import (
    FORMAT,
    LayerSamples,
    Samples,
    capture,
    load_samples,
    save_samples,
    synthetic,
)
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import GNAPattern


def small_samples(seed: int = 0) -> Samples:
    rng = np.random.default_rng(seed)
    layers = []
    for i, (heads, heads_kv) in enumerate([(4, 2), (4, 4)]):
        rows = np.sort(rng.choice(30, size=7, replace=False)).astype(np.int64)
        layers.append(LayerSamples(
            name=f"blocks.{i}.attn", q=rng.standard_normal((heads, 7, 8)).astype(np.float16), rows=rows,
            k=rng.standard_normal((heads_kv, 30, 8)).astype(np.float16),
            v=rng.standard_normal((heads_kv, 30, 8)).astype(np.float16),
            kinds=("local", "axis", "global", "local") if i == 0 else ()))
    return Samples(layout=(5, 6), layers=tuple(layers))


def assert_same(a: Samples, b: Samples) -> None:
    assert a.layout == b.layout
    assert a.num_layers == b.num_layers
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert la.name == lb.name
        assert la.kinds == lb.kinds
        for name in ("q", "k", "v"):
            x, y = getattr(la, name), getattr(lb, name)
            assert y.dtype == np.float16
            np.testing.assert_array_equal(x.astype(np.float16), y)
        assert lb.rows.dtype == np.int64
        np.testing.assert_array_equal(la.rows, lb.rows)


# --------------------------------------------------------------------------------------------
# File format
# --------------------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    s = small_samples()
    path = save_samples(s, tmp_path / "sub" / "s.npz")
    back = load_samples(path)
    assert_same(s, back)
    assert [back.kind(1, h) for h in range(4)] == [""] * 4
    assert back.kind(0, 2) == "global"
    q, k, v = back.head(0, 3)  # GQA: head 3 reads K/V head 1
    assert q.dtype == k.dtype == np.float32
    np.testing.assert_array_equal(k, s.layers[0].k[1].astype(np.float32))
    assert not [p for p in tmp_path.rglob(".*")], "temporary file left behind"


def rewrite(tmp_path, **changes):
    """A saved file with some arrays changed (None removes one)."""
    src = save_samples(small_samples(), tmp_path / "ok.npz")
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def one_line_error(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_samples(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_wrong_format(tmp_path):
    msg = one_line_error(rewrite(tmp_path, format=np.array("something-else")))
    assert "format" in msg and "something-else" in msg and FORMAT in msg


def test_missing_format(tmp_path):
    assert "format" in one_line_error(rewrite(tmp_path, format=None))


def test_wrong_version(tmp_path):
    msg = one_line_error(rewrite(tmp_path, version=np.array(7)))
    assert "version 7" in msg


@pytest.mark.parametrize("array", ["q1", "k0", "v1", "rows0", "kinds1", "layout", "names"])
def test_missing_array(tmp_path, array):
    msg = one_line_error(rewrite(tmp_path, **{array: None}))
    assert f"lacks array {array!r}" in msg


def test_mismatched_shapes(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_samples(rewrite(tmp_path, k0=np.zeros((2, 29, 8), np.float16), v0=np.zeros((2, 29, 8), np.float16)))
    assert "blocks.0.attn" in str(info.value) and "29" in str(info.value)


def test_not_a_file(tmp_path):
    one_line_error(tmp_path / "missing.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    one_line_error(tmp_path / "empty.npz")
    (tmp_path / "text.npz").write_text("hello\n")
    one_line_error(tmp_path / "text.npz")


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_file(tmp_path, keep):
    data = save_samples(small_samples(), tmp_path / "s.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: int(len(data) * keep)])
    one_line_error(cut)


# --------------------------------------------------------------------------------------------
# Synthetic samples
# --------------------------------------------------------------------------------------------


def test_synthetic_deterministic():
    a = synthetic(layout=(6, 5), layers=2, heads=3, head_dim=16, rows=9, seed=4)
    b = synthetic(layout=(6, 5), layers=2, heads=3, head_dim=16, rows=9, seed=4)
    c = synthetic(layout=(6, 5), layers=2, heads=3, head_dim=16, rows=9, seed=5)
    for li in range(2):
        np.testing.assert_array_equal(a.rows_of(li), b.rows_of(li))
        for h in range(3):
            for x, y, z in zip(a.head(li, h), b.head(li, h), c.head(li, h), strict=True):
                np.testing.assert_array_equal(x, y)
                assert not np.array_equal(x, z)
    assert not np.array_equal(a.head(0, 0)[1], a.head(1, 0)[1])  # layers differ too


@pytest.mark.parametrize("layout", [(40,), (6, 5), (3, 4, 5)])
def test_synthetic_shapes(layout):
    n = int(np.prod(layout))
    s = synthetic(layout=layout, layers=2, heads=3, head_dim=16, rows=9, seed=1)
    assert s.num_layers == 2 and s.layer_heads(1) == 3
    rows = s.rows_of(1)
    assert rows.shape == (9,) and rows.dtype == np.int64 and len(set(rows.tolist())) == 9
    assert np.all(np.diff(rows) > 0) and rows.min() >= 0 and rows.max() < n
    q, k, v = s.head(1, 2)
    assert q.shape == (9, 16) and k.shape == (n, 16) and v.shape == (n, 16)
    assert q.dtype == k.dtype == v.dtype == np.float32
    assert np.isfinite(q).all() and np.isfinite(k).all() and np.isfinite(v).all()
    assert synthetic(layout=layout, rows=10 * n, heads=1, head_dim=16).rows_of(0).size == n


def test_synthetic_bad_arguments():
    with pytest.raises(ConfigError, match="head_dim"):
        synthetic(layout=(4, 4, 4), head_dim=4)
    with pytest.raises(ConfigError, match="kinds"):
        synthetic(layout=(8,), head_dim=8, kinds=["nearby"])
    with pytest.raises(ConfigError):
        synthetic(layout=(8,), head_dim=8, rows=0)


def test_synthetic_materialize_round_trip(tmp_path):
    s = synthetic(layout=(6, 5), layers=2, heads=3, head_dim=16, rows=9, seed=2)
    m = s.materialize()
    back = load_samples(save_samples(m, tmp_path / "syn.npz"))
    assert_same(m, back)
    for li in range(2):
        np.testing.assert_array_equal(back.rows_of(li), s.rows_of(li))
        for h in range(3):
            assert back.kind(li, h) == s.kind(li, h)
            for x, y in zip(back.head(li, h), s.head(li, h), strict=True):
                np.testing.assert_array_equal(x, y.astype(np.float16).astype(np.float32))  # stored as fp16


def test_local_heads_keep_more_mass_than_global():
    layout = (16, 16)
    s = synthetic(layout=layout, layers=1, heads=6, head_dim=32, rows=64, seed=11,
                  kinds=["local", "global", "local", "global", "local", "global"])
    window = GNAPattern(input_size=layout, window=(5, 5))
    mass = {"local": [], "global": []}
    for h in range(6):
        q, k, v = s.head(0, h)
        mass[s.kind(0, h)].append(evaluate(head_quality(q, k, v, s.rows_of(0), layout), window).mass)
    assert min(mass["local"]) > max(mass["global"])
    assert min(mass["local"]) > 0.5
    assert max(mass["global"]) < 0.5  # a 5x5 window holds 25 / 256 of the keys


# --------------------------------------------------------------------------------------------
# Capture from a torch model
# --------------------------------------------------------------------------------------------


def test_capture_matches_projections():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Attn(nn.Module):
        def __init__(self, dim: int, heads: int, heads_kv: int) -> None:
            super().__init__()
            self.heads, self.heads_kv, self.d = heads, heads_kv, dim // heads
            self.q = nn.Linear(dim, dim)
            self.k = nn.Linear(dim, heads_kv * self.d)
            self.v = nn.Linear(dim, heads_kv * self.d)

        def forward(self, x):
            b, n, _ = x.shape
            q = self.q(x).view(b, n, self.heads, self.d).transpose(1, 2)
            k = self.k(x).view(b, n, self.heads_kv, self.d).transpose(1, 2)
            v = self.v(x).view(b, n, self.heads_kv, self.d).transpose(1, 2)
            rep = self.heads // self.heads_kv
            o = torch.softmax(q @ k.repeat_interleave(rep, 1).transpose(-1, -2) / self.d ** 0.5, -1)
            return x + (o @ v.repeat_interleave(rep, 1)).transpose(1, 2).reshape(b, n, -1)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([Attn(32, 4, 2), Attn(32, 4, 2)])

        def forward(self, x):
            for blk in self.blocks:
                x = blk(x)
            return x

    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(2, 24, 32)  # batch 2: the first element is kept
    modules = {f"L{i}": (f"blocks.{i}.q", f"blocks.{i}.k", f"blocks.{i}.v") for i in range(2)}
    s = capture(model, x, modules=modules, heads=4, heads_kv=2, layout=(4, 6), rows=10, seed=3)
    assert s.layout == (4, 6) and [la.name for la in s.layers] == ["L0", "L1"]

    with torch.no_grad():  # the linear outputs, recomputed by hand
        h = x
        want = []
        for blk in model.blocks:
            want.append((blk.q(h)[0], blk.k(h)[0], blk.v(h)[0]))
            h = blk(h)
    for la, (q, k, v) in zip(s.layers, want, strict=True):
        rows = la.rows
        assert rows.shape == (10,) and np.all(np.diff(rows) > 0)
        q_heads = q.numpy().reshape(24, 4, 8).transpose(1, 0, 2)[:, rows]
        np.testing.assert_array_equal(la.q, q_heads.astype(np.float16))
        np.testing.assert_array_equal(la.k, k.numpy().reshape(24, 2, 8).transpose(1, 0, 2).astype(np.float16))
        np.testing.assert_array_equal(la.v, v.numpy().reshape(24, 2, 8).transpose(1, 0, 2).astype(np.float16))
        assert la.q.dtype == la.k.dtype == np.float16
    # default layout: 1D over the tokens; hooks are removed afterwards
    s1 = capture(model, x, modules={"L0": modules["L0"]}, heads=4, heads_kv=2, rows=5)
    assert s1.layout == (24,)
    assert all(not m._forward_hooks for m in model.modules())


def test_capture_errors():
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(8, 8)
    model = torch.nn.Sequential(lin)
    with pytest.raises(ConfigError, match="'0.query' is not in the model"):
        capture(model, torch.randn(1, 4, 8), modules={"L": ("0.query", "0", "0")}, heads=2)
    with pytest.raises(ConfigError, match="do not split"):
        capture(model, torch.randn(1, 4, 8), modules={"L": ("0", "0", "0")}, heads=3)


# --------------------------------------------------------------------------------------------
# Extra tokens (version 2) and version 1 files
# --------------------------------------------------------------------------------------------


def samples_with_extras(extra: int = 3, at: str = "start") -> Samples:
    rng = np.random.default_rng(5)
    first = extra if at == "start" else 0
    rows = first + np.sort(rng.choice(30, size=6, replace=False)).astype(np.int64)
    layer = LayerSamples(name="joint", q=rng.standard_normal((2, 6, 8)).astype(np.float16), rows=rows,
                         k=rng.standard_normal((2, 30 + extra, 8)).astype(np.float16),
                         v=rng.standard_normal((2, 30 + extra, 8)).astype(np.float16))
    return Samples(layout=(5, 6), layers=(layer,), extra_tokens=extra, extra_at=at)


@pytest.mark.parametrize("at", ["start", "end"])
def test_extra_tokens_round_trip(tmp_path, at):
    s = samples_with_extras(at=at)
    back = load_samples(save_samples(s, tmp_path / "x.npz"))
    assert_same(s, back)
    assert (back.extra_tokens, back.extra_at) == (3, at)
    with np.load(tmp_path / "x.npz") as z:
        assert int(z["version"]) == 2


def test_version_1_files_are_read_without_extra_tokens(tmp_path):
    path = rewrite(tmp_path, version=np.array(1), extra_tokens=None, extra_at=None)
    back = load_samples(path)
    assert (back.extra_tokens, back.extra_at) == (0, "end")
    assert_same(small_samples(), back)


@pytest.mark.parametrize(("changes", "needle"), [
    ({"extra_tokens": np.array(-2)}, "extra_tokens -2"),
    ({"extra_tokens": None}, "extra_tokens None"),
    ({"extra_at": np.array("middle")}, "extra_at 'middle'"),
    ({"extra_tokens": np.array(4)}, "has 30 tokens; the layout 5x6 with 4 extra tokens has 34"),
])
def test_bad_extra_tokens_in_a_file(tmp_path, changes, needle):
    assert needle in one_line_error(rewrite(tmp_path, **changes))


def test_samples_refuse_rows_outside_the_layout():
    s = samples_with_extras(at="start")
    layer = s.layers[0]
    bad = LayerSamples(name="joint", q=layer.q, rows=np.arange(6, dtype=np.int64), k=layer.k, v=layer.v)
    with pytest.raises(ConfigError, match="sampled rows outside the layout's sequence positions 3..32"):
        Samples(layout=(5, 6), layers=(bad,), extra_tokens=3, extra_at="start")
