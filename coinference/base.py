"""Base-model preparation: fine-tune a pretrained checkpoint (or train from scratch) on a data set's training
images (the validation split held out) and record its validation accuracy, which sets the variants' accuracy
threshold (base − 2 points by default), and its test accuracy, which is only reported.

A base checkpoint is a plain dict loadable with ``weights_only=True``::

    {"state_dict": {...tensors...}, "model": str, "dataset": str, "val_accuracy": float,
     "test_accuracy": float, "split_id": str, "mean": [float, ...], "std": [float, ...]}

``split_id`` names the validation split the checkpoint was trained without; :func:`load_base` refuses to pair it
with data that holds out other images (they may have been trained on).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from coinference.data import ImageData, load_dataset
from coinference.errors import CheckpointError, ConfigError
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
    """Top-1 validation accuracy in [0, 1] (what thresholds are set from)."""
    accuracy_before: float | None
    """Validation accuracy of the starting weights (None when trained from scratch)."""
    test_accuracy: float
    """Top-1 test accuracy in [0, 1] (reported only)."""
    path: Path | None
    """Checkpoint file (None when not saved)."""
    sha256: str | None
    """sha256 of the checkpoint file."""

    def threshold(self, margin: float = DEFAULT_MARGIN) -> float:
        """Accuracy a variant must reach: base accuracy − ``margin``."""
        return self.accuracy - margin


def _checkpoint_meta(path: str | Path) -> dict[str, object]:
    """The metadata of a base checkpoint (everything but the weights); {} for a bare state dict."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        return {k: v for k, v in obj.items() if k != "state_dict"}
    return {}


def checkpoint_normalization(path: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) recorded in a base checkpoint, or None for a bare state dict."""
    return _normalization(_checkpoint_meta(path))


def _normalization(meta: dict[str, object]) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if "mean" in meta and "std" in meta:
        return tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"])  # type: ignore[attr-defined]
    return None


def load_base(
    model: str,
    dataset: str,
    weights: str | Path | None,
    data_dir: str | Path | None = None,
    val_size: int | None = None,
) -> tuple[SplittableModel, ImageData]:
    """Model (with ``weights`` loaded) and data (``val_size`` training images held out for validation)
    normalised as the weights expect.

    Normalisation: the one recorded in a base checkpoint; else the model's known public-checkpoint
    normalisation when weights are given; else the data set's own statistics.

    Raises:
        ConfigError: a base checkpoint trained with another validation split (its training images may be this
            data's validation images).
    """
    data = load_dataset(dataset, data_dir, val_size=val_size)
    info = MODELS.get(model)
    norm = None
    if weights is not None:
        try:
            meta = _checkpoint_meta(weights)
        except Exception:  # unreadable files are reported by build_model below with a clear message
            meta = {}
        split = meta.get("split_id")
        if split is not None and split != data.split_id:
            raise ConfigError(
                f"base checkpoint {weights} was trained with validation split {split}; this data holds out "
                f"{data.split_id} (give the same --val-size as when the base was prepared)"
            )
        norm = _normalization(meta)  # from the metadata already read, not a second load of the file
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
    val_size: int | None = None,
) -> BaseModel:
    """Fine-tune ``weights`` (or train from scratch when None) on ``dataset`` for ``cfg`` and save to ``out``.

    Args:
        model: zoo model name.
        dataset: data set name.
        cfg: training budget (``epochs=0`` is not allowed; to evaluate only, use :func:`load_base`).
        weights: starting checkpoint, or None to train from scratch.
        data_dir: folder of a file-backed data set.
        out: where to write the base checkpoint (None: not saved).
        val_size: training images held out for validation (None: the data set's default).
    """
    with torch.random.fork_rng(devices=[]):  # a model trained from scratch starts from the seed's weights, whatever
        torch.manual_seed(cfg.seed)  # the process drew from the global generator before
        net, data = load_base(model, dataset, weights, data_dir, val_size)
    val = data.evaluated_on("val")
    before = accuracy(net, val, progress="evaluate start weights") if weights is not None else None
    fit(net, data, cfg, progress=f"train {model} on {dataset}")
    acc = accuracy(net, val, progress=f"evaluate {model} (validation)")
    test_acc = accuracy(net, data, progress=f"evaluate {model} (test)")
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
                "val_accuracy": acc,
                "test_accuracy": test_acc,
                "split_id": data.split_id,
                "mean": list(data.mean),
                "std": list(data.std),
            },
            tmp,
        )
        tmp.replace(path)  # never leave a half-written checkpoint under the final name
        sha = file_sha256(path)
    return BaseModel(net.eval(), data, acc, before, test_acc, path, sha)


def recorded_accuracy(path: str | Path, split: str = "val") -> float:
    """The ``"val"`` (selection) or ``"test"`` (reported) accuracy recorded in a base checkpoint."""
    key = f"{split}_accuracy"
    meta = _checkpoint_meta(path)
    if key not in meta:
        old = "accuracy" in meta
        why = "written before the validation split; prepare it again" if old else "no recorded accuracy"
        raise CheckpointError(f"{path} is not a base checkpoint with a {split} accuracy ({why})")
    return float(meta[key])  # type: ignore[arg-type]
