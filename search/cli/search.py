"""``coinfer search``: the main job — search the variant space, fill the lookup table, report the front."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from coinference.errors import ConfigError
from coinference.zoo import DEFAULT_MODEL
from search.cli import app
from search.cli.common import DataDirOpt, DatasetOpt, ModelOpt, WeightsOpt, console
from search.evaluator import Evaluate, Outcome
from search.run import SearchConfig, run_search
from search.searchers import SEARCHERS, SearchOptions


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
    searcher: Annotated[str, typer.Option(help=f"Searcher: {', '.join(SEARCHERS.names())}.")] = "optuna",
    trials: Annotated[int, typer.Option(min=1, help="Distinct variants this run finishes (its budget).")] = 12,
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    fidelity: Annotated[str, typer.Option(help="Training budget per variant: smoke, fast, full.")] = "fast",
    db: Annotated[
        str | None, typer.Option(help="Lookup table URL (default $COINFER_DB or runs/<name>/lookup.db).")
    ] = None,
    name: Annotated[str, typer.Option(help="Run name: runs/<name>/.")] = "search",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run of this name.")] = False,
    seed: Annotated[int, typer.Option(help="Searcher seed.")] = 0,
    sampler: Annotated[str, typer.Option(help="Optuna/Ray sampler: tpe or nsga2.")] = "tpe",
    accuracy_floor: Annotated[
        float | None, typer.Option(help="Absolute accuracy floor (default: best measured − 0.02, report only).")
    ] = None,
    device: Annotated[str, typer.Option(help="Device profile for the per-bandwidth choice.")] = "rpi3",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default $RAY_ADDRESS, else local).")] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of a local Ray.")] = None,
    ppo_timesteps: Annotated[int, typer.Option(help="PPO training steps.")] = 512,
    evaluator: Annotated[
        str | None, typer.Option(help="module:callable measuring a spec (default: coinference.build).", hidden=True)
    ] = None,
    runs_root: Annotated[Path, typer.Option(help="Parent folder of the run folder.")] = Path("runs"),
) -> None:
    """Search split × sparsity × compression, store every variant in the lookup table, print the front."""
    SEARCHERS.get(searcher)
    cfg = SearchConfig(
        searcher=searcher,
        trials=trials,
        model=model,
        weights=weights,
        dataset=dataset,
        data_dir=data_dir,
        fidelity=fidelity,
        db=db,
        name=name,
        resume=resume,
        seed=seed,
        accuracy_floor=accuracy_floor,
        device=device,
        runs_root=runs_root,
        options=SearchOptions(sampler=sampler, address=address, num_cpus=num_cpus, ppo_timesteps=ppo_timesteps),
    )
    con = console()
    evaluate = load_evaluator(evaluator) if evaluator else None
    keys: set[str] = set()

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
        console=con,
        transient=False,
    ) as bar:
        task = bar.add_task(f"{searcher} → runs/{name}", total=trials, last="")

        def progress(out: Outcome) -> None:
            keys.add(out.spec.key)
            m = out.measurement
            last = f"acc {m.accuracy:.3f}, {m.bits_mean:,.0f} bits" if m else f"failed: {(out.error or '')[:40]}"
            bar.update(task, completed=min(trials, len(keys)), last=("cached " if out.cached else "") + last)

        result = run_search(cfg, evaluate=evaluate, on_outcome=progress)
        bar.update(task, completed=len(result.keys))

    from search.report import render

    render(result.report, con)
    con.print(
        f"{len(result.keys)} variants ({result.built} built now, {result.failed} failed) in {result.seconds:.1f} s; "
        f"report: {result.report.markdown}" + (f", plot: {result.report.plot}" if result.report.plot else "")
    )
