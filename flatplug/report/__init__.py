"""The report of a results store: a per-model table, rank correlations of every flatness measure
with robust and clean accuracy (bootstrap intervals), figures, and one self-contained HTML page.

:func:`summary_table` pivots the store's rows to one row per (model, source, dataset);
:func:`correlations` gives Spearman's rho and Kendall's tau-b over models with bootstrap 95%
percentile intervals; :func:`build_report` writes ``index.html`` with PNG figures beside it
(relative links only, no scripts, no network), plus ``summary.csv`` and ``correlations.csv``;
:func:`plot_trajectory` draws an attack trajectory (torchattacks adapter's recorder).

Modules: :mod:`.rows` (reading rows, content identity, labels), :mod:`.tables`, :mod:`.figures`
and :mod:`.labels` (non-overlapping point labels), :mod:`.sections` and :mod:`.page` (HTML).
"""

from __future__ import annotations

from .._stats import Correlation, correlations
from ..trajectory_plot import plot_trajectory
from .page import build_report
from .rows import CLEAN, FAILURES, ID_COLUMNS, SECONDS
from .tables import summary_table

__all__ = ["CLEAN", "Correlation", "FAILURES", "ID_COLUMNS", "SECONDS", "build_report", "correlations",
           "plot_trajectory", "summary_table"]
