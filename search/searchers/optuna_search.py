"""Optuna: multi-objective (accuracy ↑, device MACs ↓, bits ↓), seeded TPE, NSGA-II or GP, accuracy floor as a
constraint; the study lives in ``runs/<name>/study.journal`` (JournalStorage), apart from the lookup table.

The loop is ask-and-tell so the budget counts distinct specs: a proposal the run already has is told its
stored values at no cost; an invalid cell (no codec for its ratio and bits) is told as pruned. After
``REPEATS`` such wasted proposals in a row (a sampler converged on a small space), the next trial is a random
cell the run has not finished (``study.enqueue_trial``), so the budget is always spent on new variants. A sampler
that learns nothing from a pruned trial (:data:`REPAIR_SAMPLERS`) gets, after an invalid cell, the nearest valid cell
the run has not finished instead.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence, Set
from typing import Any

import numpy as np

from coinference.errors import ConfigError
from search.evaluator import Outcome
from search.searchers.base import SEARCHERS, SearchContext, Searcher

DIRECTIONS: list[Any] = ["maximize", "minimize", "minimize"]
REPEATS = 2
OBJECTIVES = ("accuracy", "device_macs", "bits")
SAMPLERS = ("gp", "nsga2", "tpe")
"""Sampler names :func:`make_sampler` knows."""
LOG_COST_SAMPLERS = frozenset({"gp"})
"""Samplers told log10 device MACs and log10 bits rather than the counts (:func:`objective_values`). A GP
standardises each objective linearly, and MACs and bits span decades: on counts the costliest variants set the
scale and the hypervolume improvement it maximises is in linear units, where a search is judged on the log scale
(:func:`storage.metrics.log_hypervolume`). Measured on tests/search_landscapes.py's cluster (24 variants of 264,
seeds 0–2): 0.94, 0.93, 0.89 of the exhaustive log hypervolume on counts, 1.00 each on logs. TPE and NSGA-II keep
the counts. The sampler is part of a run's identity (:func:`search.run.run_identity`), so a resumed study never
mixes the two scales."""
REPAIR_SAMPLERS = frozenset({"gp"})
"""Samplers whose invalid proposal is followed by the nearest valid cell the run has not finished
(:func:`nearest_unseen_params`). A GP fits finished trials only, so a pruned proposal teaches it nothing and it
asks the same invalid cell again: on tests/search_landscapes.py's bowl, whose optimum is beside cells with no
codec, 22–34 invalid proposals per 24 variants, each pair of them answered by a random cell (11–15 with the
repair, each answered by a neighbour). TPE counts a pruned trial among its worse ones and moves away by itself."""


def objective_values(out: Outcome, log_costs: bool = False) -> list[float]:
    """(validation accuracy, device MACs, payload + header bits) of a measured outcome; with ``log_costs``,
    log10 of the MACs and of the bits (each at least 1, so 0 MACs, a server-only variant, is 0)."""
    m = out.measurement
    assert m is not None
    macs, bits = float(m.device_macs), float(m.bits_mean + m.header_bits)
    if log_costs:
        macs, bits = math.log10(max(macs, 1.0)), math.log10(max(bits, 1.0))
    return [float(m.val_accuracy), macs, bits]


def unseen_params(ctx: SearchContext, rng: np.random.Generator) -> dict[str, int] | None:
    """Level indices of a random valid cell whose spec the run has not finished (None: none left)."""
    left = [cell for cell, spec in ctx.space.grid() if not ctx.seen(spec)]
    if not left:
        return None
    cell = left[int(rng.integers(len(left)))]
    return dict(zip(ctx.space.names, cell, strict=True))


def nearest_unseen_params(
    ctx: SearchContext, cell: Sequence[int], skip: Set[str] = frozenset()
) -> dict[str, int] | None:
    """Level indices of the valid cell nearest ``cell`` (L1 over level indices; the first in grid order on a tie)
    whose spec the run has not finished and whose key is not in ``skip`` (None: none left)."""
    left = [c for c, spec in ctx.space.grid() if not ctx.seen(spec) and spec.key not in skip]
    if not left:
        return None
    near = min(left, key=lambda c: sum(abs(a - b) for a, b in zip(c, cell, strict=True)))
    return dict(zip(ctx.space.names, near, strict=True))


def make_sampler(kind: str, seed: int, population_size: int = 20, n_startup_trials: int = 10) -> Any:
    """A seeded Optuna sampler: ``tpe`` (multivariate), ``nsga2`` or ``gp``.

    Every one of them is multi-objective and reads the accuracy floor from ``trial.set_constraint`` (Optuna 5's
    way; the samplers' ``constraints_func`` is deprecated). ``gp`` is :class:`optuna.samplers.GPSampler`: one
    Matérn-5/2 GP per objective (and per constraint) over the level indices, log expected hypervolume
    improvement (constrained: logCEHVI; q-batch with trials in flight, as under Ray) after ``n_startup_trials``
    seeded random trials. Its noise variance stays learned (``deterministic_objective=False``): a cell's value
    is fixed once built, but neighbouring variants differ by training noise that a noise-free GP would chase.
    It needs torch and scipy; each proposal fits the GPs on all finished trials, so it suits budgets of tens to
    a few hundred variants (each of which costs far more to build).

    Raises:
        ConfigError: an unknown ``kind``, naming it and the valid ones.
    """
    import optuna

    if kind == "tpe":
        # multivariate: one joint density over the dimensions, which interact (a split's feature size decides
        # which ratios and bits are affordable); Optuna still marks the option experimental
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=True)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
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
    """Ask-and-tell over :meth:`SearchSpace.optuna_distributions`; ``options.sampler`` picks TPE, NSGA-II or GP."""

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
                near = nearest_unseen_params(ctx, cell) if o.sampler in REPAIR_SAMPLERS else None
                if near is None:
                    wasted += 1
                else:
                    study.enqueue_trial(near)
                continue
            spec = ctx.space.spec(cell)
            wasted = wasted + 1 if ctx.seen(spec) else 0
            out = ctx.evaluate(spec, cell)
            trial.set_user_attr("key", out.spec.key)
            if not out.ok:
                trial.set_user_attr("error", out.error)
                study.tell(trial, state=TrialState.FAIL)
                continue
            values = objective_values(out, o.sampler in LOG_COST_SAMPLERS)
            if floor is not None:
                trial.set_constraint("accuracy_floor", floor - values[0])
            if not all(math.isfinite(v) for v in values):
                study.tell(trial, state=TrialState.FAIL)
                continue
            study.tell(trial, values)
