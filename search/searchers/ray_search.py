"""Ray Tune: OptunaSearch proposes cells, trials build variants as Ray tasks (``tune.with_resources``), and the
results come back to the driver, which alone writes the lookup table.

Local by default (``ray.init(num_cpus=...)``); a cluster when ``$RAY_ADDRESS`` or ``options.address`` is set.
The experiment lives in ``runs/<name>/tune`` (absolute path) and ``--resume`` continues an interrupted one with
``Tuner.restore``; budget still left after that (a finished experiment given more trials) goes to a fresh
experiment, where the table answers every cell already measured.

A thin searcher in the driver (``_ray_tune.CachedSearch``) keeps the run's guarantees: a proposal the table
already answers, or one already in flight, is told to Optuna without starting a trial, and it stops proposing
once finished + in-flight specs reach the budget. A failed build is a result (status "failed"),
not a trial error; ``FailureConfig(max_failures)`` retries trials whose worker died.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from search.searchers.base import SEARCHERS, SearchContext, Searcher
from search.searchers.optuna_search import OBJECTIVES, make_sampler


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` / ``$RAY_ADDRESS``, or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True


@SEARCHERS.register("ray")
class RaySearcher(Searcher):
    """Ray Tune + OptunaSearch (``options.sampler``: tpe or nsga2), one Ray task per variant."""

    name = "ray"

    def run(self, ctx: SearchContext) -> None:
        import ray
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        from search.searchers._ray_tune import CONTEXTS, MODES, CachedSearch, trial

        o = ctx.options
        if ctx.evaluator.evaluate is None:
            raise RuntimeError("the Ray searcher needs an evaluator that builds variants")
        started = init_ray(o.address, o.num_cpus)
        CONTEXTS[ctx.name] = ctx
        root = (ctx.run_dir or Path(os.environ.get("TMPDIR", "/tmp")) / f"coinfer-ray-{ctx.name}").resolve()
        exp = root / "tune"
        trainable = tune.with_resources(
            tune.with_parameters(trial, space=ctx.space, evaluate=ctx.evaluator.evaluate),
            {"cpu": o.cpus_per_trial},
        )
        try:
            if ctx.resume and tune.Tuner.can_restore(str(exp)):
                # An interrupted experiment continues where it stopped (searcher state, unfinished trials).
                tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True, resume_unfinished=True).fit()
            if ctx.remaining() > 0:
                # A fresh experiment (or a finished one given a larger budget): the table answers known cells.
                if exp.exists():
                    shutil.rmtree(exp)
                sampler = make_sampler(o.sampler, ctx.seed, o.population_size, o.n_startup_trials)
                inner = OptunaSearch(
                    space=ctx.space.optuna_distributions(),
                    metric=list(OBJECTIVES),
                    mode=MODES,
                    sampler=sampler,
                )
                tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(
                        search_alg=CachedSearch(inner, ctx.name, ctx.seed),
                        num_samples=ctx.max_proposals(),
                        max_concurrent_trials=o.max_concurrent,
                        reuse_actors=True,
                    ),
                    run_config=tune.RunConfig(
                        name="tune",
                        storage_path=str(root),
                        failure_config=tune.FailureConfig(max_failures=o.max_failures),
                        verbose=0,
                    ),
                ).fit()
        finally:
            CONTEXTS.pop(ctx.name, None)
            if started:
                ray.shutdown()
