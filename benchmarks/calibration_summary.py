"""The fitted kernel profiles and how well they predict (printed as the README's Markdown table).

    python benchmarks/calibration_summary.py

Reads the ``[fit]`` table that ``simulate calibrate`` writes into each profile under
``hwmodels/calibration/``: what it was fitted to, the split (by configuration, seeded) and the mean
absolute percentage error of the fitted and of the hand-set prior profile on the held-out rows.
"""

from __future__ import annotations

import sys

from sparsesim.hwmodels.gpus import read_toml
from sparsesim.hwmodels.profiles import CALIBRATION_DIR


def main(argv: list[str] | None = None) -> int:
    """Print one row per fitted profile (no arguments)."""
    del argv
    print("| profile | fitted to | free parameters | configurations train / held out | train MAPE "
          "| held-out MAPE | prior's held-out MAPE |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(CALIBRATION_DIR.glob("*.toml")):
        data = read_toml(path, "kernel profile")
        fit = data.get("fit", {})
        files = ", ".join(f"`{m.rsplit('/', 1)[-1]}`" for m in fit.get("measurements", []))
        print(f"| `{data['name']}` | {', '.join(fit.get('kernels', []))} on the {fit.get('gpu', '?')} ({files}) "
              f"| {len(fit.get('free', []))} | {fit.get('train_configs')} / {fit.get('heldout_configs')} "
              f"| {fit.get('train_mape', float('nan')):.1%} | {fit.get('heldout_mape', float('nan')):.1%} "
              f"| {fit.get('prior_heldout_mape', float('nan')):.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
