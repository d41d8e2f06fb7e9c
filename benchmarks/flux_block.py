"""GPU: where a FLUX.1-dev step at 4K spends its time, measured, beside the workload model's split.

    python benchmarks/flux_block.py --out DIR [--tiny]

The GNA paper measured attention at 51.8% of FLUX-4K's end-to-end time on a B200; the workload model
(`simulate e2e`) gives 76.7%. This script times what the model abstracts: one double-stream and one
single-stream block of FLUX.1-dev, written after the diffusers implementation (AdaLayerNormZero
modulation, LayerNorm without affine, RMSNorm on q and k, rotary embeddings applied in float32, GELU
(tanh) MLPs, joint text+image attention through torch SDPA with the cuDNN backend), bf16, random
weights, 4096x4096 pixels = 65,536 image tokens + 512 text tokens, hidden 3072, 24 heads x 128. For each
block: the whole forward, its attention call alone, and its linear layers alone (same shapes, in a
row), so attention, GEMMs and the rest (norms, modulation, rotary, activations, residuals, copies)
are measured apart. Per step: 19 double + 38 single blocks. ``--tiny`` runs small shapes on any device
(a smoke test of the code, no timing claims).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DIM, HEADS, HEAD_DIM, MLP = 3072, 24, 128, 12288
IMAGE_TOKENS, TEXT_TOKENS = 65536, 512
DOUBLE, SINGLE = 19, 38


def build(dim: int, heads: int, mlp: int, device: Any, dtype: Any) -> dict[str, Any]:
    import torch

    def lin(n_in: int, n_out: int) -> Any:
        return torch.nn.Linear(n_in, n_out, device=device, dtype=dtype)

    double = {"mod_img": lin(dim, 6 * dim), "mod_txt": lin(dim, 6 * dim),
              "q": lin(dim, dim), "k": lin(dim, dim), "v": lin(dim, dim),
              "aq": lin(dim, dim), "ak": lin(dim, dim), "av": lin(dim, dim),
              "out": lin(dim, dim), "aout": lin(dim, dim),
              "ff1": lin(dim, mlp), "ff2": lin(mlp, dim), "aff1": lin(dim, mlp), "aff2": lin(mlp, dim)}
    single = {"mod": lin(dim, 3 * dim), "q": lin(dim, dim), "k": lin(dim, dim), "v": lin(dim, dim),
              "mlp": lin(dim, mlp), "proj": lin(dim + mlp, dim)}
    return {"double": double, "single": single}


def rms(x: Any, eps: float = 1e-6) -> Any:
    import torch

    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)


def rope(x: Any, cos: Any, sin: Any) -> Any:
    """Rotary embedding as diffusers applies it: in float32, pairs of channels rotated."""
    import torch

    xf = x.float().unflatten(-1, (-1, 2))
    real, imag = xf.unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(-2)
    return (x.float() * cos + rotated * sin).to(x.dtype)


def attention(q: Any, k: Any, v: Any, cudnn: bool) -> Any:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if cudnn:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def heads_of(x: Any, heads: int) -> Any:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def double_block(w: dict[str, Any], img: Any, txt: Any, temb: Any, cos: Any, sin: Any, heads: int,
                 cudnn: bool) -> tuple[Any, Any]:
    import torch
    import torch.nn.functional as F

    mi = w["mod_img"](F.silu(temb)).chunk(6, dim=-1)
    mt = w["mod_txt"](F.silu(temb)).chunk(6, dim=-1)
    ni = F.layer_norm(img, img.shape[-1:]) * (1 + mi[1][:, None]) + mi[0][:, None]
    nt = F.layer_norm(txt, txt.shape[-1:]) * (1 + mt[1][:, None]) + mt[0][:, None]
    q = torch.cat([rms(heads_of(w["aq"](nt), heads)), rms(heads_of(w["q"](ni), heads))], dim=2)
    k = torch.cat([rms(heads_of(w["ak"](nt), heads)), rms(heads_of(w["k"](ni), heads))], dim=2)
    v = torch.cat([heads_of(w["av"](nt), heads), heads_of(w["v"](ni), heads)], dim=2)
    o = attention(rope(q, cos, sin), rope(k, cos, sin), v, cudnn).transpose(1, 2).flatten(-2)
    ot, oi = o[:, :txt.shape[1]], o[:, txt.shape[1]:]
    img = img + mi[2][:, None] * w["out"](oi)
    txt = txt + mt[2][:, None] * w["aout"](ot)
    ni = F.layer_norm(img, img.shape[-1:]) * (1 + mi[4][:, None]) + mi[3][:, None]
    nt = F.layer_norm(txt, txt.shape[-1:]) * (1 + mt[4][:, None]) + mt[3][:, None]
    img = img + mi[5][:, None] * w["ff2"](F.gelu(w["ff1"](ni), approximate="tanh"))
    txt = txt + mt[5][:, None] * w["aff2"](F.gelu(w["aff1"](nt), approximate="tanh"))
    return img, txt


def single_block(w: dict[str, Any], x: Any, temb: Any, cos: Any, sin: Any, heads: int, cudnn: bool) -> Any:
    import torch
    import torch.nn.functional as F

    m = w["mod"](F.silu(temb)).chunk(3, dim=-1)
    n = F.layer_norm(x, x.shape[-1:]) * (1 + m[1][:, None]) + m[0][:, None]
    hidden = F.gelu(w["mlp"](n), approximate="tanh")
    q, k = rms(heads_of(w["q"](n), heads)), rms(heads_of(w["k"](n), heads))
    o = attention(rope(q, cos, sin), rope(k, cos, sin), heads_of(w["v"](n), heads), cudnn)
    return x + m[2][:, None] * w["proj"](torch.cat([o.transpose(1, 2).flatten(-2), hidden], dim=-1))


def gemms(w: dict[str, Any], tokens: int, text: int, dim: int, mlp: int, device: Any, dtype: Any,
          kind: str) -> list[Any]:
    """The block's linear layers as separate calls on inputs of the right shapes (the GEMM share)."""
    import torch

    x = torch.randn(1, tokens, dim, device=device, dtype=dtype)
    t = torch.randn(1, text, dim, device=device, dtype=dtype)
    h = torch.randn(1, tokens, mlp, device=device, dtype=dtype)
    th = torch.randn(1, text, mlp, device=device, dtype=dtype)
    if kind == "double":
        return [lambda: [w[n](x) for n in ("q", "k", "v", "out", "ff1")] + [w["ff2"](h)],
                lambda: [w[n](t) for n in ("aq", "ak", "av", "aout", "aff1")] + [w["aff2"](th)]]
    j = torch.randn(1, tokens + text, dim, device=device, dtype=dtype)
    jc = torch.randn(1, tokens + text, dim + mlp, device=device, dtype=dtype)
    return [lambda: [w[n](j) for n in ("q", "k", "v", "mlp")] + [w["proj"](jc)]]


def timer(device: Any) -> Any:
    """Median device ms (do_bench) on a GPU; one host-clock run elsewhere (no timing claims)."""
    import time

    if device.type == "cuda":
        import triton

        return lambda fn: float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))

    def host(fn: Any) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/flux_block.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder of the JSON result")
    parser.add_argument("--tiny", action="store_true", help="small shapes on any device (code smoke test)")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    full = (DIM, HEADS, MLP, IMAGE_TOKENS, TEXT_TOKENS)
    dim, heads, mlp, tokens, text = full if not args.tiny else (64, 2, 256, 96, 8)
    torch.manual_seed(0)
    with torch.no_grad():
        w = build(dim, heads, mlp, device, dtype)
        img = torch.randn(1, tokens, dim, device=device, dtype=dtype)
        txt = torch.randn(1, text, dim, device=device, dtype=dtype)
        temb = torch.randn(1, dim, device=device, dtype=dtype)
        angle = torch.rand(tokens + text, dim // heads, device=device)
        cos, sin = torch.cos(angle), torch.sin(angle)
        joint = torch.cat([txt, img], dim=1)
        q = torch.randn(1, heads, tokens + text, dim // heads, device=device, dtype=dtype)
        time_ms = timer(device)
        res: dict[str, Any] = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                               "tiny": args.tiny, "tokens": tokens, "text_tokens": text, "dim": dim, "heads": heads}
        res["double_ms"] = time_ms(lambda: double_block(w["double"], img, txt, temb, cos, sin, heads, cuda))
        res["single_ms"] = time_ms(lambda: single_block(w["single"], joint, temb, cos, sin, heads, cuda))
        res["attention_ms"] = time_ms(lambda: attention(q, q, q, cuda))
        res["double_gemm_ms"] = sum(time_ms(f) for f in gemms(w["double"], tokens, text, dim, mlp, device, dtype,
                                                              "double"))
        res["single_gemm_ms"] = sum(time_ms(f) for f in gemms(w["single"], tokens, text, dim, mlp, device, dtype,
                                                              "single"))
    step = DOUBLE * res["double_ms"] + SINGLE * res["single_ms"]
    attn = (DOUBLE + SINGLE) * res["attention_ms"]
    gemm = DOUBLE * res["double_gemm_ms"] + SINGLE * res["single_gemm_ms"]
    res.update({"step_ms": step, "step_attention_ms": attn, "step_gemm_ms": gemm,
                "step_other_ms": step - attn - gemm, "attention_share": attn / step})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flux_block.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
