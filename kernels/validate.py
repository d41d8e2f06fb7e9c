"""``simulate validate``: measure configurations on a GPU, with the model's predictions beside them.

Each configuration (a GNA pattern and its problem) becomes one case per kernel asked for:

- ``gna``: :func:`~sparsesim.kernels.gna_attention` on the pattern (its tiles, or the model's pick);
- ``block_sparse``: :func:`~sparsesim.kernels.block_sparse_attention` on the 1D pattern's visited
  blocks (128-token tiles unless given);
- ``dense`` (our dense kernel), ``cudnn`` and ``flash`` (torch SDPA backends): dense attention over
  the same tokens, once per distinct dense problem.

A case is checked first (fresh random inputs, the output poisoned with NaN, ``||out - ref|| /
||ref||`` on sampled rows against a float32 reference with the exact mask), then timed as a whole
call (median device time of back-to-back calls). With ``backprop`` a case is forward+backward
(``passes = "fwd+bwd"``): q, k, v require grad and the timed call is the forward and
``torch.autograd.grad`` of its output with a fixed random dO (our kernels through their custom ops,
cuDNN/flash through SDPA); the check compares the output and dQ on the sampled rows against a
float64 reference (dK/dV need every row: not checked here; tests/kernels check them). Every finished
row is appended to the CSV at once, so an interrupted run keeps it and ``--resume`` skips it. With
``jobs > 1`` the checks (and so the compiles, which are CPU work) first run on ``jobs`` worker processes at once,
spread over the devices (:func:`check_stage`), and the timings after them, never beside another process's work on
their GPU. With ``devices`` (``--devices``), one worker process per GPU checks (unless the check stage did) and
times whole cases, handed out longest predicted first (:mod:`sparsesim.kernels.workers`); this process predicts
and writes every row as above, in the order they finish, its ``gpu`` naming the device (``NVIDIA H200 (cuda:1)``).

Where the time goes: with the environment variable ``SPARSESIM_PHASES`` set (``1``: ``<out>.phases.json``; else
the path), a run that ends normally also writes its phases as JSON (:mod:`sparsesim.kernels.phases`: per device
the worker's spawn, imports and CUDA start (:func:`warm_up`), each case's first call (compiles), check and timed
calls, the waits and the idle tail; the calling process's own for a run without ``devices``; the check stage's
per worker under ``checks``). The CSV is the same.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import functools
import hashlib
import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsesim.kernels import phases
from sparsesim.kernels.phases import TaskTiming

KERNELS = ("gna", "block_sparse", "dense", "cudnn", "flash")
#: The model's profile beside each kernel's measurement, and which of its times is compared.
PREDICTION = {"gna": ("triton", "call_ms"), "block_sparse": ("triton", "call_ms"),
              "dense": ("triton", "dense_ms"), "cudnn": ("cudnn", "dense_ms"), "flash": (None, None)}
BLOCK_TILE = 128
COLUMNS = [
    "config_id", "case_id", "kernel", "input_size", "window", "stride", "dilation", "causal", "q_tile", "kv_tile",
    "tokens", "heads", "heads_kv", "head_dim", "batch", "dtype", "kv_layout", "measured_ms", "rel_err", "unwritten",
    "ok", "predicted_ms", "predicted_profile", "reference_ms", "tile_speedup", "flop_speedup", "gpu", "driver",
    "torch", "triton", "commit", "date", "note", "passes", "fwd_kernel",
]


def _shape(value: Any) -> str:
    if value is None:
        return ""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if items and all(isinstance(v, bool) for v in items):
        return "".join("1" if v else "0" for v in items)
    return "x".join(str(int(v)) for v in items)


@dataclass(frozen=True)
class Case:
    """One kernel on one configuration (the keywords of :func:`sparsesim.simulator.engine`)."""

    kernel: str
    config: tuple[tuple[str, Any], ...]
    backprop: bool = False

    @property
    def kw(self) -> dict[str, Any]:
        return dict(self.config)

    @property
    def config_id(self) -> str:
        """Identifies the configuration (for train/held-out splits: never split by row)."""
        return hashlib.sha1(json.dumps(self.config, default=str).encode()).hexdigest()[:12]

    @property
    def case_id(self) -> str:
        return f"{self.config_id}-{self.kernel}" + ("-bwd" if self.backprop else "")

    @property
    def passes(self) -> str:
        return "fwd+bwd" if self.backprop else "fwd"


def _freeze(cfg: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    def norm(v: Any) -> Any:
        return tuple(norm(x) for x in v) if isinstance(v, (list, tuple)) else v

    return tuple(sorted((k, norm(v)) for k, v in cfg.items() if v is not None))


PROBLEM_KEYS = ("heads", "heads_kv", "head_dim", "batch", "dtype")


def make_cases(configs: Iterable[Mapping[str, Any]], kernels: Sequence[str], backprop: bool = False) -> list[Case]:
    """The cases to measure, in order, without duplicates (dense problems once); ``backprop``: forward+backward."""
    bad = [k for k in kernels if k not in KERNELS]
    if bad or not kernels:
        from sparsesim.simulator.errors import ConfigError

        raise ConfigError(f"--kernels {','.join(kernels)}; allowed: a comma-separated subset of {','.join(KERNELS)}")
    out: list[Case] = []
    seen: set[Case] = set()
    for cfg in configs:
        pattern = {k: v for k, v in cfg.items() if k in ("input_size", "window", "stride", "dilation", "causal",
                                                          "q_tile", "kv_tile")}
        problem = {k: cfg[k] for k in PROBLEM_KEYS if k in cfg}
        size = pattern["input_size"]
        tokens = math.prod(size) if isinstance(size, (list, tuple)) else int(size)
        for kernel in kernels:
            if kernel == "gna":
                case = Case("gna", _freeze({**pattern, **problem}), backprop)
            elif kernel == "block_sparse":
                if isinstance(size, (list, tuple)) and len(size) != 1:
                    continue  # block maps are 1D here
                case = Case("block_sparse", _freeze({**pattern, **problem}), backprop)
            else:
                case = Case(kernel, _freeze({"input_size": (tokens,), **problem}), backprop)
            if case not in seen:
                seen.add(case)
                out.append(case)
    return out


def environment(commit: str | None = None) -> dict[str, str]:
    """GPU, driver, torch, triton, commit and date of this run."""
    import torch
    import triton

    gpu, driver = "cpu (Triton interpreter)", ""
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        gpu = torch.cuda.get_device_name()
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            driver = "unknown"
    return {"gpu": gpu, "driver": driver, "torch": torch.__version__, "triton": triton.__version__,
            "commit": commit or git_commit(), "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")}


def git_commit(where: Path | None = None) -> str:
    """The checked-out commit's hash, or 'unknown'."""
    try:
        res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where or Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = res.stdout.strip()
    return sha if res.returncode == 0 and sha and all(c in "0123456789abcdef" for c in sha) else "unknown"


# --------------------------------------------------------------------------------------------
# One case: inputs, the call, its check, its prediction
# --------------------------------------------------------------------------------------------

def _dtype(name: str) -> Any:
    import torch

    from sparsesim.kernels._launch import interpret

    if interpret():
        return torch.float32 if name == "fp32" else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


#: What a run that measures in this process says when CUDA does not start here.
NO_GPU = ("simulate validate needs a CUDA GPU (or TRITON_INTERPRET=1 for a CPU dry run of tiny shapes, timed on the "
          "host)")


def require_cuda() -> None:
    """Raise a ConfigError (:data:`NO_GPU`) unless CUDA starts in this process or the Triton interpreter runs (this
    starts the CUDA driver here: workers forked after it would be spawned instead)."""
    import torch

    from sparsesim.kernels._launch import interpret
    from sparsesim.simulator.errors import ConfigError

    if not interpret() and not torch.cuda.is_available():
        raise ConfigError(NO_GPU)


def _device() -> Any:
    import torch

    from sparsesim.kernels._launch import interpret

    return torch.device("cpu") if interpret() else torch.device("cuda")


def block_map_of(kw: Mapping[str, Any]) -> Any:
    """The block map of a 1D pattern: its visited (Q tile, KV tile) pairs at the case's tiles."""
    from sparsesim.simulator import GNAPattern, box_schedule

    q = tuple(kw.get("q_tile") or (BLOCK_TILE,))
    kv = tuple(kw.get("kv_tile") or q)
    pattern = GNAPattern(input_size=kw["input_size"], window=kw["window"], stride=kw.get("stride", ()),
                         dilation=kw.get("dilation", ()), causal=kw.get("causal", ()))
    visited, _ = box_schedule(pattern, q, kv).tile_classes()
    return visited, q[0], kv[0]


def build_call(case: Case, seed: int) -> tuple[Callable[[Any], Any], Any, Any, Any, Callable[[Any], Any], str, str]:
    """Inputs and the call of one case: ``(call(out), q, k, v, mask_fn, kv_layout, fwd_kernel)``; ``fwd_kernel``:
    which forward kernel the call runs (``ws``: the warp-specialized Hopper kernel, ``triton``: our Triton kernels,
    else the SDPA backend's name), as the kernels' own route rules say for these tensors."""
    import numpy as np

    kw = case.kw
    dtype, device = _dtype(kw.get("dtype", "bf16")), _device()
    heads, head_dim, batch = kw.get("heads", 24), kw.get("head_dim", 128), kw.get("batch", 1)
    heads_kv = kw.get("heads_kv") or heads
    size = tuple(kw["input_size"])
    q = random_qkv((batch, *size, heads, head_dim), dtype, device, seed)
    k = random_qkv((batch, *size, heads_kv, head_dim), dtype, device, seed + 1)
    v = random_qkv((batch, *size, heads_kv, head_dim), dtype, device, seed + 2)
    n = math.prod(size)
    if case.kernel == "gna":
        from sparsesim.kernels.gna import build_launch, gna_attention
        from sparsesim.simulator.patterns import GNAPattern, visible_mask

        pat = {"window": kw["window"], "stride": kw.get("stride", 1), "dilation": kw.get("dilation", 1),
               "causal": kw.get("causal", False)}
        tiles = {"q_tile": kw.get("q_tile"), "kv_tile": kw.get("kv_tile")}
        launch = build_launch(q, k, v, scale=None, kv_layout=None, **pat, **tiles)
        p = GNAPattern(input_size=size, **pat)

        def mask_fn(rows: Any) -> Any:
            return visible_mask(p, rows)

        import torch

        route = "ws" if launch.ws_route(q, k, v, torch.empty_like(q)) else "triton"
        return (lambda out: gna_attention(q, k, v, out=out, **pat, **tiles)), q, k, v, mask_fn, launch.kv_layout, \
            route
    if case.kernel == "block_sparse":
        from sparsesim.kernels import block_sparse_attention
        from sparsesim.kernels.block_sparse import takes_ws as block_takes_ws

        bm, qt, kt = block_map_of(kw)

        def mask_fn(rows: Any) -> Any:
            return np.repeat(bm[rows // qt], kt, axis=1)[:, :n]

        return (lambda out: block_sparse_attention(q, k, v, bm, q_tile=qt, kv_tile=kt, out=out)), q, k, v, mask_fn, \
            "direct", "ws" if block_takes_ws(q, k, v, qt, kt) else "triton"

    def dense_mask(rows: Any) -> Any:
        return np.ones((len(rows), n), dtype=bool)

    if case.kernel == "dense":
        from sparsesim.kernels import attention
        from sparsesim.kernels.dense import takes_ws as dense_takes_ws

        return (lambda out: attention(q, k, v, out=out)), q, k, v, dense_mask, "direct", \
            "ws" if dense_takes_ws(q, k, v) else "triton"
    return _sdpa_call(case.kernel, q, k, v), q, k, v, dense_mask, "direct", case.kernel


def build_grad_call(case: Case, seed: int) -> tuple[Callable[[], Any], Any, Any, Any, Any, Callable[[Any], Any], str,
                                                    str]:
    """Forward+backward of one case: ``(step, q, k, v, dout, mask_fn, kv_layout, fwd_kernel)`` (``fwd_kernel`` as
    :func:`build_call` says); ``step()`` returns
    ``(out, dq, dk, dv)`` in the ``[B, *layout, H, D]`` layout (q, k, v require grad; ``dout`` is fixed)."""
    import torch

    _, q, k, v, mask_fn, layout, route = build_call(case, seed)
    for x in (q, k, v):
        x.requires_grad_(True)
    dout = random_qkv(tuple(q.shape), q.dtype, q.device, seed + 4)
    kw = case.kw
    if case.kernel == "gna":
        from sparsesim.kernels.gna import gna_attention

        pat = {"window": kw["window"], "stride": kw.get("stride", 1), "dilation": kw.get("dilation", 1),
               "causal": kw.get("causal", False), "q_tile": kw.get("q_tile"), "kv_tile": kw.get("kv_tile")}

        def fwd() -> Any:
            return gna_attention(q, k, v, **pat)
    elif case.kernel == "block_sparse":
        from sparsesim.kernels import block_sparse_attention

        bm, qt, kt = block_map_of(kw)

        def fwd() -> Any:
            return block_sparse_attention(q, k, v, bm, q_tile=qt, kv_tile=kt)
    elif case.kernel == "dense":
        from sparsesim.kernels import attention

        def fwd() -> Any:
            return attention(q, k, v)
    else:
        return _sdpa_grad_call(case.kernel, q, k, v, dout) + (dout, mask_fn, layout, route)

    def step() -> tuple[Any, Any, Any, Any]:
        out = fwd()
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
        return out, dq, dk, dv

    return step, q, k, v, dout, mask_fn, layout, route


def _sdpa_grad_call(name: str, q: Any, k: Any, v: Any, dout: Any) -> tuple[Callable[[], Any], Any, Any, Any]:
    """SDPA forward+backward on ``[B, H, N, D]`` leaf copies (KV heads repeated for GQA): the bare call a user
    times; ``step()`` maps the output and dQ back to the caller's layout (dK/dV stay in SDPA's)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if q.device.type != "cuda":
        raise RuntimeError(f"kernel {name!r} (torch SDPA) needs a CUDA GPU")
    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[name]
    group = q.shape[-2] // k.shape[-2]
    qd = q.detach().flatten(1, -3).transpose(1, 2).contiguous().requires_grad_(True)
    kd, vd = (x.detach().flatten(1, -3).repeat_interleave(group, dim=-2).transpose(1, 2).contiguous()
              .requires_grad_(True) for x in (k, v))
    dod = dout.flatten(1, -3).transpose(1, 2).contiguous()

    def timed() -> Any:
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(qd, kd, vd)
        return out, *torch.autograd.grad(out, (qd, kd, vd), dod)

    def step() -> tuple[Any, Any, Any, Any]:
        out, dq, dk, dv = timed()
        return (out.transpose(1, 2).reshape(q.shape), dq.transpose(1, 2).reshape(q.shape), dk, dv)

    step.timed = timed  # type: ignore[attr-defined]
    return step, q, k, v


def dq_rows_reference(q_rows: Any, k: Any, v: Any, dout_rows: Any, mask_rows: Any) -> Any:
    """dQ of some query rows in float64 (``[B, R, H, D]``; k, v ``[B, N, Hkv, D]``; mask ``[R, N]``): dQ needs
    only its own rows' scores, ``dQ_i = scale * sum_j P_ij (dP_ij - Delta_i) K_j``."""
    import torch

    heads, heads_kv, d = q_rows.shape[2], k.shape[2], q_rows.shape[3]
    scale = 1.0 / math.sqrt(d)
    kv_idx = torch.arange(heads, device=k.device) // (heads // heads_kv)
    qh, do = q_rows.double(), dout_rows.double()
    kh, vh = (x.index_select(2, kv_idx).double() for x in (k, v))
    s = torch.einsum("brhd,bnhd->bhrn", qh, kh) * scale
    s = s.masked_fill(~mask_rows[None, None], float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    o = torch.einsum("bhrn,bnhd->bhrd", p, vh)
    dp = torch.einsum("brhd,bnhd->bhrn", do, vh)
    delta = (do.transpose(1, 2) * o).sum(-1, keepdim=True)
    return torch.einsum("bhrn,bnhd->brhd", p * (dp - delta), kh) * scale


def check_grad_case(case: Case, seed: int) -> dict[str, Any]:
    """Run a forward+backward case once; the larger of the output's and dQ's relative error on sampled rows."""
    import torch

    from sparsesim.kernels.reference import rel_error
    from sparsesim.kernels.timing import CHECK_ROWS, TOLERANCE, check_rows, synchronize

    try:
        step, q, k, v, dout, mask_fn, layout, route = build_grad_call(case, seed)
        with phases.timed("first_call_s"):
            out, dq, _, _ = step()
            synchronize()
        unwritten = int(torch.isnan(out).sum() + torch.isnan(dq).sum())
        err = check_rows(out.detach(), q.detach(), k.detach(), v.detach(), mask_fn, seed=seed + 3)
        n = math.prod(q.shape[1:-2])
        picked = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 5))[:CHECK_ROWS].sort().values
        flat = [x.detach().reshape(x.shape[0], n, x.shape[-2], x.shape[-1]) for x in (q, k, v, dout, dq)]
        rows = picked.to(q.device)
        mask = torch.as_tensor(mask_fn(picked.numpy()), device=q.device)
        ref = dq_rows_reference(flat[0][:, rows], flat[1], flat[2], flat[3][:, rows], mask)
        err = max(err, rel_error(flat[4][:, rows], ref))
        return {"rel_err": err, "unwritten": unwritten, "ok": bool(err < TOLERANCE and unwritten == 0),
                "kv_layout": layout, "fwd_kernel": route, "note": "rel_err: max of output and dQ on sampled rows"}
    except Exception as exc:  # noqa: BLE001 - one failing case is a result, not the end of the run
        return {"rel_err": float("nan"), "unwritten": -1, "ok": False, "kv_layout": "", "fwd_kernel": "",
                "note": f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}


def random_qkv(shape: tuple[int, ...], dtype: Any, device: Any, seed: int) -> Any:
    from sparsesim.kernels.timing import random_tensor

    return random_tensor(shape, dtype, device, seed)


def _sdpa_call(name: str, q: Any, k: Any, v: Any) -> Callable[[Any], Any]:
    """torch SDPA on the ``[B, H, N, D]`` copies of q, k, v; KV heads repeated for GQA.

    The call writes into the given output (for the check); its ``timed`` attribute is the bare SDPA
    call a user would time.
    """
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if q.device.type != "cuda":
        raise RuntimeError(f"kernel {name!r} (torch SDPA) needs a CUDA GPU")
    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[name]
    group = q.shape[-2] // k.shape[-2]
    qd = q.flatten(1, -3).transpose(1, 2).contiguous()
    kd, vd = (x.flatten(1, -3).repeat_interleave(group, dim=-2).transpose(1, 2).contiguous() for x in (k, v))

    def timed(out: Any = None) -> Any:
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(qd, kd, vd)

    def call(out: Any) -> Any:
        out.copy_(timed().transpose(1, 2).reshape(out.shape))
        return out

    call.timed = timed  # type: ignore[attr-defined]
    return call


def predict(case: Case) -> dict[str, Any]:
    """The model's numbers beside a case: the kernel's profile (``triton``/``cudnn``) and the reference."""
    from sparsesim.simulator import simulate

    kw = case.kw
    profile, column = PREDICTION[case.kernel]
    gpu = os.environ.get("SPARSESIM_VALIDATE_GPU", "H200")
    if profile is None or column is None:
        return {}
    base = {k: v for k, v in kw.items() if k in PROBLEM_KEYS}
    base["backprop"] = case.backprop
    if case.kernel in ("dense", "cudnn"):
        n = kw["input_size"][0]
        rec = simulate(input_size=n, window=n, gpu=gpu, dense_profile=profile, **base)
        ref = simulate(input_size=n, window=n, gpu=gpu, dense_profile="reference", **base)
        return {"predicted_ms": getattr(rec, column), "predicted_profile": rec.dense_profile,
                "reference_ms": ref.dense_ms, "tile_speedup": 1.0, "flop_speedup": 1.0}
    cfg = {**kw, "backprop": case.backprop}
    if case.kernel == "block_sparse":
        bm, qt, kt = block_map_of(kw)
        cfg = {"input_size": kw["input_size"], "block_map": bm, "q_tile": qt, "kv_tile": kt, **base}
    elif not kw.get("q_tile"):
        from sparsesim.simulator.patterns import GNAPattern
        from sparsesim.simulator.tile_choice import choose_tiles

        p = GNAPattern(input_size=kw["input_size"], window=kw["window"], stride=kw.get("stride", ()),
                       dilation=kw.get("dilation", ()), causal=kw.get("causal", ()))
        heads = kw.get("heads", 24)
        picked = choose_tiles(p, gpu, heads, kw.get("heads_kv") or heads, kw.get("head_dim", 128),
                              kw.get("batch", 1), kw.get("dtype", "bf16"))
        if picked:
            cfg["q_tile"], cfg["kv_tile"] = picked
    rec = simulate(gpu=gpu, kernel_profile=profile, **cfg)
    ref = simulate(gpu=gpu, kernel_profile="reference", **cfg)
    return {"predicted_ms": getattr(rec, column), "predicted_profile": rec.kernel_profile,
            "reference_ms": ref.call_ms, "tile_speedup": rec.tile_speedup, "flop_speedup": rec.flop_speedup,
            "q_tile": _shape(rec.q_tile), "kv_tile": _shape(rec.kv_tile)}


def check_case(case: Case, seed: int) -> dict[str, Any]:
    """Run a case once on poisoned output and check it (this also compiles its kernels)."""
    from sparsesim.kernels.timing import TOLERANCE, check_rows, poisoned_call

    if case.backprop:
        return check_grad_case(case, seed)
    try:
        call, q, k, v, mask_fn, layout, route = build_call(case, seed)
        with phases.timed("first_call_s"):
            out, unwritten = poisoned_call(call, q)
        err = check_rows(out, q, k, v, mask_fn, seed=seed + 3)
        return {"rel_err": err, "unwritten": unwritten, "ok": bool(err < TOLERANCE and unwritten == 0),
                "kv_layout": layout, "fwd_kernel": route, "note": ""}
    except Exception as exc:  # noqa: BLE001 - one failing case is a result, not the end of the run
        return {"rel_err": float("nan"), "unwritten": -1, "ok": False, "kv_layout": "", "fwd_kernel": "",
                "note": f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}


def time_case(case: Case, seed: int) -> float:
    """Median ms of a whole call of the case, back to back."""
    import torch

    from sparsesim.kernels.timing import time_ms

    if case.backprop:
        step = build_grad_call(case, seed)[0]
        timed = getattr(step, "timed", None)
        return time_ms(timed if timed is not None else step)
    call, q, *_ = build_call(case, seed)
    out = torch.empty_like(q)
    fn = getattr(call, "timed", None)
    return time_ms((lambda: fn(out)) if fn is not None else (lambda: call(out)))


def measure_case(case: Case, seed: int, check: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], float | None]:
    """Check a case (unless its ``check`` is given), then time it if the check passed: ``(check, ms or None)``."""
    if check is None:
        with phases.timed("check_s"):
            check = check_case(case, seed)
    result = dict(check)
    if not result["ok"]:
        return result, None
    try:
        with phases.timed("time_s"):
            return result, time_case(case, seed)
    except Exception as exc:  # noqa: BLE001 - one failing case is a result, not the end of the run
        return {**result, "ok": False, "note": f"ERROR timing {type(exc).__name__}: {exc}"[:200]}, None


#: What measures one case: ``measure(case, seed) -> (check, ms or None)`` (:func:`measure_case`).
Measure = Callable[[Case, int], tuple[dict[str, Any], "float | None"]]


def warm_up(cuda: bool = True) -> dict[str, float]:
    """What a measuring process does once before its first case, timed apart: import torch, triton and the kernels
    (``import_s``), then start CUDA on the current device (``cuda_init_s``; not under the interpreter or without a
    GPU). ``cuda=False``: the imports only, starting no CUDA (what the caller of forked workers runs before forking
    them: :func:`~sparsesim.kernels.workers.choose_start`)."""
    t0 = time.perf_counter()
    import torch
    import triton  # noqa: F401

    from sparsesim.kernels import block_sparse, dense, gna, reference, timing  # noqa: F401
    from sparsesim.kernels._launch import interpret

    took = {"import_s": time.perf_counter() - t0}
    if cuda and torch.cuda.is_available() and not interpret():
        t0 = time.perf_counter()
        torch.empty(1, device="cuda")
        torch.cuda.synchronize()
        took["cuda_init_s"] = time.perf_counter() - t0
    return took


#: How a case is checked: ``check(case, seed) -> check`` (:func:`check_case`).
Check = Callable[[Case, int], dict[str, Any]]


def _check_task(task: tuple[Check, int, Case]) -> dict[str, Any]:
    """One case's check in a check-stage worker (:func:`check_stage`)."""
    check, seed, case = task
    with phases.timed("check_s"):
        return check(case, seed)


#: Check-stage workers per GPU at most (each holds a case's inputs and reference rows on its GPU).
JOBS_PER_DEVICE = 8


def default_jobs(devices: Sequence[int], cpus: int | None = None) -> int:
    """``--jobs auto``: check-stage workers for a run on ``devices`` (``()``: one GPU) with ``cpus`` usable CPU
    cores (default: this process's): half the cores (a compile is one core's work; the timings run alone after
    them), at most :data:`JOBS_PER_DEVICE` per GPU, at least 1.

    >>> default_jobs((), cpus=16), default_jobs((0, 1), cpus=32), default_jobs((0, 1), cpus=2)
    (8, 16, 1)
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus // 2, JOBS_PER_DEVICE * max(len(devices), 1)))


def check_stage(order: Sequence[Case], jobs: int, devices: Sequence[int], seed: int, check: Check | None = None
                ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Check the cases (and so compile their kernels, into Triton's cache on disk) on ``jobs`` worker processes at
    once, spread round robin over ``devices`` (``()``: this process's device), in the order given, a worker
    preferring cases whose kernels it compiled (:func:`compile_key`). Returns the checks of the cases that passed,
    by case id, and the stage's phases (``jobs``, ``wall_s``, and per worker the :func:`~sparsesim.kernels.phases.
    breakdown`). A case that failed, or whose worker was lost, is not in the checks: its measuring process checks
    it again, alone on its GPU (beside other checks it may have run out of memory). No worker left: no checks.
    ``check`` (module-level) replaces :func:`check_case`."""
    from sparsesim.kernels.workers import WorkersLost, spread

    slots = [(tuple(devices) or (0,))[j % max(len(devices), 1)] for j in range(jobs)]
    checks: dict[str, dict[str, Any]] = {}
    stamps: list[TaskTiming] = []
    t0 = time.time()
    try:
        tasks = [(check or check_case, seed, c) for c in order]
        with closing(spread(_check_task, tasks, slots, keys=[compile_key(c) for c in order], prepare=warm_up,
                            preload=functools.partial(warm_up, cuda=False))) as outcomes:
            for o in outcomes:
                if o.timing is not None:
                    stamps.append(dataclasses.replace(o.timing, device=o.worker))
                if o.result is not None and o.result.get("ok"):
                    checks[order[o.index].case_id] = o.result
    except WorkersLost:
        pass
    t1 = time.time()
    return checks, {"jobs": jobs, "workers_on": slots, "wall_s": t1 - t0, "passed": len(checks),
                    "breakdown": phases.breakdown(stamps, t0, t1)}


# --------------------------------------------------------------------------------------------
# The run: resume, parallel checks, serial timings, one CSV row per case
# --------------------------------------------------------------------------------------------

def read_done(path: Path) -> set[str]:
    """Case ids already measured in ``path`` (rows that parse); an unreadable or missing file has none."""
    if not path.exists():
        return set()
    done = set()
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("case_id") and row.get("measured_ms") not in (None, ""):
                    done.add(row["case_id"])
    except (UnicodeDecodeError, csv.Error) as exc:
        from sparsesim.simulator.errors import ConfigError

        raise ConfigError(f"--out {str(path)!r} cannot be resumed: not a measurements CSV ({exc})") from None
    return done


def _row(case: Case, env: Mapping[str, str], check: Mapping[str, Any], ms: float | None,
         pred: Mapping[str, Any]) -> dict[str, Any]:
    kw = case.kw
    size = kw["input_size"]
    row = {"config_id": case.config_id, "case_id": case.case_id, "kernel": case.kernel,
           "input_size": _shape(size), "window": _shape(kw.get("window")), "stride": _shape(kw.get("stride")),
           "dilation": _shape(kw.get("dilation")), "causal": _shape(kw.get("causal")),
           "q_tile": _shape(kw.get("q_tile")), "kv_tile": _shape(kw.get("kv_tile")),
           "tokens": math.prod(size), "heads": kw.get("heads", 24),
           "heads_kv": kw.get("heads_kv") or kw.get("heads", 24),
           "head_dim": kw.get("head_dim", 128), "batch": kw.get("batch", 1), "dtype": kw.get("dtype", "bf16"),
           "passes": case.passes, "measured_ms": ms,
           **{k: check[k] for k in ("rel_err", "unwritten", "ok", "kv_layout", "note")},
           "fwd_kernel": check.get("fwd_kernel", ""), **env}
    row.update({k: v for k, v in pred.items() if v is not None and (k not in ("q_tile", "kv_tile") or not row[k])})
    return row


def run(cases: Sequence[Case], out: Path, *, resume: bool = False, jobs: int = 1, seed: int = 0,
        commit: str | None = None, progress: Callable[[int, int], None] | None = None,
        devices: Sequence[int] = (), measure: Measure | None = None,
        probe: Callable[[str], dict[str, str]] = environment, phases_out: Path | None = None) -> list[dict[str, Any]]:
    """Measure ``cases`` into ``out`` (appending; with ``resume`` skipping cases already there). ``out`` is checked
    first (:func:`sparsesim.simulator.files.check_output`): a regular file or a new one, never a device or FIFO.

    ``devices``: CUDA device indices, one worker process each (cases longest predicted first, rows in the order
    they finish); empty: every case here, in order. ``measure`` replaces :func:`measure_case` and ``probe`` the
    :func:`environment` of the rows (module-level functions where ``devices`` are given: each worker runs them).
    :class:`~sparsesim.kernels.workers.WorkersLost`: every worker exited with cases left (the rows written are
    kept; ``resume`` measures the rest). ``phases_out`` (default: from ``SPARSESIM_PHASES``, see the module): where
    the run's phases go as JSON (:func:`sparsesim.kernels.phases.write`), checked first too. Without ``measure``
    each measuring process runs :func:`warm_up` before its first case. ``jobs`` > 1 (without ``measure``): the
    checks first, on that many processes at once (:func:`check_stage`; :func:`default_jobs` is the CLI's default).
    """
    from sparsesim.simulator.errors import ConfigError
    from sparsesim.simulator.files import check_output

    start = time.time()
    target = check_output(out, "--out", stdout_ok=False)
    assert target is not None
    out = target
    env_phases = os.environ.get("SPARSESIM_PHASES", "").strip()
    if phases_out is None and env_phases:
        phases_out = Path(f"{out}.phases.json" if env_phases == "1" else env_phases)
    if phases_out is not None:
        check_output(phases_out, "SPARSESIM_PHASES", stdout_ok=False)
    if out.exists() and not resume:
        raise ConfigError(f"--out {str(out)!r} exists; pass --resume to continue it, or name a new file")
    if resume and out.exists() and out.stat().st_size:
        with open(out, newline="", encoding="utf-8", errors="replace") as fh:
            header = next(csv.reader(fh), [])
        if header != COLUMNS:
            raise ConfigError(f"--out {str(out)!r} cannot be resumed: its columns are not this version's "
                              f"(name a new file)")
    done = read_done(out) if resume else set()
    todo = [c for c in cases if c.case_id not in done]
    commit = commit or git_commit()
    timed: list[tuple[str, TaskTiming]] = []  # (case id, its stamps) as they finish
    preds = {c.case_id: _prediction(c) for c in todo}
    order = sorted(todo, key=lambda c: -expected_ms(c, preds[c.case_id][0]))
    checks: dict[str, dict[str, Any]] = {}
    stage: dict[str, Any] = {}
    if jobs > 1 and len(todo) > 1 and measure is None:  # before any CUDA here: the check workers may fork
        checks, stage = check_stage(order, jobs, devices, seed)
    info = {"checks": stage} if stage else {}
    if devices:
        with _appender(out) as write:
            rows = _run_on_devices(order, devices, write, (measure or measure_case, probe, seed, commit), progress,
                                   timed, warm_up if measure is None else None, preds, checks)
        if phases_out is not None:
            phases.write(phases_out, timed, start, time.time(), out=str(out), devices=list(devices), cases=len(todo),
                         **info)
        return rows
    if measure is None:
        require_cuda()  # after the check stage: its workers are forked only where CUDA has not started here
    prepared = warm_up() if measure is None else {}
    if stage:
        prepared["checks_s"] = stage["wall_s"]
    with phases.timed("probe_s"):
        env = probe(commit)
    prep, ready = tuple({**prepared, **phases.take()}.items()), time.time()
    rows = []
    with _appender(out) as write:
        for i, case in enumerate(todo):
            got = time.time()
            if case.case_id in checks:
                check, ms = measure_case(case, seed, checks[case.case_id])
            else:
                check, ms = (measure or measure_case)(case, seed)
            ended = time.time()
            timed.append((case.case_id, TaskTiming(None, i, start, start, ready, prep, got, ended,
                                                   tuple(phases.take().items()), ended)))
            row = _row(case, env, check, ms, _with_note(preds[case.case_id], check))
            write(row)
            rows.append(row)
            if progress is not None:
                progress(i + 1, len(todo))
    if phases_out is not None:
        phases.write(phases_out, timed, start, time.time(), out=str(out), devices=[], cases=len(todo), **info)
    return rows


@contextmanager
def _appender(out: Path) -> Iterator[Callable[[Mapping[str, Any]], None]]:
    """Append rows to the CSV (its header first when new), each flushed at once: an interruption keeps them."""
    new_file = not out.exists() or out.stat().st_size == 0
    with open(out, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, restval="", extrasaction="ignore")
        if new_file:
            writer.writeheader()

        def write(row: Mapping[str, Any]) -> None:
            writer.writerow(row)
            fh.flush()

        yield write


def _prediction(case: Case) -> tuple[dict[str, Any], str]:
    """:func:`predict`, or ``({}, why not)``: a case the model refuses still keeps its measurement."""
    try:
        return predict(case), ""
    except Exception as exc:  # noqa: BLE001
        return {}, str(exc)


def _with_note(prediction: tuple[dict[str, Any], str], check: Mapping[str, Any]) -> dict[str, Any]:
    pred, error = prediction
    return {"note": f"{check['note']} no prediction: {error}"[:200]} if error else pred


def expected_ms(case: Case, pred: Mapping[str, Any]) -> float:
    """The model's time of a case (flash: cuDNN's), which orders the cases longest first; 0 when unknown."""
    ms = pred.get("predicted_ms")
    if ms is None and case.kernel == "flash":
        ms = _prediction(dataclasses.replace(case, kernel="cudnn"))[0].get("predicted_ms")
    return float(ms) if isinstance(ms, (int, float)) and math.isfinite(ms) else 0.0


@functools.lru_cache(maxsize=4)
def _probe_once(probe: Callable[[str], dict[str, str]], commit: str) -> dict[str, str]:
    return probe(commit)


#: How a worker measures: ``(measure, probe, seed, commit)``.
Setup = tuple[Measure, Callable[[str], dict[str, str]], int, str]


def _measure_task(task: tuple[Setup, Case, Mapping[str, Any] | None]
                  ) -> tuple[dict[str, Any], float | None, dict[str, str]]:
    """One case in a device's worker: its check (unless the check stage's is given: then :func:`measure_case`
    times it), its time and the worker's environment (probed once)."""
    (measure, probe, seed, commit), case, passed = task
    check, ms = measure(case, seed) if passed is None else measure_case(case, seed, passed)
    with phases.timed("probe_s"):
        env = _probe_once(probe, commit)
    return check, ms, env


def compile_key(case: Case) -> tuple:
    """Roughly what a case compiles on a cold Triton cache (:func:`~sparsesim.kernels.workers.next_task` keeps cases
    of one key on one device): its kernel, tiles, head dim, dtype, passes, and whether it is causal, dilated or
    GQA; the SDPA backends compile nothing of ours (one key each)."""
    kw = case.kw
    if case.kernel in ("cudnn", "flash"):
        return (case.kernel,)
    causal = any(bool(c) for c in _flat(kw.get("causal")))
    dilated = any(int(d) > 1 for d in _flat(kw.get("dilation")))
    gqa = bool(kw.get("heads_kv")) and kw.get("heads_kv") != kw.get("heads", 24)
    flags = (causal, dilated, gqa)
    tiles = () if case.kernel == "dense" else (_shape(kw.get("q_tile")), _shape(kw.get("kv_tile")))
    return (case.kernel, *tiles, kw.get("head_dim", 128), kw.get("dtype", "bf16"), case.backprop, *flags)


def _flat(value: Any) -> tuple:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _run_on_devices(order: Sequence[Case], devices: Sequence[int], write: Callable[[Mapping[str, Any]], None],
                    setup: Setup, progress: Callable[[int, int], None] | None,
                    timed: list[tuple[str, TaskTiming]] | None = None,
                    prepare: Callable[[], Mapping[str, float]] | None = None,
                    preds: Mapping[str, tuple[dict[str, Any], str]] | None = None,
                    checks: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The cases on one worker per device in the order given (longest predicted first), a worker preferring cases
    whose kernels it has compiled (:func:`compile_key`); each row written here as it comes back, each case's
    stamps added to ``timed``; ``prepare``: each worker's first step (:func:`~sparsesim.kernels.workers.spread`);
    with :func:`warm_up`, forked workers start with its imports made here (``warm_up(cuda=False)``, before
    forking). ``preds``: each case's :func:`_prediction` (made here when not given); ``checks``: the check stage's
    passed checks by case id (those cases are only timed)."""
    from sparsesim.kernels.workers import WorkersLost, spread

    commit, today = setup[3], dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    preds = preds if preds is not None else {c.case_id: _prediction(c) for c in order}
    checks = checks or {}
    envs: dict[int, dict[str, str]] = {}
    rows: list[dict[str, Any]] = []
    preload = functools.partial(warm_up, cuda=False) if prepare is warm_up else None
    try:
        with closing(spread(_measure_task, [(setup, c, checks.get(c.case_id)) for c in order], devices,
                            keys=[compile_key(c) for c in order], prepare=prepare, preload=preload)) as outcomes:
            for o in outcomes:
                case = order[o.index]
                if timed is not None and o.timing is not None:
                    timed.append((case.case_id, o.timing))
                if o.result is not None:
                    check, ms, envs[o.device] = o.result
                else:
                    check, ms = {"rel_err": float("nan"), "unwritten": -1, "ok": False, "kv_layout": "",
                                 "fwd_kernel": "", "note": f"ERROR {o.error}"[:200]}, None
                env = envs.get(o.device) or {"commit": commit, "date": today}
                env = {**env, "gpu": f"{env.get('gpu', '')} (cuda:{o.device})".strip()}
                row = _row(case, env, check, ms, _with_note(preds[case.case_id], check))
                write(row)
                rows.append(row)
                if progress is not None:
                    progress(len(rows), len(order))
    except WorkersLost as exc:
        raise WorkersLost(f"validate: {exc}: {len(exc.remaining)} case(s) not measured; the {len(rows)} row(s) "
                          f"written are kept, --resume measures the rest", exc.remaining, exc.exits) from None
    return rows


def error_table(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per kernel and forward kernel that ran (``fwd_kernel``: ``ws``, ``triton``; the SDPA backend's name):
    rows, MAPE and signed mean error of the prediction against the measurement."""
    by: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        try:
            m, p = float(r["measured_ms"]), float(r["predicted_ms"])
        except (KeyError, TypeError, ValueError):
            continue
        if m > 0 and math.isfinite(p):
            by.setdefault((str(r["kernel"]), str(r.get("fwd_kernel") or "")), []).append(p / m - 1)
    return [{"kernel": k, "fwd_kernel": f, "rows": len(v), "mape": sum(abs(x) for x in v) / len(v),
             "mean_error": sum(v) / len(v)} for (k, f), v in by.items()]


__all__ = ["COLUMNS", "Case", "KERNELS", "error_table", "make_cases", "run"]
