"""``simulate calibrate``: fit a kernel profile to measured times, and say how well it predicts held-out ones.

Rows come from ``simulate validate`` CSVs. The rows of the kernels a profile models are split by
configuration (never by row) into a training and a held-out part; the profile's free parameters are
fitted with bounded least squares (``scipy.optimize.least_squares``) on the log of predicted over
measured time of the training rows; the fitted profile is written as a data file with the data it
came from; the report gives the train and held-out mean absolute percentage error and the worst rows.

Each row's tile maps are built once; a candidate profile only re-runs the cost model.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsesim.hwmodels import GPU, load_gpu
from sparsesim.hwmodels.profiles import FORWARD_KERNELS, KernelProfile, load_profile
from sparsesim.simulator.cost import Problem
from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import BlockSparsePattern, GNAPattern, layout_tuple
from sparsesim.simulator.predict import dense_pass, sparse_call
from sparsesim.simulator.tiling import TileMap, block_sparse_tilemap, tilemap

#: Free parameters of each family and their bounds; the others keep the prior's values.
FREE = {
    "triton": {"mma_efficiency": (0.3, 1.0), "softmax_overlap": (0.0, 1.0), "mask_ops_per_element": (0.0, 64.0),
               "cta_overhead_us": (0.0, 40.0), "kv_tile_overhead_ns": (0.0, 3000.0),
               "rescale_ops_per_element": (0.0, 64.0), "launch_latency_us": (0.0, 40.0),
               "gather_penalty": (0.0, 1.0), "stage_penalty": (0.0, 1.0), "narrow_kv_penalty": (0.0, 1.0)},
    "cudnn": {"mma_efficiency": (0.3, 1.0), "softmax_overlap": (0.0, 1.0), "cta_overhead_us": (0.0, 40.0),
              "kv_tile_overhead_ns": (0.0, 3000.0), "launch_latency_us": (0.0, 40.0),
              "unaligned_penalty": (0.0, 0.5)},
}
#: Free parameters of a profile of the warp-specialized forward (``forward_kernel = "ws"``): its K/V always come by
#: TMA in three stages (no gather or stage term); 64-key KV tiles and its K/V streams (``hbm_efficiency``: strided
#: TMA boxes for GNA, nothing permuted) are its own.
FREE_WS = {"mma_efficiency": (0.3, 1.0), "softmax_overlap": (0.0, 1.0), "cta_overhead_us": (0.0, 40.0),
           "kv_tile_overhead_ns": (0.0, 3000.0), "launch_latency_us": (0.0, 40.0), "narrow_kv_penalty": (0.0, 1.0),
           "hbm_efficiency": (0.5, 1.0)}
#: Which measured kernels each family is fitted to.
KERNELS_OF = {"triton": ("gna", "block_sparse", "dense"), "cudnn": ("cudnn",)}


def family(profile: KernelProfile) -> str:
    return "triton" if profile.name.startswith("triton") else "cudnn"


_ASCII_INT = re.compile(r"[0-9]+", re.ASCII)


def _ints(text: Any) -> tuple[int, ...] | None:
    text = str(text).strip()
    if text in ("", "nan", "None"):
        return None
    parts = text.split("x")
    if not all(_ASCII_INT.fullmatch(x) and len(x) <= 12 for x in parts):
        raise ValueError(text)
    return tuple(int(x) for x in parts)


def _flags(text: Any) -> tuple[bool, ...] | None:
    text = str(text).strip()
    if text in ("", "nan", "None"):
        return None
    if not set(text) <= {"0", "1"} or len(text) > 3:
        raise ValueError(text)
    return tuple(c == "1" for c in text)


def _value(rec: Mapping[str, Any], key: str, where: str, parse: Any, allowed: str) -> Any:
    """``rec[key]`` parsed, or a one-line error naming the file, row, column and value."""
    if key not in rec:
        raise ConfigError(f"{where}: no {key!r} column; allowed: a CSV written by simulate validate")
    text = rec[key]
    try:
        return parse(text)
    except (ValueError, TypeError, OverflowError):
        raise ConfigError(f"{where}: {key}={str(text)[:80]!r}; allowed: {allowed}") from None


def _count(text: Any) -> int:
    text = str(text).strip()
    if not _ASCII_INT.fullmatch(text) or len(text) > 12:
        raise ValueError(text)
    return int(text)


def _ms(text: Any) -> float:
    value = float(str(text).strip())
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


@dataclass(frozen=True)
class Row:
    """One measured row, ready for the cost model: its tile map and problem, built once."""

    config_id: str
    kernel: str
    label: str
    measured_ms: float
    problem: Problem
    tokens: int
    pairs: float
    tm: TileMap | None  # None: dense
    pattern: GNAPattern | None
    backprop: bool = False  # passes = "fwd+bwd": forward and backward timed together
    #: Which of our forward kernels ran (``fwd_kernel``: ``triton`` or ``ws``); rows of files from before the
    #: column existed ran the Triton kernels. Empty for SDPA rows.
    route: str = "triton"


def prepare(rec: Mapping[str, Any], gpu: GPU, where: str = "measurement row") -> Row:
    """Build a :class:`Row` from one CSV record (its kernel, pattern, tiles and problem); a malformed value is a
    one-line :class:`ConfigError` naming ``where`` (file and row), the column and the value."""
    try:
        return _prepare(rec, where)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(where) else f"{where}: {text}") from None


def _prepare(rec: Mapping[str, Any], where: str) -> Row:
    kernel = str(_value(rec, "kernel", where, str, "a kernel name"))
    counts = {k: _value(rec, k, where, _count, "a positive integer") for k in ("batch", "heads", "heads_kv",
                                                                             "head_dim")}
    dtype = _value(rec, "dtype", where, str, "fp16, bf16 or fp8")
    problem = Problem(batch=counts["batch"], heads=counts["heads"], heads_kv=counts["heads_kv"],
                      head_dim=counts["head_dim"], dtype=dtype)
    shape = "axis lengths such as 30x48x80"
    size = _value(rec, "input_size", where, _ints, shape)
    if size is None:
        raise ConfigError(f"{where}: input_size is empty; allowed: {shape}")
    size = layout_tuple(size)
    measured = _value(rec, "measured_ms", where, _ms, "a positive finite time in milliseconds")
    config_id = str(_value(rec, "config_id", where, str, "an identifier"))
    tokens = math.prod(size)
    passes = str(rec.get("passes") or "fwd").strip()
    if passes not in ("fwd", "fwd+bwd"):
        raise ConfigError(f"{where}: passes={passes[:40]!r}; allowed: fwd, fwd+bwd")
    backprop = passes == "fwd+bwd"
    route = str(rec.get("fwd_kernel") or "").strip()
    if kernel in ("dense", "gna", "block_sparse"):
        route = route or "triton"
        if route not in FORWARD_KERNELS:
            raise ConfigError(f"{where}: fwd_kernel={route[:40]!r}; allowed: {', '.join(FORWARD_KERNELS)}")
    label = (f"{kernel}{' fwd+bwd' if backprop else ''} {rec['input_size']} h{problem.heads}/{problem.heads_kv} "
             f"d{problem.head_dim} b{problem.batch}")
    if kernel in ("dense", "cudnn", "flash"):
        return Row(config_id, kernel, label, measured, problem, tokens, float(tokens) ** 2, None, None, backprop,
                   route)
    label += f" w{rec.get('window', '')} s{rec.get('stride', '')}"
    window = _value(rec, "window", where, _ints, shape)
    stride = _value(rec, "stride", where, _ints, shape) if "stride" in rec else None
    dilation = _value(rec, "dilation", where, _ints, shape) if "dilation" in rec else None
    causal = _value(rec, "causal", where, _flags, "0/1 flags such as 001") if "causal" in rec else None
    pattern = GNAPattern(input_size=size, window=window, stride=stride or (), dilation=dilation or (),
                         causal=causal or ())
    q, kv = _value(rec, "q_tile", where, _ints, shape), _value(rec, "kv_tile", where, _ints, shape)
    if q is None or kv is None:
        raise ConfigError(f"{where}: no q_tile/kv_tile recorded")
    if kernel == "block_sparse":
        from sparsesim.simulator.schedule import box_schedule

        visited, _ = box_schedule(pattern, q, kv).tile_classes()
        bsp = BlockSparsePattern(block_map=visited, seq_len=tokens, q_tile=q[0], kv_tile=kv[0])
        tm = block_sparse_tilemap(bsp)
        pairs = bsp.visible_pairs() / bsp.heads
    else:
        tm = tilemap(pattern, q, kv, "box")
        pairs = float(pattern.visible_pairs())
    label += f" q{rec['q_tile']}/kv{rec['kv_tile']}"
    return Row(config_id, kernel, label, measured, problem, tokens, pairs, tm, pattern, backprop, route)


def predicted_ms(row: Row, gpu: GPU, prof: KernelProfile) -> float:
    """The whole call the row measured, as ``prof`` predicts it (its forward by ``prof``'s ``ws_profile`` where the
    row ran the warp-specialized forward)."""
    if row.tm is None:
        return dense_pass(gpu, prof, row.problem, None, row.tokens, _dummy(), row.backprop, row.route).ms
    pattern = row.pattern if isinstance(row.pattern, GNAPattern) else None
    return sparse_call(gpu, prof, row.problem, row.tm, row.tokens, row.pairs, row.backprop, row.route,
                       pattern).call_ms


def _dummy() -> TileMap:
    from sparsesim.simulator.predict import full_tilemap

    return full_tilemap(1, 1, 1)


def with_params(prof: KernelProfile, values: Mapping[str, float]) -> KernelProfile:
    """``prof`` with some forward parameters replaced."""
    return dataclasses.replace(prof, forward=dataclasses.replace(prof.forward, **values))


@dataclass(frozen=True)
class Fit:
    """A fitted profile and how well it predicts: MAPE on training and held-out rows, the worst rows."""

    profile: KernelProfile
    params: dict[str, float]
    train_mape: float
    heldout_mape: float
    n_train: int
    n_heldout: int
    train_configs: int
    heldout_configs: int
    worst: list[dict[str, Any]]
    prior_heldout_mape: float
    #: The measured kernels fitted to and the GPU they ran on (set by :func:`calibrate`).
    kernels: tuple[str, ...] = ()
    gpu_name: str = ""
    #: Free parameters no training row depends on: kept at the prior's value, not fitted.
    unidentified: tuple[str, ...] = ()


def _mape(rows: Sequence[Row], gpu: GPU, prof: KernelProfile) -> float:
    if not rows:
        return float("nan")
    return float(np.mean([abs(predicted_ms(r, gpu, prof) / r.measured_ms - 1) for r in rows]))


def split(rows: Sequence[Row], holdout: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Training and held-out rows, split by configuration with a seeded permutation."""
    configs = sorted({r.config_id for r in rows})
    order = np.random.default_rng(seed).permutation(len(configs))
    n_held = int(round(holdout * len(configs)))
    held = {configs[i] for i in order[:n_held]}
    return [r for r in rows if r.config_id not in held], [r for r in rows if r.config_id in held]


def fit(rows: Sequence[Row], gpu: GPU, prior: KernelProfile, *, holdout: float = 0.3, seed: int = 0,
        max_nfev: int = 100, free: Mapping[str, tuple[float, float]] | None = None) -> Fit:
    """Fit ``prior``'s free parameters to the training rows (log-time residuals, bounded). ``free``: the
    parameters and their bounds (default: the profile family's, and the backward terms when forward+backward
    rows are among the training rows)."""
    from scipy.optimize import least_squares

    if not 0 <= holdout < 1:
        raise ConfigError(f"--holdout {holdout}; allowed: 0 <= holdout < 1")
    train, held = split(rows, holdout, seed)
    if free is not None:
        free = dict(free)
    else:
        free = dict(FREE_WS if prior.forward_kernel == "ws" else FREE[family(prior)])
        if any(r.backprop for r in train):  # the backward terms the model uses (cost.backward_passes / fused)
            free.update(FREE_BACKWARD)
        if any(r.backprop and r.kernel == "block_sparse" for r in train) and family(prior) == "triton":
            free.update(FREE_BLOCK_BACKWARD)
    if len(train) < len(free):
        raise ConfigError(f"{len(train)} training rows for {len(free)} parameters; measure more configurations")
    unidentified = tuple(n for n in free if not _moves_a_row(n, free[n], train, gpu, prior))
    names = [n for n in free if n not in unidentified]  # the others keep the prior's value
    if not names:
        raise ConfigError(f"no training row depends on the free parameters {sorted(free)}; measure configurations "
                          "that use them")
    lo = np.array([free[n][0] for n in names])
    hi = np.array([free[n][1] for n in names])
    x0 = np.clip([_get_param(prior, n) for n in names], lo, hi)

    def residuals(x: np.ndarray) -> np.ndarray:
        prof = _set_params(prior, dict(zip(names, x.tolist(), strict=True)))
        return np.array([math.log(predicted_ms(r, gpu, prof) / r.measured_ms) for r in train])

    res = least_squares(residuals, x0, bounds=(lo, hi), x_scale=hi - lo, diff_step=1e-3, max_nfev=max_nfev,
                        loss="soft_l1", f_scale=0.05,
                        ftol=1e-4, xtol=1e-4, gtol=1e-4)
    params = dict(zip(names, res.x.tolist(), strict=True))
    fitted = _set_params(prior, params)
    scored = sorted(((predicted_ms(r, gpu, fitted) / r.measured_ms - 1, r) for r in held or train),
                    key=lambda t: -abs(t[0]))
    worst = [{"row": r.label, "config_id": r.config_id, "measured_ms": r.measured_ms,
              "predicted_ms": r.measured_ms * (1 + e), "error": e} for e, r in scored[:5]]
    return Fit(profile=fitted, params=params, train_mape=_mape(train, gpu, fitted),
               heldout_mape=_mape(held, gpu, fitted),
               n_train=len(train), n_heldout=len(held), train_configs=len({r.config_id for r in train}),
               heldout_configs=len({r.config_id for r in held}), worst=worst,
               prior_heldout_mape=_mape(held, gpu, prior), unidentified=unidentified)


def _moves_a_row(name: str, bounds: tuple[float, float], rows: Sequence[Row], gpu: GPU, prior: KernelProfile) -> bool:
    """Whether setting ``name`` to either bound changes the prediction of any of ``rows`` (a parameter no row
    depends on, such as a stage penalty when every row's tiles keep all their stages, would drift to an arbitrary
    value in the fit and mislead every prediction that does depend on it)."""
    base = [predicted_ms(r, gpu, prior) for r in rows]
    for value in bounds:
        prof = _set_params(prior, {name: value})
        if any(not math.isclose(predicted_ms(r, gpu, prof), b, rel_tol=1e-9) for r, b in zip(rows, base, strict=True)):
            return True
    return False


#: Largest measurements CSV read (the committed ones are well under a MiB).
MAX_CSV_BYTES = 256 * 2**20


def read_measurements(path: str | Path) -> Any:
    """A measurements CSV as a DataFrame of strings; every failure is one line naming the file (only a regular
    file of at most :data:`MAX_CSV_BYTES`, in UTF-8, is read)."""
    import pandas as pd

    from sparsesim.hwmodels.errors import check_input_file

    flag = f"--measurements {str(path)[:200]!r}"
    try:
        check_input_file(path, flag, MAX_CSV_BYTES, "a CSV written by simulate validate")
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{flag}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} is not UTF-8 text; allowed: a CSV written by simulate validate") from None
    except (OSError, ValueError) as exc:
        reason = " ".join(str(getattr(exc, "strerror", None) or exc).split())[:200]
        raise ConfigError(f"{flag} is not a readable CSV: {reason}") from None


def load_rows(paths: Iterable[str | Path], gpu: GPU, kernels: Sequence[str],
              forward_kernel: str | None = None) -> list[Row]:
    """The usable rows of some measurement CSVs: checked, measured, of the given kernels (and, for our kernels'
    rows, run by ``forward_kernel`` where given: ``triton`` or ``ws``)."""
    paths = list(paths)
    rows = []
    for path in paths:
        df = read_measurements(path)
        missing = {"config_id", "kernel", "measured_ms", "ok", "input_size"} - set(df.columns)
        if missing:
            raise ConfigError(f"--measurements {str(path)!r} lacks columns {sorted(missing)}; allowed: a CSV "
                              f"written by simulate validate")
        for i, rec in enumerate(df.to_dict(orient="records")):
            if rec["kernel"] in kernels and rec["ok"] == "True" and rec["measured_ms"] not in ("", "nan"):
                row = prepare(rec, gpu, f"--measurements {str(path)!r} row {i + 2}")
                if forward_kernel is None or row.kernel not in KERNELS_OF["triton"] or row.route == forward_kernel:
                    rows.append(row)
    if not rows:
        which = f" run by the {forward_kernel!r} forward" if forward_kernel else ""
        raise ConfigError(f"no usable rows of kernels {list(kernels)}{which} in {[str(p) for p in paths]}")
    return rows


def profile_rows(paths: Sequence[str | Path], gpu: GPU, kernels: Sequence[str], prof: KernelProfile) -> list[Row]:
    """The rows ``prof`` is fitted to (and its held-out part judged on): :func:`load_rows` of ``kernels``, for our
    kernels only the rows its forward kernel ran; a ``ws`` profile prices forwards only (the backward of its calls
    is the Triton kernels'), so it takes no forward+backward row."""
    rows = load_rows(paths, gpu, kernels, prof.forward_kernel if family(prof) == "triton" else None)
    if prof.forward_kernel == "ws":
        rows = [r for r in rows if not r.backprop]
        if not rows:
            raise ConfigError(f"no forward-only rows run by the ws forward in {[str(p) for p in paths]}")
    return rows


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _profile_body(p: KernelProfile) -> list[str]:
    """A profile file's lines after its header keys: the routing keys, the sections and the sources (but ``fit``)."""
    lines = []
    if p.ws_profile:
        lines.append(f"ws_profile = {_toml_value(p.ws_profile)}")
    if p.forward_kernel != "triton":
        lines.append(f"forward_kernel = {_toml_value(p.forward_kernel)}")
    lines.append("")
    for section, obj in (("forward", p.forward), ("backward", p.backward), ("gemm", p.gemm)):
        lines.append(f"[{section}]")
        lines += [f"{f.name} = {_toml_value(getattr(obj, f.name))}" for f in dataclasses.fields(obj)]
        lines.append("")
    lines.append("[sources]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in p.sources.items() if k != "fit"]
    return lines


def profile_toml(result: Fit, measurements: Sequence[str], holdout: float, seed: int) -> str:
    """The fitted profile as a TOML data file, with what it was fitted to and how well."""
    p = result.profile
    description = p.description.replace("; prior, not fitted", "").removesuffix("; fitted") + "; fitted"
    lines = [f"# Fitted by `simulate calibrate` on {result.gpu_name} measurements; do not edit by hand.",
             f"name = {_toml_value(p.name)}", f"architecture = {_toml_value(p.architecture)}",
             f"description = {_toml_value(description)}",
             f"token_permutation = {_toml_value(p.token_permutation)}"]
    lines += _profile_body(p)
    lines.append(f"fit = {_toml_value('simulate calibrate: bounded least squares on log(predicted/measured)')}")
    lines += ["", "[fit]", f"gpu = {_toml_value(result.gpu_name)}", f"measurements = {_toml_value(list(measurements))}",
              f"kernels = {_toml_value(list(result.kernels))}",
              f"free = {_toml_value(list(result.params))}", f"holdout = {holdout}", f"seed = {seed}",
              f"n_train = {result.n_train}", f"n_heldout = {result.n_heldout}",
              f"train_configs = {result.train_configs}", f"heldout_configs = {result.heldout_configs}",
              f"train_mape = {result.train_mape!r}", f"heldout_mape = {result.heldout_mape!r}",
              f"prior_heldout_mape = {result.prior_heldout_mape!r}"]
    if result.unidentified:
        lines.append(f"unidentified = {_toml_value(list(result.unidentified))}  # no training row depends on them: "
                     "the prior's values")
    return "\n".join([*lines, ""])


def calibrate(measurements: Sequence[str], *, gpu: str = "H200", kernel_profile: str = "triton",
              holdout: float = 0.3, seed: int = 0, prior: str | None = None,
              max_nfev: int = 100, kernels: Sequence[str] | None = None) -> Fit:
    """Fit ``kernel_profile`` (``triton`` or ``cudnn``) to the measurement files.

    The prior is the hand-set file in ``hwmodels/profiles`` (never a previous fit). ``kernels`` picks
    the measured kernels the profile is fitted to (default: every kernel it models, :data:`KERNELS_OF`).
    Nothing is written: :func:`profile_toml` renders the result for the caller to save.
    """
    from sparsesim.hwmodels.gpus import read_toml
    from sparsesim.hwmodels.profiles import PROFILE_DIR, parse_profile, resolve_name

    spec = load_gpu(gpu)
    name = resolve_name(kernel_profile, spec)
    if prior is None:
        path = PROFILE_DIR / f"{name}.toml"
        if not path.exists():
            raise ConfigError(f"--kernel-profile {kernel_profile!r}: no prior {str(path)!r}; allowed: triton, "
                              "triton-ws, cudnn")
        base = parse_profile(read_toml(path, "kernel profile"), str(path))
    else:
        base = load_profile(prior, spec)
    allowed = KERNELS_OF[family(base)]
    chosen = tuple(kernels) if kernels else allowed
    if not chosen or any(k not in allowed for k in chosen):
        raise ConfigError(f"--kernels {','.join(chosen)}; allowed for {base.name}: a subset of {','.join(allowed)}")
    rows = profile_rows(measurements, spec, chosen, base)
    result = fit(rows, spec, base, holdout=holdout, seed=seed, max_nfev=max_nfev)
    return dataclasses.replace(result, kernels=tuple(chosen), gpu_name=spec.name)


# --------------------------------------------------------------------------------------------------------------------
# Published figures: fit the ``reference-<arch>`` profiles to papers' and docs' kernel figures (hwmodels/published/).

#: The published-measurements set shipped with the package (one row per figure, with its source).
PUBLISHED_FILE = Path(__file__).resolve().parent.parent / "hwmodels" / "published" / "published.csv"
#: Largest published set read.
MAX_PUBLISHED_BYTES = 16 * 2**20
#: The published kernels each architecture's reference profile stands for (rows of other kernels are not fitted).
ARCH_KERNELS = {"ampere": ("FA2",), "hopper": ("FA3", "cuDNN", "NATTEN-Hopper-FNA"),
                "blackwell": ("FA4", "cuDNN", "CUTLASS-FMHA", "NATTEN-Blackwell-FNA", "ThunderKittens")}
#: Free terms of a reference profile fitted to published figures (the H200 fit's terms, bounded alike);
#: ``backward.*`` terms are freed only when fwd+bwd figures are among the training rows.
FREE_REFERENCE = {"mma_efficiency": (0.3, 1.0), "softmax_overlap": (0.0, 1.0), "mask_ops_per_element": (0.0, 64.0),
                  "cta_overhead_us": (0.0, 40.0), "kv_tile_overhead_ns": (0.0, 3000.0),
                  "rescale_ops_per_element": (0.0, 64.0), "launch_latency_us": (0.0, 40.0),
                  "hbm_efficiency": (0.3, 1.0)}
FREE_BACKWARD = {"backward.mma_efficiency": (0.2, 1.0), "backward.cta_overhead_us": (0.0, 40.0)}
#: Fitted with :data:`FREE_BACKWARD` when block-sparse forward+backward rows are among the training rows.
FREE_BLOCK_BACKWARD = {"backward.list_penalty": (0.0, 1.0)}
#: Columns of the published set; ``note`` may be empty, the pattern columns of a dense row too.
PUBLISHED_COLUMNS = ("id", "paper", "address", "figure", "gpu", "dtype", "kernel", "passes", "batch", "heads",
                     "head_dim", "input_size", "window", "stride", "dilation", "causal", "q_tile", "kv_tile", "value",
                     "unit", "timed", "use", "note")
UNITS = ("ms", "TFLOP/s", "speedup")
USES = ("fit", "judge")


@dataclass(frozen=True)
class PublishedRow:
    """One published figure, ready for the cost model (tile maps built once).

    ``unit`` says what ``value`` is: a kernel time (``ms``), a throughput by the FlashAttention FLOP
    convention (``TFLOP/s``) or a speedup over the same library's dense kernel (``speedup``); ``timed``
    whether the kernel alone or the whole call (token permutation included) was timed.
    """

    id: str
    source: str
    use: str
    arch: str
    gpu: GPU
    kernel: str
    unit: str
    timed: str
    value: float
    config_id: str
    label: str
    problem: Problem
    tokens: int
    pairs: float
    dense_pairs: float
    backprop: bool
    tm: TileMap | None  # None: dense
    pattern: GNAPattern | None
    #: True: one of this repository's own measurements (:func:`measured_rows`), not a published figure.
    measured: bool = False


def _text(rec: Mapping[str, Any], key: str, where: str, allowed: Sequence[str] | None = None) -> str:
    text = str(rec.get(key) or "").strip()
    if not text:
        raise ConfigError(f"{where}: {key} is empty; allowed: " + (", ".join(allowed) if allowed else "some text"))
    if allowed is not None and text not in allowed:
        raise ConfigError(f"{where}: {key}={text[:80]!r}; allowed: {', '.join(allowed)}")
    return text


def _positive(text: Any) -> float:
    value = float(str(text).strip())
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


def prepare_published(rec: Mapping[str, Any], where: str) -> PublishedRow:
    """Build a :class:`PublishedRow` from one record of the published set; a malformed field is a one-line
    :class:`ConfigError` naming ``where`` (file and row), the field and its value."""
    ident = _text(rec, "id", where)
    for key in ("paper", "address", "figure"):
        _text(rec, key, where)
    gpu_name = _text(rec, "gpu", where)
    try:
        gpu = load_gpu(gpu_name)
    except ConfigError:
        raise ConfigError(f"{where}: gpu={gpu_name[:80]!r}; allowed: a GPU of hwmodels/gpus (A100, H100, H200, "
                          f"B200)") from None
    dtype = _text(rec, "dtype", where, ("fp16", "bf16", "fp8"))
    kernel = _text(rec, "kernel", where)
    passes = _text(rec, "passes", where, ("fwd", "fwd+bwd"))
    unit = _text(rec, "unit", where, UNITS)
    timed = _text(rec, "timed", where, ("kernel", "call"))
    use = _text(rec, "use", where, USES)
    value = _value(rec, "value", where, _positive, "a positive finite number")
    counts = {k: _value(rec, k, where, _count, "a positive integer") for k in ("batch", "heads", "head_dim")}
    heads_kv = counts["heads"]  # optional column: K/V heads of grouped-query attention (default: as heads)
    if str(rec.get("heads_kv") or "").strip():
        heads_kv = _value(rec, "heads_kv", where, _count, "a positive integer dividing heads")
    if min(counts.values()) < 1 or heads_kv < 1 or counts["heads"] % heads_kv:
        raise ConfigError(f"{where}: batch/heads/head_dim must be at least 1 and heads_kv divide heads")
    problem = Problem(batch=counts["batch"], heads=counts["heads"], heads_kv=heads_kv,
                      head_dim=counts["head_dim"], dtype=dtype)
    shape = "axis lengths such as 30x48x80"
    size = _value(rec, "input_size", where, _ints, shape)
    if size is None:
        raise ConfigError(f"{where}: input_size is empty; allowed: {shape}")
    window = _value(rec, "window", where, _ints, shape) or size
    stride = _value(rec, "stride", where, _ints, shape) or ()
    dilation = _value(rec, "dilation", where, _ints, shape) or ()
    causal = _value(rec, "causal", where, _flags, "0/1 flags such as 001") or ()
    try:
        pattern = GNAPattern(input_size=layout_tuple(size), window=window, stride=stride, dilation=dilation,
                             causal=causal)
    except (ConfigError, ValueError) as exc:
        raise ConfigError(f"{where}: pattern {rec.get('input_size')!r} w{rec.get('window')!r} "
                          f"s{rec.get('stride')!r}: {str(exc)[:200]}") from None
    tokens = math.prod(pattern.input_size)
    dense = all(w == n for w, n in zip(pattern.window, pattern.input_size, strict=True)) and \
        all(d == 1 for d in pattern.dilation)
    backprop = passes == "fwd+bwd"
    route = str(rec.get("fwd_kernel") or "").strip()
    if kernel in ("dense", "gna", "block_sparse"):
        route = route or "triton"
        if route not in FORWARD_KERNELS:
            raise ConfigError(f"{where}: fwd_kernel={route[:40]!r}; allowed: {', '.join(FORWARD_KERNELS)}")
    label = (f"{gpu.name} {kernel} {rec.get('input_size')} w{rec.get('window')} s{rec.get('stride') or 1}"
             f"{' causal' if any(pattern.causal) else ''} h{problem.heads} d{problem.head_dim} b{problem.batch} "
             f"{passes} {unit}")
    dense_pairs = float(pattern.dense().visible_pairs())
    if dense:
        if unit == "speedup":
            raise ConfigError(f"{where}: unit=speedup on a dense row; allowed: ms or TFLOP/s")
        tm, pairs, pat = None, dense_pairs, (pattern if any(pattern.causal) else None)
    else:
        q = _value(rec, "q_tile", where, _ints, shape)
        kv = _value(rec, "kv_tile", where, _ints, shape)
        dq, dkv = gpu.tiles_for(len(pattern.input_size))
        q, kv = q or dq, kv or dkv
        if len(q) != len(pattern.input_size) or len(kv) != len(pattern.input_size):
            raise ConfigError(f"{where}: q_tile/kv_tile {rec.get('q_tile')!r}/{rec.get('kv_tile')!r}; allowed: one "
                              f"tile extent per axis of input_size")
        tm = tilemap(pattern, q, kv, "box")
        pairs, pat = float(pattern.visible_pairs()), pattern
        label += f" q{'x'.join(map(str, q))}/kv{'x'.join(map(str, kv))}"
    group = [] if heads_kv == problem.heads else [f"kv{heads_kv}"]
    key = "|".join([gpu.name, dtype, passes, str(problem.batch), str(problem.heads), *group, str(problem.head_dim),
                    *(str(rec.get(k) or "") for k in ("input_size", "window", "stride", "dilation", "causal"))])
    import hashlib

    config_id = hashlib.sha1(key.encode()).hexdigest()[:12]
    source = f"{rec['paper']}, {rec['figure']} ({rec['address']})"
    return PublishedRow(id=ident, source=source, use=use, arch=gpu.architecture, gpu=gpu, kernel=kernel, unit=unit,
                        timed=timed, value=value, config_id=config_id, label=label, problem=problem,
                        tokens=tokens, pairs=pairs, dense_pairs=dense_pairs, backprop=backprop, tm=tm, pattern=pat,
                        measured=str(rec.get("measured") or "") == "1")


def read_published(path: str | Path | None = None) -> list[PublishedRow]:
    """Every row of a published-measurements CSV (default: the shipped set, :data:`PUBLISHED_FILE`), checked; a
    malformed row is a one-line :class:`ConfigError` naming the file, the row and the field."""
    import csv
    import io

    from sparsesim.hwmodels.errors import check_input_file

    path = Path(path) if path is not None else PUBLISHED_FILE
    flag = f"published set {str(path)[:200]!r}"
    allowed = "a CSV with the columns of hwmodels/published/published.csv"
    try:
        check_input_file(path, flag, MAX_PUBLISHED_BYTES, allowed)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{flag}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} is not UTF-8 text; allowed: {allowed}") from None
    except OSError as exc:
        raise ConfigError(f"{flag} cannot be read: {_reason_of(exc)}") from None
    try:
        records = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise ConfigError(f"{flag} is not a readable CSV: {str(exc)[:200]}") from None
    header = set(records[0]) if records else set()
    missing = [c for c in PUBLISHED_COLUMNS if c not in header]
    if missing:
        raise ConfigError(f"{flag} lacks columns {missing}; allowed: {allowed}")
    rows, seen = [], set()
    for i, rec in enumerate(records):
        where = f"{flag} row {i + 2}"
        if None in rec:
            raise ConfigError(f"{where}: more fields than columns; allowed: {allowed}")
        row = prepare_published(rec, where)
        if row.id in seen:
            raise ConfigError(f"{where}: id={row.id[:80]!r} repeats an earlier row; allowed: a unique id")
        seen.add(row.id)
        rows.append(row)
    if not rows:
        raise ConfigError(f"{flag} holds no rows")
    return rows


#: This repository's H200 measurements that the Hopper reference fit also uses (the files the shipped
#: ``cudnn-hopper`` fit was made from): their cuDNN rows, predicted on the H200's GPU file.
H200_MEASUREMENTS = ("hwmodels/measurements/validate_h200_2026-11-29_828261d.csv",
                     "hwmodels/measurements/validate_h200_dense_2026-11-29_828261d.csv")
#: Which measured kernels stand for which published kernel of the reference profile. Only cuDNN: the sparse
#: rows time our Triton GNA kernel, whose per-tile terms are the ``triton`` profile's, not NATTEN FNA's.
MEASURED_AS = {"cudnn": "cuDNN"}


def measured_rows(paths: Sequence[str | Path] = H200_MEASUREMENTS,
                  kernels: Mapping[str, str] | None = None) -> list[PublishedRow]:
    """This repository's measurements (``simulate validate`` CSVs) as use="fit" rows of the published set.

    Each row keeps the GPU it ran on (its ``gpu`` column): the cost model predicts it with that GPU file's
    rates, so an H200 row informs the H100's reference terms (same SM count and clocks) through the two
    GPUs' bandwidth and clock figures. ``kernels`` maps a measured kernel to the published kernel name it
    stands for (default :data:`MEASURED_AS`); a measured dense kernel is timed over the whole input.
    """
    root = PUBLISHED_FILE.parent.parent.parent
    kernels = MEASURED_AS if kernels is None else kernels
    rows = []
    for path in paths:
        full = Path(path) if Path(path).is_absolute() else root / path
        df = read_measurements(full)
        for i, rec in enumerate(df.to_dict(orient="records")):
            if rec.get("kernel") not in kernels or rec.get("ok") != "True" or rec.get("measured_ms") in ("", "nan"):
                continue
            dense = rec["kernel"] in ("cudnn", "dense", "flash")
            pub = {"id": f"measured-{Path(path).stem}-row{i + 2}", "paper": "sparsesim measurements",
                   "address": str(path), "figure": f"simulate validate, row {i + 2} ({rec.get('gpu', '')})",
                   "gpu": rec.get("gpu") or "H200", "dtype": rec["dtype"], "kernel": kernels[rec["kernel"]],
                   "passes": rec.get("passes") or "fwd", "batch": rec["batch"], "heads": rec["heads"],
                   "heads_kv": rec["heads_kv"], "head_dim": rec["head_dim"], "input_size": rec["input_size"],
                   "window": rec["input_size"] if dense else rec["window"], "stride": "" if dense else rec["stride"],
                   "dilation": "" if dense else rec["dilation"], "causal": rec.get("causal", ""),
                   "q_tile": "" if dense else rec["q_tile"], "kv_tile": "" if dense else rec["kv_tile"],
                   "value": rec["measured_ms"], "unit": "ms", "timed": "kernel", "use": "fit", "measured": "1"}
            rows.append(prepare_published(pub, f"--measurements {str(path)!r} row {i + 2}"))
    return rows


def _reason_of(exc: OSError) -> str:
    return " ".join(str(exc.strerror or exc).split())[:200]


def _set_params(prof: KernelProfile, values: Mapping[str, float]) -> KernelProfile:
    """``prof`` with forward (plain names) and backward (``backward.*``) parameters replaced."""
    fwd = {k: v for k, v in values.items() if "." not in k}
    bwd = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("backward.")}
    out = with_params(prof, fwd) if fwd else prof
    return dataclasses.replace(out, backward=dataclasses.replace(out.backward, **bwd)) if bwd else out


def _get_param(prof: KernelProfile, name: str) -> float:
    if name.startswith("backward."):
        return float(getattr(prof.backward, name.split(".", 1)[1]))
    return float(getattr(prof.forward, name))


def published_ratio(row: PublishedRow, prof: KernelProfile) -> float:
    """Predicted over published *time* of a row (above 1: the model is slow); a speedup compares the sparse
    time relative to the same profile's dense kernel."""
    from sparsesim.simulator.flops import attention_flops

    gpu, p = row.gpu, row.problem
    if row.tm is None:
        ms = dense_pass(gpu, prof, p, row.pattern, row.tokens, _dummy(), row.backprop).ms
    else:
        sc = sparse_call(gpu, prof, p, row.tm, row.tokens, row.pairs, row.backprop)
        ms = sc.kernel.ms if row.timed == "kernel" else sc.call_ms
    if row.unit == "ms":
        return ms / row.value
    if row.unit == "TFLOP/s":
        flops = attention_flops(row.pairs, heads=p.heads, head_dim=p.head_dim, batch=p.batch, backprop=row.backprop)
        return ms / (flops / row.value / 1e9)
    dense = dense_pass(gpu, prof, p, row.pattern, row.tokens, row.tm, row.backprop).ms  # type: ignore[arg-type]
    return row.value / (dense / ms)


def _mape_published(rows: Sequence[PublishedRow], prof: KernelProfile) -> float:
    if not rows:
        return float("nan")
    return float(np.mean([abs(published_ratio(r, prof) - 1) for r in rows]))


@dataclass(frozen=True)
class PublishedFit:
    """A reference profile fitted to published figures of one architecture, and how well it predicts."""

    arch: str
    prior: KernelProfile
    profile: KernelProfile
    params: dict[str, float]
    kernels: tuple[str, ...]
    train: tuple[PublishedRow, ...]
    heldout: tuple[PublishedRow, ...]
    judge: tuple[PublishedRow, ...]
    train_mape: float
    heldout_mape: float
    prior_train_mape: float
    prior_heldout_mape: float
    judge_mape: float
    prior_judge_mape: float
    holdout: float
    seed: int
    source_file: str
    #: This repository's measurement files fitted alongside the published rows (:func:`measured_rows`), and the
    #: held-out error on their held-out rows (``train``/``heldout`` hold both kinds; ``*_mape`` above are of the
    #: published rows only).
    measurements: tuple[str, ...] = ()
    measured_heldout_mape: float = float("nan")
    prior_measured_heldout_mape: float = float("nan")

    def residuals(self, which: str = "heldout", fitted: bool = True) -> list[dict[str, Any]]:
        """Per-row errors (predicted over published time minus 1) of ``train``, ``heldout`` or ``judge`` rows."""
        prof = self.profile if fitted else self.prior
        return [{"id": r.id, "row": r.label, "kernel": r.kernel, "unit": r.unit, "published": r.value,
                 "error": published_ratio(r, prof) - 1} for r in getattr(self, which)]


def _published_split(rows: Sequence[PublishedRow], holdout: float, seed: int) -> tuple[list[PublishedRow],
                                                                                       list[PublishedRow]]:
    configs = sorted({r.config_id for r in rows})
    order = np.random.default_rng(seed).permutation(len(configs))
    held = {configs[i] for i in order[:int(round(holdout * len(configs)))]}
    return [r for r in rows if r.config_id not in held], [r for r in rows if r.config_id in held]


def fit_reference(rows: Sequence[PublishedRow], prior: KernelProfile, *, holdout: float = 0.3, seed: int = 0,
                  max_nfev: int = 200, prior_weight: float = 0.02, kernels: Sequence[str] | None = None,
                  source_file: str = "") -> PublishedFit:
    """Fit ``prior`` (a ``reference-<arch>`` profile) to the use="fit" rows of its architecture.

    The fit rows of the architecture's kernels (:data:`ARCH_KERNELS`) are split by configuration with a seeded
    permutation; the free terms (:data:`FREE_REFERENCE`, and :data:`FREE_BACKWARD` when fwd+bwd figures are
    trained on) are fitted by bounded least squares on the log of predicted over published time of the
    training rows, with a weak pull (``prior_weight`` per full range) toward the prior so that terms the
    figures do not inform stay where they were. use="judge" rows are never fitted; they are scored.
    """
    from scipy.optimize import least_squares

    if not 0 <= holdout < 1:
        raise ConfigError(f"--holdout {holdout}; allowed: 0 <= holdout < 1")
    arch = prior.architecture
    chosen = tuple(kernels) if kernels else ARCH_KERNELS.get(arch, ())
    mine = [r for r in rows if r.arch == arch and r.kernel in chosen]
    fit_rows = [r for r in mine if r.use == "fit"]
    judge = [r for r in mine if r.use == "judge"]
    if not fit_rows:
        raise ConfigError(f"no use=fit rows of kernels {list(chosen)} on {arch} GPUs in {source_file or 'the set'}")
    train, held = _published_split(fit_rows, holdout, seed)
    if not train:
        raise ConfigError(f"--holdout {holdout} leaves no {arch} training rows; allowed: a smaller share")
    free = dict(FREE_REFERENCE)
    if any(r.backprop for r in train):
        free.update(FREE_BACKWARD)
    names = list(free)
    lo = np.array([free[n][0] for n in names])
    hi = np.array([free[n][1] for n in names])
    x0 = np.clip([_get_param(prior, n) for n in names], lo, hi)
    scale = hi - lo

    def residuals(x: np.ndarray) -> np.ndarray:
        prof = _set_params(prior, dict(zip(names, x.tolist(), strict=True)))
        data = [math.log(published_ratio(r, prof)) for r in train]
        return np.concatenate([np.array(data), prior_weight * (x - x0) / scale])

    res = least_squares(residuals, x0, bounds=(lo, hi), x_scale=scale, diff_step=1e-3, max_nfev=max_nfev,
                        loss="soft_l1", f_scale=0.05, ftol=1e-6, xtol=1e-6, gtol=1e-6)
    params = dict(zip(names, res.x.tolist(), strict=True))
    fitted = _set_params(prior, params)
    pub_train, pub_held = [r for r in train if not r.measured], [r for r in held if not r.measured]
    ours = [r for r in held if r.measured]
    return PublishedFit(arch=arch, prior=prior, profile=fitted, params=params, kernels=chosen, train=tuple(train),
                        heldout=tuple(held), judge=tuple(judge), train_mape=_mape_published(pub_train, fitted),
                        heldout_mape=_mape_published(pub_held, fitted),
                        prior_train_mape=_mape_published(pub_train, prior),
                        prior_heldout_mape=_mape_published(pub_held, prior), judge_mape=_mape_published(judge, fitted),
                        prior_judge_mape=_mape_published(judge, prior), holdout=holdout, seed=seed,
                        source_file=source_file, measured_heldout_mape=_mape_published(ours, fitted),
                        prior_measured_heldout_mape=_mape_published(ours, prior))


def reference_prior(arch: str) -> KernelProfile:
    """The hand-set ``reference-<arch>`` profile of ``hwmodels/profiles`` (never a previous fit)."""
    from sparsesim.hwmodels.gpus import read_toml
    from sparsesim.hwmodels.profiles import PROFILE_DIR, parse_profile

    if arch not in ARCH_KERNELS:
        raise ConfigError(f"--arch {arch[:40]!r}; allowed: {', '.join(ARCH_KERNELS)}")
    path = PROFILE_DIR / f"reference-{arch}.toml"
    return parse_profile(read_toml(path, "kernel profile"), str(path))


def calibrate_published(published: str | Path | None = None, *, arch: str = "hopper", holdout: float = 0.3,
                        seed: int = 0, max_nfev: int = 200,
                        measurements: Sequence[str | Path] | None = None) -> PublishedFit:
    """Fit ``reference-<arch>`` to the published set (default: the shipped one). Nothing is written:
    :func:`published_profile_toml` renders the result for the caller to save.

    ``measurements``: this repository's measurement files fitted alongside (:func:`measured_rows`); default:
    :data:`H200_MEASUREMENTS` for ``hopper`` (the H200 has the H100's SMs and clocks; the cost model carries
    its measured cuDNN times to the H100 through the two GPU files' rates), none for the other architectures.
    They join the same seeded split by configuration as the published rows.
    """
    prior = reference_prior(arch)
    path = Path(published) if published is not None else PUBLISHED_FILE
    rows = read_published(path)
    if measurements is None:
        measurements = H200_MEASUREMENTS if arch == "hopper" else ()
    rows += measured_rows(measurements) if measurements else []
    result = fit_reference(rows, prior, holdout=holdout, seed=seed, max_nfev=max_nfev, source_file=str(path))
    return dataclasses.replace(result, measurements=tuple(str(m) for m in measurements))


def published_profile_toml(result: PublishedFit) -> str:
    """The fitted reference profile as a TOML data file, with what it was fitted to and how well."""
    p = result.profile
    lines = [f"# Fitted by `simulate calibrate --published` to published {result.arch} kernel figures; do not edit "
             f"by hand.", f"name = {_toml_value(p.name)}", f"architecture = {_toml_value(p.architecture)}",
             f"description = {_toml_value(p.description + '; fitted to published figures')}",
             f"token_permutation = {_toml_value(p.token_permutation)}"]
    lines += _profile_body(p)
    how = "simulate calibrate --published: bounded least squares on log(predicted/published time)"
    lines.append(f"fit = {_toml_value(how)}")
    papers = sorted({r.source.split(',')[0] for r in result.train if not r.measured})
    ours = [r for r in result.train if r.measured]
    what = (f"{len(result.train) - len(ours)} published figures ({', '.join(papers)}) on "
            f"{', '.join(sorted({r.gpu.name for r in result.train if not r.measured}))}"
            + (f"; {len(ours)} of this repository's {', '.join(sorted({r.gpu.name for r in ours}))} "
               f"{', '.join(sorted({r.kernel for r in ours}))} measurements, predicted with their own GPU file's "
               f"rates (same SMs and clocks as the H100, more bandwidth)" if ours else ""))
    lines += ["", "[fit]", f"published = {_toml_value(result.source_file)}",
              f"kernels = {_toml_value(list(result.kernels))}", f"papers = {_toml_value(papers)}",
              f"measurements = {_toml_value(list(result.measurements))}", f"fitted_to = {_toml_value(what)}",
              f"free = {_toml_value(list(result.params))}", f"holdout = {result.holdout}", f"seed = {result.seed}",
              f"train_rows = {_toml_value([r.id for r in result.train])}",
              f"heldout_rows = {_toml_value([r.id for r in result.heldout])}",
              f"n_train = {len(result.train)}", f"n_heldout = {len(result.heldout)}", f"n_judge = {len(result.judge)}",
              f"train_mape = {result.train_mape!r}", f"heldout_mape = {result.heldout_mape!r}",
              f"prior_train_mape = {result.prior_train_mape!r}", f"prior_heldout_mape = {result.prior_heldout_mape!r}",
              f"judge_mape = {result.judge_mape!r}", f"prior_judge_mape = {result.prior_judge_mape!r}",
              f"measured_heldout_mape = {result.measured_heldout_mape!r}",
              f"prior_measured_heldout_mape = {result.prior_measured_heldout_mape!r}", ""]
    return "\n".join(lines)
