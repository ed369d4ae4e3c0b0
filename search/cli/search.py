"""``coinfer search``: the main job — search the variant space, fill the lookup table, report the front."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from coinference.errors import ConfigError
from coinference.latency import device_names
from coinference.variant import FIDELITIES
from search.cli import app, names, validate
from search.cli.common import (
    DataDirOpt,
    DatasetOpt,
    ModelOpt,
    ValSizeOpt,
    WeightsOpt,
    check_data_dir,
    check_model_data,
    check_seed,
    check_val_size,
    console,
)
from search.ladder import DEFAULT_ETA, check_ladder
from search.runs import DEFAULT_RUNS_ROOT, db_url

if TYPE_CHECKING:
    from search.evaluator import Evaluate


def load_evaluator(path: str) -> Evaluate:
    """``module:attr`` → the callable (a factory taking no arguments when the attr name ends in ``()``)."""
    mod, _, attr = path.partition(":")
    if not mod or not attr:
        raise ConfigError(f"--evaluator must be module:callable, got {path!r}")
    call = attr.endswith("()")
    try:
        obj = getattr(importlib.import_module(mod), attr.removesuffix("()"))
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load evaluator {path!r}: {e}") from None
    return obj() if call else obj


@app.command()
def search(
    searcher: Annotated[str, typer.Option(help=f"Searcher: {', '.join(names.SEARCHERS)}.")] = "optuna",
    trials: Annotated[int, typer.Option(help="Distinct variants this run finishes (its budget, ≥ 1).")] = 12,
    model: ModelOpt = names.DEFAULT_MODEL,
    weights: WeightsOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    fidelity: Annotated[
        str | None, typer.Option(help=f"Training budget per variant: {', '.join(FIDELITIES)} (default fast).")
    ] = None,
    fidelities: Annotated[
        str | None,
        typer.Option(
            help="A fidelity ladder instead of --fidelity, comma-separated, cheapest first (e.g. screen,fast): every "
            "variant is built at the first rung, and the best 1/η of each rung (non-dominated rank, then hypervolume "
            "contribution) are built again at the next; --trials counts the first rung's variants. Searchers grid, "
            "optuna and random."
        ),
    ] = None,
    eta: Annotated[
        int | None, typer.Option(help="With --fidelities: the best 1/η of a rung climb to the next (≥ 2, default 3).")
    ] = None,
    codec_kinds: Annotated[
        str,
        typer.Option(
            help=f"Codec kinds to try, comma-separated: {', '.join(names.SEARCH_CODEC_KINDS)} (a search dimension, in "
            "this order, when more than one). The compression ratio counts a JSCC channel use as one bit."
        ),
    ] = "sq",
    activation_sparsities: Annotated[
        str,
        typer.Option(
            help="Fractions of the split feature's channels left unsent, comma-separated, each in [0, 1) (a search "
            "dimension when more than one)."
        ),
    ] = "0",
    snr: Annotated[
        float | None,
        typer.Option(
            "--snr",
            help="SNR in dB per real symbol, in [-10, 40], at which jscc-awgn variants are evaluated: their accuracy "
            "holds on links of this SNR or more (default 10; training draws 0-20 dB).",
        ),
    ] = None,
    flip_p: Annotated[
        float | None,
        typer.Option(
            "--flip-p",
            help="BSC flip probability in [0, 0.5) at which jscc-bsc variants are evaluated (default 0.01; training "
            "draws 0-0.1).",
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            help="Lookup table: a SQLAlchemy URL or an SQLite file path (default $COINFER_DB, else "
            "<runs-root>/<name>/lookup.db)."
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Run name: the folder <runs-root>/<name>/.")] = "search",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run of this name.")] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Rebuild variants the table holds as failed (once each).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Searcher seed.")] = 0,
    val_size: ValSizeOpt = None,
    sampler: Annotated[str, typer.Option(help=f"Optuna/Ray sampler: {', '.join(names.SAMPLERS)}.")] = "tpe",
    accuracy_floor: Annotated[
        float | None,
        typer.Option(
            help="Absolute accuracy floor in [0, 1]: variants below it are infeasible for the searcher and "
            "the report's choices (default: the best accuracy that fits --device − 0.02, for the report's choices "
            "only)."
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help=f"Device profile of the per-bandwidth choice: {', '.join(device_names())}.")
    ] = "rpi3",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default $RAY_ADDRESS, else local).")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of a local Ray (≥ 1).")] = None,
    ppo_timesteps: Annotated[int, typer.Option(help="PPO training steps (≥ 1).")] = 512,
    evaluator: Annotated[
        str | None, typer.Option(help="module:callable measuring a spec (default: coinference.build).", hidden=True)
    ] = None,
    runs_root: Annotated[Path, typer.Option(help="Parent folder of the run folder.")] = DEFAULT_RUNS_ROOT,
) -> None:
    """Search split × sparsity × compression (× bits × activation sparsity × codec kind), store every variant in
    the lookup table, print the front. With --fidelities, variants climb a ladder of training budgets and the front
    holds each one at the highest fidelity it reached."""
    # every argument is checked before anything is imported, built or written
    names.check("searcher", searcher, names.SEARCHERS)
    names.check("Optuna sampler", sampler, names.SAMPLERS)
    if fidelity is not None:
        names.check("fidelity", fidelity, FIDELITIES)
    ladder: tuple[str, ...] = ()
    if fidelities is not None:
        if fidelity is not None:
            raise ConfigError(
                f"--fidelity {fidelity} and --fidelities {fidelities} both given: one fidelity, or a ladder of them"
            )
        rungs = validate.name_list("--fidelities", fidelities, "fidelity", FIDELITIES)
        ladder = check_ladder(rungs, searcher, DEFAULT_ETA if eta is None else eta)
    elif eta is not None:
        raise ConfigError(f"--eta {eta} is the promotion rate of a fidelity ladder: give --fidelities too")
    names.check("device profile", device, device_names())
    validate.at_least("--trials", trials, 1)
    kinds = validate.name_list("--codec-kinds", codec_kinds, "search codec kind", names.SEARCH_CODEC_KINDS)
    act = validate.number_list("--activation-sparsities", activation_sparsities, 0.0, 1.0, high_open=True)
    space_levels: dict[str, object] = {"codec_kinds": kinds, "activation_sparsities": act}
    for option, value, kind, key in (("--snr", snr, "jscc-awgn", "snr_db"), ("--flip-p", flip_p, "jscc-bsc", "flip_p")):
        if value is None:
            continue
        if option == "--snr":
            validate.in_range(option, value, *names.SNR_RANGE_DB)
        else:
            validate.in_range(option, value, 0.0, 0.5, high_open=True)
        if kind not in kinds:
            raise ConfigError(
                f"{option} {value:g} applies to {kind} variants: add {kind} to --codec-kinds {codec_kinds}"
            )
        space_levels[key] = value
    validate.at_least("--ppo-timesteps", ppo_timesteps, 1)
    if num_cpus is not None:
        validate.at_least("--num-cpus", num_cpus, 1)
    check_seed(seed)
    if accuracy_floor is not None:
        validate.in_range("--accuracy-floor", accuracy_floor, 0.0, 1.0)
    validate.run_name(name)
    validate.writable_dir("--runs-root", runs_root)
    db_file = None
    if db is None and os.environ.get("COINFER_DB"):
        db = os.environ["COINFER_DB"]  # the same forms as --db (checked the same way)
    if db is not None:
        db, db_file = db_url(db)
        if db_file is not None and not db_file.exists():
            validate.writable_file("--db", db_file)
    if address is not None and not address.strip():
        raise ConfigError(f"--address must be a Ray address (e.g. ray://HOST:10001 or auto), got {address!r}")
    dataset_name = check_model_data(model, weights, dataset, data_dir)
    if check_val_size(dataset_name, val_size) is not None:
        space_levels["val_size"] = val_size
    run_dir = runs_root / name
    if resume and not (run_dir / "evaluations.jsonl").exists():
        raise ConfigError(f"nothing to resume: {run_dir / 'evaluations.jsonl'} does not exist")
    evaluate = load_evaluator(evaluator) if evaluator else None
    if evaluate is None:
        check_data_dir(dataset_name, data_dir)

    from search.evaluator import Outcome
    from search.run import SearchConfig, check_same_run, make_space, run_identity, run_search
    from search.searchers import SearchOptions

    options = SearchOptions(sampler=sampler, address=address, num_cpus=num_cpus, ppo_timesteps=ppo_timesteps)
    if searcher == "ray":
        from search.searchers.ray_search import validate_options

        validate_options(options)
    cfg = SearchConfig(
        searcher=searcher,
        trials=trials,
        model=model,
        weights=weights,
        dataset=dataset,
        data_dir=data_dir,
        fidelity=fidelity or "fast",
        fidelities=ladder,
        eta=DEFAULT_ETA if eta is None else eta,
        db=db,
        name=name,
        resume=resume,
        seed=seed,
        accuracy_floor=accuracy_floor,
        device=device,
        runs_root=runs_root,
        space_levels=space_levels,
        options=options,
        retry_failed=retry_failed,
    )
    # the inputs every build reads, opened once now: a bad checkpoint or (for the real builder) a missing data folder
    # stops the search here, not after the first variant, and is never stored as a variant's failure
    from search.cli.common import model_and_data

    model_and_data(model, weights, dataset_name, data_dir, need_data=evaluate is None, val_size=val_size)
    if db is not None and (db_file is None or db_file.exists()):
        # an existing SQLite file must already be a lookup table (never one added into some other program's file);
        # a server database is opened now, and gets the schema if it has none
        from storage import open_table

        open_table(db, create=db_file is None).close()
    space = make_space(cfg)  # a run name keeps its searcher, fidelity and space: checked before anything is built
    check_same_run(cfg.run_dir, run_identity(cfg, space))
    con = console()
    from coinference.progress import phase
    from search.cli.progress import cli_progress

    keys: set[str] = set()
    with cli_progress(), phase(f"{searcher} search → {run_dir}", total=trials, unit="variant") as advance:

        def progress(out: Outcome) -> None:  # the budget's variants: a ladder's first rung
            if out.spec.key not in keys and out.spec.fidelity == cfg.ladder[0]:
                keys.add(out.spec.key)
                advance(1)

        result = run_search(cfg, evaluate=evaluate, space=space, on_outcome=progress)

    from search.report import render

    render(result.report, con)
    done = f"{len(result.keys)} variants ("
    if ladder:
        climbed = ", ".join(f"{n} at {f}" for f, n in result.rungs.items())
        done = f"{result.rungs[ladder[0]]} variants climbing {' → '.join(ladder)} ({climbed}; "
    con.print(
        f"{done}{result.built} built now, {result.failed} failed) in {result.seconds:.1f} s; "
        f"table: {cfg.db or run_dir / 'lookup.db'}; report: {result.report.markdown}"
        + (f", plot: {result.report.plot}" if result.report.plot else "")
    )
