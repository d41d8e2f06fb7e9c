"""Which pattern each layer and head should use: samples, quality, Optuna studies and plans.

Public surface (``import sparsesim.search`` imports neither torch nor optuna):

- :func:`capture_attention`: q, k, v recorded where attention runs (every step), as samples;
- :func:`capture`, :func:`synthetic`, :func:`save_samples`, :func:`load_samples`: attention samples;
- :func:`evaluate`, :func:`head_quality`: a pattern's error and kept mass on one head;
- :func:`build_space`, :class:`Candidate`: the per-axis search space of a layout on a GPU;
- :func:`search_plan`: a whole search (what ``simulate search`` runs);
- :func:`run_exhaustive`, :class:`GlobalStudy`: exact per-head fronts, then one Optuna study over the global
  choices (layer budgets, dense warm-up steps, step ranges) judged on the model's own output;
- :func:`collect_statistics`, :func:`save_statistics`, :func:`load_statistics`, :func:`plan_from_stats`: per-head
  statistics streamed from captured calls (no K/V kept), saved, and searched without the model;
- :class:`Plan`, :func:`load_plan`, :func:`save_plan`: plan files (typed, versioned).
"""

from __future__ import annotations

from sparsesim.search.capture import capture_attention
from sparsesim.search.exact import run_exhaustive
from sparsesim.search.global_study import GlobalSettings, GlobalStudy, global_study
from sparsesim.search.plan import Plan, load_plan, save_plan
from sparsesim.search.quality import evaluate, head_quality
from sparsesim.search.run import search_plan
from sparsesim.search.samples import capture, load_samples, save_samples, synthetic
from sparsesim.search.space import Candidate, build_space
from sparsesim.search.stats import Statistics, collect_statistics, load_statistics, plan_from_stats, save_statistics

__all__ = ["Candidate", "GlobalSettings", "GlobalStudy", "Plan", "global_study", "run_exhaustive", "Statistics",
           "build_space", "capture", "capture_attention", "collect_statistics",
           "evaluate", "head_quality", "load_plan", "load_samples", "load_statistics", "plan_from_stats", "save_plan",
           "save_samples", "save_statistics", "search_plan", "synthetic"]
