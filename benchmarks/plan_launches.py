"""Where a plan layer's time goes on a GPU: each launch timed alone, beside its prediction.

``simulate validate --plan`` times whole layers. This script splits a layer into its launches and times,
per launch: the kernel on contiguous inputs of the launch's heads (``kernel_ms``), the same with the
launch run on the layer's tensors as ``run_plan`` does it (``launch_ms``: heads in place, or gathered and
scattered back where a launch is dense or not whole GQA groups), and
sets them beside the plan's ``predicted_ms`` for that launch. Dense launches run cuDNN. One CSV row per
launch, with the GPU, software versions and the commit (pass ``--commit`` on a machine whose git copy
is not the tree's).

    python benchmarks/plan_launches.py PLAN.json [PLAN.json ...] --out launches.csv [--commit SHA]
"""

from __future__ import annotations

import argparse
import csv
import functools
import sys
from pathlib import Path
from typing import Any


def _run_launch(plan: Any, la: Any, qs: Any, ks: Any, vs: Any) -> Any:
    """One launch on its heads' contiguous tensors, as ``run_plan`` makes it."""
    from sparsesim.kernels.gna import gna_attention
    from sparsesim.kernels.plan_run import _dense

    if la.dense and not any(plan.causal):
        return _dense(qs, ks, vs)
    return gna_attention(qs, ks, vs, window=list(la.window), stride=list(la.stride), dilation=list(la.dilation),
                         causal=list(plan.causal), q_tile=list(plan.q_tile), kv_tile=list(plan.kv_tile))


def _as_run(plan: Any, la: Any, q: Any, k: Any, v: Any, out: Any) -> None:
    """The launch as ``run_plan`` makes it (heads in place for sparse launches of whole groups)."""
    from sparsesim.kernels.plan_run import run_launch

    run_launch(plan, la, q, k, v, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plans", nargs="+", type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--commit", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from sparsesim.kernels.plan_run import _kv_heads, _take
    from sparsesim.kernels.timing import time_ms
    from sparsesim.kernels.validate import _dtype, environment, random_qkv
    from sparsesim.simulator.plan import load_plan

    env = environment(args.commit)
    rows = []
    for path in args.plans:
        plan = load_plan(path)
        dtype = _dtype(plan.dtype if plan.dtype != "fp8" else "bf16")
        b, h, hk, d = plan.batch, plan.heads, plan.heads_kv, plan.head_dim
        group = h // hk
        q = random_qkv((b, *plan.layout, h, d), dtype, "cuda", args.seed)
        k = random_qkv((b, *plan.layout, hk, d), dtype, "cuda", args.seed + 1)
        v = random_qkv((b, *plan.layout, hk, d), dtype, "cuda", args.seed + 2)
        for entry in plan.layers:
            for i, la in enumerate(entry.launches):
                heads = list(la.heads)
                kv, _ = _kv_heads(heads, group)
                qs, ks, vs = _take(q, heads), _take(k, kv), _take(v, kv)
                out = torch.empty_like(q)

                kernel = functools.partial(_run_launch, plan, la, qs, ks, vs)
                launch = functools.partial(_as_run, plan, la, q, k, v, out)
                kernel_ms = time_ms(kernel)
                launch_ms = time_ms(launch)
                rows.append({"plan": path.name, "layer": entry.layer, "launch": i, "heads": len(heads),
                             "window": "x".join(map(str, la.window)), "stride": "x".join(map(str, la.stride)),
                             "dilation": "x".join(map(str, la.dilation)), "dense": la.dense,
                             "predicted_ms": la.predicted_ms, "kernel_ms": kernel_ms, "launch_ms": launch_ms,
                             "kernel_error": la.predicted_ms / kernel_ms - 1, **env})
                r = rows[-1]
                print(f"{path.name} L{entry.layer} #{i} heads={len(heads):3d} w{r['window']} s{r['stride']} "
                      f"d{r['dilation']}: predicted {la.predicted_ms:.3f} kernel {kernel_ms:.3f} "
                      f"launch {launch_ms:.3f} ms", flush=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
