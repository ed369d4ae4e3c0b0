"""``coinfer prune``: communication-aware pruning of the device part; writes the pruned checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from coinference.errors import ConfigError
from coinference.variant import PRUNING_METHODS, SCHEDULES
from search.cli import app, names, validate
from search.cli.common import (
    DataDirOpt,
    DatasetOpt,
    ModelOpt,
    ValSizeOpt,
    WeightsOpt,
    check_data_dir,
    check_model_data,
    check_training,
    check_val_size,
    console,
)

if TYPE_CHECKING:
    import torch


def _steps_list(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--schedule-steps must be comma-separated numbers, got {text!r}") from None


@app.command()
def prune(
    model: ModelOpt = names.DEFAULT_MODEL,
    weights: WeightsOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option("--split", "-s", help="Split point: name (layer1.1) or index.")] = "1",
    sparsity: Annotated[float, typer.Option(help="Target channel sparsity of the device convs, in [0, 1).")] = 0.5,
    activation_sparsity: Annotated[
        float, typer.Option(help="Fraction of the feature's live channels not transmitted, in [0, 1).")
    ] = 0.0,
    method: Annotated[str, typer.Option(help="incremental (the paper's) or two-step (Shi et al. baseline).")] = (
        "incremental"
    ),
    schedule: Annotated[str, typer.Option(help="Sparsity schedule: cubic or step.")] = "cubic",
    iterations: Annotated[int, typer.Option(help="Pruning iterations (cubic, or step without a list).")] = 4,
    schedule_steps: Annotated[
        str | None, typer.Option(help="Step schedule as a list, e.g. 0.25,0.4,0.5 (last = --sparsity).")
    ] = None,
    residual: Annotated[str, typer.Option(help="Residual groups: joint (pruned as units) or keep.")] = "joint",
    distill: Annotated[
        float, typer.Option(help="Weight of distillation from the unpruned model's logits, in [0, 1] (0: labels).")
    ] = 0.0,
    optimizer: Annotated[str, typer.Option(help="sgd or adam.")] = "sgd",
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 0.01,
    epochs: Annotated[float, typer.Option(help="Fine-tuning epochs over the subset, all iterations together.")] = 1.0,
    steps: Annotated[int | None, typer.Option(help="Fine-tuning steps in all (overrides --epochs).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 128,
    subset: Annotated[int | None, typer.Option(help="Train on a fixed random subset of N images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of subset, order and augmentation.")] = 0,
    val_size: ValSizeOpt = None,
    test_limit: Annotated[int | None, typer.Option(help="Evaluate on the first N test images only.")] = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoint path (default runs/prune/<name>.pt).")] = None,
    latency: Annotated[
        bool,
        typer.Option(
            "--latency",
            help="Also time the dense and the pruned device part on this CPU at batch 1: eager PyTorch, and the fused "
            "runtime (coinference.fused) when a C compiler is present; medians of interleaved runs.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Prune the device part for a split point, fine-tune, shrink it; print before/after figures."""
    check_data_dir(check_model_data(model, weights, dataset, data_dir), data_dir)
    validate.in_range("--sparsity", sparsity, 0.0, 1.0, high_open=True)
    validate.in_range("--activation-sparsity", activation_sparsity, 0.0, 1.0, high_open=True)
    names.check("pruning method", method, PRUNING_METHODS)
    names.check("schedule", schedule, SCHEDULES)
    names.check("residual mode", residual, ("joint", "keep"))
    names.check("optimizer", optimizer, ("adam", "sgd"))
    validate.at_least("--iterations", iterations, 1)
    validate.in_range("--distill", distill, 0.0, 1.0)
    check_training(lr, epochs, batch_size, seed, subset, steps, test_limit)
    check_val_size(dataset or names.MODEL_DATASETS[model], val_size)
    steps_list = _steps_list(schedule_steps)
    for v in steps_list:
        validate.in_range("--schedule-steps", v, 0.0, 1.0, high_open=True)
    if out is not None:
        validate.writable_file("--out", out)
    else:
        validate.writable_dir("--out", Path("runs/prune"))
    import torch

    from coinference.evaluate import accuracy
    from coinference.prune import (
        PruneConfig,
        PrunedDevice,
        Schedule,
        TwoStepConfig,
        device_cost,
        feature_bits,
        prune_device,
        save_pruned,
        two_step_prune,
    )
    from coinference.train import TrainConfig
    from coinference.zoo import split_model
    from search.cli.common import model_and_data
    from search.cli.progress import cli_progress

    train = TrainConfig(
        optimizer=optimizer, lr=lr, epochs=epochs, steps=steps, batch_size=batch_size, subset=subset, seed=seed
    )
    if method == "incremental":
        sched = Schedule(kind=schedule, iterations=iterations, steps=steps_list)
        cfg: PruneConfig | TwoStepConfig = PruneConfig(
            sparsity, activation_sparsity, sched, train, residual, distill=distill
        )
    else:  # two-step (the method name was checked with the other arguments)
        if distill:
            raise ConfigError(f"--distill {distill} applies to the incremental method, not two-step")
        cfg = TwoStepConfig(activation_sparsity=activation_sparsity, round_train=train)
    _, net, data = model_and_data(model, weights, dataset, data_dir, need_data=True, val_size=val_size)
    assert data is not None
    point = net.split_point(split)  # a bad split fails before any training
    if test_limit is not None:
        data = replace(data, test_x=data.test_x[:test_limit], test_y=data.test_y[:test_limit])

    head, _ = split_model(net, point)
    dense_macs, dense_params = device_cost(head, data.input_shape)
    with torch.no_grad():
        dense_feat = head.eval()(data.normalize(data.test_x[:1])).shape[1:]
    with cli_progress():
        before = accuracy(net, data)
        if isinstance(cfg, PruneConfig):
            pruned: PrunedDevice = prune_device(net, point, data, cfg)
        else:
            pruned = two_step_prune(net, point, data, cfg)
        after = accuracy(pruned.end_to_end(), data)
    tag = f"{model}-{point.name}-{pruned.method}-s{sparsity:g}-a{activation_sparsity:g}"
    path = save_pruned(pruned, out or Path("runs/prune") / f"{tag}.pt", model)

    rows = {
        "accuracy": (before, after),
        "device MACs": (dense_macs, pruned.device_macs),
        "device params": (dense_params, pruned.device_params),
        "feature bits": (feature_bits(dense_feat[0], tuple(dense_feat)), pruned.feature_bits),
        "feature channels": (dense_feat[0], len(pruned.kept_channels)),
    }
    notes: list[str] = []
    if latency:
        rows.update(_latencies(head, pruned.head, data.normalize(data.test_x[:1]), data.input_shape, notes))
    if as_json:
        typer.echo(
            json.dumps({"checkpoint": str(path), **{k: list(v) for k, v in rows.items()}, "notes": notes}, indent=2)
        )
        return
    c = console()
    from rich.table import Table

    t = Table(
        title=f"{model} split after {point.name}: {pruned.method}, sparsity {pruned.sparsity:.3g}, "
        f"activation sparsity {pruned.activation_sparsity:g}"
    )
    for col in ("", "before (dense)", "after (pruned)", "after / before"):
        t.add_column(col, justify="right")
    for k, (a, b) in rows.items():
        fmt = (
            (lambda v: f"{100 * v:.2f} %")
            if k == "accuracy"
            else (lambda v: f"{v:.3f}")
            if k.startswith("latency")
            else (lambda v: f"{int(v):,}")
        )
        t.add_row(k, fmt(a), fmt(b), f"{b / a:.3f}" if a else "n/a")
    c.print(t)
    for note in notes:
        c.print(note)
    c.print(f"checkpoint: {path}")


def _latencies(
    dense: torch.nn.Module, pruned: torch.nn.Module, x: torch.Tensor, input_shape: tuple[int, ...], notes: list[str]
) -> dict[str, tuple[float, float]]:
    """Batch-1 latency (ms) of the dense and the pruned head, side by side, in eager PyTorch and the fused runtime."""
    from coinference.fused import FusedHead
    from coinference.latency import latency_pair

    out: dict[str, tuple[float, float]] = {}
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    runs: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {"eager": (dense, pruned)}
    try:
        runs["fused"] = (FusedHead(dense, shape), FusedHead(pruned, shape))
    except ConfigError as e:  # e.g. no C compiler: the eager figures stand alone
        notes.append(f"fused runtime not timed: {e}")
    for name, (a, b) in runs.items():
        ta, tb = latency_pair(a, b, x, 200)
        out[f"latency b1, {name} (ms)"] = (1e3 * ta, 1e3 * tb)
    return out
