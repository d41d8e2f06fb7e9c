"""The fitted kernel profiles and how well they predict (printed as the README's Markdown table).

    python benchmarks/calibration_summary.py

Reads the ``[fit]`` table that ``simulate calibrate`` writes into each profile under
``hwmodels/calibration/``: what it was fitted to, the split (by configuration, seeded) and the mean
absolute percentage error of the fitted and of the hand-set prior profile on the held-out rows.
The ``reference-<arch>`` profiles fitted to published figures (``simulate calibrate --published``) get a table of
their own: rows (not configurations) train / held out, and the error on the judge rows, never fitted.
Then, from the same measurements: does the model say which is faster, our GNA kernel or dense cuDNN
on the same tokens, heads and head dim, as measured (fitted `triton` against fitted `cudnn`)?
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sparsesim.hwmodels import load_gpu
from sparsesim.hwmodels.gpus import read_toml
from sparsesim.hwmodels.profiles import CALIBRATION_DIR, load_profile
from sparsesim.simulator.calibrate import Row, load_rows, predicted_ms, split

ROOT = Path(__file__).resolve().parent.parent


def _key(row: Row) -> tuple[int, int, int, int, int]:
    p = row.problem
    return row.tokens, p.heads, p.heads_kv, p.head_dim, p.batch


def _published(fit: dict[str, Any]) -> bool:
    """Whether a ``[fit]`` table is of ``simulate calibrate --published`` (a reference profile)."""
    return "published" in fit


def _pct(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"  # nan: no such rows


def _published_table(fits: list[tuple[str, dict[str, Any]]]) -> None:
    """Print the reference profiles fitted to published figures: what, the split in rows, train / held-out / judge
    error beside the hand-set prior's."""
    print()
    print("| reference profile | fitted to | free parameters | rows train / held out | train MAPE (prior) "
          "| held-out MAPE (prior) | judge rows, never fitted: MAPE (prior) |")
    print("|---|---|---|---|---|---|---|")
    for name, fit in fits:
        ours = sum(r.startswith("measured-") for r in fit["train_rows"])
        what = f"{fit['n_train'] - ours} published figures ({'; '.join(fit['papers'])})"
        held = f"{_pct(fit['heldout_mape'])} ({_pct(fit['prior_heldout_mape'])})"
        if ours:
            files = ", ".join(f"`{m.rsplit('/', 1)[-1]}`" for m in fit["measurements"])
            what += f" and {ours} of our H200 cuDNN measurements ({files})"
            held += (f"; H200 measured: {_pct(fit['measured_heldout_mape'])} "
                     f"({_pct(fit['prior_measured_heldout_mape'])})")
        judge = (f"{fit['n_judge']} rows: {_pct(fit['judge_mape'])} ({_pct(fit['prior_judge_mape'])})"
                 if fit["n_judge"] else "none")
        print(f"| `{name}` | {what} | {len(fit['free'])} | {fit['n_train']} / {fit['n_heldout']} "
              f"| {_pct(fit['train_mape'])} ({_pct(fit['prior_train_mape'])}) | {held} | {judge} |")


def winners(measurements: str, gpu: str = "H200") -> None:
    """Print how often the model picks the faster of our GNA kernel and dense cuDNN, as measured."""
    spec = load_gpu(gpu)
    ours, cudnn = load_profile("triton", spec), load_profile("cudnn", spec)
    fit = read_toml(CALIBRATION_DIR / "triton.toml", "kernel profile")["fit"]
    fitted = load_rows([measurements], spec, fit["kernels"])
    held = {r.config_id for r in split(fitted, fit["holdout"], fit["seed"])[1]}
    dense = {_key(r): r for r in load_rows([measurements], spec, ["cudnn"])}
    counts: dict[str, list[int]] = {}
    for r in fitted:
        d = dense.get(_key(r))
        if r.kernel != "gna" or d is None:
            continue
        right = (r.measured_ms < d.measured_ms) == (predicted_ms(r, spec, ours) < predicted_ms(d, spec, cudnn))
        groups = ["all", "held out of the triton fit"] if r.config_id in held else ["all"]
        groups += [f"{g}, <= 16K tokens" for g in groups] if r.tokens <= 16384 else []
        for g in groups:
            hits = counts.setdefault(g, [0, 0, 0])
            hits[0] += right
            hits[1] += 1
            hits[2] += r.measured_ms < d.measured_ms
    print()
    print("| GNA configurations | faster one predicted right | GNA measured faster than cuDNN |")
    print("|---|---|---|")
    for g, (right, n, sparse) in counts.items():
        print(f"| {g} | {right} of {n} | {sparse} of {n} |")


def breakdown(gpu: str = "H200") -> None:
    """Print each fitted profile's held-out MAPE by kernel and size: launch-bound (<= 4K tokens) or not."""
    spec = load_gpu(gpu)
    print()
    print("| profile | kernel | held-out rows <= 4K tokens | MAPE | held-out rows > 4K tokens | MAPE |")
    print("|---|---|---|---|---|---|")
    for path in sorted(CALIBRATION_DIR.glob("*.toml")):
        data = read_toml(path, "kernel profile")
        fit = data["fit"]
        if _published(fit):
            continue
        prof = load_profile(str(path), spec)
        rows = load_rows([str(ROOT / m) for m in fit["measurements"]], spec, fit["kernels"])
        held = split(rows, fit["holdout"], fit["seed"])[1]
        for kernel in fit["kernels"]:
            cells = []
            for small in (True, False):
                errs = [abs(predicted_ms(r, spec, prof) / r.measured_ms - 1) for r in held
                        if r.kernel == kernel and (r.tokens <= 4096) == small]
                cells += [str(len(errs)), f"{sum(errs) / len(errs):.1%}" if errs else "-"]
            print(f"| `{data['name']}` | {kernel} | {' | '.join(cells)} |")


def main(argv: list[str] | None = None) -> int:
    """Print one row per fitted profile (no arguments)."""
    del argv
    print("| profile | fitted to | free parameters | configurations train / held out | train MAPE "
          "| held-out MAPE | prior's held-out MAPE |")
    print("|---|---|---|---|---|---|---|")
    published = []
    for path in sorted(CALIBRATION_DIR.glob("*.toml")):
        data = read_toml(path, "kernel profile")
        fit = data.get("fit", {})
        if _published(fit):
            published.append((data["name"], fit))
            continue
        stages = [(f"`{data['name']}`", fit)]
        if "forward_fit" in data:  # a backward fit on top of a forward one: the forward fit first
            stages = [(f"`{data['name']}` forward terms", {**fit, **data["forward_fit"]}),
                      (f"`{data['name']}` backward terms (forward fixed)", fit)]
        for name, f in stages:
            files = ", ".join(f"`{m.rsplit('/', 1)[-1]}`" for m in f.get("measurements", []))
            print(f"| {name} | {', '.join(f.get('kernels', []))} on the {f.get('gpu', '?')} ({files}) "
                  f"| {len(f.get('free', []))} | {f.get('train_configs')} / {f.get('heldout_configs')} "
                  f"| {f.get('train_mape', float('nan')):.1%} | {f.get('heldout_mape', float('nan')):.1%} "
                  f"| {f.get('prior_heldout_mape', float('nan')):.1%} |")
    if published:
        _published_table(published)
    triton_fit = read_toml(CALIBRATION_DIR / "triton.toml", "kernel profile")["fit"]
    breakdown(triton_fit["gpu"])
    winners(str(ROOT / triton_fit["measurements"][0]), triton_fit["gpu"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
