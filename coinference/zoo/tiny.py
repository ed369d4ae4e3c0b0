"""A tiny plain CNN for tests: a stem and two conv blocks on 8×8 inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from coinference.zoo.base import GlobalPool, SplittableModel


class ConvBlock(nn.Module):
    """3×3 conv, BN, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class TinyCNN(SplittableModel):
    """stem (→8 ch) · block1 (8 ch) · block2 (→16 ch, stride 2, + pool) · linear. Split points: 3."""

    def __init__(self, num_classes: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = ConvBlock(in_channels, 8)
        self.block1 = ConvBlock(8, 8)
        self.block2 = ConvBlock(8, 16, stride=2)
        self.pool = GlobalPool()
        self.linear = nn.Linear(16, num_classes)

    def units(self) -> list[tuple[str, nn.Module]]:
        return [
            ("stem", self.stem),
            ("block1", self.block1),
            ("block2", nn.Sequential(self.block2, self.pool)),
            ("linear", self.linear),
        ]

    def stage_ends(self) -> set[str]:
        return {"stem", "block1", "block2"}
