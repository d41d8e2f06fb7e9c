"""Attention samples: Q rows, K and V of each attention layer, on disk as plain arrays.

Sources, one format (:class:`Samples`):

- :func:`sparsesim.search.capture.capture_attention`: q, k, v as attention receives them (after QK-norm and
  RoPE, with the call's scale and GQA), at every ``scaled_dot_product_attention`` call, tagged by step;
- :func:`capture`: forward hooks on a user's torch model record the outputs of each attention layer's
  Q, K and V projections (subsampled query rows, fp16): before any QK-norm or RoPE, so only for models
  that apply neither (use :func:`~sparsesim.search.capture.capture_attention` otherwise);
- :func:`synthetic`: demo heads for 1D/2D/3D layouts, so every example runs without a model: ``mix="dit"``
  (the default) draws per layer a mixture of heads that look like video DiTs (``spatial``, ``temporal``,
  ``local``, ``heavy``, ``global``, ``sink``; :mod:`sparsesim.search.synthetic`), ``mix="basic"`` the former
  Gaussian ``local``, ``axis`` and ``global`` heads in turn;
- :func:`sparsesim.search.minilm.minilm_samples`: the MiniLM sentence encoder on real text.

File format (``.npz``, loaded with ``allow_pickle=False``): ``format`` = ``"sparsesim-samples"``,
``version`` = 2, ``layout`` (int64), ``extra_tokens`` (int64 scalar) and ``extra_at`` (str scalar, ``end`` or
``start``): the tokens outside the layout the attention calls carry (docs/DESIGN.md, Extra tokens), ``names``
(str), and per layer ``i``: ``q{i}`` (heads, rows, head_dim) fp16, ``rows{i}`` (rows,) int64 sequence
positions of the sampled queries (layout tokens), ``k{i}``/``v{i}`` (heads_kv, tokens, head_dim) fp16 over the
whole sequence (layout and extra tokens), ``kinds{i}`` (heads,) str, empty where unknown. Version 1 files (no
extra tokens) are read too.
"""

from __future__ import annotations

import math
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsesim.search.synthetic import DIT_KINDS, dit_head, kinds_for, layer_kinds, layer_sinks
from sparsesim.simulator.errors import ConfigError

FORMAT = "sparsesim-samples"
VERSION = 2
#: Versions :func:`load_samples` reads (1: no extra tokens).
READS = (1, 2)
#: Kinds of the ``basic`` synthetic mix; :data:`KINDS`: every kind a samples file may name.
BASIC_KINDS = ("local", "axis", "global")
KINDS = BASIC_KINDS + tuple(k for k in DIT_KINDS if k not in BASIC_KINDS)
#: Synthetic mixes (:func:`synthetic`).
MIXES = ("dit", "basic")
#: Q/K dimensions of the random content term of synthetic heads.
CONTENT_DIMS = 8


@dataclass(frozen=True)
class LayerSamples:
    """One attention layer: sampled query rows of every head, and all keys and values."""

    name: str
    q: np.ndarray  # (heads, rows, head_dim)
    rows: np.ndarray  # (rows,) flat token index of each sampled query
    k: np.ndarray  # (heads_kv, tokens, head_dim)
    v: np.ndarray  # (heads_kv, tokens, head_dim)
    kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        h, r, d = self.q.shape
        hk, n, dk = self.k.shape
        if self.v.shape != self.k.shape or dk != d or self.rows.shape != (r,) or h % hk:
            raise ConfigError(f"layer {self.name!r}: q {self.q.shape}, rows {self.rows.shape}, k {self.k.shape}, "
                              f"v {self.v.shape}: q is (heads, rows, d), k and v (heads_kv, tokens, d), heads a "
                              "multiple of heads_kv")
        if r and (self.rows.min() < 0 or self.rows.max() >= n):
            raise ConfigError(f"layer {self.name!r}: sampled rows outside 0..{n - 1}")

    @property
    def heads(self) -> int:
        return int(self.q.shape[0])

    @property
    def head_dim(self) -> int:
        return int(self.q.shape[2])

    def head(self, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Q rows, K and V of head ``h`` as float32 (GQA: its K/V head)."""
        kv = h // (self.heads // self.k.shape[0])
        return (self.q[h].astype(np.float32), self.k[kv].astype(np.float32), self.v[kv].astype(np.float32))


@dataclass(frozen=True)
class Samples:
    """Samples of every captured layer over one token layout."""

    layout: tuple[int, ...]
    layers: tuple[LayerSamples, ...]
    #: Tokens outside the layout in every call (joint text tokens, sinks), after it (``end``) or before it.
    extra_tokens: int = 0
    extra_at: str = "end"

    def __post_init__(self) -> None:
        ref = extras_pattern(self.layout, self.extra_tokens, self.extra_at)
        n, total = ref.num_tokens, ref.seq_tokens
        shown = "x".join(map(str, self.layout)) + (f" with {self.extra_tokens} extra tokens" if self.extra_tokens
                                                    else "")
        for layer in self.layers:
            if layer.k.shape[1] != total:
                raise ConfigError(f"layer {layer.name!r} has {layer.k.shape[1]} tokens; the layout {shown} has "
                                  f"{total}")
            local = layer.rows - ref.layout_start
            if layer.rows.size and (local.min() < 0 or local.max() >= n):
                raise ConfigError(f"layer {layer.name!r}: sampled rows outside the layout's sequence positions "
                                  f"{ref.layout_start}..{ref.layout_start + n - 1}")
        if not self.layers:
            raise ConfigError("samples hold no layer")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer_name(self, layer: int) -> str:
        return self.layers[layer].name

    def layer_heads(self, layer: int) -> int:
        return self.layers[layer].heads

    def kind(self, layer: int, head: int) -> str:
        kinds = self.layers[layer].kinds
        return kinds[head] if kinds else ""

    def rows_of(self, layer: int) -> np.ndarray:
        return self.layers[layer].rows

    def head(self, layer: int, head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.layers[layer].head(head)


def extras_pattern(layout: Sequence[int], extra_tokens: int, extra_at: str) -> Any:
    """The dense pattern of ``layout`` with these extra tokens (the core checks them: one-line errors)."""
    from sparsesim.simulator.patterns import GNAPattern

    size = tuple(int(x) for x in layout)
    return GNAPattern(input_size=size, window=size, extra_tokens=extra_tokens, extra_at=extra_at)


def extras_of(src: Any) -> tuple[int, str]:
    """``(extra_tokens, extra_at)`` of a sample source (none for sources that carry no extra tokens)."""
    return int(getattr(src, "extra_tokens", 0)), str(getattr(src, "extra_at", "end"))


def save_samples(samples: Samples, path: str | Path) -> Path:
    """Write ``samples`` to ``path`` (``.npz``), atomically: an interrupted write leaves no partial file."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT), "version": np.array(VERSION),
                                     "layout": np.array(samples.layout, dtype=np.int64),
                                     "extra_tokens": np.array(samples.extra_tokens, dtype=np.int64),
                                     "extra_at": np.array(samples.extra_at),
                                     "names": np.array([la.name for la in samples.layers])}
    for i, la in enumerate(samples.layers):
        arrays.update({f"q{i}": la.q.astype(np.float16), f"rows{i}": la.rows.astype(np.int64),
                       f"k{i}": la.k.astype(np.float16), f"v{i}": la.v.astype(np.float16),
                       f"kinds{i}": np.array(la.kinds if la.kinds else [""] * la.heads)})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: Largest samples file read (a HunyuanVideo layer's K and V in fp16 are about 1.3 GB).
MAX_SAMPLES_BYTES = 64 * 2**30


def _array(data: Mapping[str, np.ndarray], key: str, where: str, kinds: str, ndim: int) -> np.ndarray:
    """``data[key]`` checked: present, of a dtype kind in ``kinds`` (``f`` float, ``i``/``u`` integer, ``U`` text)
    and ``ndim`` dimensions; float arrays finite."""
    if key not in data:
        raise ConfigError(f"{where} lacks array {key!r}")
    a = data[key]
    if a.dtype.kind not in kinds or a.ndim != ndim:
        want = {"f": "floats", "i": "integers", "u": "integers", "U": "strings"}[kinds[0]]
        raise ConfigError(f"{where}: array {key!r} is {a.dtype} with shape {a.shape}; allowed: {ndim}-D {want}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ConfigError(f"{where}: array {key!r} holds NaN or infinite values; allowed: finite values")
    return a


def load_samples(path: str | Path) -> Samples:
    """Read a samples file; a file that is not one (or of another version, or whose arrays have the wrong
    dtype, shape or values) gets a one-line error naming the file and the array."""
    from sparsesim.hwmodels.errors import check_input_file

    where = f"--samples {str(path)[:200]!r}"
    try:
        check_input_file(path, where, MAX_SAMPLES_BYTES, "a samples file (.npz)")
        z = np.load(Path(path), allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ConfigError(f"{where} is a single array, not a samples file (.npz)")
        with z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200]
        raise ConfigError(f"{where} is not a readable samples file (.npz): {reason}") from None
    fmt = data.get("format")
    if fmt is None or fmt.dtype.kind != "U" or fmt.ndim != 0 or str(fmt) != FORMAT:
        shown = str(fmt)[:40] if fmt is not None else ""
        raise ConfigError(f"{where}: format {shown!r}; expected {FORMAT!r}")
    version = data.get("version")
    if version is None or version.dtype.kind not in "iu" or version.ndim != 0 or int(version) not in READS:
        shown = str(version)[:40] if version is not None else "none"
        raise ConfigError(f"{where}: version {shown}; this sparsesim reads versions {', '.join(map(str, READS))}")
    extra_tokens, extra_at = 0, "end"
    if int(version) >= 2:
        e, at = data.get("extra_tokens"), data.get("extra_at")
        if e is None or e.dtype.kind not in "iu" or e.ndim != 0 or int(e) < 0:
            raise ConfigError(f"{where}: extra_tokens {str(e)[:40]}; allowed: an integer >= 0")
        if at is None or at.dtype.kind != "U" or at.ndim != 0 or str(at) not in ("end", "start"):
            raise ConfigError(f"{where}: extra_at {str(at)[:40]!r}; allowed: 'end' or 'start'")
        extra_tokens, extra_at = int(e), str(at)
    names = _array(data, "names", where, "U", 1)
    layout = _array(data, "layout", where, "iu", 1)
    if not 1 <= layout.size <= 3 or (layout < 1).any() or float(np.prod(layout.astype(np.float64))) > 2**31 - 1:
        raise ConfigError(f"{where}: layout {layout.tolist()[:4]}; allowed: 1 to 3 positive axis lengths, at most "
                          f"2^31 - 1 tokens")
    layers = []
    for i, n in enumerate(names):
        q = _array(data, f"q{i}", where, "f", 3)
        rows = _array(data, f"rows{i}", where, "iu", 1)
        k = _array(data, f"k{i}", where, "f", 3)
        v = _array(data, f"v{i}", where, "f", 3)
        kinds = _array(data, f"kinds{i}", where, "U", 1)
        if min(q.shape) < 1 or min(k.shape) < 1:
            raise ConfigError(f"{where}: layer {i} has empty arrays q{q.shape}, k{k.shape}; allowed: at least one "
                              f"head, row and token")
        bad = [str(x) for x in kinds if str(x) and str(x) not in KINDS]
        if bad or kinds.size not in (0, q.shape[0]):
            raise ConfigError(f"{where}: kinds{i} {kinds.tolist()[:4]}; allowed: one of {', '.join(KINDS)} or "
                              f"'' per head")
        try:
            layers.append(LayerSamples(name=str(n), q=q, rows=rows, k=k, v=v,
                                       kinds=tuple(str(x) for x in kinds if str(x))))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    try:
        return Samples(layout=tuple(int(x) for x in layout), layers=tuple(layers), extra_tokens=extra_tokens,
                       extra_at=extra_at)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def sample_rows(tokens: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` distinct query positions (all of them when ``rows >= tokens``), sorted."""
    if rows >= tokens:
        return np.arange(tokens, dtype=np.int64)
    return np.sort(rng.choice(tokens, size=rows, replace=False)).astype(np.int64)


def _coords(layout: Sequence[int]) -> np.ndarray:
    """(tokens, rank) coordinates of each token, row-major (outermost axis first), centred on the layout."""
    grids = np.meshgrid(*[np.arange(n) for n in layout], indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1).astype(np.float64) - (np.array(layout) - 1) / 2


@dataclass(frozen=True)
class SyntheticSamples:
    """Synthetic demo heads, generated per head on demand (seeded); never evidence about a real model.

    ``mix="dit"``: per layer a mixture of heads that look like video DiT attention (``spatial``, ``temporal``,
    ``local``, ``heavy``, ``global``, ``sink``; the last four on 1D/2D layouts), drawn from depth-dependent
    weights; see :mod:`sparsesim.search.synthetic`. ``kinds`` fixes the kinds instead (head ``h`` gets
    ``kinds[h % len(kinds)]``).

    ``mix="basic"``, the former generator: scores are ``-sum_a (x_a - y_a)^2 / (2 sigma_a^2)`` plus a small
    random content term: a ``local`` head has a short length scale on every axis (3-15% of the axis), an
    ``axis`` head a short one along one axis and a long one across the others, a ``global`` head long ones
    everywhere (mostly content, in :data:`CONTENT_DIMS` dimensions; the other Q/K dimensions are zero, V is
    uniform noise in all of them). The squared distance is written into Q and K through
    ``-(x - y)^2 = 2xy - x^2 - y^2`` (the ``x^2`` term is the same for every key of a row, so softmax drops
    it). ``kinds`` assigns a kind per head (default: local, axis, global in turn, shifted by one per layer).

    Nothing is held in memory: a HunyuanVideo-size set (60 layers x 24
    heads x 115,200 tokens) would be 85 GB.
    """

    layout: tuple[int, ...]
    layers: int = 2
    heads: int = 8
    head_dim: int = 64
    rows: int = 64
    seed: int = 0
    kinds: tuple[str, ...] = ()
    mix: str = "dit"

    def __post_init__(self) -> None:
        rank = len(self.layout)
        if self.mix not in MIXES:
            raise ConfigError(f"mix {self.mix!r}; allowed: {', '.join(MIXES)}")
        if self.head_dim < rank + 2:
            raise ConfigError(f"head_dim={self.head_dim}; the synthetic generator needs >= {rank + 2} for rank {rank}")
        allowed = BASIC_KINDS if self.mix == "basic" else kinds_for(rank)
        bad = [k for k in self.kinds if k not in allowed]
        if bad:
            raise ConfigError(f"kinds {bad[0]!r} (mix {self.mix!r}, rank {rank}); allowed: {', '.join(allowed)}")
        if min(self.layers, self.heads, self.rows) < 1:
            raise ConfigError("synthetic samples need layers, heads and rows >= 1")

    @property
    def num_layers(self) -> int:
        return self.layers

    @property
    def extra_tokens(self) -> int:
        """Synthetic calls carry no extra tokens."""
        return 0

    @property
    def extra_at(self) -> str:
        return "end"

    def layer_name(self, layer: int) -> str:
        return f"layer{layer}"

    def layer_heads(self, layer: int) -> int:
        return self.heads

    def kind(self, layer: int, head: int) -> str:
        if self.kinds:
            return self.kinds[head % len(self.kinds)]
        if self.mix == "dit":
            return layer_kinds(len(self.layout), self.heads, layer, self.layers, self.seed)[head]
        return BASIC_KINDS[(head + layer) % 3]

    def sinks_of(self, layer: int) -> np.ndarray:
        """The sink keys of ``layer`` (flat token indices) that its ``sink`` heads attend to (``mix="dit"``)."""
        return layer_sinks(math.prod(self.layout), layer, self.seed)

    def rows_of(self, layer: int) -> np.ndarray:
        return sample_rows(math.prod(self.layout), self.rows, np.random.default_rng([self.seed, layer]))

    def head(self, layer: int, head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Q rows (rows, d), K and V (tokens, d) of one head, float32."""
        if self.mix == "dit":
            return dit_head(self.layout, self.kind(layer, head), self.rows_of(layer), self.head_dim,
                            self.sinks_of(layer), np.random.default_rng([self.seed, layer, head, 1]))
        rng = np.random.default_rng([self.seed, layer, head])
        rank, d = len(self.layout), self.head_dim
        xyz = _coords(self.layout).astype(np.float32)
        n = xyz.shape[0]
        kind = self.kind(layer, head)
        frac = rng.uniform(0.03, 0.15, rank)
        if kind == "axis":
            frac = np.full(rank, rng.uniform(1.0, 3.0))
            frac[rng.integers(rank)] = rng.uniform(0.03, 0.1)
        elif kind == "global":
            frac = rng.uniform(1.0, 3.0, rank)
        root = np.float32(math.sqrt(math.sqrt(d)))  # attention divides q.k by sqrt(d)
        scaled = xyz / np.maximum(frac * np.array(self.layout), 0.5).astype(np.float32)
        c = min(d - rank - 1, CONTENT_DIMS)
        k = np.zeros((n, d), np.float32)
        k[:, :rank] = scaled
        k[:, rank] = -0.5 * (scaled * scaled).sum(1)
        k[:, rank + 1:rank + 1 + c] = rng.standard_normal((n, c), dtype=np.float32) * np.float32(0.3)
        picked = self.rows_of(layer)
        q = k[picked].copy()
        q[:, rank] = 1.0
        q[:, rank + 1:rank + 1 + c] += rng.standard_normal((picked.size, c), dtype=np.float32) * np.float32(0.3)
        k *= root
        q *= root
        v = (rng.random((n, d), dtype=np.float32) - np.float32(0.5)) * np.float32(math.sqrt(12.0))  # mean 0, var 1
        return q, k, v

    def materialize(self) -> Samples:
        """Every layer in memory (small layouts only), e.g. to :func:`save_samples`."""
        layers = []
        for li in range(self.layers):
            parts = [self.head(li, h) for h in range(self.heads)]
            layers.append(LayerSamples(
                name=self.layer_name(li), q=np.stack([p[0] for p in parts]).astype(np.float16),
                rows=self.rows_of(li), k=np.stack([p[1] for p in parts]).astype(np.float16),
                v=np.stack([p[2] for p in parts]).astype(np.float16),
                kinds=tuple(self.kind(li, h) for h in range(self.heads))))
        return Samples(layout=self.layout, layers=tuple(layers))


def synthetic(*, layout: Sequence[int], layers: int = 2, heads: int = 8, head_dim: int = 64, rows: int = 64,
              seed: int = 0, kinds: Sequence[str] | None = None, mix: str = "dit") -> SyntheticSamples:
    """Synthetic samples (see :class:`SyntheticSamples`), generated per head when asked: ``mix="dit"`` (the
    default) heads that look like video DiTs, a mixture drawn per layer; ``mix="basic"`` the former
    local/axis/global rotation."""
    return SyntheticSamples(layout=tuple(int(n) for n in layout), layers=layers, heads=heads, head_dim=head_dim,
                            rows=rows, seed=seed, kinds=tuple(kinds or ()), mix=mix)


def capture(model: Any, inputs: Any, *, modules: Mapping[str, tuple[str, str, str]], heads: int,
            heads_kv: int | None = None, layout: Sequence[int] | None = None, rows: int = 64, seed: int = 0,
            run: Callable[[Any, Any], Any] | None = None) -> Samples:
    """Record Q, K and V of chosen attention layers of a torch model with forward hooks.

    ``modules`` maps a layer name to the names (as in ``model.named_modules()``) of the modules whose
    outputs are that layer's Q, K and V, each ``(batch, tokens, heads * head_dim)``, e.g. a BERT layer's
    ``("encoder.layer.0.attention.self.query", ...key, ...value)``. The first batch element is kept;
    ``rows`` query rows are sampled per layer (seeded). ``layout`` defaults to 1D over the tokens.
    ``run(model, inputs)`` runs the forward (default ``model(**inputs)`` for a mapping, else
    ``model(inputs)``).

    Example:
        >>> samples = capture(bert, batch, heads=12, modules={"L0": ("encoder.layer.0.attention.self.query",
        ...     "encoder.layer.0.attention.self.key", "encoder.layer.0.attention.self.value")})
    """
    import torch

    named = dict(model.named_modules())
    missing = [m for names in modules.values() for m in names if m not in named]
    if missing:
        raise ConfigError(f"module {missing[0]!r} is not in the model; see model.named_modules()")
    seen: dict[str, Any] = {}
    handles = []
    for names in modules.values():
        for m in names:
            def hook(_mod: Any, _inp: Any, out: Any, m: str = m) -> None:
                seen[m] = (out[0] if isinstance(out, tuple) else out).detach()[0].float().cpu()
            handles.append(named[m].register_forward_hook(hook))
    try:
        with torch.no_grad():
            if run is not None:
                run(model, inputs)
            elif isinstance(inputs, Mapping):
                model(**inputs)
            else:
                model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    rng = np.random.default_rng(seed)
    hk = heads_kv or heads
    layers = []
    for name, (qn, kn, vn) in modules.items():
        q, k, v = (seen[m].numpy() for m in (qn, kn, vn))
        n = q.shape[0]
        d = q.shape[1] // heads
        if q.shape[1] != heads * d or k.shape[1] != hk * d:
            raise ConfigError(f"layer {name!r}: q width {q.shape[1]}, k width {k.shape[1]} do not split into "
                              f"heads={heads}, heads_kv={hk}")
        picked = sample_rows(n, rows, rng)
        layers.append(LayerSamples(
            name=name, q=q.reshape(n, heads, d).transpose(1, 0, 2)[:, picked].astype(np.float16), rows=picked,
            k=k.reshape(n, hk, d).transpose(1, 0, 2).astype(np.float16),
            v=v.reshape(n, hk, d).transpose(1, 0, 2).astype(np.float16)))
    size = tuple(layout) if layout is not None else (layers[0].k.shape[1],)
    return Samples(layout=size, layers=tuple(layers))
