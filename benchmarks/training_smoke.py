"""Training smoke run (issue 16): a small DiT-like model trained with our GNA kernel and with dense SDPA under the
same mask, side by side, from the same seed, the same initial weights and the same data.

    python benchmarks/training_smoke.py --out FILE.csv [--steps 150] [--dtype bf16]          # on the GPU
    python benchmarks/training_smoke.py --device cpu --dtype fp32 --layout 8x8 --window 5 --heads 2 \\
        --head-dim 16 --blocks 2 --batch 2 --steps 10                                         # CPU, interpreter

Model: patch tokens on a 1D/2D/3D ``--layout`` (input channels -> hidden = heads x head_dim, a learned position
embedding), ``--blocks`` pre-norm blocks of RMSNorm -> QKV -> RMSNorm'd Q and K (QK-norm) -> attention -> output
projection, and RMSNorm -> GELU MLP (``--mlp-ratio``), both residual; a final RMSNorm and linear head. Attention:

- ``ours``: :func:`sparsesim.kernels.gna_attention` with the GNA pattern (``--window``, ``--stride``,
  ``--dilation``) on ``[batch, *layout, heads, head_dim]`` (its custom ops carry the gradient);
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with ``attn_mask`` = the core's
  :func:`sparsesim.simulator.dense_mask` of the same pattern (tokens row-major, the kernel's layout order).

Task (denoising): a clean field is white noise smoothed by a box filter over ``--smooth`` tokens per axis and
normalized to unit variance per channel; the model sees it plus unit Gaussian noise and regresses the clean field
(MSE in fp32). Fresh data every step from a generator seeded by ``(--seed, step)``, fed to both models. AdamW
(``--lr`` after a linear warm-up of ``--lr-warmup`` steps), parameters in fp32, forward and backward under autocast
to ``--dtype`` (q/k/v cast to it).

Per step: both losses, ``rel_gap = |loss_ours - loss_sdpa| / loss_sdpa``, ms per training step of each
(forward + backward + optimizer; CUDA events on a GPU, the host clock on CPU). The CSV (``--out``) is rewritten
atomically after every step. Summary: initial and final loss of both (final: the mean of the last tenth of the
steps), final/initial, the max relative gap, the step-0 gradient difference, median ms per step after
``--warmup`` steps, and a verdict: PASS when the final losses are within ``--tol`` of each other and both
final/initial ratios are at most ``--max-ratio``. Exit code 0 on PASS, 1 on FAIL, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLUMNS = ["gpu", "date", "commit", "torch", "triton", "device", "dtype", "layout", "window", "stride", "dilation",
           "heads", "head_dim", "blocks", "batch", "lr", "step", "loss_ours", "loss_sdpa", "rel_gap", "ms_ours",
           "ms_sdpa"]
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class Setup:
    """One run's problem: the layout, the GNA pattern, the model's size and the optimizer."""

    layout: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    heads: int
    head_dim: int
    blocks: int
    batch: int
    channels: int
    mlp_ratio: int
    smooth: int
    lr: float
    lr_warmup: int
    q_tile: tuple[int, ...] | None
    kv_tile: tuple[int, ...] | None


@dataclass(frozen=True)
class Summary:
    """What the run shows: losses at the start and end, the largest gap, times, the verdict."""

    initial: tuple[float, float]
    final: tuple[float, float]
    max_rel_gap: float
    grad_rel_diff: float
    ms: tuple[float, float]
    final_gap: float
    passed: bool

    @property
    def ratios(self) -> tuple[float, float]:
        return self.final[0] / self.initial[0], self.final[1] / self.initial[1]


def _shape(text: str, rank: int | None, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(t) for t in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--{what} {text!r}; allowed: positive integers joined by x (e.g. 64x64)") from None
    if not vals or len(vals) > 3 or min(vals) < 1:
        raise ValueError(f"--{what} {text!r}; allowed: 1 to 3 positive integers joined by x (e.g. 64x64)")
    if rank is not None and len(vals) == 1:
        vals = vals * rank
    if rank is not None and len(vals) != rank:
        raise ValueError(f"--{what} {text!r} has {len(vals)} axes; allowed: one value or {rank} (the layout's rank)")
    return vals


def build_model(s: Setup, attend: Callable[[Any, Any, Any], Any]) -> Any:
    """The DiT-like stack; ``attend(q, k, v)`` maps ``[batch, tokens, heads, head_dim]`` to the same shape."""
    import torch
    from torch import nn

    hidden = s.heads * s.head_dim

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = nn.RMSNorm(hidden), nn.RMSNorm(hidden)
            self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
            self.q_norm, self.k_norm = nn.RMSNorm(s.head_dim), nn.RMSNorm(s.head_dim)
            self.mlp = nn.Sequential(nn.Linear(hidden, s.mlp_ratio * hidden), nn.GELU(approximate="tanh"),
                                     nn.Linear(s.mlp_ratio * hidden, hidden))

        def forward(self, x: Any) -> Any:
            b, n, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, s.heads, s.head_dim).unbind(2)
            dt_ = v.dtype  # QK-norm in fp32 (its weights are fp32), q/k back in v's (the autocast) dtype
            o = attend(self.q_norm(q.float()).to(dt_), self.k_norm(k.float()).to(dt_), v)
            x = x + self.proj(o.reshape(b, n, hidden))
            return x + self.mlp(self.norm2(x))

    class DiT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(s.channels, hidden)
            self.pos = nn.Parameter(0.02 * torch.randn(math.prod(s.layout), hidden))
            self.blocks = nn.ModuleList(Block() for _ in range(s.blocks))
            self.norm, self.head = nn.RMSNorm(hidden), nn.Linear(hidden, s.channels)

        def forward(self, x: Any) -> Any:
            h = self.embed(x) + self.pos
            for block in self.blocks:
                h = block(h)
            return self.head(self.norm(h))

    return DiT()


def make_batch(s: Setup, step: int, seed: int, device: Any) -> tuple[Any, Any]:
    """``(noisy, clean)``, ``[batch, tokens, channels]`` fp32: a box-smoothed unit-variance field and it plus
    unit noise; the same for a given ``(seed, step)`` whichever model it is fed to."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)
    white = torch.randn(s.batch, s.channels, *s.layout, generator=g, device=device)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[len(s.layout) - 1]
    k = min(s.smooth, *s.layout) | 1  # odd, at most the layout
    clean = pool(white, k, stride=1, padding=k // 2, count_include_pad=False)  # type: ignore[operator]
    clean = clean / clean.flatten(2).std(dim=2).clamp_min(1e-6).view(s.batch, s.channels, *([1] * len(s.layout)))
    noise = torch.randn(clean.shape, generator=g, device=device)
    def to_tokens(t: Any) -> Any:
        return t.flatten(2).transpose(1, 2).contiguous()

    return to_tokens(clean + noise), to_tokens(clean)


def attention_fns(s: Setup, device: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(ours, sdpa)``: GNA through our kernel, and SDPA with the core's dense mask of the same pattern."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from sparsesim.kernels import gna_attention
    from sparsesim.simulator import dense_mask

    mask = torch.from_numpy(dense_mask(input_size=s.layout, window=s.window, stride=s.stride,
                                       dilation=s.dilation)).to(device)
    kw: dict[str, Any] = {"window": s.window, "stride": s.stride, "dilation": s.dilation, "q_tile": s.q_tile,
                          "kv_tile": s.kv_tile}

    def ours(q: Any, k: Any, v: Any) -> Any:
        b = q.shape[0]
        grid = [x.reshape(b, *s.layout, s.heads, s.head_dim) for x in (q, k, v)]
        o = gna_attention(*grid, **kw)
        if torch.is_grad_enabled() and q.requires_grad and o.grad_fn is None:
            raise RuntimeError("gna_attention returned no grad_fn with q requiring grad: the gradient was dropped")
        return o.reshape(q.shape)

    def sdpa(q: Any, k: Any, v: Any) -> Any:
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return o.transpose(1, 2)

    return ours, sdpa


class Trainer:
    """One model, its optimizer and a timed training step."""

    def __init__(self, model: Any, s: Setup, device: Any, dtype: Any) -> None:
        import torch

        self.model, self.device, self.dtype, self.setup = model, device, dtype, s
        self.opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def step(self, step: int, noisy: Any, clean: Any) -> tuple[float, float]:
        """One step: ``(loss before the update, ms)``; the learning rate ramps up linearly over ``lr_warmup``."""
        import torch
        import torch.nn.functional as F  # noqa: N812

        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for group in self.opt.param_groups:
            group["lr"] = self.setup.lr * min(1.0, (step + 1) / max(1, self.setup.lr_warmup))
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            pred = self.model(noisy)
        loss = F.mse_loss(pred.float(), clean)
        loss.backward()
        self.opt.step()
        if cuda:
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            ms = (time.perf_counter() - t0) * 1e3
        return float(loss.detach()), float(ms)

    def grads(self) -> Any:
        import torch

        return torch.cat([p.grad.detach().float().flatten() for p in self.model.parameters() if p.grad is not None])


def summarize(rows: list[dict[str, Any]], grad_rel_diff: float, warmup: int, tol: float,
              max_ratio: float) -> Summary:
    """The run's summary from its rows (``loss_*``, ``ms_*``, ``rel_gap`` per step)."""
    ours = [r["loss_ours"] for r in rows]
    sdpa = [r["loss_sdpa"] for r in rows]
    tail = max(1, len(rows) // 10)
    final = (statistics.fmean(ours[-tail:]), statistics.fmean(sdpa[-tail:]))
    timed = rows[warmup:] if len(rows) > warmup else rows
    ms = (statistics.median(r["ms_ours"] for r in timed), statistics.median(r["ms_sdpa"] for r in timed))
    gap = abs(final[0] - final[1]) / final[1]
    initial = (ours[0], sdpa[0])
    passed = gap <= tol and final[0] / initial[0] <= max_ratio and final[1] / initial[1] <= max_ratio
    return Summary(initial=initial, final=final, max_rel_gap=max(r["rel_gap"] for r in rows),
                   grad_rel_diff=grad_rel_diff, ms=ms, final_gap=gap, passed=passed)


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/training_smoke.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="CSV file (rewritten atomically after every step)")
    p.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu runs the kernels under the Triton interpreter (TRITON_INTERPRET=1; tiny sizes only)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="autocast dtype (bf16 needs a GPU)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the median ms (compilation)")
    p.add_argument("--layout", default="64x64", help="token layout, 1 to 3 axes (e.g. 64x64, 8x16x16)")
    p.add_argument("--window", default="17", help="GNA window: one value or one per axis")
    p.add_argument("--stride", default="1", help="GNA stride: one value or one per axis")
    p.add_argument("--dilation", default="1", help="GNA dilation: one value or one per axis")
    p.add_argument("--q-tile", default=None, help="our kernel's Q tile (default: the cost model's pick)")
    p.add_argument("--kv-tile", default=None, help="our kernel's KV tile (default: the cost model's pick)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=16, help="input/output channels per token")
    p.add_argument("--mlp-ratio", type=int, default=4)
    p.add_argument("--smooth", type=int, default=5, help="box filter width of the clean field, per axis")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (after the warm-up)")
    p.add_argument("--lr-warmup", type=int, default=10, help="steps of linear learning-rate warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=0.02, help="allowed relative gap of the final losses")
    p.add_argument("--max-ratio", type=float, default=0.5, help="final/initial loss each run must reach")
    return p


def _setup(args: argparse.Namespace) -> Setup:
    layout = _shape(args.layout, None, "layout")
    rank = len(layout)
    for name in ("steps", "heads", "head_dim", "blocks", "batch", "channels", "mlp_ratio", "smooth"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}; allowed: a positive integer")
    if not (args.lr > 0 and args.tol >= 0 and args.max_ratio > 0 and args.warmup >= 0 and args.lr_warmup >= 0):
        raise ValueError("--lr, --max-ratio: allowed: positive; --tol, --warmup, --lr-warmup: allowed: at least 0")

    def tile(text: str | None, what: str) -> tuple[int, ...] | None:
        return None if text is None else _shape(text, rank, what)

    return Setup(layout=layout, window=_shape(args.window, rank, "window"), stride=_shape(args.stride, rank, "stride"),
                 dilation=_shape(args.dilation, rank, "dilation"), heads=args.heads, head_dim=args.head_dim,
                 blocks=args.blocks, batch=args.batch, channels=args.channels, mlp_ratio=args.mlp_ratio,
                 smooth=args.smooth, lr=args.lr, lr_warmup=args.lr_warmup, q_tile=tile(args.q_tile, "q-tile"),
                 kv_tile=tile(args.kv_tile, "kv-tile"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        s = _setup(args)
        if args.device == "cpu":
            os.environ["TRITON_INTERPRET"] = "1"  # before triton decorates the kernels (CPU tensors need it)
        from sparsesim.simulator import GNAPattern
        from sparsesim.simulator.files import check_output, write_text

        GNAPattern(input_size=s.layout, window=s.window, stride=s.stride, dilation=s.dilation)  # validates
        if args.out is not None:
            check_output(args.out, "--out", stdout_ok=False)
    except ValueError as exc:  # ConfigError is a ValueError
        print(f"training_smoke: {exc}", file=sys.stderr)
        return 2
    import torch
    import triton
    from kernel_bench import git_commit

    if args.device == "cuda" and not torch.cuda.is_available():
        print("training_smoke: --device cuda: no CUDA device; use --device cpu (Triton interpreter)", file=sys.stderr)
        return 2
    if args.device == "cpu" and args.dtype == "bf16":
        print("training_smoke: --dtype bf16 on cpu: the interpreter's bf16 tl.dot is wrong; allowed: fp32, fp16",
              file=sys.stderr)
        return 2
    device, dtype = torch.device(args.device), getattr(torch, DTYPES[args.dtype])
    env = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (TRITON_INTERPRET=1)",
           "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"), "commit": args.commit or git_commit(),
           "torch": torch.__version__, "triton": triton.__version__, "device": args.device, "dtype": args.dtype,
           **{k: "x".join(map(str, getattr(s, k))) for k in ("layout", "window", "stride", "dilation")},
           "heads": s.heads, "head_dim": s.head_dim, "blocks": s.blocks, "batch": s.batch, "lr": s.lr}
    print(env, flush=True)
    try:
        ours_fn, sdpa_fn = attention_fns(s, device)
        with torch.no_grad():  # bad tiles or dtypes found now, not at step 0
            ours_fn(*(torch.randn(1, math.prod(s.layout), s.heads, s.head_dim, device=device, dtype=dtype)
                      for _ in range(3)))
    except ValueError as exc:  # a mask too large for the dense reference, bad tiles
        print(f"training_smoke: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model_ours = build_model(s, ours_fn).to(device)
    model_sdpa = build_model(s, sdpa_fn).to(device)
    model_sdpa.load_state_dict(model_ours.state_dict())  # the same initial weights
    runs = {"ours": Trainer(model_ours, s, device, dtype), "sdpa": Trainer(model_sdpa, s, device, dtype)}
    rows: list[dict[str, Any]] = []
    grad_rel_diff = float("nan")
    for step in range(args.steps):
        noisy, clean = make_batch(s, step, args.seed, device)
        res = {name: run.step(step, noisy, clean) for name, run in runs.items()}
        if step == 0:  # the same weights and data: the gradients differ only by the kernels' rounding
            ga, gb = runs["ours"].grads(), runs["sdpa"].grads()
            grad_rel_diff = float((ga - gb).norm() / gb.norm().clamp_min(1e-30))
            q_rows = model_ours.blocks[0].qkv.weight.grad[: s.heads * s.head_dim]
            if not bool(q_rows.abs().sum() > 0):
                print("training_smoke: no gradient reached the Q projection through gna_attention", file=sys.stderr)
                return 1
        (lo, mo), (ls, ms) = res["ours"], res["sdpa"]
        rows.append({**env, "step": step, "loss_ours": lo, "loss_sdpa": ls, "rel_gap": abs(lo - ls) / ls,
                     "ms_ours": mo, "ms_sdpa": ms})
        if not (math.isfinite(lo) and math.isfinite(ls)):
            print(f"step {step}: non-finite loss (ours {lo}, sdpa {ls})", file=sys.stderr)
            break
        if args.out is not None:
            write_text(_csv(rows), args.out, "--out")
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss ours {lo:.5f}  sdpa {ls:.5f}  rel_gap {abs(lo - ls) / ls:.2e}  "
                  f"ms ours {mo:8.2f}  sdpa {ms:8.2f}", flush=True)
    sm = summarize(rows, grad_rel_diff, args.warmup, args.tol, args.max_ratio)
    ra, rb = sm.ratios
    tail = max(1, len(rows) // 10)
    after = args.warmup if len(rows) > args.warmup else 0
    print(f"\nsteps {len(rows)}; final = mean of the last {tail} step(s)\n"
          f"loss initial: ours {sm.initial[0]:.5f}  sdpa {sm.initial[1]:.5f}\n"
          f"loss final:   ours {sm.final[0]:.5f}  sdpa {sm.final[1]:.5f}  (relative gap {sm.final_gap:.2%})\n"
          f"final/initial: ours {ra:.3f}  sdpa {rb:.3f}\n"
          f"max relative gap over steps: {sm.max_rel_gap:.2e}; step-0 gradient relative difference: "
          f"{sm.grad_rel_diff:.2e}\n"
          f"ms per step (median from step {after}): ours {sm.ms[0]:.2f}  sdpa {sm.ms[1]:.2f}  "
          f"(sdpa/ours {sm.ms[1] / sm.ms[0]:.2f}x)")
    verdict = "PASS" if sm.passed else "FAIL"
    print(f"verdict: {verdict}: final losses within {sm.final_gap:.2%} (allowed {args.tol:.0%}), final/initial "
          f"{ra:.3f} and {rb:.3f} (allowed at most {args.max_ratio})")
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0 if sm.passed and len(rows) == args.steps else 1


if __name__ == "__main__":
    sys.exit(main())
