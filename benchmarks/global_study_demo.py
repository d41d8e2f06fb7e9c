"""The global study on the demo DiT-like denoiser: the front of judged error against predicted time.

The model is the one of ``tests/search/test_global_study.py`` (loaded from that file: 3 DiT blocks with QK RMSNorm
and 3D RoPE, random weights, a 2x16x16 latent, 6 Euler steps). Its attention is captured at the middle step, the
exact per-head fronts are enumerated on the H200 model, and the global study (TPE, multivariate) searches layer
budgets, dense warm-up steps and two step ranges; every trial's plan runs the whole sampling loop under
``apply_plan`` (torch reference on CPU) and is judged by the relative L2 of the final latent against the dense
loop's. Predicted times are the sum over the 6 steps of the searched layers' attention on the H200 (dense steps at
dense cuDNN; nothing else of the step is modelled: ``other_ms = 0``).

    python benchmarks/global_study_demo.py [--seed 0] [--trials 40] [--startup 10] [--budget 0.006]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

TEST = Path(__file__).resolve().parents[1] / "tests" / "search" / "test_global_study.py"


def load_demo():  # noqa: ANN201 - a benchmark helper
    spec = importlib.util.spec_from_file_location("global_study_demo_model", TEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="model weights, noise and TPE seed")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--startup", type=int, default=10)
    ap.add_argument("--budget", type=float, default=0.006,
                    help="error budget on the judged (end-to-end) error (the fastest plan judges about 0.009)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)

    import torch

    from sparsesim.search.global_study import GlobalSettings

    torch.set_num_threads(args.threads)
    mod = load_demo()
    t0 = time.perf_counter()
    demo = mod.demo(args.seed)
    t1 = time.perf_counter()
    study = demo.study()
    res = study.run(demo.judge, error_budget=args.budget,
                    settings=GlobalSettings(study="demo", trials=args.trials, startup=args.startup, seed=args.seed))
    t2 = time.perf_counter()
    print(f"demo DiT: layout {'x'.join(map(str, mod.LAYOUT))}, {mod.LAYERS} layers x {mod.HEADS} heads, "
          f"{mod.STEPS} Euler steps, seed {args.seed}; {len(demo.exact.candidates)} candidates per head on "
          f"{mod.GPU} (tiles q {demo.latency.q_tile} kv {demo.latency.kv_tile}, fixed)")
    print(f"capture + exact fronts {t1 - t0:.1f} s; study {t2 - t1:.1f} s: {len(res.trials)} trials "
          f"(TPE after {res.startup}), {demo.judged} plans judged (equal plans once)")
    print(f"dense run: {res.dense_ms:.4f} ms predicted attention over {mod.STEPS} steps")
    print("\nPareto front (judged error = relative L2 of the final latent against dense):")
    print(f"{'trial':>5} {'judged err':>11} {'pred ms':>9} {'speedup':>8}  ranges (start-stop: dense | budget)")
    for t in res.pareto:
        ranges = ", ".join(f"{r.start}-{'' if r.stop is None else r.stop}: "
                           f"{'dense' if r.dense else f'{r.budget:.3g}'}" for r in t.ranges)
        print(f"{t.number:>5} {t.judged_error:>11.4g} {t.predicted_ms:>9.4f} {t.speedup:>7.3f}x  {ranges}")
    if res.chosen is None:
        print(f"\nno trial within the judged error budget {args.budget:g}")
    else:
        c = res.chosen
        print(f"\nchosen under judged error <= {args.budget:g}: trial {c.number}, error {c.judged_error:.4g}, "
              f"{c.predicted_ms:.4f} ms ({c.speedup:.3f}x), {len(res.plan.steps) if res.plan else 0} step ranges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
