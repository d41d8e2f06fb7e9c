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
from sparsesim.hwmodels.profiles import KernelProfile, load_profile
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
               "gather_penalty": (0.0, 1.0), "stage_penalty": (0.0, 1.0)},
    "cudnn": {"mma_efficiency": (0.3, 1.0), "softmax_overlap": (0.0, 1.0), "cta_overhead_us": (0.0, 40.0),
              "kv_tile_overhead_ns": (0.0, 3000.0), "launch_latency_us": (0.0, 40.0)},
}
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
    label = f"{kernel} {rec['input_size']} h{problem.heads}/{problem.heads_kv} d{problem.head_dim} b{problem.batch}"
    if kernel in ("dense", "cudnn", "flash"):
        return Row(config_id, kernel, label, measured, problem, tokens, float(tokens) ** 2, None, None)
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
    return Row(config_id, kernel, label, measured, problem, tokens, pairs, tm, pattern)


def predicted_ms(row: Row, gpu: GPU, prof: KernelProfile) -> float:
    """The whole call the row measured, as ``prof`` predicts it."""
    if row.tm is None:
        return dense_pass(gpu, prof, row.problem, None, row.tokens, _dummy(), False).ms
    return sparse_call(gpu, prof, row.problem, row.tm, row.tokens, row.pairs).call_ms


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
        max_nfev: int = 100) -> Fit:
    """Fit ``prior``'s free parameters to the training rows (log-time residuals, bounded)."""
    from scipy.optimize import least_squares

    if not 0 <= holdout < 1:
        raise ConfigError(f"--holdout {holdout}; allowed: 0 <= holdout < 1")
    free = FREE[family(prior)]
    train, held = split(rows, holdout, seed)
    if len(train) < len(free):
        raise ConfigError(f"{len(train)} training rows for {len(free)} parameters; measure more configurations")
    names = list(free)
    lo = np.array([free[n][0] for n in names])
    hi = np.array([free[n][1] for n in names])
    x0 = np.clip([getattr(prior.forward, n) for n in names], lo, hi)

    def residuals(x: np.ndarray) -> np.ndarray:
        prof = with_params(prior, dict(zip(names, x.tolist(), strict=True)))
        return np.array([math.log(predicted_ms(r, gpu, prof) / r.measured_ms) for r in train])

    res = least_squares(residuals, x0, bounds=(lo, hi), x_scale=hi - lo, diff_step=1e-3, max_nfev=max_nfev,
                        loss="soft_l1", f_scale=0.05,
                        ftol=1e-4, xtol=1e-4, gtol=1e-4)
    params = dict(zip(names, res.x.tolist(), strict=True))
    fitted = with_params(prior, params)
    scored = sorted(((predicted_ms(r, gpu, fitted) / r.measured_ms - 1, r) for r in held or train),
                    key=lambda t: -abs(t[0]))
    worst = [{"row": r.label, "config_id": r.config_id, "measured_ms": r.measured_ms,
              "predicted_ms": r.measured_ms * (1 + e), "error": e} for e, r in scored[:5]]
    return Fit(profile=fitted, params=params, train_mape=_mape(train, gpu, fitted),
               heldout_mape=_mape(held, gpu, fitted),
               n_train=len(train), n_heldout=len(held), train_configs=len({r.config_id for r in train}),
               heldout_configs=len({r.config_id for r in held}), worst=worst,
               prior_heldout_mape=_mape(held, gpu, prior))


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


def load_rows(paths: Iterable[str | Path], gpu: GPU, kernels: Sequence[str]) -> list[Row]:
    """The usable rows of some measurement CSVs: checked, measured, of the given kernels."""
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
                rows.append(prepare(rec, gpu, f"--measurements {str(path)!r} row {i + 2}"))
    if not rows:
        raise ConfigError(f"no usable rows of kernels {list(kernels)} in {[str(p) for p in paths]}")
    return rows


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def profile_toml(result: Fit, measurements: Sequence[str], holdout: float, seed: int) -> str:
    """The fitted profile as a TOML data file, with what it was fitted to and how well."""
    p = result.profile
    lines = [f"# Fitted by `simulate calibrate` on {result.gpu_name} measurements; do not edit by hand.",
             f"name = {_toml_value(p.name)}", f"architecture = {_toml_value(p.architecture)}",
             f"description = {_toml_value(p.description.replace('; prior, not fitted', '') + '; fitted')}",
             f"token_permutation = {_toml_value(p.token_permutation)}", ""]
    for section, obj in (("forward", p.forward), ("backward", p.backward), ("gemm", p.gemm)):
        lines.append(f"[{section}]")
        lines += [f"{f.name} = {_toml_value(getattr(obj, f.name))}" for f in dataclasses.fields(obj)]
        lines.append("")
    lines.append("[sources]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in p.sources.items()]
    lines.append(f"fit = {_toml_value('simulate calibrate: bounded least squares on log(predicted/measured)')}")
    lines += ["", "[fit]", f"gpu = {_toml_value(result.gpu_name)}", f"measurements = {_toml_value(list(measurements))}",
              f"kernels = {_toml_value(list(result.kernels))}",
              f"free = {_toml_value(list(result.params))}", f"holdout = {holdout}", f"seed = {seed}",
              f"n_train = {result.n_train}", f"n_heldout = {result.n_heldout}",
              f"train_configs = {result.train_configs}", f"heldout_configs = {result.heldout_configs}",
              f"train_mape = {result.train_mape!r}", f"heldout_mape = {result.heldout_mape!r}",
              f"prior_heldout_mape = {result.prior_heldout_mape!r}", ""]
    return "\n".join(lines)


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
            raise ConfigError(f"--kernel-profile {kernel_profile!r}: no prior {str(path)!r}; allowed: triton, cudnn")
        base = parse_profile(read_toml(path, "kernel profile"), str(path))
    else:
        base = load_profile(prior, spec)
    allowed = KERNELS_OF[family(base)]
    chosen = tuple(kernels) if kernels else allowed
    if not chosen or any(k not in allowed for k in chosen):
        raise ConfigError(f"--kernels {','.join(chosen)}; allowed for {base.name}: a subset of {','.join(allowed)}")
    rows = load_rows(measurements, spec, chosen)
    result = fit(rows, spec, base, holdout=holdout, seed=seed, max_nfev=max_nfev)
    return dataclasses.replace(result, kernels=tuple(chosen), gpu_name=spec.name)
