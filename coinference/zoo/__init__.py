"""Model zoo: a registry of splittable classifiers and their defaults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from coinference.registry import Registry
from coinference.zoo.base import GlobalPool, SplitPoint, SplittableModel, split_model
from coinference.zoo.checkpoint import file_sha256, load_weights, read_state_dict
from coinference.zoo.resnet import ResNet, resnet18_cifar, resnet_cifar, resnet_digits
from coinference.zoo.tiny import TinyCNN

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelInfo:
    """A registered architecture.

    Attributes:
        name: registry name.
        factory: ``factory(num_classes=, in_channels=)`` → a fresh :class:`SplittableModel`.
        dataset: the data set it is meant for (sets the default input shape and classes).
        input_shape: (C, H, W) of its input.
        num_classes: classifier outputs.
        checkpoint_normalization: (mean, std) the common public checkpoints were trained with, or None when
            they use the data set's own statistics.
    """

    name: str
    factory: Callable[..., SplittableModel]
    dataset: str
    input_shape: tuple[int, int, int]
    num_classes: int
    checkpoint_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None


MODELS: Registry[ModelInfo] = Registry("model")


def _add(info: ModelInfo) -> None:
    MODELS.register(info.name)(info)


_IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
for _depth in (20, 32, 44, 56):
    _add(ModelInfo(f"resnet{_depth}", partial(resnet_cifar, _depth), "cifar10", (3, 32, 32), 10, _IMAGENET))
_add(ModelInfo("resnet18-cifar", resnet18_cifar, "cifar10", (3, 32, 32), 10))
_add(ModelInfo("resnet-digits", resnet_digits, "digits", (1, 8, 8), 10))
_add(ModelInfo("tiny-cnn", TinyCNN, "synthetic", (3, 8, 8), 4))

DEFAULT_MODEL = "resnet-digits"


def build_model(
    name: str,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
) -> SplittableModel:
    """A fresh instance of model ``name`` (its own modules), optionally loaded from a checkpoint.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists valid names).
        CheckpointError: the checkpoint is unreadable or belongs to another architecture.
    """
    info = MODELS.get(name)
    model = info.factory(num_classes=num_classes or info.num_classes, in_channels=in_channels or info.input_shape[0])
    if weights is not None:
        load_weights(model, weights, name)
    return model


__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "GlobalPool",
    "ModelInfo",
    "ResNet",
    "SplitPoint",
    "SplittableModel",
    "TinyCNN",
    "build_model",
    "file_sha256",
    "load_weights",
    "read_state_dict",
    "resnet18_cifar",
    "resnet_cifar",
    "resnet_digits",
    "split_model",
]
