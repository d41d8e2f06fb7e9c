"""The plan record: one pattern per layer and head (optionally per range of denoising steps), as a typed,
versioned JSON file.

:class:`Plan` (frozen, with frozen layers, launches and heads) is what ``simulate search`` writes, what
``simulate plan show`` and reports read, and what the kernels run (:func:`sparsesim.kernels.run_plan`).
:meth:`Plan.to_json` writes its text; :func:`load_plan` / :meth:`Plan.from_json` read one back, every
field checked (patterns by the core's :class:`~sparsesim.simulator.patterns.GNAPattern`) and every
malformed file refused in one line naming the file, the field and its value. A plan may hold ranges of
denoising steps (:class:`PlanSteps`: dense warm-up steps, or other layers for some steps, as
:mod:`sparsesim.search.global_study` writes); :meth:`Plan.layers_at` says what runs in a step. The search
builds plans (:mod:`sparsesim.search.plan`); this module only defines and reads them, so every package can use
it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.patterns import GNAPattern

_USERINFO = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@?#]*):(?P<secret>.*)@(?P<rest>[^@]*)$", re.S)
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:password|passwd|pwd|sslpassword)=)[^&#]*", re.I)


def redact_url(url: str) -> str:
    """``url`` with its password (``user:PASSWORD@host`` and ``?password=...``) shown as ``***``: what every
    message, plan and report shows of a storage URL.

    Example:
        >>> redact_url("postgresql://user:secret@db.example:5432/optuna")
        'postgresql://user:***@db.example:5432/optuna'
    """
    text = _USERINFO.sub(lambda m: f"{m['head']}:***@{m['rest']}", str(url))
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}***", text)


FORMAT = "sparsesim-plan"
#: Version 2: typed (:class:`Plan`); ``causal`` always written (version 1 could leave it out: all axes
#: non-causal), ``mass`` ``null`` where unknown, ``search`` ``null`` or complete, the storage URL redacted.
#: Version 3: optional ``steps``, plans per range of denoising steps (:class:`PlanSteps`); a file without it
#: (every version 1 and 2 file) is one plan for every step. Versions 1 and 2 are converted on load.
VERSION = 3
#: The plan formats this sparsesim reads.
READS = (1, 2, 3)
#: Largest plan file read (a plan of hundreds of layers is a few MiB).
MAX_PLAN_BYTES = 64 * 2**20
DTYPES = ("fp16", "bf16", "fp8", "fp32")
_LIMITS = {"heads": 1 << 16, "head_dim": 1 << 12, "batch": 1 << 20, "layer": 1 << 20, "trials": 1 << 31,
           "seed": 2**32 - 1, "tile": 1 << 20,
           "step": 1 << 20, "tokens": 2**31 - 1}


@dataclass(frozen=True)
class PlanHead:
    """One head's pattern in a plan layer, with its measured error and kept attention mass (None: unknown)."""

    head: int
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    dense: bool
    error: float
    mass: float | None


@dataclass(frozen=True)
class PlanLaunch:
    """One kernel launch of a plan layer: the heads it runs with one pattern, and its simulated time."""

    heads: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    dense: bool
    predicted_ms: float


@dataclass(frozen=True)
class PlanLayer:
    """One searched layer: a pattern per head, the launches that run them, simulated and dense times."""

    layer: int
    name: str
    heads: tuple[PlanHead, ...]
    launches: tuple[PlanLaunch, ...]
    predicted_ms: float
    dense_ms: float


@dataclass(frozen=True)
class PlanSteps:
    """What runs in the denoising steps ``start <= step < stop`` (``stop`` None: to the last step).

    ``dense``: every attention call runs the model's own (dense) attention and ``layers`` is empty. Otherwise
    ``layers`` are the range's own plan layers, or empty for the plan's :attr:`Plan.layers`. The ranges of a plan
    are sorted, do not overlap and cover every step (from 0, the last one's ``stop`` None)."""

    start: int
    stop: int | None
    dense: bool
    layers: tuple[PlanLayer, ...] = ()


@dataclass(frozen=True)
class ErrorBudget:
    """What the plan was chosen under: a mean error budget, a per-head cap, or a target speedup."""

    mean: float | None = None
    max: float | None = None
    target_speedup: float | None = None


@dataclass(frozen=True)
class GpuPrediction:
    """The plan's predicted speedups on one GPU (the searched one and the others)."""

    gpu: str
    attention_speedup: float
    e2e_predicted_speedup: float


@dataclass(frozen=True)
class BaselineOutcome:
    """A baseline's (or the plan at its error's) outcome on the searched GPU."""

    name: str
    mean_error: float
    max_error: float
    e2e_predicted_speedup: float
    attention_speedup: float


@dataclass(frozen=True)
class SearchInfo:
    """How the plan was searched; ``storage`` is the redacted URL (no password)."""

    study: str
    storage: str
    trials: int
    seed: int
    samples: str
    sampler: str
    baselines: tuple[BaselineOutcome, ...] = ()


@dataclass(frozen=True)
class Plan:
    """A search's plan: per searched layer, one pattern per head and the launches that run them.

    Read with :func:`load_plan` / :meth:`from_json` (every field checked, patterns by the core's
    :class:`~sparsesim.simulator.patterns.GNAPattern`), written with :meth:`to_json`.
    """

    workload: str
    gpu: str
    kernel_profile: str
    dense_profile: str
    layout: tuple[int, ...]
    causal: tuple[bool, ...]
    heads: int
    heads_kv: int
    head_dim: int
    batch: int
    dtype: str
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    error_budget: ErrorBudget
    mean_error: float
    max_error: float
    attention_speedup: float
    e2e_predicted_speedup: float
    predicted: tuple[GpuPrediction, ...]
    search: SearchInfo | None
    layers: tuple[PlanLayer, ...]
    #: Plans per range of denoising steps (version 3); empty: :attr:`layers` in every step.
    steps: tuple[PlanSteps, ...] = ()
    #: Tokens outside the layout (joint text tokens, sinks: docs/DESIGN.md, Extra tokens), version 3.
    extra_tokens: int = 0
    extra_at: str = "end"

    @property
    def seq_tokens(self) -> int:
        """Tokens of the attention call: the layout's and the extra tokens."""
        return math.prod(self.layout) + self.extra_tokens

    def range_at(self, step: int) -> PlanSteps | None:
        """The step range holding denoising step ``step`` (None: the plan has no ranges)."""
        if step < 0:
            raise ConfigError(f"step {step}; allowed: a denoising step index >= 0")
        for entry in self.steps:
            if entry.start <= step and (entry.stop is None or step < entry.stop):
                return entry
        return None

    def layers_at(self, step: int) -> tuple[PlanLayer, ...]:
        """The plan layers that run in denoising step ``step`` (empty: every call dense)."""
        entry = self.range_at(step)
        if entry is None:
            return self.layers
        if entry.dense:
            return ()
        return entry.layers or self.layers

    def layer(self, index: int) -> PlanLayer:
        """The plan layer whose ``layer`` field is ``index``."""
        for entry in self.layers:
            if entry.layer == index:
                return entry
        raise ConfigError(f"layer {index}; the plan has layers {[e.layer for e in self.layers]}")

    def pattern(self, item: PlanHead | PlanLaunch) -> GNAPattern:
        """The core's pattern of a head or launch (the plan's layout and causal axes)."""
        return GNAPattern(input_size=self.layout, window=item.window, stride=item.stride, dilation=item.dilation,
                          causal=self.causal, extra_tokens=self.extra_tokens, extra_at=self.extra_at)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (format version :data:`VERSION`)."""
        def lists(obj: Any) -> Any:
            if isinstance(obj, (tuple, list)):
                return [lists(v) for v in obj]
            if isinstance(obj, dict):
                return {k: lists(v) for k, v in obj.items()}
            return obj

        data: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "predicted":
                value = {p.gpu: {"attention_speedup": p.attention_speedup,
                                 "e2e_predicted_speedup": p.e2e_predicted_speedup} for p in value}
            elif f.name in ("error_budget", "search", "layers", "steps") and value is not None:
                value = asdict(value) if f.name in ("error_budget", "search") else [asdict(v) for v in value]
            if f.name == "steps" and not value:
                continue  # one plan for every step: the file reads as version 2 did
            if (f.name, value) in (("extra_tokens", 0), ("extra_at", "end")):
                continue  # no extra tokens: left out, as in version 2
            data[f.name] = lists(value)
        return data

    def to_json(self) -> str:
        """The plan file's text (validated first: what is written loads back equal)."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        back = Plan.from_json(text, source="the plan being written")
        if back != self:
            raise ConfigError("the plan being written does not read back equal (a value JSON cannot carry)")
        return text

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "plan") -> Plan:
        """Parse and validate a plan's text; every malformed input is one :class:`ConfigError` line naming
        ``source``, the field and its value."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"plan {source!r} is not UTF-8 text (byte {text[exc.start]:#04x} at offset "
                                  f"{exc.start}); allowed: a JSON plan written by simulate search") from None
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
        except _DuplicateKey as exc:
            raise ConfigError(f"plan {source!r}: key {_show(exc.args[0])} appears twice in one object") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"plan {source!r} is not valid JSON (truncated?): {exc.msg} at line {exc.lineno} "
                              f"column {exc.colno}") from None
        except RecursionError:
            raise ConfigError(f"plan {source!r} is nested too deeply; allowed: a JSON plan written by "
                              "simulate search") from None
        except ValueError as exc:  # an integer of more than 4300 digits
            raise ConfigError(f"plan {source!r} is not a readable JSON plan: {str(exc).split(';')[0][:100]}; "
                              "allowed: numbers a plan holds") from None
        return parse_plan(data, source)


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read and validate a plan file (a regular file of at most :data:`MAX_PLAN_BYTES`)."""
    from sparsesim.hwmodels.errors import check_input_file

    name = os.fspath(path)
    try:
        check_input_file(name, f"plan {name!r}", MAX_PLAN_BYTES, "a JSON plan written by simulate search")
        with open(name, "rb") as fh:
            raw = fh.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        reason = "the name is too long" if exc.errno == errno.ENAMETOOLONG else exc.strerror or str(exc)
        raise ConfigError(f"plan {name[:200]!r}: {reason}") from None
    except ValueError as exc:  # a NUL character in the name
        raise ConfigError(f"plan {name[:200]!r}: {exc}") from None
    return Plan.from_json(raw, source=name)


def save_plan(plan: Plan, path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Write ``plan`` to ``path`` through :func:`sparsesim.simulator.files.write_bytes` (checked, atomic)."""
    from sparsesim.simulator.files import write_bytes

    return write_bytes(plan.to_json().encode("utf-8"), path, flag)


# --------------------------------------------------------------------------------------------
# Reading: every field checked, one line naming file, field and value
# --------------------------------------------------------------------------------------------

class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _Literal:
    """A ``NaN`` / ``Infinity`` / ``-Infinity`` token in a plan: not a number any field takes (refused by the
    field's check, which names the field), except ``NaN`` as a version 1 head's unknown ``mass``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_NAN = _Literal("NaN")
_LITERALS = {"NaN": _NAN, "Infinity": _Literal("Infinity"), "-Infinity": _Literal("-Infinity")}


def _no_constant(name: str) -> Any:
    return _LITERALS.get(name) or _Literal(name)


def _show(value: Any) -> str:
    """A value for a one-line message (long ones cut)."""
    if isinstance(value, dict):
        text = "an object"
    elif isinstance(value, list) and len(value) > 8:
        text = f"a list of {len(value)} entries"
    else:
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


class _Reader:
    """Checks one plan's fields; every failure names the source, the field's path and its value."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, value: Any, allowed: str) -> NoReturn:
        raise ConfigError(f"plan {self.source!r}: field {where!r} is {_show(value)}; allowed: {allowed}")

    def obj(self, value: Any, where: str, required: Sequence[str], optional: Sequence[str] = (),
            any_keys: bool = False) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where or "(top level)", value, "a JSON object")
        if any_keys:
            return value
        for key in required:
            if key not in value:
                raise ConfigError(f"plan {self.source!r}: missing field {_join(where, key)!r}")
        unknown = [k for k in value if k not in required and k not in optional]
        if unknown:
            raise ConfigError(f"plan {self.source!r}: unknown field {_join(where, str(unknown[0]))!r}; allowed: "
                              f"{', '.join([*required, *optional])}")
        return value

    def str_(self, value: Any, where: str, choices: Sequence[str] | None = None) -> str:
        if not isinstance(value, str) or not value or len(value) > 4096 or (choices and value not in choices):
            self.fail(where, value, ", ".join(choices) if choices else "a non-empty string")
        return value

    def int_(self, value: Any, where: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(where, value, f"an integer from {lo} to {hi}")
        return value

    def num(self, value: Any, where: str, positive: bool = False, optional: bool = False) -> float:
        if value is None and optional:
            return None  # type: ignore[return-value]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                f = float(value)
            except OverflowError:
                ok = False
            else:
                ok = math.isfinite(f) and (f > 0 if positive else f >= 0)
        if not ok:
            what = "a finite number " + ("> 0" if positive else ">= 0") + (" or null" if optional else "")
            self.fail(where, value, what)
        return float(value)

    def bool_(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, value, "true or false")
        return value

    def list_(self, value: Any, where: str, n: int | None = None, nonempty: bool = False) -> list[Any]:
        if not isinstance(value, list) or (n is not None and len(value) != n) or (nonempty and not value):
            self.fail(where, value, f"a list of {n} entries" if n is not None else "a non-empty list" if nonempty
                      else "a list")
        return value

    def ints(self, value: Any, where: str, n: int, hi: int) -> tuple[int, ...]:
        items = self.list_(value, where, n)
        if not all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= hi for x in items):
            self.fail(where, value, f"{n} integers from 1 to {hi}")
        return tuple(items)

    def pattern(self, d: dict[str, Any], where: str, layout: tuple[int, ...], causal: tuple[bool, ...]
                ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], bool]:
        """window, stride, dilation (validated by the core's GNAPattern) and the ``dense`` flag (consistent)."""
        rank = len(layout)
        got = [self.list_(d[k], _join(where, k), rank) for k in ("window", "stride", "dilation")]
        try:
            p = GNAPattern(input_size=layout, window=tuple(got[0]), stride=tuple(got[1]), dilation=tuple(got[2]),
                           causal=causal)
        except ConfigError as exc:
            text = " ".join(str(exc).split())
            raise ConfigError(f"plan {self.source!r}: field {where!r} (window {_show(d['window'])}, stride "
                              f"{_show(d['stride'])}, dilation {_show(d['dilation'])}): {text}") from None
        dense = self.bool_(d["dense"], _join(where, "dense"))
        is_dense = p.window == layout and all(x == 1 for x in p.dilation)
        if dense != is_dense:
            self.fail(_join(where, "dense"), dense, f"{str(is_dense).lower()} (the window "
                      f"{'covers' if is_dense else 'does not cover'} the layout)")
        return p.window, p.stride, p.dilation, dense


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


_TOP = ("workload", "gpu", "kernel_profile", "dense_profile", "layout", "heads", "heads_kv", "head_dim", "batch",
        "dtype", "q_tile", "kv_tile", "error_budget", "mean_error", "max_error", "attention_speedup",
        "e2e_predicted_speedup", "predicted", "search", "layers")
_PATTERN = ("window", "stride", "dilation", "dense")


def _gpu_name(r: _Reader, value: Any, where: str) -> str:
    from sparsesim.hwmodels import list_gpus, load_gpu

    name = r.str_(value, where)
    known = {n.lower(): g.name for g in list_gpus() for n in (g.name, *g.aliases)}
    if name.lower() in known:
        return name
    if name.endswith(".toml"):
        try:
            load_gpu(name)
            return name
        except ConfigError:
            pass
    r.fail(where, value, f"a known GPU ({', '.join(g.name for g in list_gpus())}) or a GPU .toml file")


def _layers(r: _Reader, items: list[Any], where: str, heads: int, layout: tuple[int, ...], causal: tuple[bool, ...],
            version: int) -> tuple[PlanLayer, ...]:
    """The plan layers of the list ``items`` (the field ``where``: ``layers`` or a step range's)."""
    layers = []
    seen_layers: set[int] = set()
    for i, entry in enumerate(items):
        lw = f"{where}[{i}]"
        r.obj(entry, lw, ("layer", "name", "heads", "launches", "predicted_ms", "dense_ms"))
        index = r.int_(entry["layer"], f"{lw}.layer", 0, _LIMITS["layer"])
        if index in seen_layers:
            r.fail(f"{lw}.layer", index, f"a layer not listed before (layers {sorted(seen_layers)} are)")
        seen_layers.add(index)
        hs = r.list_(entry["heads"], f"{lw}.heads", heads)
        plan_heads = []
        for j, h in enumerate(hs):
            hw = f"{lw}.heads[{j}]"
            r.obj(h, hw, ("head", *_PATTERN, "error", "mass"))
            r.int_(h["head"], f"{hw}.head", j, j)
            window, stride, dilation, dense = r.pattern(h, hw, layout, causal)
            mass = None if version == 1 and h["mass"] is _NAN else h["mass"]  # version 1: NaN for unknown
            plan_heads.append(PlanHead(head=j, window=window, stride=stride, dilation=dilation, dense=dense,
                                       error=r.num(h["error"], f"{hw}.error"),
                                       mass=r.num(mass, f"{hw}.mass", optional=True)))
        launches = []
        runs: dict[int, int] = {}
        for k, la in enumerate(r.list_(entry["launches"], f"{lw}.launches", nonempty=True)):
            kw = f"{lw}.launches[{k}]"
            r.obj(la, kw, ("heads", *_PATTERN, "predicted_ms"))
            ids = tuple(r.int_(x, f"{kw}.heads[{m}]", 0, heads - 1)
                        for m, x in enumerate(r.list_(la["heads"], f"{kw}.heads", nonempty=True)))
            for m, h_id in enumerate(ids):
                if h_id in runs:
                    r.fail(f"{kw}.heads[{m}]", h_id, f"a head no other launch runs (launch {runs[h_id]} runs it)")
                runs[h_id] = k
            window, stride, dilation, dense = r.pattern(la, kw, layout, causal)
            for h_id in ids:
                ph = plan_heads[h_id]
                if (ph.window, ph.stride, ph.dilation) != (window, stride, dilation):
                    r.fail(f"{kw}.window", la["window"], f"the pattern of every head it runs (head {h_id}: window "
                           f"{list(ph.window)}, stride {list(ph.stride)}, dilation {list(ph.dilation)})")
            launches.append(PlanLaunch(heads=ids, window=window, stride=stride, dilation=dilation, dense=dense,
                                       predicted_ms=r.num(la["predicted_ms"], f"{kw}.predicted_ms", True)))
        missing = [h for h in range(heads) if h not in runs]
        if missing:
            r.fail(f"{lw}.launches", [sorted(la.heads) for la in launches],
                   f"launches that run every head 0..{heads - 1} once (head {missing[0]} is not run)")
        layers.append(PlanLayer(layer=index, name=r.str_(entry["name"], f"{lw}.name"), heads=tuple(plan_heads),
                                launches=tuple(launches), predicted_ms=r.num(entry["predicted_ms"],
                                                                             f"{lw}.predicted_ms", True),
                                dense_ms=r.num(entry["dense_ms"], f"{lw}.dense_ms", positive=True)))
    return tuple(layers)


def _steps(r: _Reader, value: Any, heads: int, layout: tuple[int, ...], causal: tuple[bool, ...],
           version: int) -> tuple[PlanSteps, ...]:
    """The step ranges (version 3): sorted by ``start``, each starting where the one before stops, from step 0 to
    the end (the last ``stop`` null); a dense range lists no layers."""
    out: list[PlanSteps] = []
    for i, s in enumerate(r.list_(value, "steps")):
        w = f"steps[{i}]"
        r.obj(s, w, ("start", "stop", "dense", "layers"))
        want = 0 if not out else out[-1].stop
        if want is None:
            r.fail(w, s, f"no range after steps[{i - 1}], whose stop is null (it runs to the last step)")
        start = s["start"]
        if isinstance(start, bool) or not isinstance(start, int) or start != want:
            r.fail(f"{w}.start", start, f"{want} ({'the first step' if not out else f'where steps[{i - 1}] stops'}: "
                   "the ranges are sorted, do not overlap and cover every step)")
        stop = None if s["stop"] is None else s["stop"]
        if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or not start < stop
                                 <= _LIMITS["step"]):
            r.fail(f"{w}.stop", stop, f"null (to the last step) or an integer from {start + 1} to {_LIMITS['step']}")
        dense = r.bool_(s["dense"], f"{w}.dense")
        items = r.list_(s["layers"], f"{w}.layers")
        if dense and items:
            r.fail(f"{w}.layers", items, "[] for a dense range (every attention call runs dense)")
        out.append(PlanSteps(start=start, stop=stop, dense=dense,
                             layers=_layers(r, items, f"{w}.layers", heads, layout, causal, version)))
    if out and out[-1].stop is not None:
        r.fail(f"steps[{len(out) - 1}].stop", out[-1].stop, "null in the last range (the ranges cover every step)")
    return tuple(out)


def parse_plan(data: Any, source: str = "plan") -> Plan:
    """A :class:`Plan` from parsed JSON (format versions 1 and 2 are converted: a version 1 file's missing
    ``causal`` means no causal axis, the one place that default is decided; a file without ``steps`` is one plan
    for every step; a storage URL's password is redacted)."""
    from sparsesim.simulator.patterns import layout_tuple

    r = _Reader(source)
    r.obj(data, "", ("format", "version"), (*_TOP, "causal", "steps", "extra_tokens", "extra_at"))
    if data["format"] != FORMAT:
        r.fail("format", data["format"], repr(FORMAT))
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version not in READS:
        raise ConfigError(f"plan {source!r}: field 'version' is {_show(version)}; this sparsesim reads versions "
                          f"{', '.join(map(str, READS))}: run simulate search again to regenerate the plan")
    r.obj(data, "", ("format", "version", *_TOP, *(("causal",) if version >= 2 else ())),
          ("causal", *(("steps", "extra_tokens", "extra_at") if version >= 3 else ())))
    try:
        layout = layout_tuple(r.list_(data["layout"], "layout", nonempty=True), "layout")
    except ConfigError as exc:
        raise ConfigError(f"plan {source!r}: field 'layout' is {_show(data['layout'])}: "
                          f"{' '.join(str(exc).split())}") from None
    rank = len(layout)
    causal_raw = data.get("causal")
    if version == 1 and causal_raw in (None, []):
        causal_raw = [False] * rank  # version 1 could leave it out: no causal axis
    causal = tuple(r.bool_(c, f"causal[{a}]") for a, c in enumerate(r.list_(causal_raw, "causal", rank)))
    heads = r.int_(data["heads"], "heads", 1, _LIMITS["heads"])
    heads_kv = r.int_(data["heads_kv"], "heads_kv", 1, heads)
    if heads % heads_kv:
        r.fail("heads_kv", heads_kv, f"a divisor of heads = {heads}")
    error_budget = r.obj(data["error_budget"], "error_budget", ("mean", "max", "target_speedup"))
    predicted = r.obj(data["predicted"], "predicted", (), any_keys=True)
    gpus = []
    for g, v in predicted.items():
        where = f"predicted.{g}"
        _gpu_name(r, g, where)
        r.obj(v, where, ("attention_speedup", "e2e_predicted_speedup"))
        gpus.append(GpuPrediction(g, r.num(v["attention_speedup"], f"{where}.attention_speedup", positive=True),
                                  r.num(v["e2e_predicted_speedup"], f"{where}.e2e_predicted_speedup", positive=True)))
    search = data["search"]
    info = None
    if search is not None and not (version == 1 and search == {}):
        r.obj(search, "search", ("study", "storage", "trials", "seed", "samples", "sampler", "baselines"))
        base = []
        for i, b in enumerate(r.list_(search["baselines"], "search.baselines")):
            w = f"search.baselines[{i}]"
            r.obj(b, w, ("name", "mean_error", "max_error", "e2e_predicted_speedup", "attention_speedup"))
            base.append(BaselineOutcome(r.str_(b["name"], f"{w}.name"), r.num(b["mean_error"], f"{w}.mean_error"),
                                        r.num(b["max_error"], f"{w}.max_error"),
                                        r.num(b["e2e_predicted_speedup"], f"{w}.e2e_predicted_speedup", True),
                                        r.num(b["attention_speedup"], f"{w}.attention_speedup", True)))
        info = SearchInfo(study=r.str_(search["study"], "search.study"),
                          storage=redact_url(r.str_(search["storage"], "search.storage")),
                          trials=r.int_(search["trials"], "search.trials", 1, _LIMITS["trials"]),
                          seed=r.int_(search["seed"], "search.seed", 0, _LIMITS["seed"]),
                          samples=r.str_(search["samples"], "search.samples"),
                          sampler=r.str_(search["sampler"], "search.sampler"), baselines=tuple(base))
    extra_tokens = r.int_(data.get("extra_tokens", 0), "extra_tokens", 0, _LIMITS["tokens"])
    extra_at = r.str_(data.get("extra_at", "end"), "extra_at", ("end", "start"))
    try:
        GNAPattern(input_size=layout, window=layout, causal=causal, extra_tokens=extra_tokens, extra_at=extra_at)
    except ConfigError as exc:
        raise ConfigError(f"plan {source!r}: fields 'extra_tokens'/'extra_at' ({extra_tokens}, {extra_at!r}): "
                          f"{' '.join(str(exc).split())}") from None
    layers = _layers(r, r.list_(data["layers"], "layers", nonempty=True), "layers", heads, layout, causal, version)
    steps = _steps(r, data.get("steps", []), heads, layout, causal, version) if version >= 3 else ()
    return Plan(
        workload=r.str_(data["workload"], "workload"), gpu=_gpu_name(r, data["gpu"], "gpu"),
        kernel_profile=r.str_(data["kernel_profile"], "kernel_profile"),
        dense_profile=r.str_(data["dense_profile"], "dense_profile"), layout=layout, causal=causal, heads=heads,
        heads_kv=heads_kv, head_dim=r.int_(data["head_dim"], "head_dim", 1, _LIMITS["head_dim"]),
        batch=r.int_(data["batch"], "batch", 1, _LIMITS["batch"]), dtype=r.str_(data["dtype"], "dtype", DTYPES),
        q_tile=r.ints(data["q_tile"], "q_tile", rank, _LIMITS["tile"]),
        kv_tile=r.ints(data["kv_tile"], "kv_tile", rank, _LIMITS["tile"]),
        error_budget=ErrorBudget(*(r.num(error_budget[k], f"error_budget.{k}", positive=True, optional=True)
                                   for k in ("mean", "max", "target_speedup"))),
        mean_error=r.num(data["mean_error"], "mean_error"), max_error=r.num(data["max_error"], "max_error"),
        attention_speedup=r.num(data["attention_speedup"], "attention_speedup", positive=True),
        e2e_predicted_speedup=r.num(data["e2e_predicted_speedup"], "e2e_predicted_speedup", positive=True),
        predicted=tuple(gpus), search=info, layers=layers, steps=steps, extra_tokens=extra_tokens, extra_at=extra_at)
