"""Published end-to-end speedups on the B200 against `simulate e2e`, before and after the sourced breakdown.

    python benchmarks/e2e_judge.py [--figures FILE.csv] [--out FILE.csv]

The figures are judged, never fitted: nothing in the e2e model is set from them. "before" is the model as it
was (attention share of the modelled transformer step, memory passes of the sparse call modelled from bytes:
``share_from="model"``); "after" takes attention's share of the whole run and the sparse call's memory passes
from ``hwmodels/published/breakdowns.csv`` (``share_from="breakdown"``, the default). Parameters and their
sources: attention share per workload on B200 from the GNA paper's measured dense profile (Cosmos-7B 58.7%,
HunyuanVideo 60.7%, FLUX-4K 51.8%); memory passes (token permutation) of a NATTEN call at 0.047 of dense
attention time, the mean of NATTEN's published Blackwell FNA bars with and without memory ops (four rows of
published.csv, ``use = fit``); everything else is the kernel model as shipped (``reference`` on the B200,
cuDNN dense).

Figures: ``--figures`` names a CSV with columns ``id, model, gpu, window, stride, value, source`` and optional
``dense_steps, q_tile, kv_tile`` (``x``-joined shapes, e.g. ``16x32x48``); without it, the rows of
``hwmodels/published/published.csv`` with ``timed = e2e`` and ``use = judge`` (workload by ``input_size``), and
when there are none, the three FLUX-4K figures the repository already quotes (GNA paper, B200).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
from dataclasses import dataclass
from pathlib import Path

from sparsesim.simulator.e2e import simulate_e2e
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.files import check_output, write_text
from sparsesim.simulator.workloads import list_workloads

PUBLISHED = Path(__file__).resolve().parent.parent / "hwmodels" / "published" / "published.csv"
TOLERANCE = 0.05
#: The GNA paper's FLUX-4K end-to-end speedups measured on the B200 (window 80x80, tiles (16,16)/(16,8)), as
#: the repository already quotes them (benchmarks/published.py, tests/simulator/test_workloads.py).
KNOWN = [
    ("gna-b200-flux-4k-w80x80-s1x1", "flux-4k", "B200", "80x80", "1x1", 1.65),
    ("gna-b200-flux-4k-w80x80-s16x1", "flux-4k", "B200", "80x80", "16x1", 1.72),
    ("gna-b200-flux-4k-w80x80-s16x16", "flux-4k", "B200", "80x80", "16x16", 1.82),
]
KNOWN_SOURCE = "Generalized Neighborhood Attention (arXiv 2504.16922), end-to-end table, FLUX-4K on B200"


@dataclass(frozen=True)
class Figure:
    """One published end-to-end speedup and the configuration it was measured at."""

    id: str
    model: str
    gpu: str
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dense_steps: int
    q_tile: tuple[int, ...] | None
    kv_tile: tuple[int, ...] | None
    value: float
    source: str


def _shape(text: str) -> tuple[int, ...] | None:
    return tuple(int(x) for x in text.lower().split("x")) if text else None


def read_figures(path: str | None) -> tuple[list[Figure], str]:
    """The judged figures and where they came from."""
    if path is not None:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        figs = []
        for r in rows:
            window, stride = _shape(r["window"]), _shape(r["stride"])
            if window is None or stride is None:
                raise ConfigError(f"{path}: figure {r.get('id')!r} needs window and stride")
            figs.append(Figure(id=r["id"], model=r["model"], gpu=r["gpu"], window=window, stride=stride,
                               dense_steps=int(r.get("dense_steps") or 0), q_tile=_shape(r.get("q_tile") or ""),
                               kv_tile=_shape(r.get("kv_tile") or ""), value=float(r["value"]),
                               source=r.get("source", "")))
        return figs, path
    by_layout = {"x".join(map(str, w.layout)): w.name for w in list_workloads()}
    with PUBLISHED.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["timed"] == "e2e" and r["use"] == "judge"]
    figs = []
    for r in rows:
        window, stride = _shape(r["window"]), _shape(r["stride"])
        if r["input_size"] not in by_layout or window is None or stride is None:
            raise ConfigError(f"{PUBLISHED}: e2e figure {r['id']!r}: no workload with layout {r['input_size']!r}")
        steps = next((int(t.split("=")[1]) for t in r["note"].replace(";", " ").split()
                      if t.startswith("dense_steps=")), 0)
        figs.append(Figure(id=r["id"], model=by_layout[r["input_size"]], gpu=r["gpu"], window=window,
                           stride=stride, dense_steps=steps, q_tile=_shape(r["q_tile"]),
                           kv_tile=_shape(r["kv_tile"]), value=float(r["value"]),
                           source=f"{r['paper']}, {r['figure']}"))
    if figs:
        return figs, str(PUBLISHED)
    known = [Figure(id=i, model=m, gpu=g, window=_shape(w) or (), stride=_shape(s) or (), dense_steps=0,
                    q_tile=(16, 16), kv_tile=(16, 8), value=v, source=KNOWN_SOURCE) for i, m, g, w, s, v in KNOWN]
    return known, "the three FLUX-4K figures quoted in the repository (no e2e judge rows in published.csv)"


def predict(f: Figure, share_from: str) -> tuple[float, float, str]:
    """Predicted end-to-end speedup, the attention share used and its source."""
    (r,) = simulate_e2e(preset=f.model, gpu=f.gpu, window=f.window, stride=f.stride, q_tile=f.q_tile,
                        kv_tile=f.kv_tile, dense_steps=f.dense_steps, share_from=share_from)
    return r.e2e_predicted_speedup, r.attention_share, r.share_source.split(":")[0]


def _summary(name: str, errors: list[float]) -> str:
    a = [abs(e) for e in errors]
    within = sum(x <= TOLERANCE for x in a)
    return (f"{name}: {within} of {len(a)} within {TOLERANCE} ({within / len(a):.0%}), mean absolute error "
            f"{sum(a) / len(a):.3f}, worst {max(a):.3f}")


def main(argv: list[str] | None = None) -> int:
    """Judge every figure before and after, print the summary and the worst rows, save the rows as CSV."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figures", default=None, help="judged figures (see the module docstring)")
    ap.add_argument("--out", default=f"benchmarks/results/e2e_judge_{datetime.date.today().isoformat()}.csv")
    ap.add_argument("--worst", type=int, default=5)
    args = ap.parse_args(argv)
    check_output(args.out, "--out")
    figs, origin = read_figures(args.figures)
    lines = ["id,model,gpu,window,stride,dense_steps,published,before,before_share,after,after_share,"
             "after_share_source,error_before,error_after"]
    rows = []
    for f in figs:
        b, b_share, _ = predict(f, "model")
        a, a_share, a_src = predict(f, "breakdown")
        rows.append((f, b, a))
        dims = ("x".join(map(str, f.window)), "x".join(map(str, f.stride)))
        lines.append(f"{f.id},{f.model},{f.gpu},{dims[0]},{dims[1]},{f.dense_steps},{f.value:.3f},{b:.4f},"
                     f"{b_share:.4f},{a:.4f},{a_share:.4f},{a_src},{b - f.value:+.4f},{a - f.value:+.4f}")
    print(f"{len(figs)} published end-to-end figures from {origin}; judged, never fitted")
    print(_summary("before (modelled share, modelled memory passes)", [b - f.value for f, b, _ in rows]))
    print(_summary("after  (published breakdown)                   ", [a - f.value for f, _, a in rows]))
    print(f"\nworst after (of {len(rows)}):")
    print(f"{'id':34} {'published':>9} {'before':>7} {'after':>7} {'error':>7}")
    for f, b, a in sorted(rows, key=lambda t: -abs(t[2] - t[0].value))[:args.worst]:
        print(f"{f.id:34} {f.value:>9.2f} {b:>7.2f} {a:>7.2f} {a - f.value:>+7.2f}")
    write_text("\n".join(lines) + "\n", args.out, "--out")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
