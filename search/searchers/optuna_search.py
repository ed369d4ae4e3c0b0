"""Optuna: multi-objective (accuracy ↑, device MACs ↓, bits ↓), seeded TPE or NSGA-II, accuracy floor as a
constraint; the study lives in ``runs/<name>/study.journal`` (JournalStorage), apart from the lookup table.

The loop is ask-and-tell so the budget counts distinct specs: a proposal the run already has is told its
stored values at no cost; an invalid cell (no codec for its ratio and bits) is told as pruned. After
``REPEATS`` such wasted proposals in a row (a sampler converged on a small space), the next trial is a random
cell the run has not finished (``study.enqueue_trial``), so the budget is always spent on new variants.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from coinference.errors import ConfigError
from search.evaluator import Outcome
from search.searchers.base import SEARCHERS, SearchContext, Searcher

DIRECTIONS: list[Any] = ["maximize", "minimize", "minimize"]
REPEATS = 2
OBJECTIVES = ("accuracy", "device_macs", "bits")
SAMPLERS = ("nsga2", "tpe")
"""Sampler names :func:`make_sampler` knows."""


def objective_values(out: Outcome) -> list[float]:
    """(validation accuracy, device MACs, payload + header bits) of a measured outcome."""
    m = out.measurement
    assert m is not None
    return [float(m.val_accuracy), float(m.device_macs), float(m.bits_mean + m.header_bits)]


def unseen_params(ctx: SearchContext, rng: np.random.Generator) -> dict[str, int] | None:
    """Level indices of a random valid cell whose spec the run has not finished (None: none left)."""
    left = [cell for cell, spec in ctx.space.grid() if not ctx.seen(spec)]
    if not left:
        return None
    cell = left[int(rng.integers(len(left)))]
    return dict(zip(ctx.space.names, cell, strict=True))


def make_sampler(kind: str, seed: int, population_size: int = 20, n_startup_trials: int = 10) -> Any:
    """A seeded Optuna sampler: ``tpe`` or ``nsga2``."""
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
    raise ConfigError(f"unknown Optuna sampler {kind!r}; valid: {', '.join(SAMPLERS)}")


def open_study(ctx: SearchContext, sampler: Any) -> Any:
    """Create (or, with ``ctx.resume``, load) the run's study in runs/<name>/study.journal."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(logging.WARNING)
    if ctx.run_dir is None:
        storage: Any = optuna.storages.InMemoryStorage()
    else:
        path = ctx.run_dir / "study.journal"
        if not ctx.resume and path.exists():
            path.unlink()
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(path.resolve())))
    study = optuna.create_study(
        study_name=ctx.name, storage=storage, sampler=sampler, directions=DIRECTIONS, load_if_exists=ctx.resume
    )
    # A trial left RUNNING by a killed search will never be told: close it so samplers ignore it, and ask its
    # cell again first, so the study learns the value the resumed run finished for it.
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params)
    return study


@SEARCHERS.register("optuna")
class OptunaSearcher(Searcher):
    """Ask-and-tell over :meth:`SearchSpace.optuna_distributions`; ``options.sampler`` picks TPE or NSGA-II."""

    name = "optuna"

    def run(self, ctx: SearchContext) -> None:
        from optuna.trial import TrialState

        o = ctx.options
        study = open_study(ctx, make_sampler(o.sampler, ctx.seed, o.population_size, o.n_startup_trials))
        dists = ctx.space.optuna_distributions()
        floor = ctx.accuracy_floor
        rng = np.random.default_rng(ctx.seed)
        wasted = 0
        for _ in range(ctx.max_proposals()):
            if ctx.remaining() <= 0:
                return
            if wasted >= REPEATS:
                params = unseen_params(ctx, rng)
                if params is None:
                    return
                study.enqueue_trial(params)
                wasted = 0
            trial = study.ask(dists)
            cell = ctx.space.index_of(trial.params)
            if not ctx.space.valid(cell):
                study.tell(trial, state=TrialState.PRUNED)
                wasted += 1
                continue
            spec = ctx.space.spec(cell)
            wasted = wasted + 1 if ctx.seen(spec) else 0
            out = ctx.evaluate(spec, cell)
            trial.set_user_attr("key", out.spec.key)
            if not out.ok:
                trial.set_user_attr("error", out.error)
                study.tell(trial, state=TrialState.FAIL)
                continue
            values = objective_values(out)
            if floor is not None:
                trial.set_constraint("accuracy_floor", floor - values[0])
            if not all(math.isfinite(v) for v in values):
                study.tell(trial, state=TrialState.FAIL)
                continue
            study.tell(trial, values)
