"""Ray-side pieces of the Ray searcher, in a module imported only when Ray runs (it imports ray at the top):
Tune pickles its searcher by reference to this module, and the run contexts (which hold the table) stay out of
the pickle.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import numpy as np
from ray import tune
from ray.tune.search import Searcher as TuneSearcher

from coinference.errors import EnvironmentProblem
from coinference.variant import Measurement
from search.evaluator import Evaluate, Outcome, environment_problem, error_text, is_environment_error
from search.searchers.base import SearchContext
from search.searchers.optuna_search import (
    DIRECTIONS,
    LOG_COST_SAMPLERS,
    OBJECTIVES,
    REPAIR_SAMPLERS,
    REPEATS,
    nearest_unseen_params,
    objective_values,
    unseen_params,
)

CONTEXTS: dict[str, SearchContext] = {}
"""Run name → context: the searcher is pickled into Tune's experiment state, the context (table) is not."""

PROBLEMS: dict[str, EnvironmentProblem] = {}
"""Run name → the environment problem a trial reported; the driver raises it once Tune has stopped."""

MODES = [d[:3] for d in DIRECTIONS]

FAILED_METRICS = dict.fromkeys(OBJECTIVES, float("nan"))
"""Placeholders in a failed trial's result: Tune rejects a result without the searcher's metrics (the driver tells
Optuna a failure, never these values)."""


def metrics(out: Outcome, log_costs: bool = False) -> dict[str, Any]:
    """The result dict Optuna is told for a finished outcome (``log_costs``: see :func:`objective_values`)."""
    if not out.ok:
        return {"status": "failed", "error": out.error}
    return {"status": "ok", **dict(zip(OBJECTIVES, objective_values(out, log_costs), strict=True))}


def trial(config: dict[str, Any], space: Any, evaluate: Evaluate) -> None:
    """One Tune trial (runs in a Ray worker): build and measure one cell, report it; never writes the table.

    A failed build is reported as a result (:data:`FAILED_METRICS`) with its error text and ``environment``
    (:func:`is_environment_error` of the exception, which stays in the worker), so the driver can tell a failed
    variant from a broken machine.
    """
    spec = space.spec(space.index_of(config))
    try:
        m = evaluate(spec)
    except Exception as e:  # a failed build is a result
        env = is_environment_error(e)
        tune.report({**FAILED_METRICS, "status": "failed", "error": error_text(e), "environment": env, "key": spec.key})
        return
    res: dict[str, Any] = {"status": "ok", "key": spec.key, "measurement": json.dumps(m.to_dict())}
    res.update(dict(zip(OBJECTIVES, [m.val_accuracy, m.device_macs, m.bits_mean + m.header_bits], strict=True)))
    tune.report(res)


class StopOnProblem(tune.Stopper):
    """Ends the experiment (running trials too) once a trial of run ``run`` reported an environment problem."""

    def __init__(self, run: str) -> None:
        self.run = run

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.run in PROBLEMS

    def stop_all(self) -> bool:
        return self.run in PROBLEMS


class CachedSearch(TuneSearcher):
    """Wraps OptunaSearch: answers known cells from the table, records results, keeps the budget.

    Args:
        inner: the OptunaSearch.
        run: run name, the key of the context in :data:`CONTEXTS`.
        seed: seed of the random unseen cells tried when Optuna repeats itself.
    """

    def __init__(self, inner: Any, run: str, seed: int = 0) -> None:
        super().__init__(metric=list(OBJECTIVES), mode=MODES)  # type: ignore[arg-type]
        self.inner = inner
        self.run = run
        self.live: dict[str, tuple[str, str, tuple[int, ...]]] = {}  # tune id → (inner id, key, cell)
        self.n = 0
        self.wasted = 0
        self.rng = np.random.default_rng(seed)

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> Any:
        ctx = CONTEXTS[self.run]
        if self.run in PROBLEMS:
            return TuneSearcher.FINISHED
        for _ in range(ctx.max_proposals()):
            in_flight = {k for _, k, _ in self.live.values()}
            if len(ctx.ledger.done) + len(in_flight) >= ctx.trials:
                return None if in_flight else TuneSearcher.FINISHED
            self.n += 1
            iid = f"{trial_id}~{self.n}"
            if self.wasted >= REPEATS:  # Optuna converged on known cells: try one the run has not finished
                params = unseen_params(ctx, self.rng)
                if params is not None and ctx.space.spec(ctx.space.index_of(params)).key not in in_flight:
                    self.inner._ot_study.enqueue_trial(params)
                self.wasted = 0
            config = self.inner.suggest(iid)
            if config is None or config == TuneSearcher.FINISHED:
                return config
            cell = ctx.space.index_of(config)
            if not ctx.space.valid(cell):
                self.inner.on_trial_complete(iid, result=None, error=False)  # told as pruned
                repair = ctx.options.sampler in REPAIR_SAMPLERS
                near = nearest_unseen_params(ctx, cell, in_flight) if repair else None
                if near is None:
                    self.wasted += 1
                else:  # the sampler learns nothing from a pruned trial: ask the nearest valid cell next
                    self.inner._ot_study.enqueue_trial(near)
                continue
            spec = ctx.space.spec(cell)
            if spec.key in in_flight:
                self.inner.on_trial_complete(iid, result=None, error=False)
                self.wasted += 1
                continue
            if ctx.evaluator.stored(spec) is not None:
                self.wasted += ctx.seen(spec)
                out = ctx.evaluate(spec, cell)  # answered from the table, no trial
                self.inner.on_trial_complete(iid, result=self._metrics(ctx, out), error=not out.ok)
                continue
            self.wasted = 0
            self.live[trial_id] = (iid, spec.key, cell)
            return config
        return TuneSearcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        iid, _, cell = self.live.pop(trial_id)
        ctx = CONTEXTS[self.run]
        spec = ctx.space.spec(cell)
        if result and result.get("environment"):
            # The machine, not the variant: record nothing; StopOnProblem ends the experiment, the driver raises.
            PROBLEMS.setdefault(self.run, environment_problem(spec.key, str(result.get("error"))))
            self.inner.on_trial_complete(iid, result=None, error=True)
            return
        if result and result.get("status") == "ok":
            out = ctx.record(spec, cell, measurement=Measurement.from_dict(json.loads(result["measurement"])))
        else:
            err = (result or {}).get("error") or "Ray trial error (worker died after max_failures retries)"
            out = ctx.record(spec, cell, error=err)
        self.inner.on_trial_complete(iid, result=self._metrics(ctx, out), error=not out.ok)

    @staticmethod
    def _metrics(ctx: SearchContext, out: Outcome) -> dict[str, Any] | None:
        """What Optuna is told of a finished outcome: its objectives on the sampler's scale; None for a failure."""
        return metrics(out, ctx.options.sampler in LOG_COST_SAMPLERS) if out.ok else None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"inner": self.inner, "n": self.n, "run": self.run, "rng": self.rng}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.inner, self.n, self.run, self.rng = state["inner"], state["n"], state["run"], state["rng"]
        self.wasted = 0
        self.live = {}  # trials in flight at the kill: Tune re-runs them, or Optuna proposes again
