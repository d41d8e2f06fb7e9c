"""The search space of one layout on one GPU: per-axis windows, strides and dilations our kernels run.

Windows are multiples of the GPU's KV tile along each axis (1, 2, 4, ... tiles, up to the axis: a 128K
prefill's 16K-64K windows are in its space) plus the whole axis;
strides are 1 (sliding), the Q tile along the axis (tile-aligned: fewer partial tiles) or the window
(blocked); dilation 2 where the window fits twice. The tiles are the GPU's defaults for the rank,
shrunk to short axes (where our kernels cannot run those, the model's best pair), and must pass the
core's feasibility check (:func:`sparsesim.simulator.
feasibility.can_run`): every point of the space is something our kernels run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sparsesim.hwmodels import load_gpu
from sparsesim.simulator.engine import resolve_tiles
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.feasibility import can_run
from sparsesim.simulator.patterns import GNAPattern

STRIDES = ("1", "tile", "block")


@dataclass(frozen=True)
class Candidate:
    """One head's pattern: per-axis window, stride and dilation (all windows = the layout: dense)."""

    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:  # hashed once: candidates key every table of a search
        object.__setattr__(self, "_hash", hash((self.window, self.stride, self.dilation)))

    def __hash__(self) -> int:
        return self._hash

    def pattern(self, layout: tuple[int, ...], causal: tuple[bool, ...] = ()) -> GNAPattern:
        return GNAPattern(input_size=layout, window=self.window, stride=self.stride, dilation=self.dilation,
                          causal=causal)

    def is_dense(self, layout: tuple[int, ...]) -> bool:
        return self.window == layout and all(d == 1 for d in self.dilation)

    def label(self) -> str:
        text = f"w{'x'.join(map(str, self.window))} s{'x'.join(map(str, self.stride))}"
        return text + (f" d{'x'.join(map(str, self.dilation))}" if any(d > 1 for d in self.dilation) else "")


@dataclass(frozen=True)
class Space:
    """Per-axis choices for one layout and GPU, and the tiles every candidate runs with."""

    layout: tuple[int, ...]
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    windows: tuple[tuple[int, ...], ...]  # per axis, ascending, ending with the axis length
    dilate: tuple[bool, ...]  # per axis: dilation 2 offered

    def axis_options(self, a: int) -> list[str]:
        """Axis ``a``'s choices as Optuna categories ``"window/stride/dilation"`` (one parameter per axis:
        fewer storage writes per trial than three)."""
        dilations = (1, 2) if self.dilate[a] else (1,)
        return [f"{w}/{s}/{d}" for w in self.windows[a] for s in STRIDES for d in dilations]

    def candidate(self, params: Mapping[str, Any]) -> Candidate:
        """The candidate of one point (per axis ``a{a}`` = ``"w/s/d"``, or ``w{a}``, ``s{a}``, ``d{a}``);
        invalid mixes are repaired: stride at most the window, dilation only where window x 2 fits."""
        window, stride, dilation = [], [], []
        for a, n in enumerate(self.layout):
            if f"a{a}" in params:
                w_text, s_text, d_text = str(params[f"a{a}"]).split("/")
                params = {**params, f"w{a}": w_text, f"s{a}": s_text, f"d{a}": d_text}
            w = int(params[f"w{a}"])
            s = {"1": 1, "tile": min(self.q_tile[a], w), "block": w}[str(params[f"s{a}"])]
            s = 1 if w == n else s  # a window over the whole axis sees it all whatever the stride
            d = int(params.get(f"d{a}", 1))
            if w * d > n or w == n:
                d = 1
            window.append(w)
            stride.append(s)
            dilation.append(d)
        return Candidate(tuple(window), tuple(stride), tuple(dilation))

    def suggest(self, trial: Any) -> Candidate:
        """Ask an Optuna trial for one point."""
        return self.candidate({f"a{a}": trial.suggest_categorical(f"a{a}", self.axis_options(a))
                               for a in range(len(self.layout))})

    def params_of(self, cand: Candidate) -> dict[str, Any]:
        """An Optuna parameter set that gives ``cand`` (for enqueuing known points)."""
        out: dict[str, Any] = {}
        for a in range(len(self.layout)):
            w, s = cand.window[a], cand.stride[a]
            name = "1" if s == 1 else ("block" if s == w else "tile")
            out[f"a{a}"] = f"{w}/{name}/{cand.dilation[a] if self.dilate[a] else 1}"
        return out

    def dense(self) -> Candidate:
        n = len(self.layout)
        return Candidate(self.layout, (1,) * n, (1,) * n)

    def all_candidates(self) -> Iterator[Candidate]:
        """Every distinct candidate (for exhaustive checks on small spaces)."""
        seen: set[Candidate] = set()
        axes = [list(itertools.product(self.windows[a], STRIDES, (1, 2) if self.dilate[a] else (1,)))
                for a in range(len(self.layout))]
        for combo in itertools.product(*axes):
            params = {}
            for a, (w, s, d) in enumerate(combo):
                params.update({f"w{a}": w, f"s{a}": s, f"d{a}": d})
            cand = self.candidate(params)
            if cand not in seen:
                seen.add(cand)
                yield cand

    def size(self) -> int:
        return sum(1 for _ in self.all_candidates())


def axis_windows(n: int, tile: int, max_tiles: int | None = None) -> tuple[int, ...]:
    """One axis's windows: 1, 2, 4, ... KV tiles below the axis length ``n`` (at most ``max_tiles`` tiles,
    default no limit), and ``n`` itself; ascending."""
    out = {n}
    m = 1
    while tile * m < n and (max_tiles is None or m <= max_tiles):
        out.add(tile * m)
        m *= 2
    return tuple(sorted(out))


def build_space(layout: tuple[int, ...], *, gpu: str, head_dim: int, dtype: str = "bf16",
                max_tiles: int | None = None) -> Space:
    """The space of ``layout`` on ``gpu``: windows of 1, 2, 4, ... KV tiles per axis up to the axis (at most
    ``max_tiles`` tiles where given) and the whole axis; raises a one-line error when the GPU's tiles do not
    run this head dim."""
    spec = load_gpu(gpu)
    q_tile, kv_tile = resolve_tiles(spec, layout, None, None)
    if not can_run(q_tile=q_tile, kv_tile=kv_tile, head_dim=head_dim, dtype=dtype, gpu=spec):
        # e.g. the B200's 256-token tiles: our kernels' best pair for a quarter-axis window instead
        from sparsesim.simulator.tile_choice import choose_tiles

        probe = GNAPattern(input_size=layout, window=tuple(max(1, n // 4) for n in layout))
        picked = choose_tiles(probe, spec.name, 24, 24, head_dim, 1, dtype)
        if picked is None:
            can_run(q_tile=q_tile, kv_tile=kv_tile, head_dim=head_dim, dtype=dtype, gpu=spec, raise_error=True)
        else:
            q_tile, kv_tile = picked
    windows, dilate = [], []
    for n, t in zip(layout, kv_tile, strict=True):
        ws = axis_windows(n, t, max_tiles)
        windows.append(ws)
        dilate.append(any(2 * w <= n for w in ws if w < n))
    if not layout:
        raise ConfigError("empty layout")
    return Space(layout=layout, q_tile=q_tile, kv_tile=kv_tile, windows=tuple(windows), dilate=tuple(dilate))
