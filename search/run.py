"""One search run: space + table + cached evaluator + searcher → ``runs/<name>/`` (lookup DB, ledger, study,
Pareto plot, report). The ``coinfer search`` command is a thin shell over :func:`run_search`. With a fidelity
ladder (:attr:`SearchConfig.fidelities`) the searcher runs in a :class:`search.searchers.asha.LadderContext`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coinference.errors import ConfigError
from coinference.variant import WHOLE_MODEL, VariantSpec
from coinference.zoo import DEFAULT_MODEL, MODELS, file_sha256
from search.evaluator import CachedEvaluator, Evaluate, Outcome, Table
from search.ladder import DEFAULT_ETA, check_ladder, ladder_label
from search.runs import db_url, run_name, sqlite_url, write_last_run
from search.searchers import SEARCHERS, SearchContext, SearchOptions
from search.space import SearchSpace


@dataclass(frozen=True)
class SearchConfig:
    """What ``coinfer search`` runs."""

    searcher: str = "optuna"
    """grid, random, optuna, ray or ppo."""
    trials: int = 12
    """Budget: distinct variants the run finishes (built, or found in the table)."""
    model: str = DEFAULT_MODEL
    """Zoo model."""
    weights: Path | None = None
    """Base checkpoint (default: the builder trains or fine-tunes the base itself)."""
    dataset: str | None = None
    """Data set (default: the model's)."""
    data_dir: Path | None = None
    """Folder of a file-backed data set."""
    fidelity: str = "fast"
    """Training budget preset of every variant: smoke, screen, fast or full (ignored with ``fidelities``)."""
    fidelities: tuple[str, ...] = ()
    """A fidelity ladder, cheapest first (e.g. ``("screen", "fast")``): every cell is built at the first rung and
    the best 1/``eta`` of each rung climb to the next (:mod:`search.searchers.asha`); empty: single-fidelity."""
    eta: int = DEFAULT_ETA
    """Promotion rate of the ladder (≥ 2): at most ⌊m/η⌋ of a rung's m measured cells climb."""
    db: str | None = None
    """Lookup table URL (default: $COINFER_DB, else sqlite:///runs/<name>/lookup.db)."""
    name: str = "search"
    """Run name: the folder under runs/ and the run recorded with each variant."""
    resume: bool = False
    """Continue the run of this name where it stopped (ledger, study, Tune experiment)."""
    seed: int = 0
    """Seed of the searcher (specs keep seed 0, so runs with different searcher seeds share the table)."""
    accuracy_floor: float | None = None
    """Absolute accuracy floor; None: best measured accuracy − 0.02 for the report, no search constraint."""
    device: str = "rpi3"
    """Device profile of the report's per-bandwidth choice (see coinference.latency.device_names)."""
    bandwidths: tuple[float, ...] = (1e3, 1e5, 1e7)
    """Link rates (bytes/s) of the report's per-bandwidth choice."""
    runs_root: Path = Path("runs")
    """Parent folder of runs/<name>/."""
    space_levels: dict[str, Any] = field(default_factory=dict)
    """Overrides of :class:`SearchSpace` fields: levels (sparsities, ratios, bits, activation_sparsities,
    codec_kinds, splits) and the JSCC channel settings (snr_db, flip_p)."""
    options: SearchOptions = field(default_factory=SearchOptions)
    """Searcher-specific settings."""
    retry_failed: bool = False
    """Rebuild the variants the table holds as failed (once each) instead of answering from the table."""
    whole_model: bool = True
    """Also measure the two candidates that split nothing (:data:`coinference.variant.WHOLE_MODEL`: the whole model
    on the device, or the PNG image to the server) into the table, outside the budget, so that queries and exports
    answer with them where they win."""

    @property
    def run_dir(self) -> Path:
        return self.runs_root / self.name

    @property
    def ladder(self) -> tuple[str, ...]:
        """The fidelities variants are built at, cheapest first: :attr:`fidelities`, else ``(fidelity,)``."""
        return self.fidelities or (self.fidelity,)


@dataclass(frozen=True)
class SearchResult:
    """What a run left behind."""

    run_dir: Path
    space: SearchSpace
    keys: tuple[str, ...]
    """Specs this run finished, in order."""
    built: int
    """Of those, built by this invocation (the rest came from the table)."""
    failed: int
    seconds: float
    report: Any
    """The :class:`search.report.Report` (front, choices, files)."""
    rungs: dict[str, int] = field(default_factory=dict)
    """Fidelity → cells this run finished at it (one entry without a ladder)."""


def default_evaluator(cfg: SearchConfig) -> tuple[Evaluate, Callable[[VariantSpec], dict[str, Path]]]:
    """The real builder (``coinference.build.Builder``: one builder per run, so the base model and pruned device
    parts are shared between variants) with the run's weights, data and cache folder: (measure, artifacts)."""
    try:
        from coinference.build import Builder
    except ImportError as e:
        raise ConfigError(f"the variant builder (coinference.build) is not available: {e}") from None
    builder = Builder(cfg.weights, cfg.data_dir, (cfg.run_dir / "cache").resolve())
    return builder.measure, builder.artifacts


def make_space(cfg: SearchConfig) -> SearchSpace:
    """The default space of the run's model, with the config's level overrides."""
    MODELS.get(cfg.model)
    sha = file_sha256(cfg.weights) if cfg.weights is not None else None
    levels = dict(cfg.space_levels)
    splits = levels.pop("splits", None)
    return SearchSpace.for_model(
        cfg.model,
        cfg.dataset,
        splits=splits,
        fidelity=cfg.ladder[0],
        weights_sha256=sha,
        **levels,
    )


def open_run_table(cfg: SearchConfig) -> Table:
    """The run's lookup table: --db, else $COINFER_DB, else runs/<name>/lookup.db."""
    from storage import open_table

    return open_table(table_url(cfg), name=cfg.name)


def table_url(cfg: SearchConfig) -> str:
    """--db, else $COINFER_DB (a URL, or a path as ``--db`` takes it), else runs/<name>/lookup.db."""
    text = cfg.db or os.environ.get("COINFER_DB")
    if text:
        return db_url(text)[0]
    return sqlite_url((cfg.run_dir / "lookup.db").resolve())


def run_identity(cfg: SearchConfig, space: SearchSpace) -> dict[str, str]:
    """What a run name stands for and may not change between invocations: searcher (and an Optuna or Ray search's
    sampler), fidelity — or the ladder and its η (:func:`search.ladder.ladder_label`) — and space (its dimensions,
    codec kinds and channel settings, activation sparsities and base checkpoint: :meth:`SearchSpace.identity`)."""
    fidelity = ladder_label(cfg.fidelities, cfg.eta) if cfg.fidelities else cfg.fidelity
    out = {"searcher": cfg.searcher, "fidelity": fidelity, "space": space.identity()}
    if cfg.searcher in ("optuna", "ray"):  # a study's values are on its sampler's scale (log costs for gp)
        out["sampler"] = cfg.options.sampler
    return out


def check_same_run(run_dir: Path, identity: dict[str, str]) -> None:
    """A run folder that exists was made with the same searcher, sampler, fidelity and space, or it is an error
    naming both values (a reused name or --resume would otherwise mix them in one ledger and one front)."""
    try:
        before = json.loads((run_dir / "config.json").read_text()).get("identity")
    except (OSError, ValueError, AttributeError):
        return  # a new run, or one written before runs recorded their identity
    if not isinstance(before, dict):
        return
    for what in ("fidelity", "searcher", "space", "sampler"):
        if what in before and before[what] != identity.get(what):
            raise ConfigError(
                f"run {run_dir.name!r} was made with {what} {before[what]!r}, not {identity[what]!r}: "
                "give another --name (or remove the run folder)"
            )


def run_search(
    cfg: SearchConfig,
    evaluate: Evaluate | None = None,
    table: Table | None = None,
    space: SearchSpace | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    report: bool = True,
) -> SearchResult:
    """Run one search and write ``runs/<name>/``.

    Args:
        cfg: the run.
        evaluate: builds and measures a spec (default: :func:`default_evaluator`).
        table: the lookup table (default: :func:`open_run_table`).
        space: the search space (default: :func:`make_space`).
        on_outcome: called after every finished spec (progress bars).
        report: write the Pareto plot and report.md.

    Raises:
        ConfigError: unknown searcher, a bad budget, ladder or run name, --resume with nothing to resume, or a run
            name already used with another searcher, fidelity (ladder) or space.
    """
    searcher = SEARCHERS.get(cfg.searcher)()
    if cfg.fidelities:
        check_ladder(cfg.fidelities, cfg.searcher, cfg.eta)
    run_name(cfg.name)
    if cfg.trials < 1:
        raise ConfigError(f"--trials must be ≥ 1, got {cfg.trials}")
    run_dir = cfg.run_dir
    if cfg.resume and not (run_dir / "evaluations.jsonl").exists():
        raise ConfigError(f"nothing to resume: {run_dir / 'evaluations.jsonl'} does not exist")
    space = space or make_space(cfg)
    if cfg.fidelities and space.fidelity != cfg.fidelities[0]:
        raise ConfigError(
            f"the search space is at fidelity {space.fidelity!r}, not the ladder's first rung {cfg.fidelities[0]!r}"
        )
    identity = run_identity(cfg, space)
    check_same_run(run_dir, identity)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_last_run(cfg.runs_root, cfg.name, table_url(cfg))
    own_table = table is None
    table = table or open_run_table(cfg)
    t0 = time.perf_counter()
    try:
        artifacts = None
        if evaluate is None:
            evaluate, artifacts = default_evaluator(cfg)
        ev = CachedEvaluator(table, evaluate, cfg.name, on_outcome, artifacts, retry_failed=cfg.retry_failed)
        args = (space, ev, cfg.trials, run_dir, cfg.resume, cfg.seed, cfg.accuracy_floor, cfg.options)
        ctx: SearchContext
        if cfg.fidelities:
            from search.searchers.asha import LadderContext

            ctx = LadderContext(*args, ladder=cfg.fidelities, eta=cfg.eta)
        else:
            ctx = SearchContext(*args)
        doc = {**_jsonable(asdict(cfg)), "identity": identity}
        (run_dir / "config.json").write_text(json.dumps(doc, indent=1, default=str))
        if cfg.resume:
            ctx.finish_interrupted()
        searcher.run(ctx)
        keys = tuple(ctx.ledger.order)
        failed = sum(1 for k in keys if ctx.ledger.done[k]["status"] == "failed")
        # outside the budget and the ledger: candidates every table holds, chosen where they win (a ladder's at its
        # top rung, beside the variants that reached it)
        top = cfg.fidelities[-1] if cfg.fidelities else None
        whole = tuple(ev(s).spec.key for s in whole_model_specs(space, top)) if cfg.whole_model else ()
        rep = None
        if report:
            from search.report import write_report

            rep = write_report(table, keys + whole, cfg, space)
        seconds = time.perf_counter() - t0
        return SearchResult(run_dir, space, keys, ev.n_built, failed, seconds, rep, ctx.rung_counts())
    finally:
        if own_table:
            table.close()


def whole_model_specs(space: SearchSpace, fidelity: str | None = None) -> list[VariantSpec]:
    """The whole-model candidates (on the device; PNG to the server) of ``space``'s model, data set, base
    checkpoint, seed and validation split, at ``fidelity`` (default: the space's)."""
    fields = {"weights_sha256": space.weights_sha256, "fidelity": fidelity or space.fidelity, "seed": space.seed}
    return [VariantSpec.whole(s, space.model, space.dataset, val_size=space.val_size, **fields) for s in WHOLE_MODEL]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out[k] = _jsonable(v) if isinstance(v, dict) else (str(v) if isinstance(v, Path) else v)
    return out
