"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from coinference.base import checkpoint_normalization
from coinference.data import DATASETS, ImageData, load_dataset
from coinference.zoo import MODELS, ModelInfo, SplittableModel, build_model

ModelOpt = Annotated[str, typer.Option("--model", "-m", help=f"Model: {', '.join(MODELS.names())}.")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", "-w", help="State-dict checkpoint to load.")]
DatasetOpt = Annotated[
    str | None,
    typer.Option("--dataset", "-d", help=f"Data set: {', '.join(DATASETS.names())} (default: the model's)."),
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Folder of a file-backed data set (cifar10).")]


def _recorded_normalization(weights: Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    try:
        return checkpoint_normalization(weights)
    except Exception:  # unreadable: build_model reports it with a clear message
        return None


def model_and_data(
    model: str, weights: Path | None, dataset: str | None, data_dir: Path | None, need_data: bool
) -> tuple[ModelInfo, SplittableModel, ImageData | None]:
    """Resolve --model/--weights/--dataset/--data-dir into (info, model, data or None).

    Data is loaded when ``need_data`` is set, when ``--data-dir`` is given, or when the data set is embedded
    (needs no files). When weights are given, the normalisation recorded in a base checkpoint (``coinfer base``),
    else the one the model's common public checkpoints use (ImageNet statistics for the CIFAR ResNets), replaces
    the data set's.
    """
    info = MODELS.get(model)
    name = dataset or info.dataset
    DATASETS.get(name)  # fail early on an unknown name
    data = None
    if need_data or data_dir is not None or name in ("digits", "synthetic"):
        data = load_dataset(name, data_dir)
        if weights is not None:
            norm = _recorded_normalization(weights) or info.checkpoint_normalization
            if norm is not None:
                data = data.with_normalization(*norm)
    net = build_model(
        model,
        weights,
        num_classes=data.num_classes if data else None,
        in_channels=data.input_shape[0] if data else None,
    )
    return info, net, data


def console() -> Console:
    """A rich console; wide when writing to a pipe or file so tables are not cut."""
    c = Console()
    return c if c.is_terminal else Console(width=200)
