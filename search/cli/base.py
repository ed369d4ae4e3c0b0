"""``coinfer base``: fine-tune (or train) the base model on a data set and record its accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coinference.base import DEFAULT_MARGIN, prepare_base
from coinference.data import DATASETS
from coinference.train import TrainConfig
from coinference.zoo import DEFAULT_MODEL, MODELS
from search.cli import app
from search.cli.common import DataDirOpt, DatasetOpt, ModelOpt, WeightsOpt, console


@app.command()
def base(
    model: ModelOpt = DEFAULT_MODEL,
    weights: WeightsOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    epochs: Annotated[float, typer.Option(help="Training epochs (fractions allowed).")] = 1.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, one-cycle).")] = 0.02,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 128,
    subset: Annotated[int | None, typer.Option(help="Train on a fixed random subset of N images.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    margin: Annotated[float, typer.Option(help="Variants must reach base accuracy minus this.")] = DEFAULT_MARGIN,
    out: Annotated[Path | None, typer.Option(help="Checkpoint path (default runs/base/MODEL-DATASET.pt).")] = None,
) -> None:
    """Prepare the base model: fine-tune --weights (or train from scratch) and record its test accuracy."""
    name = dataset or MODELS.get(model).dataset
    DATASETS.get(name)
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, subset=subset, seed=seed, schedule="onecycle")
    path = out or Path("runs/base") / f"{model}-{name}.pt"
    b = prepare_base(model, name, cfg, weights, data_dir, path)
    c = console()
    if b.accuracy_before is not None:
        c.print(f"accuracy before: {100 * b.accuracy_before:.2f}%")
    c.print(f"accuracy after:  {100 * b.accuracy:.2f}%  (threshold for variants: {100 * b.threshold(margin):.2f}%)")
    c.print(f"checkpoint: {b.path}  sha256 {b.sha256}")
