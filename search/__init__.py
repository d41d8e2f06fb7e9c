"""Which pattern each layer and head should use: samples, quality, Optuna studies and plans.

Public surface (``import sparsesim.search`` imports neither torch nor optuna):

- :func:`capture_attention`: q, k, v recorded where attention runs (every step), as samples;
- :func:`capture`, :func:`synthetic`, :func:`save_samples`, :func:`load_samples`: attention samples;
- :func:`evaluate`, :func:`head_quality`: a pattern's error and kept mass on one head;
- :func:`build_space`, :class:`Candidate`: the per-axis search space of a layout on a GPU;
- :func:`search_plan`: a whole search (what ``simulate search`` runs);
- :class:`Plan`, :func:`load_plan`, :func:`save_plan`: plan files (typed, versioned).
"""

from __future__ import annotations

from sparsesim.search.capture import capture_attention
from sparsesim.search.plan import Plan, load_plan, save_plan
from sparsesim.search.quality import evaluate, head_quality
from sparsesim.search.run import search_plan
from sparsesim.search.samples import capture, load_samples, save_samples, synthetic
from sparsesim.search.space import Candidate, build_space

__all__ = ["Candidate", "Plan", "build_space", "capture", "capture_attention", "evaluate", "head_quality", "load_plan",
           "load_samples", "save_plan", "save_samples", "search_plan", "synthetic"]
