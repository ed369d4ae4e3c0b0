"""Base-model preparation: fine-tune a pretrained checkpoint (or train from scratch) on a data set and record
its accuracy, which sets the variants' accuracy threshold (base − 2 points by default).

A base checkpoint is a plain dict loadable with ``weights_only=True``::

    {"state_dict": {...tensors...}, "model": str, "dataset": str, "accuracy": float,
     "mean": [float, ...], "std": [float, ...]}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from coinference.data import ImageData, load_dataset
from coinference.errors import CheckpointError
from coinference.evaluate import accuracy
from coinference.train import TrainConfig, fit
from coinference.zoo import MODELS, SplittableModel, build_model, file_sha256

DEFAULT_MARGIN = 0.02


@dataclass(frozen=True)
class BaseModel:
    """A prepared base model and where it came from."""

    model: SplittableModel
    data: ImageData
    """The data, normalised the way the model expects."""
    accuracy: float
    """Top-1 test accuracy in [0, 1]."""
    accuracy_before: float | None
    """Test accuracy of the starting weights (None when trained from scratch)."""
    path: Path | None
    """Checkpoint file (None when not saved)."""
    sha256: str | None
    """sha256 of the checkpoint file."""

    def threshold(self, margin: float = DEFAULT_MARGIN) -> float:
        """Accuracy a variant must reach: base accuracy − ``margin``."""
        return self.accuracy - margin


def checkpoint_normalization(path: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) recorded in a base checkpoint, or None for a bare state dict."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "mean" in obj and "std" in obj:
        return tuple(float(v) for v in obj["mean"]), tuple(float(v) for v in obj["std"])
    return None


def load_base(
    model: str, dataset: str, weights: str | Path | None, data_dir: str | Path | None = None
) -> tuple[SplittableModel, ImageData]:
    """Model (with ``weights`` loaded) and data normalised as the weights expect.

    Normalisation: the one recorded in a base checkpoint; else the model's known public-checkpoint
    normalisation when weights are given; else the data set's own statistics.
    """
    data = load_dataset(dataset, data_dir)
    info = MODELS.get(model)
    norm = None
    if weights is not None:
        try:
            norm = checkpoint_normalization(weights)
        except Exception:  # unreadable files are reported by build_model below with a clear message
            norm = None
        norm = norm or info.checkpoint_normalization
    if norm is not None:
        data = data.with_normalization(*norm)
    net = build_model(model, weights, num_classes=data.num_classes, in_channels=data.input_shape[0])
    return net, data


def prepare_base(
    model: str,
    dataset: str,
    cfg: TrainConfig,
    weights: str | Path | None = None,
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
) -> BaseModel:
    """Fine-tune ``weights`` (or train from scratch when None) on ``dataset`` for ``cfg`` and save to ``out``.

    Args:
        model: zoo model name.
        dataset: data set name.
        cfg: training budget (``epochs=0`` is not allowed; to evaluate only, use :func:`load_base`).
        weights: starting checkpoint, or None to train from scratch.
        data_dir: folder of a file-backed data set.
        out: where to write the base checkpoint (None: not saved).
    """
    net, data = load_base(model, dataset, weights, data_dir)
    before = accuracy(net, data, progress="evaluate start weights") if weights is not None else None
    fit(net, data, cfg, progress=f"train {model} on {dataset}")
    acc = accuracy(net, data, progress=f"evaluate {model}")
    path = sha = None
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(
            {
                "state_dict": net.state_dict(),
                "model": model,
                "dataset": dataset,
                "accuracy": acc,
                "mean": list(data.mean),
                "std": list(data.std),
            },
            tmp,
        )
        tmp.replace(path)  # never leave a half-written checkpoint under the final name
        sha = file_sha256(path)
    return BaseModel(net.eval(), data, acc, before, path, sha)


def recorded_accuracy(path: str | Path) -> float:
    """The test accuracy recorded in a base checkpoint."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "accuracy" not in obj:
        raise CheckpointError(f"{path} is not a base checkpoint (no recorded accuracy)")
    return float(obj["accuracy"])
