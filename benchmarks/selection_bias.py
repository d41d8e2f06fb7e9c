"""The selection bias of the model's tile pick, and its correction, on picked-vs-measured tile pairs (CPU).

    python benchmarks/selection_bias.py            # fit sigma on the training layers, report before/after
    python benchmarks/selection_bias.py --check    # exit 1 if TRITON_SIGMA differs from a fresh fit

Layers measured with many tile pairs (our GNA kernel on the H200) are predicted with the shipped ``triton``
profile; per layer the model picks the fastest-predicted pair. The pick's error (predicted / measured - 1) is
compared with the mean error of every pair of the layer: the difference is the selection bias (negative: the
pick was predicted more optimistically than the average pair). The correction of
:mod:`sparsesim.simulator.selection` is fitted on the training layers (:data:`TRAIN`, the tile sweep the
profile was calibrated on, and seeded subsets of its pairs: more pick events from the same measurements) and
judged on :data:`HELDOUT` (a tile sweep never fitted), before and after. The tile choice is never changed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sparsesim.hwmodels import load_gpu
from sparsesim.hwmodels.profiles import load_profile
from sparsesim.simulator.calibrate import load_rows, predicted_ms
from sparsesim.simulator.selection import (
    TRITON_SIGMA,
    Layer,
    PickSummary,
    fit_sigma,
    log_bias,
    subsets,
    summarize,
)

ROOT = Path(__file__).resolve().parent.parent
TRAIN = "hwmodels/measurements/validate_h200_tiles_train_2026-11-29_ce5d5a5.csv"
HELDOUT = "hwmodels/measurements/validate_h200_tiles_2026-11-29_828261d.csv"
#: A fresh fit within this of TRITON_SIGMA passes --check (the bisection's tolerance is 1e-4).
CHECK_TOL = 5e-4


def layers_of(path: str, profile: str = "triton", gpu: str = "H200") -> list[Layer]:
    """The GNA layers of a measurements CSV, one per pattern and problem, with each tile pair's predicted and
    measured time (layers with fewer than two pairs are left out: nothing was picked)."""
    spec = load_gpu(gpu)
    prof = load_profile(profile, spec)
    groups: dict[object, tuple[str, list[float], list[float]]] = {}
    for r in load_rows([ROOT / path], spec, ["gna"]):
        key = (r.pattern, r.problem, r.backprop)
        name = r.label.split(" q")[0]
        _, pred, meas = groups.setdefault(key, (name, [], []))
        pred.append(predicted_ms(r, spec, prof))
        meas.append(r.measured_ms)
    return [Layer(name, tuple(p), tuple(m)) for name, p, m in groups.values() if len(p) >= 2]


def fitted_sigma(train: Sequence[Layer]) -> float:
    """The sigma fitted on the training layers and their seeded pair subsets."""
    return fit_sigma(subsets(train))


def _table(title: str, summary: PickSummary) -> list[str]:
    lines = [title, f"  {'layer':<44} {'pairs':>5} {'mean':>7} {'pick':>7} {'bias':>7} {'pick*':>7} {'bias*':>7}"]
    for p in summary.picks:
        lines.append(f"  {p.layer:<44} {p.pairs:>5} {p.mean_error:>+7.1%} {p.before:>+7.1%} {p.bias_before:>+7.1%} "
                     f"{p.after:>+7.1%} {p.bias_after:>+7.1%}")
    lines.append(f"  {'mean':<44} {'':>5} {'':>7} {'':>7} {summary.bias_before:>+7.1%} {'':>7} "
                 f"{summary.bias_after:>+7.1%}   |pick error| {summary.mae_before:.1%} -> {summary.mae_after:.1%}")
    return lines


def report(sigma: float, train: Sequence[Layer], held: Sequence[Layer]) -> list[str]:
    """The report lines: per layer and on average, the pick's error and bias before and after (``*``)."""
    out = [f"sigma = {sigma:.4f} (fitted on {len(train)} training layers and their pair subsets; "
           f"shipped TRITON_SIGMA = {TRITON_SIGMA:.4f})",
           "error = predicted / measured - 1 (triton profile); mean: every pair of the layer; pick: the fastest "
           "predicted; bias = pick - mean; * = after the correction", ""]
    out += _table(f"training layers ({TRAIN})", summarize(train, sigma)) + [""]
    out += _table(f"held-out layers ({HELDOUT}, never fitted)", summarize(held, sigma)) + [""]
    for name, layers in (("training", train), ("held-out", held)):
        events = subsets(layers)
        before = sum(log_bias(e) for e in events) / len(events)
        after = summarize(events, sigma).bias_after
        out.append(f"{name} pair subsets (4-16 pairs, {len(events)} picks): mean bias {before:+.2%} -> {after:+.2%}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/selection_bias.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if TRITON_SIGMA differs from a fresh fit")
    args = parser.parse_args(argv)
    train, held = layers_of(TRAIN), layers_of(HELDOUT)
    sigma = fitted_sigma(train)
    if args.check:
        if abs(sigma - TRITON_SIGMA) > CHECK_TOL:
            print(f"selection_bias: fitted sigma {sigma:.4f}, TRITON_SIGMA {TRITON_SIGMA:.4f}: update "
                  f"simulator/selection.py", file=sys.stderr)
            return 1
        return 0
    print("\n".join(report(sigma, train, held)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
