"""Launch heuristics, config spaces and the one input check shared by every kernel entry point.

The launch rules themselves (warps, stages, block sizes, grid limits, the interpreter's launch, the
device-to-GPU mapping) live in :mod:`sparsesim.hwmodels.launch`, which the simulator's feasibility check
reads too; this module applies them to a call. Pure Python at import time: the config spaces can be
listed (by the search, the cost model, the benchmark's ``--dry-run``) without importing torch or triton.
The checks import torch lazily.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sparsesim.hwmodels.gpus import DTYPE_BYTES
from sparsesim.hwmodels.launch import (
    DENSE_SPACE,
    HEAD_DIMS,
    INTERPRET_GPU,
    INTERPRET_STAGES,
    INTERPRET_WARPS,
    copy_warps,
    dense_config_allowed,
    gpu_for_device,
    kernel_warps,
    max_stages,
    pipeline_smem_bytes,
)
from sparsesim.hwmodels.launch import (
    INTERPRET_DENSE_CONFIG as INTERPRET_DENSE_CONFIG,  # re-exported for the dense kernel
)
from sparsesim.simulator.feasibility import kernel_problem

_DTYPE_NAMES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "fp16": "fp16", "bf16": "bf16",
                "fp32": "fp32", "half": "fp16"}


#: Repeated calls launch the compiled kernel directly (``SPARSESIM_FAST_LAUNCH=0`` always goes through Triton's
#: launcher; benchmarks/host_overhead.py times both).
FAST_LAUNCH = os.environ.get("SPARSESIM_FAST_LAUNCH", "1") != "0"
#: Repeated launches go through Triton's C launcher itself (:class:`DirectLaunch`; ``SPARSESIM_DIRECT_LAUNCH=0``:
#: through the compiled kernel's own launch, which benchmarks/block_map_bench.py times against it).
DIRECT_LAUNCH = os.environ.get("SPARSESIM_DIRECT_LAUNCH", "1") != "0"


class CallCache:
    """Validated launches of an entry point by call key (shapes, strides, dtypes, device, arguments), LRU."""

    def __init__(self, size: int = 256) -> None:
        from collections import OrderedDict

        self.size = size
        self.items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        return self.items.get(key) if key is not None else None

    def put(self, key: Any, value: Any) -> Any:
        if key is not None:
            self.items[key] = value
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


def hashable(value: Any) -> Any:
    """Lists and tuples as (nested) tuples; a TypeError for anything unhashable."""
    if isinstance(value, (list, tuple)):
        return tuple(hashable(v) for v in value)
    hash(value)
    return value


def tensors_key(*tensors: Any) -> tuple:
    """What a cached launch depends on in its tensors: type, shape, strides, dtype, device, 16-byte alignment."""
    return tuple((type(t), t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0) for t in tensors)


def launch_compiled(compiled: dict[Any, Any], key: Any, kernel: Any, grid: tuple[int, ...], args: tuple,
                    constexprs: dict[str, Any], options: dict[str, Any]) -> None:
    """Launch ``kernel``; the first launch per ``key`` goes through Triton's launcher (binding and specializing
    every argument), later ones call the compiled kernel with the same arguments and the constexprs in
    signature order (``constexprs`` must list them in that order): through its C launcher (:class:`DirectLaunch`)
    where the kernel takes no host descriptors, else through the compiled kernel. ``key`` must fix every
    specialization: the call key, the K/V mode and the pointers' alignments."""
    hit = compiled.get(key)
    if hit is not None:
        direct = compiled.get(("plain-direct", key))
        if direct is None:
            direct = compiled[("plain-direct", key)] = direct_launch(hit, 0) or False
        if not isinstance(direct, DirectLaunch) or not direct(grid, (), (*args, *constexprs.values())):
            hit[grid](*args, *constexprs.values())
        return
    done = kernel[grid](*args, **constexprs, **options)
    if FAST_LAUNCH and not interpret() and hasattr(done, "packed_metadata"):
        compiled[key] = done


#: The C launcher's leading arguments :class:`DirectLaunch` passes (Triton 3.6: grid x/y/z, stream, function,
#: cooperative, PDL, global and profile scratch, packed metadata, launch metadata, enter and exit hooks).
LAUNCHER_BASE_ARGS = "iiiKKppOOOOOO"


class DirectLaunch:
    """A compiled kernel launched by Triton's C launcher itself, its host TMA descriptors encoded once.

    Triton's launcher re-encodes every host ``TensorDescriptor`` argument on each launch (a CUtensorMap per
    descriptor, built in Python around the driver's encode call); a repeated launch whose descriptors are fixed
    per storage address (:func:`sparsesim.kernels.gluon_fwd.ws_forward`) can encode them once. :meth:`expand`
    turns descriptors into the launcher's own argument form (Triton's ``make_tensordesc_arg``); :meth:`__call__`
    launches on the current device's current stream (CUDA-graph capture included), with no launch metadata
    while Triton's launch hooks are empty (the normal path builds it and calls the empty chains on every
    launch). :func:`direct_launch` says whether a compiled kernel can be launched this way (this Triton's
    launcher, no scratch memory); where it cannot, or while a hook is set, callers keep :func:`launch_compiled`.
    """

    __slots__ = ("coop", "driver", "encode", "function", "metas", "packed", "pdl", "raw")

    def __init__(self, compiled: Any, raw: Any, metas: tuple, encode: Any, driver: Any) -> None:
        self.raw, self.metas, self.encode, self.driver = raw, metas, encode, driver
        self.function, self.packed = compiled.function, compiled.packed_metadata
        self.coop, self.pdl = compiled.run.launch_cooperative_grid, compiled.run.launch_pdl

    def expand(self, descs: Sequence[Any]) -> tuple:
        """The kernel's leading descriptor arguments as the C launcher takes them (encoded now, once)."""
        out: list[Any] = []
        for desc, meta in zip(descs, self.metas, strict=True):
            out.extend(self.encode(desc, meta))
        return tuple(out)

    def __call__(self, grid: tuple[int, ...], expanded: tuple, args: tuple) -> bool:
        """Launch with ``expanded`` (:meth:`expand` of the leading descriptors) then ``args`` (the other
        arguments and the constexprs, in signature order); False (nothing launched) while a launch hook is set:
        the compiled kernel's own launch passes hooks their metadata."""
        from triton import knobs

        if _hooked(knobs.runtime.launch_enter_hook) or _hooked(knobs.runtime.launch_exit_hook):
            return False
        device = self.driver.get_current_device()
        stream = self.driver.get_current_stream(device)
        self.raw(grid[0], grid[1], grid[2], stream, self.function, self.coop, self.pdl, None, None, self.packed,
                 None, None, None, *expanded, *args)
        return True


def _hooked(hook: Any) -> bool:
    """Whether a Triton launch hook (None, or a chain of callables) would call anything."""
    return hook is not None and bool(getattr(hook, "calls", True))


def direct_launch(compiled: Any, descriptors: int) -> DirectLaunch | None:
    """A :class:`DirectLaunch` of ``compiled`` (a kernel launched once through Triton) whose first
    ``descriptors`` arguments are its host TMA descriptors, or None where this Triton's launcher is not the one
    this was written against (Triton 3.6: the C launcher, wrapped where descriptors need expanding) or the
    kernel needs scratch memory."""
    if not DIRECT_LAUNCH:
        return None
    try:
        from triton.backends.nvidia import driver as nvidia

        if getattr(nvidia, "_BASE_ARGS_FORMAT", None) != LAUNCHER_BASE_ARGS:
            return None
        run = compiled.run
        if run.global_scratch_size or run.profile_scratch_size:
            return None
        wrapper = run.launch
        if descriptors == 0 and not hasattr(wrapper, "__code__"):  # no descriptors: the C launcher itself
            from triton.runtime import driver

            return DirectLaunch(compiled, wrapper, (), nvidia.make_tensordesc_arg, driver.active)
        cells = dict(zip(wrapper.__code__.co_freevars, (c.cell_contents for c in wrapper.__closure__ or ()),
                         strict=True))
        raw, metas, indices = cells["launcher"], cells["tensordesc_meta"], cells["tensordesc_indices"]
        if set(indices) != set(range(descriptors)) or len(metas) != descriptors or not callable(raw):
            return None
        from triton.runtime import driver

        return DirectLaunch(compiled, raw, tuple(metas), nvidia.make_tensordesc_arg, driver.active)
    except (ImportError, AttributeError, KeyError, TypeError, ValueError, RuntimeError):
        return None


def spec_key(args: tuple) -> tuple:
    """What Triton specializes a launch on in its runtime arguments: per integer, equal to 1, divisible by 16
    and 32-bit or not; per tensor, its dtype and 16-byte alignment. A :func:`launch_compiled` key for launches
    whose arguments change from call to call (strides of incoming gradients, offsets of views)."""
    key: list[Any] = []
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool):
            key.append((a == 1, a % 16 == 0, -(2**31) <= a < 2**31))
        elif hasattr(a, "data_ptr"):
            key.append((a.dtype, a.data_ptr() % 16 == 0))
        else:
            key.append(type(a))
    return tuple(key)


def interpret() -> bool:
    """Whether kernels run through the Triton interpreter (CPU tensors accepted)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def dtype_name(dtype: Any) -> str:
    """'fp16' / 'bf16' / 'fp32' for a torch dtype or a name; ValueError for anything else."""
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"dtype={dtype!r}; allowed: float16, bfloat16 (float32 under TRITON_INTERPRET=1)")
    return _DTYPE_NAMES[name]


# --------------------------------------------------------------------------------------------
# Config spaces: a comprehension over a small grid filtered by a plain predicate.
# --------------------------------------------------------------------------------------------

def keep_dense_config(cfg: dict[str, int], head_dim: int, dtype: str, gpu: Any, smem_bytes: int) -> bool:
    """The predicate that prunes :data:`DENSE_SPACE` for one head dim, dtype and shared-memory budget.

    Warps and pipeline depth as :func:`sparsesim.hwmodels.launch.dense_config_allowed` says; registers and
    shared memory as the one feasibility check says (:mod:`sparsesim.simulator.feasibility`), with this
    config's own pipeline depth.
    """
    bm, bn, warps, stages = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"], cfg["num_stages"]
    if not dense_config_allowed(bm, bn, warps, stages):
        return False
    if kernel_problem(q_tile=(bm,), kv_tile=(bn,), head_dim=head_dim, dtype=dtype, gpu=gpu, smem_bytes=smem_bytes):
        return False
    return pipeline_smem_bytes(bm, bn, head_dim, stages, DTYPE_BYTES[dtype]) <= smem_bytes


def dense_configs(head_dim: int = 128, dtype: Any = "bf16", gpu: Any = INTERPRET_GPU) -> list[dict[str, int]]:
    """The dense kernel's autotune space for one head dim, dtype and GPU: dicts of BLOCK_M, BLOCK_N,
    num_warps, num_stages.

    Example:
        >>> sorted({(c["BLOCK_M"], c["BLOCK_N"]) for c in dense_configs(128, "bf16")})
        [(64, 64), (128, 64), (128, 128)]
    """
    from sparsesim.hwmodels import load_gpu

    name = dtype_name(dtype)
    spec = load_gpu(gpu)
    keys = list(DENSE_SPACE)
    grid = [dict(zip(keys, values, strict=True)) for values in _product(*(DENSE_SPACE[k] for k in keys))]
    return [c for c in grid if keep_dense_config(c, head_dim, name, spec, spec.smem_per_block_bytes)]


def _product(*axes: Sequence[int]) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = [()]
    for axis in axes:
        out = [t + (v,) for t in out for v in axis]
    return out


@dataclass(frozen=True)
class FusedLaunch:
    """Warps and pipeline depth of a fused kernel whose tiles are fixed by the caller."""

    num_warps: int
    num_stages: int
    #: Triton's automatic warp specialization of the main KV loop (producer/consumer warps).
    warp_specialize: bool = False


def fused_launch(block_m: int, block_n: int, head_dim: int, dtype: Any = "bf16",
                 smem_bytes: int | None = None) -> FusedLaunch:
    """Launch heuristic of the GNA and block-sparse kernels (tile shapes come from the schedule).

    One warpgroup per 64 query rows (4 warps below 128 rows); the deepest pipeline (<= 3) whose K/V
    stages fit the shared memory (H200, 128x128 tiles, head dim 128: 3 stages ran 5-13% faster
    than 2; 4 does not fit). ``smem_bytes``: the device's per-CTA budget (default: the H200 file's).
    """
    if interpret():
        return FusedLaunch(num_warps=INTERPRET_WARPS, num_stages=INTERPRET_STAGES)
    if smem_bytes is None:
        from sparsesim.hwmodels import load_gpu

        smem_bytes = load_gpu(INTERPRET_GPU).smem_per_block_bytes
    stages = max_stages(block_m, block_n, head_dim, DTYPE_BYTES[dtype_name(dtype)], smem_bytes)
    return FusedLaunch(num_warps=kernel_warps(block_m), num_stages=max(1, stages))


@functools.lru_cache(maxsize=16)
def device_gpu(device: Any) -> tuple[Any, int]:
    """The GPU file of a CUDA device and its per-CTA shared-memory budget in bytes.

    The file is :func:`sparsesim.hwmodels.launch.gpu_for_device` of the device's name and compute
    capability; the budget is the smaller of the file's and what the device reports. Under the
    interpreter: the :data:`INTERPRET_GPU` file.
    """
    from sparsesim.hwmodels import load_gpu

    if interpret() or getattr(device, "type", "cuda") != "cuda":
        gpu = load_gpu(INTERPRET_GPU)
        return gpu, gpu.smem_per_block_bytes
    import torch

    props = torch.cuda.get_device_properties(device)
    gpu = gpu_for_device(str(props.name), (int(props.major), int(props.minor)))
    reported = int(getattr(props, "shared_memory_per_block_optin", gpu.smem_per_block_bytes))
    return gpu, min(gpu.smem_per_block_bytes, reported)


def copy_launch(tile_volume: int, block_d: int) -> FusedLaunch:
    """Launch heuristic of the permutation kernels (memory bound: 16-byte accesses, 4-8 warps, one stage)."""
    if interpret():
        return FusedLaunch(num_warps=INTERPRET_WARPS, num_stages=INTERPRET_STAGES)
    return FusedLaunch(num_warps=copy_warps(tile_volume, block_d), num_stages=1)


# --------------------------------------------------------------------------------------------
# Input checks.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttnDims:
    """Shapes of a checked q/k/v triple in the layout [batch, *spatial, heads, head_dim]."""

    batch: int
    spatial: tuple[int, ...]
    heads: int
    heads_kv: int
    head_dim: int
    dtype: str

    @property
    def tokens(self) -> int:
        return math.prod(self.spatial)

    @property
    def group(self) -> int:
        return self.heads // self.heads_kv


def allowed_dtypes_text() -> str:
    return "float16, float32" if interpret() else "float16, bfloat16 (float32 under TRITON_INTERPRET=1)"


def check_tensor_device(x: Any, name: str) -> None:
    """CUDA required, unless the interpreter runs (then CPU tensors are taken too)."""
    if x.device.type == "cuda":
        return
    if interpret() and x.device.type == "cpu":
        return
    raise ValueError(f"{name} is on device {x.device}; allowed: a CUDA tensor "
                     f"(or a CPU tensor with TRITON_INTERPRET=1, the Triton interpreter)")


def check_qkv(q: Any, k: Any, v: Any, *, spatial_ranks: Sequence[int] = (1,), what: str = "attention") -> AttnDims:
    """Check q, k, v of layout ``[batch, *spatial, heads, head_dim]``; one-line ValueError otherwise.

    ``spatial_ranks`` lists the allowed numbers of spatial axes (1 for ``[B, N, H, D]``).
    """
    import torch

    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{what}: {name} must be a torch.Tensor, got {type(x).__name__}")
    ranks = sorted(r + 3 for r in spatial_ranks)
    flat = tuple(spatial_ranks) == (1,)
    layout = "[batch, tokens, heads, head_dim]" if flat else "[batch, *spatial, heads, head_dim]"
    if q.dim() not in ranks:
        raise ValueError(f"{what}: q has shape {list(q.shape)} (rank {q.dim()}); allowed: {layout}, "
                         f"rank {' or '.join(map(str, ranks))}")
    for name, x in (("k", k), ("v", v)):
        if x.dim() != q.dim():
            raise ValueError(f"{what}: {name} has shape {list(x.shape)} but q has {list(q.shape)}; "
                             f"allowed: the same rank and layout {layout}")
    if k.shape != v.shape:
        raise ValueError(f"{what}: k has shape {list(k.shape)} but v has {list(v.shape)}; allowed: equal shapes")
    names = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
    for name, x in (("q", q), ("k", k), ("v", v)):
        dname = str(x.dtype).removeprefix("torch.")
        if dname not in names or (dname == "float32" and not interpret()):
            raise ValueError(f"{what}: {name}.dtype={x.dtype}; allowed: {allowed_dtypes_text()}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{what}: dtypes differ (q {q.dtype}, k {k.dtype}, v {v.dtype}); allowed: one dtype for all")
    if interpret() and q.dtype == torch.bfloat16:  # a silent wrong answer otherwise
        raise ValueError(f"{what}: bfloat16 under TRITON_INTERPRET=1 (the interpreter's tl.dot computes bf16 "
                         f"wrongly); allowed there: {allowed_dtypes_text()}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor_device(x, name)
    if not (q.device == k.device == v.device):
        raise ValueError(f"{what}: devices differ (q {q.device}, k {k.device}, v {v.device}); "
                         f"allowed: all on one device")
    head_dim = int(q.shape[-1])
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"{what}: head_dim={head_dim}; allowed: {', '.join(map(str, HEAD_DIMS))}")
    if int(k.shape[-1]) != head_dim:
        raise ValueError(f"{what}: k head_dim={int(k.shape[-1])} but q head_dim={head_dim}; allowed: equal")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"{what}: batch differs (q {q.shape[0]}, k {k.shape[0]}); allowed: equal batch")
    if tuple(spatial_ranks) != (1,) and q.shape[1:-2] != k.shape[1:-2]:
        raise ValueError(f"{what}: spatial sizes differ (q {list(q.shape[1:-2])}, k {list(k.shape[1:-2])}); "
                         f"allowed: equal (cross-attention needs the dense entry point)")
    heads, heads_kv = int(q.shape[-2]), int(k.shape[-2])
    if heads_kv < 1 or heads % heads_kv:
        raise ValueError(f"{what}: heads={heads} is not a multiple of heads_kv={heads_kv}; "
                         f"allowed: heads % heads_kv == 0 (GQA/MQA)")
    if q.numel() == 0 or k.numel() == 0:
        raise ValueError(f"{what}: empty input (q {list(q.shape)}, k {list(k.shape)}); allowed: every size >= 1")
    return AttnDims(batch=int(q.shape[0]), spatial=tuple(int(s) for s in q.shape[1:-2]), heads=heads,
                    heads_kv=heads_kv, head_dim=head_dim, dtype=names[str(q.dtype).removeprefix("torch.")])


def check_scale(scale: Any, head_dim: int) -> float:
    """The softmax scale: ``1/sqrt(head_dim)`` by default, else a positive finite number."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale={scale!r}; allowed: None (1/sqrt(head_dim)) or a positive finite number")
    return float(scale)


def check_out(out: Any, like: Any, shape: Sequence[int], what: str) -> Any:
    """A caller's output buffer (same dtype and device, the expected shape), or a new one."""
    import torch

    if out is None:
        return torch.empty(tuple(shape), dtype=like.dtype, device=like.device)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{what}: out must be a torch.Tensor or None, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape) or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(f"{what}: out has shape {list(out.shape)}, {out.dtype} on {out.device}; "
                         f"allowed: shape {list(shape)}, {like.dtype} on {like.device}")
    return out


def tma_enabled() -> bool:
    """Whether host TMA descriptors may be used at all: this Triton has them and ``SPARSESIM_NO_TMA=1`` is unset
    (read at every call: the environment may change between calls)."""
    return os.environ.get("SPARSESIM_NO_TMA") != "1" and _has_descriptors()


@functools.lru_cache(maxsize=1)
def _has_descriptors() -> bool:
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:  # pragma: no cover - triton without host descriptors
        return False
    return True


def ws_kernel() -> Any:
    """The warp-specialized Hopper forward (:mod:`sparsesim.kernels.gluon_fwd`), or None where this Triton has no
    Gluon (the Triton kernels then run every call)."""
    try:
        from sparsesim.kernels import gluon_fwd
    except ImportError:  # pragma: no cover - triton without gluon
        return None
    return gluon_fwd


def descriptors_ok(*tensors: Any) -> bool:
    """Whether TMA tensor descriptors can address these tensors: 16-byte aligned base and strides,
    contiguous last dim (Hopper's bulk tensor copy rules). ``SPARSESIM_NO_TMA=1`` turns them off."""
    if not tma_enabled():
        return False
    return all(t.data_ptr() % 16 == 0 and tma_strides_ok(t) for t in tensors)


def tma_strides_ok(t: Any) -> bool:
    """The strides' part of :func:`descriptors_ok` for one tensor: contiguous last dim, 16-byte strides."""
    elt = t.element_size()
    return t.stride(-1) == 1 and not any((s * elt) % 16 for s in t.stride()[:-1])


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def descriptor(base: Any, block_shape: list[int], templates: dict[Any, Any]) -> Any:
    """``TensorDescriptor.from_tensor(base, block_shape)``, validated by Triton once per (shape, strides, dtype,
    block) in ``templates`` and copied from that one afterwards with ``base`` swapped in (the fields are the
    same: only the base pointer changes between calls). ``base`` must pass :func:`descriptors_ok`."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    key = (base.shape, base.stride(), base.dtype, *block_shape)
    template = templates.get(key)
    if template is None:
        desc = TensorDescriptor.from_tensor(base, block_shape)
        if len(templates) >= 64:
            templates.clear()
        templates[key] = desc
        return desc
    desc = object.__new__(TensorDescriptor)
    desc.__dict__.update(template.__dict__)
    desc.base = base
    return desc
