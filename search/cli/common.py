"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from search.cli import names, validate

if TYPE_CHECKING:
    from rich.console import Console

    from coinference.data import ImageData
    from coinference.zoo import ModelInfo, SplittableModel

ModelOpt = Annotated[str, typer.Option("--model", "-m", help=f"Model: {', '.join(names.MODELS)}.")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", "-w", help="State-dict checkpoint to load.")]
DatasetOpt = Annotated[
    str | None,
    typer.Option("--dataset", "-d", help=f"Data set: {', '.join(names.DATASETS)} (default: the model's)."),
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Folder of a file-backed data set (cifar10).")]
ValSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--val-size",
        help="Training images held out as the validation split that every choice reads, never trained on "
        "(default 10 %: 5,000 of CIFAR-10's 50,000).",
    ),
]

TRAIN_IMAGES = {"cifar10": 50_000, "digits": 1_347, "synthetic": 256}
"""Training images of each data set before the validation split (a test keeps this equal to the loaders), so that
--val-size is checked before any data is read."""


def check_val_size(dataset: str, val_size: int | None) -> int | None:
    """--val-size in [1, training images − 1] of ``dataset``, said before any work."""
    if val_size is not None:
        n = TRAIN_IMAGES.get(dataset)
        validate.at_least("--val-size", val_size, 1)
        if n is not None and val_size >= n:
            from coinference.errors import ConfigError

            raise ConfigError(f"--val-size must be below {dataset}'s {n:,} training images, got {val_size}")
    return val_size


def check_model_data(model: str, weights: Path | None, dataset: str | None, data_dir: Path | None) -> str:
    """Names and paths of --model/--weights/--dataset/--data-dir checked before any import or work; returns the
    data set's name (the model's own when --dataset is not given)."""
    names.check("model", model, names.MODELS)
    if dataset is not None:
        names.check("data set", dataset, names.DATASETS)
    if weights is not None:
        validate.readable_file("--weights", weights)
    if data_dir is not None:
        validate.existing_dir("--data-dir", data_dir)
    return dataset or names.MODEL_DATASETS[model]


def check_data_dir(dataset: str, data_dir: Path | None) -> None:
    """A file-backed data set (cifar10) needs --data-dir: said at once, before the model or data are loaded."""
    if data_dir is None and dataset not in names.EMBEDDED_DATASETS:
        from coinference.errors import DataError

        raise DataError(f"data set {dataset!r} is read from files: give --data-dir (its folder)")


def check_training(
    lr: float,
    epochs: float,
    batch_size: int,
    seed: int,
    subset: int | None = None,
    steps: int | None = None,
    test_limit: int | None = None,
) -> None:
    """The training options base, prune and encode share: a positive finite lr and epoch count, at least one image
    per batch, step, training subset image and test image, and a seed torch accepts."""
    validate.in_range("--lr", lr, 0.0, 10.0, low_open=True)
    validate.in_range("--epochs", epochs, 0.0, 10_000.0, low_open=True)
    validate.at_least("--batch-size", batch_size, 1)
    for option, value in (("--subset", subset), ("--steps", steps), ("--test-limit", test_limit)):
        if value is not None:
            validate.at_least(option, value, 1)
    check_seed(seed)


def check_seed(seed: int) -> int:
    """A seed torch and numpy both accept: 0 ≤ seed < 2**32."""
    if not 0 <= seed < 2**32:
        from coinference.errors import ConfigError

        raise ConfigError(f"--seed must be in [0, 2**32), got {seed}")
    return seed


def _recorded_normalization(weights: Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    from coinference.base import checkpoint_normalization

    try:
        return checkpoint_normalization(weights)
    except Exception:  # unreadable: build_model reports it with a clear message
        return None


def model_and_data(
    model: str,
    weights: Path | None,
    dataset: str | None,
    data_dir: Path | None,
    need_data: bool,
    val_size: int | None = None,
) -> tuple[ModelInfo, SplittableModel, ImageData | None]:
    """Resolve --model/--weights/--dataset/--data-dir into (info, model, data or None).

    Data is loaded when ``need_data`` is set, when ``--data-dir`` is given, or when the data set is embedded
    (needs no files), with ``val_size`` training images held out for validation. When weights are given, the
    normalisation recorded in a base checkpoint (``coinfer base``), else the one the model's common public
    checkpoints use (ImageNet statistics for the CIFAR ResNets), replaces the data set's.
    """
    from coinference.data import DATASETS, load_dataset
    from coinference.zoo import MODELS, build_model

    info = MODELS.get(model)
    name = dataset or info.dataset
    DATASETS.get(name)  # fail early on an unknown name
    data = None
    if need_data or data_dir is not None or name in names.EMBEDDED_DATASETS:
        data = load_dataset(name, data_dir, val_size=val_size)
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
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=200)
