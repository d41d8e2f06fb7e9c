"""GPU: launch variants of our kernels side by side (pipeline depth, TMA or pointer loads, Triton's
warp specialization), on the benchmark's block-sparse cases and the dense kernel's configs.

    cd benchmarks && python kernel_variants.py [--out DIR] [--commit SHA]

Each variant is checked against the first one's output (same tiles, so the same arithmetic up to
scheduling) and timed with the benchmark's ``time_ms``; one CSV row per variant. Notes on what
won and what the defaults became are in ``kernels/NOTES.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any

VARIANTS = {  # name: (num_stages, kv_layout, warp_specialize); "permute" loads K/V with TMA, "gather" with pointers
    "s3_tma": (3, "permute", False),
    "s2_tma": (2, "permute", False),
    "s3_ptr": (3, "gather", False),
    "s3_tma_ws": (3, "permute", True),
    "s2_tma_ws": (2, "permute", True),
}
CASES = ("flux_w80x80_s16x16", "1d_w2048_s256", "hunyuan_w18x24x24_s16x8x8", "flux_w80x80_s1")


def main(argv: list[str] | None = None) -> int:
    import dataclasses

    import torch
    from kernel_bench import git_commit, rand_qkv, time_ms
    from kernel_cases import GNA_CASES, HEAD_DIM, HEADS
    from kernel_cases import case_flops as dense_flops

    from sparsesim.kernels._launch import dense_configs
    from sparsesim.kernels.dense import _autotuned, attention, launch_dense
    from sparsesim.kernels.gna import build_launch
    from sparsesim.kernels.reference import rel_error

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--commit", default=None)
    parser.add_argument("--dense-only", action="store_true", help="only the dense kernel's variants")
    args = parser.parse_args(argv)
    commit = args.commit or git_commit()
    rows: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "kernel_variants.csv"

    def add(case: str, variant: str, ms: float | None, flops: float, err: float | None, note: str = "") -> None:
        eff = flops / (ms * 1e-3) / 1e12 if ms else None
        rows.append({"gpu": torch.cuda.get_device_name(), "commit": commit, "case": case, "variant": variant,
                     "ms": ms, "eff_tflops": eff, "rel_err_vs_first": err, "note": note})
        print(f"{case:28s} {variant:24s} ms={ms if ms is None else round(ms, 3)} "
              f"TFLOP/s={eff if eff is None else round(eff, 1)} err={err} {note}", flush=True)
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    # Dense: every config of the space pinned, then with warp specialization, then the autotuner's pick.
    n = 65536
    q, k, v = rand_qkv((1, n, HEADS, HEAD_DIM), seed=5)
    first = None
    configs = [dict(c) for c in dense_configs(HEAD_DIM, "bf16")]
    configs += [{**c, "warp_specialize": True} for c in configs if c["num_stages"] == 3]
    for cfg in configs:
        name = "dense_" + "_".join(f"{k_}{v_}" for k_, v_ in cfg.items())
        try:
            out = torch.empty_like(q)
            launch_dense(q, k, v, out, HEAD_DIM ** -0.5, cfg)
            first = out if first is None else first
            add(f"dense_N{n}", name, time_ms(lambda cfg=cfg, out=out: launch_dense(q, k, v, out, HEAD_DIM ** -0.5,
                                                                                 cfg)),
                dense_flops(n), rel_error(out, first))
        except Exception as exc:  # noqa: BLE001 - a variant that does not compile is a result too
            add(f"dense_N{n}", name, None, dense_flops(n), None, f"ERROR {type(exc).__name__}: {str(exc)[:120]}")
    attention(q, k, v)
    pick = _autotuned(HEAD_DIM, "bf16", "H200").best_config
    add(f"dense_N{n}", "autotune_pick", None, dense_flops(n), None, str(pick))
    del q, k, v, first

    for case in (c for c in GNA_CASES if c.name in CASES and not args.dense_only):
        q, k, v = rand_qkv((1, *case.input_size, HEADS, HEAD_DIM), seed=case.tokens)
        first = None
        flops = dense_flops(math.prod(case.input_size))
        tile_x = case.simulate().tile_speedup
        for name, (stages, layout, ws) in VARIANTS.items():
            try:
                base = build_launch(q, k, v, q_tile=case.q_tile, kv_tile=case.kv_tile, scale=None, kv_layout=layout,
                                    causal=False, **case.pattern)
                launch = dataclasses.replace(base, compiled={}, constants={**base.constants, "num_stages": stages,
                                                                           "WARP_SPEC": ws})
                ready = launch.prepare_kv(k, v)
                op = torch.empty_like(q)
                launch.launch(q, ready, op)
                first = op if first is None else first
                ms = time_ms(_runner(launch, q, ready, op))
                add(case.name, name, ms, flops, rel_error(op, first), f"tile_speedup={tile_x:.2f}")
            except Exception as exc:  # noqa: BLE001
                add(case.name, name, None, flops, None, f"ERROR {type(exc).__name__}: {str(exc)[:120]}")
        torch.cuda.empty_cache()
    print(f"wrote {path}")
    return 0


def _runner(launch: Any, q: Any, ready: Any, out: Any) -> Any:
    def run() -> Any:
        return launch.launch(q, ready, out)

    return run


if __name__ == "__main__":
    sys.exit(main())
