"""Searchers behind one interface (:class:`Searcher`), registered by name: grid, random, optuna, ray, ppo.

Heavy libraries (optuna, ray, stable-baselines3) are imported inside each searcher's ``run``.
"""

from __future__ import annotations

from search.searchers import grid, optuna_search, ppo_search, ray_search  # noqa: F401 (registration)
from search.searchers.base import SEARCHERS, Ledger, SearchContext, Searcher, SearchOptions

__all__ = ["SEARCHERS", "Ledger", "SearchContext", "SearchOptions", "Searcher"]
