"""ResNets: the CIFAR family (20/32/44/56, option-A shortcuts), ResNet-18 for CIFAR, and a small net for digits.

Key names follow the common public checkpoints: ``conv1``, ``bn1``, ``layer{s}.{i}.conv{1,2}``, ``bn{1,2}``,
``linear`` (and ``shortcut.{0,1}`` for projection shortcuts, as in the usual CIFAR ResNet-18 code).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from coinference.zoo.base import GlobalPool, SplittableModel


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad channels, half before and half after (no parameters)."""

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        self.pad = (planes - in_planes) // 2
        self.extra = planes - in_planes - self.pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.extra))


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus a shortcut, ReLU after the add.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first conv.
        option: "A" (parameter-free subsample + zero-pad) or "B" (1×1 conv + BN) for changing shapes.
    """

    holds_input: ClassVar[bool] = True  # the shortcut keeps the block's input alive until the add

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if option == "A":
                self.shortcut = ShortcutA(in_planes, planes)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Stem(nn.Module):
    """Conv-BN-ReLU view over a model's ``conv1``/``bn1`` (holds references, not copies)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ResNet(SplittableModel):
    """A stem, stages of :class:`BasicBlock`, global pooling and a linear classifier.

    Args:
        blocks: blocks per stage.
        widths: channels per stage (the stem has ``widths[0]``); stages after the first start with stride 2.
        num_classes: classifier outputs.
        in_channels: image channels.
        option: shortcut option, "A" or "B".
    """

    def __init__(
        self,
        blocks: list[int],
        widths: list[int],
        num_classes: int = 10,
        in_channels: int = 3,
        option: str = "A",
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        self.num_stages = len(blocks)
        for s, (n, w) in enumerate(zip(blocks, widths, strict=True), start=1):
            layers = []
            for i in range(n):
                layers.append(BasicBlock(in_planes, w, 2 if (i == 0 and s > 1) else 1, option))
                in_planes = w
            self.add_module(f"layer{s}", nn.Sequential(*layers))
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def _stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{s}") for s in range(1, self.num_stages + 1)]

    def units(self) -> list[tuple[str, nn.Module]]:
        out: list[tuple[str, nn.Module]] = [("stem", Stem(self.conv1, self.bn1))]
        stages = self._stages()
        for s, stage in enumerate(stages, start=1):
            for i, block in enumerate(stage):
                last = s == len(stages) and i == len(stage) - 1
                out.append((f"layer{s}.{i}", nn.Sequential(block, GlobalPool()) if last else block))
        out.append(("linear", self.linear))
        return out

    def stage_ends(self) -> set[str]:
        return {"stem"} | {f"layer{s}.{len(st) - 1}" for s, st in enumerate(self._stages(), start=1)}


def resnet_cifar(depth: int, num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """He et al.'s CIFAR ResNet-``depth`` (depth = 6n + 2), widths 16/32/64, option-A shortcuts."""
    n = (depth - 2) // 6
    return ResNet([n, n, n], [16, 32, 64], num_classes, in_channels, option="A")


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-18 for 32×32 inputs (the paper's model): 3×3 stem, no max-pool, 4 stages of 2 blocks."""
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels, option="B")


def resnet_digits(num_classes: int = 10, in_channels: int = 1) -> ResNet:
    """A small residual net for 8×8 digits: 16/32 channels, 2 stages of 2 blocks (≈ 0.4 M MACs)."""
    return ResNet([2, 2], [16, 32], num_classes, in_channels, option="A")
