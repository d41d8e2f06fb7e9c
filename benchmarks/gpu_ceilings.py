"""Measure a GPU's ceilings and the dense attention baselines the cost model is checked against.

    python benchmarks/gpu_ceilings.py --out DIR

Writes ``ceilings_<gpu>_<date>.json``: HBM copy bandwidth (bytes read + written), L2 read bandwidth
(a buffer that fits in L2, read repeatedly), a bf16 GEMM's TFLOP/s on random data, and torch SDPA
(cuDNN and flash backends) forward times at the benchmark's dense shapes. All timings are medians of
CUDA-event-timed runs after warm-up (triton.testing.do_bench).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path


def main() -> None:
    import torch
    import triton
    from triton.testing import do_bench

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    args = parser.parse_args()
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    from kernel_bench import git_commit

    from sparsesim.simulator.flops import dense_flops

    commit = args.commit or git_commit(Path(__file__).parent)
    res: dict = {"gpu": props.name, "sms": props.multi_processor_count, "l2_bytes": props.L2_cache_size,
                 "date": dt.date.today().isoformat(), "commit": commit or "unknown", "torch": torch.__version__,
                 "triton": triton.__version__}

    def bench(fn) -> float:
        return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))

    # HBM: device-to-device copy of 4 GiB (read + write counted).
    n = 1 << 30
    src = torch.randn(n, device=dev, dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    res["hbm_copy_TBps"] = 2 * src.numel() * 4 / (ms * 1e-3) / 1e12
    src = dst = None
    # L2: read a 16 MiB buffer (fits in L2) with a sum, many times.
    small = torch.randn(4 << 20, device=dev, dtype=torch.float32)
    ms = bench(lambda: small.sum())
    res["l2_read_TBps_sum16MiB"] = small.numel() * 4 / (ms * 1e-3) / 1e12
    small2 = torch.empty_like(small)
    ms = bench(lambda: small2.copy_(small))
    res["l2_copy_TBps_16MiB"] = 2 * small.numel() * 4 / (ms * 1e-3) / 1e12
    # bf16 GEMM on random data.
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    ms = bench(lambda: a @ b)
    res["gemm_bf16_8192_TFLOPs"] = 2 * 8192**3 / (ms * 1e-3) / 1e12
    a = b = None
    # Dense attention baselines: B=1, H=24, D=128, bf16, non-causal; FLOPs = 4 * B * H * N^2 * D.
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa
    rows = []
    for n_tok in (16384, 65536, 115200):
        q, k, v = (torch.randn(1, 24, n_tok, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
        flops = dense_flops(n_tok, heads=24, head_dim=128)
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                with sdpa_kernel(backend):
                    ms = bench(lambda q=q, k=k, v=v: sdpa(q, k, v))
                rows.append({"n": n_tok, "impl": name, "ms": ms, "TFLOPs": flops / (ms * 1e-3) / 1e12})
            except Exception as exc:  # noqa: BLE001 - record and go on
                rows.append({"n": n_tok, "impl": name, "error": str(exc)[:200]})
    res["sdpa"] = rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = props.name.replace(" ", "_")
    path = out / f"ceilings_{name}_{res['date']}_{str(res['commit'])[:7]}.json"
    path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
