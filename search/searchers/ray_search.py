"""Ray Tune: OptunaSearch proposes cells, trials build variants as Ray tasks (``tune.with_resources``), and the
results come back to the driver, which alone writes the lookup table.

Local by default (``ray.init(num_cpus=...)``); a cluster when ``$RAY_ADDRESS`` or ``options.address`` is set.
The experiment lives in ``runs/<name>/tune`` (absolute path) and ``--resume`` continues an interrupted one with
``Tuner.restore``; budget still left after that (a finished experiment given more trials) goes to a fresh
experiment, where the table answers every cell already measured.

A thin searcher in the driver (``_ray_tune.CachedSearch``) keeps the run's guarantees: a proposal the table
already answers, or one already in flight, is told to Optuna without starting a trial, and it stops proposing
once finished + in-flight specs reach the budget. A failed build is a result (status "failed"),
not a trial error; ``FailureConfig(max_failures)`` retries trials whose worker died. A build that fails for an
environment reason (:func:`search.evaluator.is_environment_error`, decided in the worker) records nothing: the
driver stops proposing, ends the experiment (``_ray_tune.StopOnProblem``, running trials too) and raises
:class:`~coinference.errors.EnvironmentProblem`.

**Quiet.** The user's terminal shows coinference's output only: Ray's and Tune's log records (start-up, the
token-authentication notice, Tune's "wrote the experiment state"), Optuna's and Python warnings raised while Ray
runs go to ``runs/<name>/ray.log``; Tune runs its legacy reporter at ``verbose=0`` (the default reporter prints
its "Configuration for experiment" table and a TensorBoard hint at any verbosity), and with only the JSON
logger callback (Tune's end-of-run analysis reads it; no CSV, no TensorBoard).

**Loopback only.** A local Ray (no address) uses 127.0.0.1 as its node address, so its GCS, raylet, worker,
object-manager and agent servers listen on loopback only, and the dashboard is not started. Ray resolves a
``_node_ip_address`` of 127.0.0.1 to the machine's outward address unless it runs in single-machine mode
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the default on macOS and Windows), which :func:`init_ray` turns on
while it starts Ray. Token authentication stays as Ray sets it up.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coinference.errors import ConfigError
from search.searchers.base import SEARCHERS, SearchContext, Searcher, SearchOptions
from search.searchers.optuna_search import OBJECTIVES, SAMPLERS, make_sampler

RAY_LOG = "ray.log"
"""File in the run folder that receives Ray's, Tune's and Optuna's log records while the search runs."""

TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_DISABLE_SIGINT_HANDLER": "1"}
"""Read by Tune when an experiment starts: the legacy reporter (silent at verbose=0), only the logger callbacks
given in ``RunConfig(callbacks=...)``, and Ctrl-C raising ``KeyboardInterrupt`` as in every other searcher (Tune's
own handler would end the experiment quietly and let the search report a partial run as finished)."""

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Ray's single-machine mode: the node address is 127.0.0.1 (``ray._private.services.get_node_ip_address``)."""

QUIET_LOGGERS = ("ray", "optuna")
"""Logger trees whose terminal handlers are pointed at ``ray.log`` while Ray runs."""


def validate_options(options: SearchOptions) -> None:
    """Check the Ray settings before Ray starts (``num_cpus=0`` would start a Ray on which no trial ever runs).

    Raises:
        ConfigError: num_cpus < 1, num_cpus with a cluster address, cpus_per_trial ≤ 0 or above num_cpus,
            max_concurrent < 1, max_failures < -1, or an unknown sampler; the message names the value.
    """
    o = options
    address = o.address or os.environ.get("RAY_ADDRESS")
    if o.num_cpus is not None:
        if o.num_cpus < 1:
            raise ConfigError(f"--num-cpus must be ≥ 1 (the CPUs of the local Ray), got {o.num_cpus}")
        if address:
            raise ConfigError(
                f"--num-cpus {o.num_cpus} sets the CPUs of a local Ray; a cluster ({address!r}) has its own"
            )
    if not o.cpus_per_trial > 0:
        raise ConfigError(f"cpus_per_trial must be > 0, got {o.cpus_per_trial}")
    if o.num_cpus is not None and o.cpus_per_trial > o.num_cpus:
        raise ConfigError(
            f"cpus_per_trial {o.cpus_per_trial:g} exceeds --num-cpus {o.num_cpus}: no trial could ever start"
        )
    if o.max_concurrent is not None and o.max_concurrent < 1:
        raise ConfigError(f"max_concurrent must be ≥ 1 (or None: as many as the CPUs allow), got {o.max_concurrent}")
    if o.max_failures < -1:
        raise ConfigError(f"max_failures must be ≥ -1 (-1: retry for ever), got {o.max_failures}")
    if o.sampler not in SAMPLERS:
        raise ConfigError(f"unknown Optuna sampler {o.sampler!r}; valid: {', '.join(SAMPLERS)}")


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _is_terminal_handler(h: logging.Handler) -> bool:
    return isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)


@contextmanager
def quiet(log: Path) -> Iterator[None]:
    """Ray's, Tune's and Optuna's log records, and Python warnings, into ``log`` instead of the terminal; Tune's
    reporter silent and its logger callbacks off (:data:`TUNE_ENV`). Everything is put back afterwards."""
    log.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [
        logger
        for name, logger in list(logging.Logger.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and name.split(".")[0] in QUIET_LOGGERS
    ]
    saved = [(logger, list(logger.handlers)) for logger in loggers]
    for logger in loggers:
        if any(_is_terminal_handler(h) for h in logger.handlers):
            logger.handlers = [h for h in logger.handlers if not _is_terminal_handler(h)] + [handler]
    py_warnings = logging.getLogger("py.warnings")
    saved_warnings = (list(py_warnings.handlers), py_warnings.propagate)
    py_warnings.handlers, py_warnings.propagate = [handler], False
    showwarning = warnings.showwarning
    logging.captureWarnings(True)
    try:
        with _environ(TUNE_ENV):
            yield
    finally:
        if warnings.showwarning is not showwarning:  # we turned capturing on
            logging.captureWarnings(False)
        py_warnings.handlers, py_warnings.propagate = saved_warnings
        for logger, handlers in saved:
            logger.handlers = handlers
        handler.close()


@contextmanager
def _single_machine() -> Iterator[None]:
    """Ray's single-machine mode while a local Ray starts: its node address, and so every server's, is loopback."""
    constants: Any = sys.modules.get("ray._private.ray_constants")
    before = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    with _environ(LOOPBACK_ENV):
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = False  # read at import; ray is imported already
        try:
            yield
        finally:
            if constants is not None:
                constants.ENABLE_RAY_CLUSTER = before


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` / ``$RAY_ADDRESS``, or start a local, loopback-only Ray without a dashboard; True
    when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        with _single_machine():
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                _node_ip_address="127.0.0.1",
            )
    return True


@SEARCHERS.register("ray")
class RaySearcher(Searcher):
    """Ray Tune + OptunaSearch (``options.sampler``: tpe, nsga2 or gp), one Ray task per variant."""

    name = "ray"

    def run(self, ctx: SearchContext) -> None:
        o = ctx.options
        validate_options(o)
        if ctx.evaluator.evaluate is None:
            raise RuntimeError("the Ray searcher needs an evaluator that builds variants")
        root = (ctx.run_dir or Path(os.environ.get("TMPDIR", "/tmp")) / f"coinfer-ray-{ctx.name}").resolve()
        import ray.tune.search.optuna  # noqa: F401 (Ray, Tune and Optuna set up their loggers on import)

        with quiet(root / RAY_LOG):
            self._run(ctx, root)

    def _run(self, ctx: SearchContext, root: Path) -> None:
        import ray
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback
        from ray.tune.search.optuna import OptunaSearch

        from search.searchers._ray_tune import CONTEXTS, MODES, PROBLEMS, CachedSearch, StopOnProblem, trial

        o = ctx.options
        started = init_ray(o.address, o.num_cpus)
        CONTEXTS[ctx.name] = ctx
        PROBLEMS.pop(ctx.name, None)
        exp = root / "tune"
        trainable = tune.with_resources(
            tune.with_parameters(trial, space=ctx.space, evaluate=ctx.evaluator.evaluate),
            {"cpu": o.cpus_per_trial},
        )
        try:
            try:
                if ctx.resume and tune.Tuner.can_restore(str(exp)):
                    # An interrupted experiment continues where it stopped (searcher state, unfinished trials).
                    tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True, resume_unfinished=True).fit()
                if ctx.remaining() > 0 and ctx.name not in PROBLEMS:
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
                            stop=StopOnProblem(ctx.name),
                            callbacks=[JsonLoggerCallback()],  # what Tune's end-of-run analysis reads; no TBX
                        ),
                    ).fit()
            except Exception:
                if ctx.name not in PROBLEMS:  # an error after the problem (Tune stopping): report the problem
                    raise
        finally:
            CONTEXTS.pop(ctx.name, None)
            problem = PROBLEMS.pop(ctx.name, None)
            if started:
                ray.shutdown()
        if problem is not None:
            raise problem
