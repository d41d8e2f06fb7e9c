"""The one writer of a report: PNG files and a self-contained ``index.html`` beside them.

No network (no CDN, no web fonts); every string that came from a user (workload and file names, labels,
table cells) is escaped; the page reads at 1280 px. A small inline script counts the images that
decoded into ``data-images-loaded`` on ``<body>`` (the browser test reads it).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1240px;
       padding: 16px 20px 48px; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em;
  border-bottom: 1px solid #ccc; padding-bottom: 4px; }
.summary { display: flex; gap: 16px; flex-wrap: wrap; }
.card { flex: 1 1 300px; border: 1px solid #ccc; border-radius: 6px; padding: 10px 14px; background: #f7f7f7; }
.card .num { font-size: 1.7em; font-weight: 600; } .card p { margin: 4px 0 0; font-size: 0.92em; }
figure { margin: 14px 0 22px; } figure img { max-width: 100%; height: auto; border: 1px solid #e4e4e4; }
figcaption { font-size: 0.9em; color: #333; margin-top: 4px; }
table { border-collapse: collapse; font-size: 0.82em; margin: 10px 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; } th { background: #eee; }
td:first-child, th:first-child { text-align: left; }
.note { font-size: 0.85em; color: #555; }
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } }
  document.body.setAttribute('data-images-loaded', String(ok));
  document.body.setAttribute('data-images-total', String(imgs.length));
});
"""


@dataclass(frozen=True)
class FigureItem:
    """One figure of a section: its file name, the matplotlib figure and a caption saying what to read."""

    name: str
    figure: Any
    caption: str


@dataclass(frozen=True)
class Card:
    """A summary number: the value, what it is, and one sentence."""

    value: str
    label: str
    sentence: str


@dataclass(frozen=True)
class Section:
    """A titled part of the report: text, a table (rows of cells) and figures."""

    title: str
    text: str = ""
    table: tuple[tuple[str, ...], ...] = ()  # first row: the header
    figures: tuple[FigureItem, ...] = ()
    cards: tuple[Card, ...] = field(default=())


def _table(rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_report(sections: Sequence[Section], *, title: str, subtitle: str = "") -> dict[str, bytes]:
    """Every figure as PNG bytes and ``index.html``, by file name (nothing written); closes the figures."""
    import io

    import matplotlib.pyplot as plt

    files: dict[str, bytes] = {}
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f'<p class="note">{html.escape(subtitle)}</p>')
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.cards:
            parts.append('<div class="summary">' + "".join(
                f'<div class="card"><div class="num">{html.escape(c.value)}</div><div>{html.escape(c.label)}</div>'
                f"<p>{html.escape(c.sentence)}</p></div>" for c in sec.cards) + "</div>")
        if sec.text:
            parts.append(f"<p>{html.escape(sec.text)}</p>")
        parts.append(_table(sec.table))
        for fig in sec.figures:
            buf = io.BytesIO()
            fig.figure.savefig(buf, format="png", dpi=110)
            plt.close(fig.figure)
            files[fig.name] = buf.getvalue()
            parts.append(f'<figure><img src="{html.escape(fig.name)}" alt="{html.escape(fig.caption)}">'
                         f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body>\n" + "\n".join(parts)
            + "\n</body></html>\n")
    files["index.html"] = page.encode("utf-8")
    return files


def write_report(sections: Sequence[Section], out_dir: str | Path, *, title: str, subtitle: str = "",
                 flag: str = "--out") -> Path:
    """Render the report (:func:`render_report`) and write its files into the folder ``out_dir`` through
    :func:`sparsesim.simulator.files.write_files` (a new folder's parent must exist); returns ``index.html``."""
    from sparsesim.simulator.files import write_files

    files = render_report(sections, title=title, subtitle=subtitle)
    return write_files(files, out_dir, flag) / "index.html"
