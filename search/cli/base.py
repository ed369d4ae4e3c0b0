"""``coinfer base``: fine-tune (or train) the base model on a data set and record its accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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

DEFAULT_MARGIN = 0.02
"""``coinference.base.DEFAULT_MARGIN`` (tests/test_cli_names.py keeps them equal)."""


@app.command()
def base(
    model: ModelOpt = names.DEFAULT_MODEL,
    weights: WeightsOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    epochs: Annotated[float, typer.Option(help="Training epochs (> 0, fractions allowed).")] = 1.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, one-cycle; > 0).")] = 0.02,
    batch_size: Annotated[int, typer.Option(help="Images per step (≥ 1).")] = 128,
    subset: Annotated[int | None, typer.Option(help="Train on a fixed random subset of N ≥ 1 images.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    margin: Annotated[
        float, typer.Option(help="Variants must reach base accuracy minus this, in [0, 1).")
    ] = DEFAULT_MARGIN,
    val_size: ValSizeOpt = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoint path (default runs/base/MODEL-DATASET.pt).")] = None,
) -> None:
    """Prepare the base model: fine-tune --weights (or train from scratch) on the training images minus the
    validation split; record its validation accuracy (the variants' threshold) and its test accuracy."""
    name = check_model_data(model, weights, dataset, data_dir)
    check_data_dir(name, data_dir)
    check_training(lr, epochs, batch_size, seed, subset)
    check_val_size(name, val_size)
    validate.in_range("--margin", margin, 0.0, 1.0, high_open=True)
    path = out or Path("runs/base") / f"{model}-{name}.pt"
    validate.writable_file("--out", path)
    from coinference.base import prepare_base
    from coinference.train import TrainConfig
    from search.cli.progress import cli_progress

    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, subset=subset, seed=seed, schedule="onecycle")
    with cli_progress():
        b = prepare_base(model, name, cfg, weights, data_dir, path, val_size)
    c = console()
    n_val = len(b.data.val_y)
    if b.accuracy_before is not None:
        c.print(f"validation accuracy before: {100 * b.accuracy_before:.2f}%")
    c.print(
        f"validation accuracy after:  {100 * b.accuracy:.2f}% on {n_val:,} held-out training images "
        f"(threshold for variants: {100 * b.threshold(margin):.2f}%)"
    )
    c.print(f"test accuracy after:        {100 * b.test_accuracy:.2f}% (reported, never selected on)")
    c.print(f"checkpoint: {b.path}  sha256 {b.sha256}")
