"""The Optuna searcher's sampler plumbing: what each sampler is told, and how an invalid proposal is answered."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from search_landscapes import BOWL_OPTIMUM, LandscapeEvaluator, bowl

from search.evaluator import CachedEvaluator
from search.searchers import SEARCHERS, SearchContext, SearchOptions
from search.searchers.optuna_search import SAMPLERS, make_sampler, nearest_unseen_params, objective_values
from storage import open_table


def context(tmp_path: Path | None = None, trials: int = 12, **options: Any) -> SearchContext:
    ev = LandscapeEvaluator(bowl)
    table = open_table("sqlite://", name="t")
    return SearchContext(
        ev.space, CachedEvaluator(table, ev, run="t"), trials, tmp_path, options=SearchOptions(**options)
    )


@pytest.mark.parametrize("kind", SAMPLERS)
def test_every_sampler_is_seeded(kind: str) -> None:
    import optuna

    first, again, other = (make_sampler(kind, seed) for seed in (0, 0, 1))
    dists = {"x": optuna.distributions.IntDistribution(0, 99)}

    def draws(sampler: Any) -> list[int]:
        study = optuna.create_study(sampler=sampler, directions=["minimize", "minimize"])
        return [study.ask(dists).params["x"] for _ in range(5)]  # the seeded random start of every sampler

    assert draws(first) == draws(again) != draws(other)


def test_objective_values_on_the_log_scale() -> None:
    ctx = context()
    out = ctx.evaluate(ctx.space.spec(BOWL_OPTIMUM))
    assert objective_values(out) == [0.95, 100_000.0, 1_000.0]
    assert objective_values(out, log_costs=True) == [0.95, 5.0, 3.0]


def test_nearest_unseen_cell_of_an_invalid_one() -> None:
    ctx = context()
    invalid = (2, 3, 0, 0)  # ratio 8 at 2 bits: no codec
    assert not ctx.space.valid(invalid)
    near = nearest_unseen_params(ctx, invalid)
    assert near == {"split": 2, "sparsity": 3, "ratio": 0, "bits": 1}  # one level away; first in grid order
    ctx.evaluate(ctx.space.spec(ctx.space.index_of(near)))
    assert nearest_unseen_params(ctx, invalid) == {"split": 2, "sparsity": 3, "ratio": 1, "bits": 0}
    skip = {ctx.space.spec((2, 3, 1, 0)).key}
    assert nearest_unseen_params(ctx, invalid, skip) == {"split": 1, "sparsity": 3, "ratio": 0, "bits": 1}


def test_gp_study_is_told_log_costs_and_each_invalid_cell_is_followed_by_a_valid_one(tmp_path: Path) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    ctx = context(tmp_path, trials=14, sampler="gp", n_startup_trials=4)
    SEARCHERS.get("optuna")().run(ctx)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
    trials = optuna.load_study(study_name="t", storage=storage).trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 14
    for t in done:
        acc, macs, bits = bowl(ctx.space.index_of(t.params))
        assert t.values == pytest.approx([acc, math.log10(macs), math.log10(bits)])
    pruned = [i for i, t in enumerate(trials) if t.state == TrialState.PRUNED]
    assert pruned  # the bowl's optimum is beside cells with no codec: the GP proposes some
    for i in pruned:  # each answered by the nearest valid cell, enqueued
        nxt = trials[i + 1]
        assert ctx.space.valid(ctx.space.index_of(nxt.params)) and "fixed_params" in nxt.system_attrs
