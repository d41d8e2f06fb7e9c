"""Triton launch rules of sparsesim's kernels and the device-to-GPU mapping: the one place for both.

Torch-free and below both :mod:`sparsesim.simulator` (whose feasibility check and cost model read these
rules) and :mod:`sparsesim.kernels` (whose launches follow them). Every number here is typed once.

What each rule is and who checks it:

=================================  ===============================  ==========================================
rule                               constant / function              checked by
=================================  ===============================  ==========================================
tile entries are powers of two     :func:`is_pow2`                  ``simulator.feasibility.tile_problem``
(``tl.arange``)
tokens per tile 16..256            :data:`MIN_TILE_VOLUME`,         ``simulator.feasibility.tile_problem``,
(``tl.dot`` shapes, registers)     :data:`MAX_TILE_VOLUME`          ``tile_volume_problem`` (``simulate tiles``)
head dims                          :data:`HEAD_DIMS`                ``kernel_problem``, ``kernels._launch``
dtypes (fp32 only interpreted)     :data:`KERNEL_DTYPES`,           ``kernel_problem``
                                   :data:`INTERPRETER_DTYPES`
warps: a warpgroup per 64 rows     :func:`kernel_warps`             register estimate, every fused launch
pipeline depth <= 3 K/V stages     :data:`MAX_STAGES`,              ``kernel_problem`` (shared memory), cost
in shared memory                   :func:`max_stages`               model, ``kernels._launch.fused_launch``
registers per thread               :func:`registers_per_thread`     ``kernel_problem`` (GPU file's limit)
CUDA grid: y and z <= 65535        :data:`MAX_GRID_YZ`,             the kernels' launch checks (heads,
                                   :func:`grid_problem`             batch x dilation groups)
dense autotune space               :data:`DENSE_SPACE`,             ``kernels._launch.keep_dense_config``
                                   :func:`dense_config_allowed`
interpreter: one small launch      :data:`INTERPRET_WARPS`,         ``kernels._launch``
                                   :data:`INTERPRET_STAGES`,
                                   :data:`INTERPRET_DENSE_CONFIG`
permutation kernels' warps         :func:`copy_warps`               ``kernels._launch.copy_launch``
warp-specialized Hopper forward:   :data:`WS_ARCHITECTURE`,         ``kernels.gluon_fwd.use_ws``, the
which calls take it                :data:`WS_HEAD_DIMS`,            dense / block-sparse / GNA launches,
                                   :data:`WS_Q_TILE`,               ``simulator.route`` (the model prices
                                   :data:`WS_KV_TILES`,             those calls with the ``triton-ws``
                                   :data:`WS_MIN_WORK`,             profile)
                                   :data:`WS_PERSISTENT_MAX_TILES`
GNA backward tiles: the forward's  :func:`shrink_tile`,             ``kernels.gna_bwd`` (its first call's
halved to a volume, per kernel     :data:`BWD_DQ_CANDIDATES`,       pick), ``simulator.cost`` (the backward
                                   :data:`BWD_DKV_CANDIDATES`       priced at the pick's tiles)
=================================  ===============================  ==========================================

:func:`gpu_for_device` maps a CUDA device (its name, then its compute capability) to a GPU file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sparsesim.hwmodels.errors import ConfigError
from sparsesim.hwmodels.gpus import GPU, list_gpus, load_gpu

#: Head dims the kernels take (``tl.arange`` over the head dim: powers of two).
HEAD_DIMS = (16, 32, 64, 128, 256)
#: Tokens per tile: a power of two from :data:`MIN_TILE_VOLUME` (``tl.dot``'s smallest M/N/K) to
#: :data:`MAX_TILE_VOLUME` (registers of the fp32 accumulator and score tile).
MIN_TILE_VOLUME = 16
MAX_TILE_VOLUME = 256
#: Dtypes the kernels take on a GPU; the interpreter also takes fp32.
KERNEL_DTYPES = ("fp16", "bf16")
INTERPRETER_DTYPES = (*KERNEL_DTYPES, "fp32")
#: Deepest K/V pipeline the kernels use (H200: 3 stages ran 5-13% faster than 2; kernels/NOTES.md).
MAX_STAGES = 3
#: Query rows per warpgroup (4 warps) of a fused kernel CTA; below :data:`WIDE_Q_ROWS` rows one warpgroup.
ROWS_PER_WARPGROUP = 64
WIDE_Q_ROWS = 128
WARPS_PER_WARPGROUP = 4
THREADS_PER_WARP = 32
#: CUDA's limit on the y and z launch grid dimensions (x goes to 2^31 - 1).
MAX_GRID_YZ = 65535
MAX_GRID_X = 2**31 - 1
#: Under the Triton interpreter every kernel launches with this many warps and stages.
INTERPRET_WARPS = 4
INTERPRET_STAGES = 1
#: The GPU file whose figures apply under the interpreter (no device to ask).
INTERPRET_GPU = "H200"
#: The dense kernel's autotune grid (pruned by :func:`dense_config_allowed` and the feasibility check).
DENSE_SPACE: dict[str, tuple[int, ...]] = {"BLOCK_M": (64, 128), "BLOCK_N": (64, 128), "num_warps": (4, 8),
                                           "num_stages": (2, 3, 4)}
#: The one dense config used under the interpreter (no autotune sweep there).
INTERPRET_DENSE_CONFIG: dict[str, int] = {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": INTERPRET_WARPS,
                                          "num_stages": INTERPRET_STAGES}
#: The warp-specialized Gluon forward (kernels/gluon_fwd.py): Hopper only, bf16/fp16, these head dims, Q tiles of
#: 128 rows (two consumer warpgroups of 64), KV tiles of 64 or 128 keys, and calls of at least
#: :data:`WS_MIN_WORK` visited score elements (``batch x heads x`` visited Q/KV tile pairs ``x`` their volumes;
#: dense: ``B H N_q N_kv``). 2^28 is 4K tokens x 16 heads: on the H200 (6ba650d) it ran 0.35 / 1.42 ms against
#: the Triton kernel's 0.39 / 1.54 ms at 4K / 8K tokens x 24 heads, and faster at every larger size measured;
#: smaller calls are unmeasured.
WS_ARCHITECTURE = "hopper"
WS_HEAD_DIMS = (64, 128)
WS_Q_TILE = 2 * ROWS_PER_WARPGROUP
WS_KV_TILES = (64, 128)
WS_MIN_WORK = 2**28
#: A dense or GNA call on that forward runs persistent (a program per SM taking work items round-robin; the next
#: item's Q load overlaps the last one's final GEMM and store) when its work items (128-row Q tiles) visit at most
#: this many KV tiles each on average; block maps run a program per item. On the H200 (0d45d39 / 3ca31f9, one run
#: each, persistent vs a program per item): dense 24 heads 8K tokens (64 tiles) +8.7%, 16K +0.4%, 32K (256) +1.0%,
#: 64K (512) -0.4%, 115K -1.3%; GNA HunyuanVideo (81 tiles) +0.6%, FLUX (50) +2.0%, 1D 32K window 2048 (16) +3.2%.
#: The items of these calls cost the same, so the round-robin is the launch order's schedule (the model's).
WS_PERSISTENT_MAX_TILES = 256
#: The permutation kernels take 8 warps once a tile moves this many elements (16-byte accesses), else 4.
COPY_WIDE_ELEMENTS = 16384
#: The GNA backward's launch settings its first call times (``kernels.gna_bwd``), ``(resident volume, streamed
#: volume, stages)`` per kernel: dQ keeps a Q tile and streams K/V, dK/dV keeps a KV tile and streams Q/dO; a
#: volume of ``1 << 30`` keeps the forward's tile (:func:`shrink_tile`). benchmarks/bwd_tune.py on the H200
#: (kernels/NOTES.md, 4032037): 3 stages won with 128-row resident tiles, 2 with 64-row ones, a 32-row dK/dV stream
#: on the stride-1 3D and 2D layers.
BWD_DQ_CANDIDATES: tuple[tuple[int, int, int], ...] = ((1 << 30, 64, 3), (64, 64, 2), (1 << 30, 64, 2))
BWD_DKV_CANDIDATES: tuple[tuple[int, int, int], ...] = ((1 << 30, 64, 3), (1 << 30, 32, 3), (1 << 30, 32, 2),
                                                        (64, 64, 2))


def shrink_tile(tile: Sequence[int], volume: int) -> tuple[int, ...]:
    """A box tile with its outermost axis longer than 1 halved until its volume is at most ``volume`` (min 16):
    the GNA backward's tile from the forward's.

    Example:
        >>> shrink_tile((4, 8, 4), 64), shrink_tile((16, 8), 32), shrink_tile((128,), 1 << 30)
        ((2, 8, 4), (4, 8), (128,))
    """
    t = [int(x) for x in tile]
    while math.prod(t) > max(volume, MIN_TILE_VOLUME):
        a = next(i for i, x in enumerate(t) if x > 1)
        t[a] //= 2
    return tuple(t)


def backward_tiles(q_tile: Sequence[int], kv_tile: Sequence[int]) -> tuple[tuple[tuple[tuple[int, ...], ...], ...],
                                                                            tuple[tuple[tuple[int, ...], ...], ...]]:
    """The distinct ``(q_tile, kv_tile)`` pairs the GNA backward's dQ and dK/dV kernels may run from a forward's
    tiles: one per candidate of :data:`BWD_DQ_CANDIDATES` / :data:`BWD_DKV_CANDIDATES`."""
    dq = tuple(dict.fromkeys((shrink_tile(q_tile, r), shrink_tile(kv_tile, s)) for r, s, _ in BWD_DQ_CANDIDATES))
    dkv = tuple(dict.fromkeys((shrink_tile(q_tile, s), shrink_tile(kv_tile, r)) for r, s, _ in BWD_DKV_CANDIDATES))
    return dq, dkv


def is_pow2(n: int) -> bool:
    """Whether ``n`` is a positive power of two."""
    return n >= 1 and n & (n - 1) == 0


def kernel_warps(q_volume: int) -> int:
    """Warps of a fused kernel CTA: one warpgroup per 64 query rows, one warpgroup below 128 rows."""
    groups = 2 if q_volume >= WIDE_Q_ROWS else 1
    return groups * WARPS_PER_WARPGROUP


def kernel_threads(q_volume: int) -> int:
    """Threads of a fused kernel CTA."""
    return THREADS_PER_WARP * kernel_warps(q_volume)


def pipeline_smem_bytes(q_volume: int, kv_volume: int, head_dim: int, stages: int, elt_bytes: int) -> int:
    """Shared memory of the Q tile plus ``stages`` buffered K and V tiles."""
    return (q_volume + 2 * stages * kv_volume) * head_dim * elt_bytes


def max_stages(q_volume: int, kv_volume: int, head_dim: int, elt_bytes: int, smem_bytes: int) -> int:
    """The deepest K/V pipeline (at most :data:`MAX_STAGES`) that fits ``smem_bytes``; 0 if none does."""
    for stages in range(MAX_STAGES, 0, -1):
        if pipeline_smem_bytes(q_volume, kv_volume, head_dim, stages, elt_bytes) <= smem_bytes:
            return stages
    return 0


def registers_per_thread(q_volume: int, kv_volume: int, head_dim: int, elt_bytes: int) -> float:
    """Estimated registers one thread holds: fp32 O accumulator and S tile, Q and P in the input dtype."""
    fp32_words = q_volume * head_dim + q_volume * kv_volume
    input_words = (q_volume * head_dim + q_volume * kv_volume) * elt_bytes / 4
    return (fp32_words + input_words) / kernel_threads(q_volume)


def grid_problem(grid: Sequence[int], names: Sequence[str] = ("x", "y", "z")) -> str:
    """Why a launch grid exceeds CUDA's limits ('' when it does not); ``names`` says what each entry counts.

    Example:
        >>> grid_problem((10, 70000, 1), ("Q tiles", "heads", "batch x groups"))
        'heads=70000; allowed: at most 65535'
    """
    for axis, (n, name) in enumerate(zip(grid, names, strict=False)):
        top = MAX_GRID_X if axis == 0 else MAX_GRID_YZ
        if n > top:
            return f"{name}={n}; allowed: at most {top}"
    return ""


def dense_config_allowed(block_m: int, block_n: int, warps: int, stages: int) -> bool:
    """The dense space's launch rule: one warpgroup per 64 query rows (measured on the H200: 128 rows with
    4 warps runs at a third of the speed); the 64-row tile only with a 64-key tile and 3 stages."""
    if warps != kernel_warps(block_m):
        return False
    return not (block_m == ROWS_PER_WARPGROUP and (block_n != ROWS_PER_WARPGROUP or stages != MAX_STAGES))


def copy_warps(tile_volume: int, block_d: int) -> int:
    """Warps of the permutation kernels (memory bound): 8 once a tile moves :data:`COPY_WIDE_ELEMENTS`."""
    return 2 * WARPS_PER_WARPGROUP if tile_volume * block_d >= COPY_WIDE_ELEMENTS else WARPS_PER_WARPGROUP


def _capability(text: str) -> tuple[int, int] | None:
    major, _, minor = text.partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        return None


def gpu_for_device(name: str, compute_capability: tuple[int, int]) -> GPU:
    """The GPU file of a CUDA device: by its name (a built-in GPU's name or one of its aliases,
    case-insensitive), else by compute capability: the first built-in file with the same capability, else
    the newest with the same major version, else the newest older one, else the oldest.

    Example:
        >>> gpu_for_device("NVIDIA H200", (9, 0)).name, gpu_for_device("NVIDIA H100 PCIe", (9, 0)).name
        ('H200', 'H100')
        >>> gpu_for_device("NVIDIA A10", (8, 6)).name, gpu_for_device("NVIDIA RTX PRO 6000", (12, 0)).name
        ('A100', 'B200')
    """
    if name and "/" not in name and not name.endswith(".toml"):
        try:
            return load_gpu(name)
        except ConfigError:
            pass
    cc = (int(compute_capability[0]), int(compute_capability[1]))
    known = [(c, g) for g in list_gpus() if (c := _capability(g.compute_capability)) is not None]
    if not known:
        raise ConfigError(f"device {name!r} (compute capability {cc[0]}.{cc[1]}): no built-in GPU file "
                          f"names its compute capability")
    for c, g in known:
        if c == cc:
            return g
    same = [(c, g) for c, g in known if c[0] == cc[0]]
    older = [(c, g) for c, g in known if c < cc]
    pool = same or older
    if pool:
        return max(pool, key=lambda item: item[0])[1]
    return min(known, key=lambda item: item[0])[1]
