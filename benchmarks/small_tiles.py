"""GPU: small layers (issue 17 item 3) at every tile class, next to dense cuDNN, with the model's prediction.

    python benchmarks/small_tiles.py [--out FILE.csv] [--commit SHA] [--budget-s 200]
    python benchmarks/small_tiles.py --judge FILE.csv     # CPU: the current model against a measured file

The 1K-4K-token layers of benchmarks/host_overhead.py (bf16, batch 1, head dim 128). Per layer, the model's two
best boxes (:func:`sparsesim.simulator.tile_choice.rank_tiles`) of every Q/KV tile volume class in 32, 64 and 128
tokens, plus the call with no tiles given (the model's pick, what ``gna_attention`` runs by default), each timed
with ``triton.testing.do_bench`` (CUDA events, median; the same timer as cuDNN's) after a check against the
default call's output; then the three fastest pairs again with ``persistent=True``; dense cuDNN SDPA on the same
q, k, v. One CSV row per timed variant (GPU, date, commit, versions), rewritten after every row; the variants
left once ``--budget-s`` is spent are skipped (rows say so). Prints each layer's fastest variant over cuDNN.

``--judge`` (no GPU): per layer of a measured file, the current model's call time of each launch-order pair
(never fitted to these rows) against the measurement: MAPE, mean error, Spearman rank correlation, and what each
way of choosing tiles would have run, over cuDNN: the model's pick (its fastest predicted pair), the measured
pick of ``gna_attention`` (the fastest of the class candidates and, persistent, of the two fastest, as timed
here) and the fastest pair measured.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CASES = (  # name, input_size, window, heads (host_overhead.py's small cases)
    ("image_32x32_w8x8", (32, 32), (8, 8), 24),
    ("1d_4096_w512", (4096,), (512,), 8),
    ("video_8x16x16_w4x8x8", (8, 16, 16), (4, 8, 8), 24),
)
HEAD_DIM = 128
VOLUMES = (32, 64, 128)
FIELDS = ("gpu", "date", "commit", "torch", "triton", "case", "tokens", "heads", "variant", "q_tile", "kv_tile",
          "persistent", "measured_ms", "predicted_ms", "cudnn_ms", "ratio_vs_cudnn", "rel_err", "note")


def candidates(size: tuple[int, ...], window: tuple[int, ...], heads: int) -> list[tuple[Any, Any, float]]:
    """``(q_tile, kv_tile, predicted call ms)``: the model's two best boxes per tile volume class."""
    from sparsesim.simulator import GNAPattern
    from sparsesim.simulator.tile_choice import rank_tiles

    pattern = GNAPattern(input_size=size, window=window)
    out: dict[tuple[Any, Any], float] = {}
    for qv in VOLUMES:
        for kvv in VOLUMES:
            for c in rank_tiles(pattern, gpu="H200", heads=heads, head_dim=HEAD_DIM, top=2, q_volumes=(qv,),
                                kv_volumes=(kvv,)):
                out[(c.q_tile, c.kv_tile)] = float(c.call_ms)
    return [(q, kv, ms) for (q, kv), ms in sorted(out.items(), key=lambda t: t[1])]


def measure_case(name: str, size: tuple[int, ...], window: tuple[int, ...], heads: int, meta: dict[str, Any],
                 rows: list[dict[str, Any]], deadline: float, write: Any) -> None:
    """Time one layer's variants and cuDNN into ``rows`` (``write()`` after each)."""
    import torch
    import torch.nn.functional as F
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sparsesim.kernels import gna_attention

    def bench(fn: Any) -> float:
        return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))

    g = torch.Generator(device="cuda").manual_seed(len(name))
    q, k, v = (torch.randn(1, *size, heads, HEAD_DIM, generator=g, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    qd, kd, vd = (x.flatten(1, -3).transpose(1, 2).contiguous() for x in (q, k, v))

    def dense(qd: Any = qd, kd: Any = kd, vd: Any = vd) -> Any:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(qd, kd, vd)

    cudnn_ms = bench(dense)
    reference = gna_attention(q, k, v, window=window).float()
    base = {**meta, "case": name, "tokens": q[0, ..., 0, 0].numel(), "heads": heads, "cudnn_ms": cudnn_ms}
    rows.append({**base, "variant": "cudnn", "measured_ms": cudnn_ms, "ratio_vs_cudnn": 1.0})
    timed: list[tuple[float, Any, Any]] = []
    variants = [("default", None, None, None, False)] + [("pair", qt, kt, ms, False)
                                                            for qt, kt, ms in candidates(size, window, heads)]

    def run(variant: str, qt: Any, kt: Any, predicted: Any, persistent: bool) -> None:
        row = {**base, "variant": variant, "q_tile": "x".join(map(str, qt)) if qt else "",
               "kv_tile": "x".join(map(str, kt)) if kt else "", "persistent": persistent,
               "predicted_ms": predicted if predicted is not None else ""}
        if time.monotonic() > deadline:
            rows.append({**row, "note": "skipped: --budget-s spent"})
            return
        out = torch.empty_like(q)
        kw: dict[str, Any] = {"window": window, "out": out}
        if qt:
            kw.update(q_tile=qt, kv_tile=kt)
        if persistent:
            kw["persistent"] = True
        try:
            gna_attention(q, k, v, **kw)
            torch.cuda.synchronize()
            err = float((out.float() - reference).abs().max() / reference.abs().max())
            ms = bench(lambda: gna_attention(q, k, v, **kw))
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run is a row too
            rows.append({**row, "note": f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}"})
            return
        rows.append({**row, "measured_ms": ms, "ratio_vs_cudnn": ms / cudnn_ms, "rel_err": err,
                     "note": "" if err < 2e-2 else "output differs from the default call's"})
        if variant == "pair" and err < 2e-2:
            timed.append((ms, qt, kt))
        write()

    for variant in variants:
        run(*variant)
    for _ms, qt, kt in sorted(timed, key=lambda t: t[0])[:3]:
        run("pair", qt, kt, None, True)
    measured = [r for r in rows if r["case"] == name and r["variant"] != "cudnn" and r.get("measured_ms")]
    if measured:
        best = min(measured, key=lambda r: r["measured_ms"])
        default = next((r for r in measured if r["variant"] == "default"), None)
        print(f"{name}: cuDNN {cudnn_ms:.4f} ms; default {default['measured_ms'] if default else float('nan'):.4f}"
              f"; fastest {best['measured_ms']:.4f} ms ({best['q_tile']}/{best['kv_tile']}"
              f"{' persistent' if best['persistent'] else ''}) = {best['measured_ms'] / cudnn_ms:.3f} of cuDNN",
              flush=True)
    write()


def _tiles(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("x"))


def judge(path: Path) -> int:
    """Print the current model against a measured file (see the module docstring)."""
    from scipy.stats import spearmanr

    from sparsesim.simulator import GNAPattern
    from sparsesim.simulator.engine import simulate
    from sparsesim.simulator.tile_choice import class_candidates

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    shapes = {name: (size, window, heads) for name, size, window, heads in CASES}
    print("| layer | pairs | MAPE | mean error | Spearman | model's pick / cuDNN | measured pick / cuDNN | "
          "fastest / cuDNN |")
    print("|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["case"] for r in rows):
        if name not in shapes:
            continue
        size, window, heads = shapes[name]
        mine = [r for r in rows if r["case"] == name and r["variant"] == "pair" and r.get("measured_ms")]
        cudnn = next(float(r["measured_ms"]) for r in rows if r["case"] == name and r["variant"] == "cudnn")
        launch_order = {(r["q_tile"], r["kv_tile"]): float(r["measured_ms"]) for r in mine
                        if r["persistent"] == "False"}
        persistent = {(r["q_tile"], r["kv_tile"]): float(r["measured_ms"]) for r in mine if r["persistent"] == "True"}
        predicted = {pair: simulate(input_size=size, window=window, q_tile=_tiles(pair[0]), kv_tile=_tiles(pair[1]),
                                    gpu="H200", heads=heads, head_dim=HEAD_DIM, dtype="bf16",
                                    kernel_profile="triton").call_ms for pair in launch_order}
        errors = [predicted[p] / launch_order[p] - 1 for p in launch_order]
        rho = float(spearmanr([predicted[p] for p in launch_order], [launch_order[p] for p in launch_order])[0])
        model_pick = launch_order[min(predicted, key=lambda p: (predicted[p], p))]
        cands = [("x".join(map(str, q)), "x".join(map(str, kv))) for q, kv in
                 class_candidates(GNAPattern(input_size=size, window=window), "H200", heads, heads, HEAD_DIM, 1,
                                  "bf16")]
        timed = {c: launch_order[c] for c in cands if c in launch_order}
        top2 = sorted(timed, key=lambda c: timed[c])[:2]
        picked = min([*timed.values(), *(persistent[c] for c in top2 if c in persistent)])
        fastest = min([*launch_order.values(), *persistent.values()])
        print(f"| {name} | {len(errors)} | {np.mean(np.abs(errors)):.1%} | {np.mean(errors):+.1%} | {rho:.2f} | "
              f"{model_pick / cudnn:.2f} | {picked / cudnn:.2f} | {fastest / cudnn:.2f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/small_tiles.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="CSV file (rewritten after every row)")
    parser.add_argument("--commit", default=None, help="commit to record (default: git rev-parse --short HEAD)")
    parser.add_argument("--budget-s", type=float, default=200.0, help="skip the variants left after this long")
    parser.add_argument("--judge", type=Path, default=None, help="a measured CSV: the current model against it (CPU)")
    args = parser.parse_args(argv)
    if args.judge:
        return judge(args.judge)

    import torch
    import triton

    if not torch.cuda.is_available():
        print("small_tiles: needs a CUDA GPU", file=sys.stderr)
        return 2
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                           text=True).stdout.strip() or "unknown"
    meta = {"gpu": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(), "commit": commit,
            "torch": torch.__version__, "triton": triton.__version__}
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.budget_s

    def write() -> None:
        if args.out:
            with open(args.out, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=FIELDS)
                w.writeheader()
                w.writerows(rows)

    for name, size, window, heads in CASES:
        measure_case(name, size, window, heads, meta, rows, deadline, write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
