"""Online statistics: one call's sums equal evaluate_all, many calls equal the pooled per-row brute force, the
capture streams into them without keeping K/V, files round-trip and refuse bad input in one line, and the
search from statistics gives the fronts and plan of the search from samples."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sparsesim.search.exact import run_exhaustive  # noqa: E402
from sparsesim.search.quality import evaluate, evaluate_all, head_quality  # noqa: E402
from sparsesim.search.samples import synthetic  # noqa: E402
from sparsesim.search.space import Candidate, Space, build_space  # noqa: E402
from sparsesim.search.stats import (  # noqa: E402
    StatsAccumulator,
    accumulate,
    call_sums,
    collect_statistics,
    fronts_from_stats,
    load_statistics,
    plan_from_stats,
    save_statistics,
)
from sparsesim.simulator.errors import ConfigError  # noqa: E402


def small_space(layout: tuple[int, ...]) -> list[Candidate]:
    """A varied candidate list (windows, strides, dilations on every axis) for a small layout."""
    windows = tuple(tuple(sorted({2, max(2, n // 2), n})) for n in layout)
    space = Space(layout=layout, q_tile=(2,) * len(layout), kv_tile=(2,) * len(layout), windows=windows,
                  dilate=tuple(n >= 4 for n in layout))
    return list(space.all_candidates())


def random_call(rng, layout, heads=4, heads_kv=2, rows=9, d=16, v_shift=0.0):
    n = int(np.prod(layout))
    q = rng.standard_normal((heads, rows, d)).astype(np.float32) * 1.5
    k = rng.standard_normal((heads_kv, n, d)).astype(np.float32)
    v = rng.standard_normal((heads_kv, n, d)).astype(np.float32) + np.float32(v_shift)
    picked = np.sort(rng.choice(n, rows, replace=False))
    return q, k, v, picked


@pytest.mark.parametrize(("layout", "causal", "heads_kv"), [
    ((40,), (True,), 2),
    ((40,), (), 4),
    ((6, 10), (False, True), 1),
    ((4, 6, 8), (), 2),
    ((4, 6, 8), (True, False, False), 4),
])
def test_one_call_equals_evaluate_all(layout, causal, heads_kv):
    rng = np.random.default_rng(len(layout) * 10 + heads_kv)
    cands = small_space(layout)
    assert len(cands) > 8
    q, k, v, rows = random_call(rng, layout, heads_kv=heads_kv, v_shift=2.0)
    err2, kept = call_sums(q, k, v, rows, layout, cands, causal, budget=2**16)  # small chunks: many of them
    group = 4 // heads_kv
    for h in range(4):
        hq = head_quality(q[h], k[h // group], v[h // group], rows, layout, causal)
        error, mass = evaluate_all(hq, cands, causal)
        got_e = np.sqrt(err2[h].numpy() / rows.size)
        got_m = kept[h].numpy() / rows.size
        np.testing.assert_allclose(got_e, error, rtol=1e-5, atol=1e-6)  # atol: float32's floor, as test_exact
        np.testing.assert_allclose(got_m, mass, rtol=1e-5, atol=1e-7)
        assert got_e[[c.window == layout for c in cands]].max() == 0.0


def test_float32_stages_track_float64():
    """The GPU's default working precision (float32 later stages) against float64, on the CPU."""
    rng = np.random.default_rng(11)
    layout = (4, 6, 8)
    cands = small_space(layout)
    q, k, v, rows = random_call(rng, layout, v_shift=3.0)
    e64, k64 = call_sums(q, k, v, rows, layout, cands, precision="float64")
    e32, k32 = call_sums(q, k, v, rows, layout, cands, precision="float32")
    np.testing.assert_allclose(np.sqrt(e32.numpy()), np.sqrt(e64.numpy()), rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(k32.numpy(), k64.numpy(), rtol=1e-5)
    with pytest.raises(ConfigError, match="precision='half'"):
        call_sums(q, k, v, rows, layout, cands, precision="half")


def test_scale_argument_is_the_calls_scale():
    rng = np.random.default_rng(3)
    layout = (6, 8)
    cands = small_space(layout)
    q, k, v, rows = random_call(rng, layout, heads_kv=4)
    a = call_sums(q, k, v, rows, layout, cands, scale=0.4)
    b = call_sums(q * np.float32(0.4 * 4.0), k, v, rows, layout, cands)  # 1/sqrt(16) = 0.25 by default
    np.testing.assert_allclose(a[0].numpy(), b[0].numpy(), rtol=1e-5, atol=1e-9)


def test_online_sums_equal_pooled_rows_brute_force():
    """Several calls (different q, k, v, rows and V spread) streamed, against every row scored on its own with
    ``evaluate`` (one candidate at a time, the core's masks) and pooled: error = RMS of the per-row errors."""
    rng = np.random.default_rng(11)
    layout, causal = (5, 8), (False, True)
    cands = small_space(layout)
    acc = StatsAccumulator(layout, cands, causal)
    per_row_e2: list[np.ndarray] = [[] for _ in range(2)]  # type: ignore[misc]
    per_row_m: list[np.ndarray] = [[] for _ in range(2)]  # type: ignore[misc]
    for call in range(3):
        q, k, v, rows = random_call(rng, layout, heads=2, heads_kv=1, rows=4 + call, v_shift=call)
        v *= np.float32(1 + call)
        accumulate(acc, 0, q, k, v, rows, step=call)
        for h in range(2):
            for i in range(rows.size):
                hq = head_quality(q[h, i:i + 1], k[0], v[0], rows[i:i + 1], layout, causal)
                quals = [evaluate(hq, c.pattern(layout, causal)) for c in cands]
                per_row_e2[h].append([qq.error ** 2 for qq in quals])
                per_row_m[h].append([qq.mass for qq in quals])
    stats = acc.statistics()
    assert stats.calls == 3 and stats.steps == (0, 1, 2) and stats.rows.tolist() == [[15, 15]]
    for h in range(2):
        np.testing.assert_allclose(stats.error()[0, h], np.sqrt(np.mean(per_row_e2[h], axis=0)), rtol=1e-5,
                                   atol=1e-7)
        np.testing.assert_allclose(stats.mass()[0, h], np.mean(per_row_m[h], axis=0), rtol=1e-5, atol=1e-7)
        hs = stats.head(0, h)
        np.testing.assert_allclose(hs.error, stats.error()[0, h])


def test_extra_tokens_equal_evaluate_all():
    """Joint text tokens after the layout and sinks before it: every candidate keeps them."""
    rng = np.random.default_rng(5)
    layout = (4, 6)
    cands = small_space(layout)
    for extra_at, causal in (("end", ()), ("start", (True, False))):
        n, e = 24, 5
        q = rng.standard_normal((2, 6, 16)).astype(np.float32)
        k = rng.standard_normal((2, n + e, 16)).astype(np.float32)
        v = rng.standard_normal((2, n + e, 16)).astype(np.float32)
        start = e if extra_at == "start" else 0
        rows = start + np.sort(rng.choice(n, 6, replace=False))
        err2, kept = call_sums(q, k, v, rows, layout, cands, causal, extra_tokens=e, extra_at=extra_at)
        try:
            hq = head_quality(q[1], k[1], v[1], rows, layout, causal, extra_tokens=e, extra_at=extra_at)
        except TypeError:
            pytest.skip("quality.head_quality without extra tokens")
        error, mass = evaluate_all(hq, cands, causal)
        np.testing.assert_allclose(np.sqrt(err2[1].numpy() / 6), error, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(kept[1].numpy() / 6, mass, rtol=1e-5, atol=1e-7)


def test_bad_calls_are_refused_in_one_line():
    rng = np.random.default_rng(0)
    layout = (4, 6)
    cands = small_space(layout)
    q, k, v, rows = random_call(rng, layout, heads=3, heads_kv=2)
    with pytest.raises(ConfigError, match="q is \\(heads, rows, d\\)"):
        call_sums(q, k, v, rows, layout, cands)
    q, k, v, rows = random_call(rng, layout)
    with pytest.raises(ConfigError, match="causal"):
        call_sums(q, k, v, rows, layout, cands, (True,))
    acc = StatsAccumulator(layout, cands)
    acc.add(0, q, k, v, rows)
    with pytest.raises(ConfigError, match="layer 0: 2 heads; earlier calls had 4"):
        acc.add(0, q[:2], k, v, rows)
    with pytest.raises(ConfigError, match="does not fit layout"):
        StatsAccumulator(layout, [Candidate((8, 2), (1, 1), (1, 1))])


class Block(torch.nn.Module):
    """A DiT-like attention block: QK RMS norm, then SDPA (heads 4, K/V heads 2: GQA)."""

    def __init__(self, dim: int = 32, heads: int = 4, heads_kv: int = 2) -> None:
        super().__init__()
        self.heads, self.heads_kv, self.d = heads, heads_kv, dim // heads
        self.q = torch.nn.Linear(dim, dim)
        self.kv = torch.nn.Linear(dim, 2 * heads_kv * self.d)
        self.seen: list[tuple[torch.Tensor, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.d).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, self.heads_kv, self.d).permute(2, 0, 3, 1, 4)
        q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6)
        k = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + 1e-6)
        self.seen.append((q.detach(), k.detach(), v.detach()))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True)
        return x + out.transpose(1, 2).reshape(b, n, -1)


class Stack(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(), Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


def test_collect_statistics_streams_calls_and_keeps_no_kv():
    torch.manual_seed(0)
    layout = (4, 6)
    cands = small_space(layout)
    model = Stack()
    xs = [torch.randn(2, 24, 32) for _ in range(2)]
    with torch.no_grad(), collect_statistics(model, layout=layout, space=cands, rows=7, seed=1,
                                             source="test") as col:
        for t, x in enumerate(xs):
            col.step = t * 10
            model(x)
    assert col.capture.calls == ()  # nothing stored
    stats = col.statistics()
    assert stats.layer_names == ("blocks.0", "blocks.1") and stats.steps == (0, 10) and stats.calls == 8
    assert stats.rows.tolist() == [[28] * 4] * 2 and stats.head_dim == 8 and stats.source == "test"
    meta = {m.index: m for m in col.capture.layers}
    for li, blk in enumerate(model.blocks):
        acc = StatsAccumulator(layout, cands)
        for q, k, v in blk.seen:
            for i in range(2):
                acc.add(0, q[i][:, meta[li].rows], k[i], v[i], meta[li].rows, scale=0.3)
        want = acc.statistics()
        np.testing.assert_allclose(stats.err2[li], want.err2[0], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(stats.kept[li], want.kept[0], rtol=1e-6)


def test_collect_statistics_refuses_a_causal_call_over_a_grid():
    model = torch.nn.Linear(2, 2)
    cands = small_space((4, 6))
    q = torch.randn(1, 2, 24, 8)
    with pytest.raises(ConfigError, match="flat causal mask is not a per-axis pattern"):
        with collect_statistics(model, layout=(4, 6), space=cands) as col:
            col.begin_pass(0)
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)


def _stats(layout=(6, 8), layers=2, heads=3, calls=2, seed=0):
    rng = np.random.default_rng(seed)
    cands = small_space(layout)
    acc = StatsAccumulator(layout, cands, source="unit")
    for li in range(layers):
        for _ in range(calls):
            q, k, v, rows = random_call(rng, layout, heads=heads, heads_kv=heads)
            acc.add(li, q, k, v, rows, name=f"L{li}")
    return acc.statistics()


def test_save_load_round_trip_and_merge(tmp_path):
    stats = _stats()
    path = save_statistics(stats, tmp_path / "s.npz")
    back = load_statistics(path)
    assert (back.layout, back.causal, back.candidates, back.layer_names, back.layer_heads, back.head_dim) == (
        stats.layout, stats.causal, stats.candidates, stats.layer_names, stats.layer_heads, stats.head_dim)
    assert (back.source, back.calls, back.date) == ("unit", 4, stats.date)
    np.testing.assert_allclose(back.error(), stats.error(), rtol=1e-6)
    np.testing.assert_allclose(back.mass(), stats.mass(), rtol=1e-6, atol=1e-7)
    both = stats.merge(back)
    np.testing.assert_allclose(both.error(), stats.error(), rtol=1e-6)
    assert both.calls == 8 and (both.rows == 2 * stats.rows).all()
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist())[:3] == ["candidates.npy", "error0.npy", "error1.npy"]


def _rewrite(src, dst, **change):
    with np.load(src, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    header = json.loads(str(data["header"]))
    for key, value in change.items():
        if key.startswith("h_"):
            header[key[2:]] = value
        elif value is None:
            del data[key]
        else:
            data[key] = value
    if "header" not in change:
        data["header"] = np.array(json.dumps(header))
    np.savez(dst, **data)
    return dst


@pytest.mark.parametrize(("change", "match"), [
    ({"h_format": "other"}, "format 'other'; expected 'sparsesim-stats'"),
    ({"h_version": 2}, "version 2; this sparsesim reads version 1"),
    ({"h_layout": [6, 0]}, "header field 'layout'"),
    ({"h_causal": [True]}, "header field 'causal'"),
    ({"h_heads": [3]}, "header field 'heads'"),
    ({"error1": None}, "lacks array 'error1'"),
    ({"mass0": np.zeros((3, 2), np.float32)}, "array 'mass0' is float32 with shape \\(3, 2\\)"),
    ({"rows0": np.array([1, -1, 2])}, "negative row count"),
    ({"error0": np.full((3, 30), np.inf, np.float32)}, None),
    ({"candidates": np.zeros((2, 3, 2), np.int64)}, "window, stride or dilation < 1"),
    ({"header": None}, "lacks the text array 'header'"),
])
def test_malformed_files_are_one_line_errors(tmp_path, change, match):
    good = save_statistics(_stats(), tmp_path / "good.npz")
    if "error0" in change:  # the right shape, bad values
        with np.load(good) as z:
            change = {"error0": np.full(z["error0"].shape, np.inf, np.float32)}
        match = "NaN or infinite"
    bad = _rewrite(good, tmp_path / "bad.npz", **change)
    with pytest.raises(ConfigError, match=match) as info:
        load_statistics(bad)
    assert "\n" not in str(info.value) and "bad.npz" in str(info.value)


def test_not_a_stats_file_is_refused(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="is not a readable statistics file"):
        load_statistics(tmp_path / "x.npz")
    np.savez(tmp_path / "obj.npz", header=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConfigError, match="not a readable statistics file"):  # pickle is never loaded
        load_statistics(tmp_path / "obj.npz")
    with pytest.raises(ConfigError, match="missing.npz"):
        load_statistics(tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match="folder"):
        save_statistics(_stats(layers=1, calls=1), tmp_path / "no" / "s.npz")


def _synthetic_stats(src, cands, layout, causal=()):
    acc = StatsAccumulator(layout, cands, causal)
    for li in range(src.num_layers):
        parts = [src.head(li, h) for h in range(src.layer_heads(li))]
        acc.add(li, np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]),
                np.stack([p[2] for p in parts]), src.rows_of(li))
    return acc.statistics()


def test_fronts_from_stats_equal_run_exhaustive():
    from sparsesim.search.latency import LatencyModel, LayerShape

    layout, causal = (8, 16, 16), (False, True, False)
    space = build_space(layout, gpu="H100", head_dim=32, dtype="fp16")
    shape = LayerShape(layout=layout, heads=3, heads_kv=3, head_dim=32, dtype="fp16", causal=causal)
    latency = LatencyModel(shape=shape, gpu="H100", q_tile=space.q_tile, kv_tile=space.kv_tile)
    src = synthetic(layout=layout, layers=2, heads=3, head_dim=32, rows=10, seed=4)
    exact = run_exhaustive(src, [0, 1], space, latency)
    stats = _synthetic_stats(src, list(space.all_candidates()), layout, causal)
    got = fronts_from_stats(stats, latency)
    assert got.candidates == exact.candidates
    np.testing.assert_array_equal(got.ms, exact.ms)
    # atol: errors at float32's floor (~1e-7 of ||O||, near-dense candidates) are rounding noise in both
    np.testing.assert_allclose(got.error, exact.error, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.mass, exact.mass, rtol=1e-5, atol=1e-7)
    for li in range(2):
        for h in range(3):
            a = [p.candidate for p in got.front(li, h) if p.error > 1e-5]
            assert a == [p.candidate for p in exact.front(li, h) if p.error > 1e-5] and len(a) > 2
    with pytest.raises(ConfigError, match="causal axes"):
        fronts_from_stats(_synthetic_stats(src, list(space.all_candidates()), layout), latency)


def test_plan_from_stats_equals_search_plan_and_cli(tiny_workload, tmp_path, cli):
    from sparsesim.search.plan import load_plan
    from sparsesim.search.run import search_plan, uniform_candidates
    from sparsesim.simulator.workloads import load_workload

    w = load_workload(str(tiny_workload))
    space = build_space(w.layout, gpu="H100", head_dim=w.head_dim, dtype=w.dtype)
    src = synthetic(layout=w.layout, layers=2, heads=3, head_dim=32, rows=12, seed=3)
    cands = [*space.all_candidates(), *uniform_candidates(space, w)]
    stats = _synthetic_stats(src, list(dict.fromkeys(cands)), w.layout)
    want = search_plan(src=src, workload=str(tiny_workload), gpu="H100", error_budget=0.1)
    got = plan_from_stats(stats, workload=str(tiny_workload), gpu="H100", error_budget=0.1)
    assert [o.name for o in got.outcomes] == [o.name for o in want.outcomes]
    for a, b in zip(got.outcomes, want.outcomes, strict=True):
        assert a.attention_ms == pytest.approx(b.attention_ms, rel=1e-9)
        assert a.mean_error == pytest.approx(b.mean_error, rel=1e-4, abs=1e-7)
    for la, lb in zip(got.plan.layers, want.plan.layers, strict=True):
        assert [(x.window, x.stride, x.dilation) for x in la.heads] == [(x.window, x.stride, x.dilation)
                                                                          for x in lb.heads]
    path = save_statistics(stats, tmp_path / "tiny.stats.npz")
    code, out, err = cli("search", "--workload", str(tiny_workload), "--stats", str(path), "--out",
                         str(tmp_path / "p.json"), "--error-budget", "0.1", "--format", "csv")
    assert code == 0, err
    assert "from statistics" in err and out.splitlines()[1].startswith("plan,")
    plan = load_plan(tmp_path / "p.json")
    assert plan.search.sampler.startswith("exhaustive from statistics")
    code, _, err = cli("search", "--workload", str(tiny_workload), "--stats", str(path), "--out",
                       str(tmp_path / "q.json"), "--sampler", "tpe")
    assert code == 2 and "drop --sampler tpe" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("search", "--preset", "flux-4k", "--stats", str(path), "--out", str(tmp_path / "q.json"))
    assert code == 2 and "is not the workload's" in err
