"""Render result DataFrames as a terminal table, CSV, JSON or Markdown."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.files import check_output, write_text

FORMATS = ("table", "csv", "json", "markdown")


def _cell(value: Any) -> Any:
    """A scalar for text output: shapes as 30x48x80, flags as 0/1 strings, floats rounded."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (tuple, list, np.ndarray)):
        items = list(value)
        if items and all(isinstance(v, (bool, np.bool_)) for v in items):
            return "".join("1" if v else "0" for v in items)
        return "x".join(str(v) for v in items)
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v != 0 and abs(v) < 0.01:
            return f"{v:.2e}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return None if math.isnan(v) else v
    return value


def text_frame(df: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The columns to show, each cell formatted for text."""
    cols = [c for c in (columns or df.columns) if c in df.columns]
    return pd.DataFrame({c: [_cell(v) for v in df[c]] for c in cols})


def render(df: pd.DataFrame, fmt: str, columns: Sequence[str] | None = None) -> str:
    """Render ``df`` in ``fmt``; ``columns`` picks the columns of the text formats (JSON keeps all)."""
    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r} is unknown; allowed: {', '.join(FORMATS)}")
    if fmt == "json":
        records = [{k: _jsonable(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
        return json.dumps(records, indent=1) + "\n"
    shown = text_frame(df, columns)
    if fmt == "csv":
        return shown.to_csv(index=False)
    if fmt == "markdown":
        head = "| " + " | ".join(shown.columns) + " |"
        rule = "|" + "|".join("---" for _ in shown.columns) + "|"
        rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
        return "\n".join([head, rule, *rows]) + "\n"
    return shown.to_string(index=False) + "\n"


#: Widest text table printed by default; the rest of the columns are in --wide, CSV and JSON.
TABLE_WIDTH = 120


def _hidden_default(df: pd.DataFrame, column: str) -> bool:
    """Columns that say nothing in a text table (all dilation 1, all non-causal, all box tiles, no preset, no note)."""
    if column not in ("dilation", "causal", "preset", "tiling", "note"):
        return False
    values = [v for v in df[column] if v is not None]
    if column == "note":
        return not any(values)
    if column == "tiling":
        return all(v == "box" for v in values)
    if column == "preset":
        return not values
    return all(all(int(x) == (1 if column == "dilation" else 0) for x in v) for v in values)


def fit_columns(df: pd.DataFrame, columns: Sequence[str], priority: Sequence[str],
                width: int = TABLE_WIDTH) -> list[str]:
    """The display columns that fit ``width`` characters, dropping the lowest in ``priority`` first."""
    keep = [c for c in columns if c in df.columns and not _hidden_default(df, c)]
    order = [c for c in priority if c in keep] + [c for c in keep if c not in priority]
    while len(keep) > 1:
        text = text_frame(df.head(200), keep).to_string(index=False)
        if max((len(line) for line in text.splitlines()), default=0) <= width:
            break
        drop = order.pop()
        keep.remove(drop)
    return keep


def choose_columns(df: pd.DataFrame, fmt: str, wanted: str | None, wide: bool, columns: Sequence[str],
                   priority: Sequence[str]) -> list[str]:
    """Columns to print: ``--columns``, else every column (CSV, JSON, ``--wide``), else what fits."""
    if wanted is not None:
        names = [c.strip() for c in wanted.split(",") if c.strip()]
        unknown = [c for c in names if c not in df.columns]
        if unknown or not names:
            raise ConfigError(f"--columns {wanted!r}: unknown column(s) {unknown}; allowed: {', '.join(df.columns)}")
        return names
    if fmt in ("csv", "json") or wide:
        return list(df.columns)
    return fit_columns(df, columns, priority)


#: The compact band column of text tables, shown after this column when there is room.
BAND_AFTER = "predicted_speedup"


def _band_text(low: Any, high: Any, evidence: Any) -> str:
    """``2.10-2.61x`` (the speedup's error band), ``?`` appended where the profile has no evidence."""
    try:
        lo, hi = float(low), float(high)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(lo) or math.isnan(hi):
        return "-"
    return f"{lo:.2f}-{hi:.2f}x" + ("?" if evidence == "none" else "")


def with_band(df: pd.DataFrame, columns: Sequence[str],
              priority: Sequence[str]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """``df`` with a text ``band`` column (the speedup's error band) after :data:`BAND_AFTER` in the display
    columns and in their priority, for text tables; unchanged where the results carry no bands."""
    need = ("predicted_speedup_low", "predicted_speedup_high", "band_evidence")
    if not all(c in df.columns for c in need) or BAND_AFTER not in columns or "band" in df.columns:
        return df, list(columns), list(priority)
    df = df.assign(band=[_band_text(lo, hi, ev) for lo, hi, ev in zip(*(df[c] for c in need), strict=True)])
    cols, prio = list(columns), list(priority)
    cols.insert(cols.index(BAND_AFTER) + 1, "band")
    if BAND_AFTER in prio:
        prio.insert(prio.index(BAND_AFTER) + 1, "band")
    return df, cols, prio


def emit(df: pd.DataFrame, args: Any, columns: Sequence[str], priority: Sequence[str]) -> None:
    """Render ``df`` as the output options of ``args`` ask (format, columns, wide, out) and write it; text
    tables show the speedup's error band compactly (``band``; CSV and JSON carry the numbers)."""
    fmt = args.format
    if fmt in ("table", "markdown"):
        df, columns, priority = with_band(df, columns, priority)
    cols = choose_columns(df, fmt, getattr(args, "columns", None), getattr(args, "wide", False), columns, priority)
    if fmt == "json":
        df = df[cols]
    write_text(render(df, fmt, cols), getattr(args, "out", None))


__all__ = ["FORMATS", "check_output", "choose_columns", "emit", "render", "text_frame", "write_text"]
