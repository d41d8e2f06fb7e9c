"""Render result DataFrames as a terminal table, CSV, JSON or Markdown."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sparsesim.simulator.errors import ConfigError

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


def write_text(text: str, out: str | os.PathLike[str] | None) -> None:
    """Print ``text``, or write it to ``out`` atomically (a crash never leaves half a file)."""
    if out is None:
        print(text, end="")
        return
    path = Path(out)
    if path.parent and not path.parent.exists():
        raise ConfigError(f"--out {str(path)!r}: folder {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
