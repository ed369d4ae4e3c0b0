"""Exhaustive grid (the paper's brute force, in row-major order) and uniform random order without repeats."""

from __future__ import annotations

import numpy as np

from search.searchers.base import SEARCHERS, SearchContext, Searcher


def _walk(ctx: SearchContext, order: list[int]) -> None:
    grid = ctx.space.grid()
    for i in order:
        if ctx.remaining() <= 0:
            return
        cell, spec = grid[i]
        ctx.evaluate(spec, cell)


@SEARCHERS.register("grid")
class GridSearcher(Searcher):
    """Every distinct variant in row-major order (split slowest); ``trials`` cuts it short."""

    name = "grid"

    def run(self, ctx: SearchContext) -> None:
        _walk(ctx, list(range(len(ctx.space.grid()))))


@SEARCHERS.register("random")
class RandomSearcher(Searcher):
    """Distinct variants in a seeded random order: the same seed gives the same order (so resume continues it)."""

    name = "random"

    def run(self, ctx: SearchContext) -> None:
        n = len(ctx.space.grid())
        _walk(ctx, [int(i) for i in np.random.default_rng(ctx.seed).permutation(n)])
