"""Reports: matplotlib figures and a self-contained HTML page (``simulate report``).

- :func:`build_sections` and :class:`ReportInputs`: what a report holds;
- :func:`write_report`: PNGs and ``index.html``;
- :mod:`sparsesim.reports.figures`: the plot functions (each returns a Figure).
"""

from __future__ import annotations

from sparsesim.reports.build import ReportInputs, build_sections
from sparsesim.reports.html import write_report

__all__ = ["ReportInputs", "build_sections", "write_report"]
