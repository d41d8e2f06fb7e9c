"""Compute the error bands every prediction carries (hwmodels/bands/error_bands.toml), once, from held-out residuals.

    python benchmarks/error_bands.py            # rewrite hwmodels/bands/error_bands.toml and print the bands
    python benchmarks/error_bands.py --check    # exit 1 if the committed file differs from a fresh computation

For each fitted profile of ``hwmodels/calibration/`` (``triton``, ``triton-ws``, ``cudnn-hopper``; all measured on
our H200) the rows of its ``[fit]`` measurements and kernels (``calibrate.profile_rows``) are split exactly as
``simulate calibrate`` split them
(:func:`sparsesim.simulator.calibrate.split`, the recorded holdout share and seed); on the held-out rows the
ratio measured / predicted by the fitted profile is taken, and the band of a (profile, kernel, size band) is
its 5th-95th percentile (numpy's linear interpolation), with the row count. A size band (<= 4096 tokens,
> 4096 tokens) with fewer than :data:`MIN_ROWS` held-out rows takes the kernel's band over both sizes
(``size = "*"``). Why 5th-95th and not 10th-90th: 10th-90th bands held 75% of H200 rows they were not made
from (two-fold over held-out configurations, and the never-fitted tile sweep); 5th-95th bands hold 84-87%,
so the 80% target holds out of sample, not only by construction.

Reference profiles (``reference-<arch>``): where ``hwmodels/calibration/`` ships one fitted by ``simulate calibrate
--published`` (its ``[fit]`` names the published set, the measurements fitted alongside and the held-out rows), the
out-of-sample rows are that fit's held-out rows (published figures, and for Hopper this repository's H200 cuDNN
measurements) and the published set's judge rows of its kernels (never fitted); the recorded held-out ids are checked
against the set. A hand-set profile (no fitted file) was fitted to nothing, so every row of its architecture's kernels
is out of sample. Either way the band is the 5th-95th percentile of published / predicted time over those rows, all
kernels and sizes together, ``evidence = "published"``; an architecture with fewer than :data:`MIN_ROWS` such rows
gets no band (the default one applies). Anything else (``triton`` or ``cudnn-hopper`` on another GPU than the one
measured, a profile read from a file) gets the default band (``evidence = "none"``).

Printed: the bands, and how often held-out H200 measurements fall inside their band: on the rows the bands
were computed from (about 80% by construction), by two-fold cross-validation over configurations (bands
from one half of the held-out configurations, checked on the other), and on the never-fitted tile-sweep
file (:data:`EXTRA_CHECK`).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sparsesim.hwmodels import load_gpu
from sparsesim.hwmodels.gpus import read_toml
from sparsesim.hwmodels.profiles import CALIBRATION_DIR, PROFILE_DIR, load_profile
from sparsesim.simulator.bands import (
    BANDS_FILE,
    DEFAULT_HIGH,
    DEFAULT_LOW,
    QUANTILES,
    SIZE_SPLIT_TOKENS,
    size_band,
)
from sparsesim.simulator.calibrate import (
    ARCH_KERNELS,
    PUBLISHED_FILE,
    PublishedRow,
    Row,
    load_rows,
    measured_rows,
    predicted_ms,
    profile_rows,
    published_ratio,
    read_published,
    split,
)

ROOT = Path(__file__).resolve().parent.parent
#: Fewest held-out rows a (kernel, size band) cell needs; fewer: the kernel's rows over both sizes.
MIN_ROWS = 8
#: Measurement files never fitted to (a tile sweep of our GNA kernel; GNA at head dims 64 and 128 on the Triton
#: kernels), checked against the ``triton`` bands.
EXTRA_CHECK = ("hwmodels/measurements/validate_h200_tiles_2026-11-29_828261d.csv",
               "hwmodels/measurements/validate_h200_d64_heldout_2026-11-30_c3836d6.csv")
#: The GPU file a reference profile is loaded for (any GPU of the architecture).
GPU_OF = {"ampere": "A100", "hopper": "H100", "blackwell": "B200"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def band_of(ratios: Sequence[float]) -> tuple[float, float]:
    """The 5th-95th percentile of measured / predicted ratios."""
    lo, hi = np.quantile(np.asarray(ratios, dtype=float), QUANTILES)
    return float(lo), float(hi)


def cells(kernels: Sequence[str], rows: Sequence[tuple[str, int, float]]) -> list[dict[str, object]]:
    """Bands by (kernel, size band) of (kernel, tokens, ratio) rows, pooled over sizes where a cell is small."""
    out: list[dict[str, object]] = []
    for kernel in kernels:
        mine = [(t, r) for k, t, r in rows if k == kernel]
        by_size: dict[str, list[float]] = {}
        for t, r in mine:
            by_size.setdefault(size_band(t), []).append(r)
        if mine and all(len(v) >= MIN_ROWS for v in by_size.values()):
            for size in sorted(by_size):
                lo, hi = band_of(by_size[size])
                out.append({"kernel": kernel, "size": size, "low": lo, "high": hi, "n": len(by_size[size])})
        elif len(mine) >= MIN_ROWS:
            lo, hi = band_of([r for _, r in mine])
            out.append({"kernel": kernel, "size": "*", "low": lo, "high": hi, "n": len(mine)})
    return out


def heldout_ratios(profile: str) -> tuple[dict[str, object], list[Row], list[float]]:
    """A fitted profile's [fit] table, its held-out rows (the split ``simulate calibrate`` used) and their
    measured / predicted ratios."""
    path = CALIBRATION_DIR / f"{profile}.toml"
    fit = read_toml(path, "kernel profile")["fit"]
    gpu = load_gpu(fit["gpu"])
    prof = load_profile(str(path), gpu)
    rows = profile_rows([ROOT / m for m in fit["measurements"]], gpu, fit["kernels"], prof)
    _, held = split(rows, fit["holdout"], fit["seed"])
    if len(held) != fit["n_heldout"]:
        raise SystemExit(f"{profile}: {len(held)} held-out rows, the fit recorded {fit['n_heldout']}; refit first")
    return fit, held, [r.measured_ms / predicted_ms(r, gpu, prof) for r in held]


def reference_ratios(arch: str) -> tuple[Path, list[float], list[PublishedRow], str, list[str]]:
    """The shipped ``reference-<arch>`` profile's file, its out-of-sample rows' published / predicted times, the rows
    a note on which rows they are (a fitted profile's held-out and judge rows, a hand-set one's every row) and the
    files they come from."""
    name = f"reference-{arch}"
    fitted = CALIBRATION_DIR / f"{name}.toml"
    kernels = ARCH_KERNELS[arch]
    if not fitted.exists():
        src = PROFILE_DIR / f"{name}.toml"
        prof = load_profile(str(src), load_gpu(GPU_OF[arch]))
        rows = [r for r in read_published(PUBLISHED_FILE) if r.arch == arch and r.kernel in kernels]
        note = ("every row of the architecture's kernels (fit, held-out and judge): the shipped profile is hand-set, "
                "fitted to none of them")
        return src, [1.0 / published_ratio(r, prof) for r in rows], rows, note, [_rel(PUBLISHED_FILE)]
    fit = read_toml(fitted, "kernel profile")["fit"]
    if "heldout_rows" not in fit:
        raise SystemExit(f"{name}: {_rel(fitted)} has no [fit] heldout_rows; refit with simulate calibrate --published")
    prof = load_profile(str(fitted), load_gpu(GPU_OF[arch]))
    published = read_published(ROOT / fit["published"])
    every = published + (measured_rows(fit["measurements"]) if fit["measurements"] else [])
    wanted = set(fit["heldout_rows"])
    held = [r for r in every if r.id in wanted]
    judge = [r for r in published if r.use == "judge" and r.arch == arch and r.kernel in fit["kernels"]]
    if len(held) != fit["n_heldout"] or len(judge) != fit["n_judge"]:
        raise SystemExit(f"{name}: {len(held)} held-out and {len(judge)} judge rows, the fit recorded "
                         f"{fit['n_heldout']} and {fit['n_judge']}; refit first")
    rows = held + judge
    note = (f"simulate calibrate --published split: by configuration, holdout {fit['holdout']}, seed {fit['seed']}: "
            f"its {len(held)} held-out rows and the set's {len(judge)} judge rows (never fitted)")
    files = [str(fit["published"])] + (list(fit["measurements"]) if any(r.measured for r in held) else [])
    return fitted, [1.0 / published_ratio(r, prof) for r in rows], rows, note, files


def _coverage(rows: Sequence[tuple[str, int, float]], bands: Sequence[dict[str, object]]) -> tuple[int, int]:
    inside = total = 0
    for kernel, tokens, ratio in rows:
        match = [b for b in bands if b["kernel"] == kernel and b["size"] in (size_band(tokens), "*")]
        if not match:
            continue
        total += 1
        inside += float(match[0]["low"]) <= ratio <= float(match[0]["high"])  # type: ignore[arg-type]
    return inside, total


def _toml(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def compute() -> tuple[str, list[str]]:
    """The bands file's text and the report lines."""
    report: list[str] = []
    entries: list[dict[str, object]] = []
    for profile in ("triton", "triton-ws", "cudnn-hopper"):
        fit, held, ratios = heldout_ratios(profile)
        rows = [(r.kernel, r.tokens, x) for r, x in zip(held, ratios, strict=True)]
        bands = cells(fit["kernels"], rows)  # type: ignore[arg-type]
        src = CALIBRATION_DIR / f"{profile}.toml"
        for b in bands:
            entries.append({"profile": profile, "gpu": fit["gpu"], **b, "evidence": "heldout",
                            "source": _rel(src), "profile_sha256": _sha(src),
                            "measurements": list(fit["measurements"]),  # type: ignore[call-overload]
                            "split": f"simulate calibrate split: by config_id, holdout {fit['holdout']}, "
                                     f"seed {fit['seed']}, held-out rows"})
        inside, total = _coverage(rows, bands)
        report.append(f"{profile} on {fit['gpu']}: {inside}/{total} = {inside / total:.0%} of held-out rows inside "
                      f"their band (the rows the bands come from)")
        configs = sorted({r.config_id for r in held})
        order = np.random.default_rng(1).permutation(len(configs))
        half = {configs[i] for i in order[: len(configs) // 2]}
        first = [x for r, x in zip(held, rows, strict=True) if r.config_id in half]
        second = [x for r, x in zip(held, rows, strict=True) if r.config_id not in half]
        i1, t1 = _coverage(second, cells(fit["kernels"], first))  # type: ignore[arg-type]
        i2, t2 = _coverage(first, cells(fit["kernels"], second))  # type: ignore[arg-type]
        if t1 + t2:
            report.append(f"{profile} on {fit['gpu']}: {i1 + i2}/{t1 + t2} = {(i1 + i2) / (t1 + t2):.0%} inside a band "
                          f"from the other half of the held-out configurations (two-fold, by configuration)")
        if profile == "triton":
            gpu = load_gpu(str(fit["gpu"]))
            prof = load_profile(str(src), gpu)
            for check in EXTRA_CHECK:
                extra = load_rows([ROOT / check], gpu, ["gna"])
                er = [(r.kernel, r.tokens, r.measured_ms / predicted_ms(r, gpu, prof)) for r in extra]
                i3, t3 = _coverage(er, bands)
                report.append(f"{profile} on {fit['gpu']}: {i3}/{t3} = {i3 / t3:.0%} of {check} (never fitted) "
                              f"inside their band")
    for arch in ARCH_KERNELS:
        src, ratios, ref_rows, split_note, files = reference_ratios(arch)
        name = f"reference-{arch}"
        if len(ratios) < MIN_ROWS:
            report.append(f"{name}: {len(ratios)} out-of-sample rows (fewer than {MIN_ROWS}): no band, the default "
                          f"one applies")
            continue
        lo, hi = band_of(ratios)
        entries.append({"profile": name, "gpu": "*", "kernel": "*", "size": "*", "low": lo, "high": hi,
                        "n": len(ratios), "evidence": "published", "source": _rel(src), "profile_sha256": _sha(src),
                        "measurements": files,
                        "split": split_note})
        inside = sum(lo <= x <= hi for x in ratios)
        report.append(f"{name}: {inside}/{len(ratios)} out-of-sample figures inside the band (the rows it comes from)")
        if len(ratios) >= 2 * MIN_ROWS:
            ref_configs = sorted({r.config_id for r in ref_rows})
            ref_order = np.random.default_rng(1).permutation(len(ref_configs))
            ref_half = {ref_configs[i] for i in ref_order[: len(ref_configs) // 2]}
            one = [x for r, x in zip(ref_rows, ratios, strict=True) if r.config_id in ref_half]
            other = [x for r, x in zip(ref_rows, ratios, strict=True) if r.config_id not in ref_half]
            (alo, ahi), (blo, bhi) = band_of(one), band_of(other)
            cross = sum(alo <= x <= ahi for x in other) + sum(blo <= x <= bhi for x in one)
            report.append(f"{name}: {cross}/{len(ratios)} = {cross / len(ratios):.0%} inside a band from the other "
                          f"half of those configurations (two-fold, by configuration)")
    lines = ["# Error bands of predictions: measured / predicted time, 5th-95th percentile of out-of-sample rows.",
             "# Generated by `python benchmarks/error_bands.py`; do not edit by hand.", "",
             f"quantiles = {_toml(list(QUANTILES))}", f"size_split_tokens = {SIZE_SPLIT_TOKENS}",
             f"min_rows = {MIN_ROWS}", f"default_low = {_toml(DEFAULT_LOW)}", f"default_high = {_toml(DEFAULT_HIGH)}",
             'default_note = "no out-of-sample evidence for this profile on this GPU: a +-35% band, not measured"', ""]
    for e in entries:
        lines.append("[[band]]")
        lines += [f"{k} = {_toml(v)}" for k, v in e.items()]
        lines.append("")
    table = [f"{'profile':<20} {'gpu':<5} {'kernel':<13} {'size':<7} {'low':>6} {'high':>6} {'n':>4}  evidence"]
    table += [f"{e['profile']!s:<20} {e['gpu']!s:<5} {e['kernel']!s:<13} {e['size']!s:<7} {e['low']:>6.3f} "
              f"{e['high']:>6.3f} {e['n']!s:>4}  {e['evidence']}" for e in entries]
    return "\n".join(lines), table + report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file, write nothing")
    args = parser.parse_args(argv)
    text, report = compute()
    print("\n".join(report))
    if args.check:
        same = BANDS_FILE.read_text(encoding="utf-8") == text
        print("bands file is current" if same else f"{_rel(BANDS_FILE)} is stale: run python benchmarks/error_bands.py")
        return 0 if same else 1
    from sparsesim.simulator.files import check_output, write_text

    check_output(str(BANDS_FILE), "bands file")
    write_text(text, str(BANDS_FILE))
    print(f"wrote {_rel(BANDS_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
