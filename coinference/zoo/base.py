"""What every zoo model exposes: an ordered list of units whose boundaries are the valid split points.

A *unit* is the smallest piece that may run on one side of the link: the stem, one residual block (a cut inside
a block would have to send both the block's input and its partial output, so it is not a split point), or the
classifier. The last block of a network carries the global pooling with it: sending the unpooled map is never
cheaper than sending the pooled vector, so the last split point is after pooling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from coinference.errors import ConfigError


@dataclass(frozen=True)
class SplitPoint:
    """A block boundary where the model can be cut.

    Attributes:
        index: number of units that run on the device (1 .. n_units - 1).
        name: name of the last unit on the device, e.g. ``"layer2.2"``.
        stage_end: True when the boundary also ends a stage (a change of width/resolution follows).
    """

    index: int
    name: str
    stage_end: bool


class GlobalPool(nn.Module):
    """Global average pooling and flatten: (N, C, H, W) → (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class SplittableModel(nn.Module):
    """Base class of zoo models: ``forward`` is the composition of :meth:`units`, in order.

    Subclasses keep checkpoint-compatible attribute names (``conv1``, ``bn1``, ``layer1`` …, ``linear``) and
    describe how those attributes group into units.
    """

    holds_input: ClassVar[bool] = False

    def units(self) -> list[tuple[str, nn.Module]]:
        """Ordered (name, module) units; the modules are the model's own (views, not copies)."""
        raise NotImplementedError

    def stage_ends(self) -> set[str]:
        """Names of the units that close a stage."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, unit in self.units():
            x = unit(x)
        return x

    def split_points(self) -> list[SplitPoint]:
        """Every valid split point, from the earliest (after the stem) to the latest (before the classifier)."""
        ends = self.stage_ends()
        names = [n for n, _ in self.units()]
        return [SplitPoint(i, n, n in ends) for i, n in enumerate(names[:-1], start=1)]

    def split_point(self, key: str | int | SplitPoint) -> SplitPoint:
        """Resolve a split point given by name (``"layer2.2"``), index (units on device) or as itself.

        Raises:
            ConfigError: the model has no such split point (the message lists the valid ones).
        """
        points = self.split_points()
        for p in points:
            if key == p or key == p.name or key == p.index or (isinstance(key, str) and key == str(p.index)):
                return p
        valid = ", ".join(f"{p.index}={p.name}" for p in points)
        raise ConfigError(f"split point {key!r} does not exist; valid: {valid}")


def split_model(model: SplittableModel, point: str | int | SplitPoint) -> tuple[nn.Sequential, nn.Sequential]:
    """Cut ``model`` at ``point`` into (device head, server tail); both share the model's modules."""
    p = model.split_point(point)
    units = model.units()
    head = nn.Sequential(*[m for _, m in units[: p.index]])
    tail = nn.Sequential(*[m for _, m in units[p.index :]])
    return head, tail
