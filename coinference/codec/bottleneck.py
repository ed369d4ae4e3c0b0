"""Dimension reduction (paper IV-B.1): a device encoder of one conv layer that cuts channels (optionally with a
stride that cuts resolution) then one fully-connected layer that cuts the flattened size, and a server decoder of
the complementary structure. Either layer may be skipped (``channels=None`` / ``dim=None``); a flat (N, D)
feature, e.g. after global pooling, has no conv.

Shapes are derived from the feature the (possibly pruned) head actually emits, never from the zoo.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from coinference.errors import ConfigError


def latent_shape(
    feature_shape: tuple[int, ...], channels: int | None, dim: int | None, stride: int = 1
) -> tuple[int, ...]:
    """Shape (batch excluded) of the encoder output for a feature of ``feature_shape``.

    Raises:
        ConfigError: a layer would not reduce (channels > C, dim > flattened size), a conv on a flat feature,
            or a stride that does not divide the feature's height and width.
    """
    shape = tuple(int(s) for s in feature_shape)
    if len(shape) not in (1, 3):
        raise ConfigError(f"features must be (C, H, W) or (D,), got {shape}")
    if channels is not None or stride > 1:
        if len(shape) != 3:
            raise ConfigError(f"conv channels/stride need a spatial (C, H, W) feature; this feature is {shape}")
        c, h, w = shape
        if channels is not None and channels > c:
            raise ConfigError(f"conv channels {channels} larger than the feature's {c} channels")
        if h % stride or w % stride:
            raise ConfigError(f"stride {stride} does not divide the feature's {h}×{w} resolution")
        shape = (channels or c, h // stride, w // stride)
    if dim is not None:
        flat = math.prod(shape)
        if dim > flat:
            raise ConfigError(f"fc dim {dim} larger than the flattened feature ({flat} values, shape {shape})")
        shape = (dim,)
    return shape


class Encoder(nn.Module):
    """Device side: [conv (k×k, or stride×stride with that stride)] → [ReLU → flatten → linear]. Output: the
    latent. No BatchNorm: the codec then behaves the same in training and at batch 1 after a short schedule."""

    def __init__(
        self, feature_shape: tuple[int, ...], channels: int | None, dim: int | None, stride: int = 1, kernel: int = 1
    ) -> None:
        super().__init__()
        self.latent_shape = latent_shape(feature_shape, channels, dim, stride)
        layers: list[nn.Module] = []
        conv_shape = tuple(feature_shape)
        if channels is not None or stride > 1:
            c = feature_shape[0]
            out = channels or c
            k, pad = (stride, 0) if stride > 1 else (kernel, kernel // 2)
            layers.append(nn.Conv2d(c, out, k, stride, pad))
            if dim is not None:
                layers.append(nn.ReLU())
            conv_shape = (out, feature_shape[1] // stride, feature_shape[2] // stride)
        if dim is not None:
            layers += [nn.Flatten(), nn.Linear(math.prod(conv_shape), dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Server side, complementary to :class:`Encoder`: [linear → unflatten → ReLU] → [conv, or for a strided
    encoder a sub-pixel conv: 1×1 conv to C·stride² channels + pixel shuffle, the same map as a stride×stride
    transposed conv] and a final ReLU when the original feature is non-negative (post-ReLU)."""

    def __init__(
        self,
        feature_shape: tuple[int, ...],
        channels: int | None,
        dim: int | None,
        stride: int = 1,
        kernel: int = 1,
        nonneg: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        has_conv = channels is not None or stride > 1
        conv_shape = (
            (channels or feature_shape[0], feature_shape[1] // stride, feature_shape[2] // stride)
            if has_conv
            else tuple(feature_shape)
        )
        if dim is not None:
            layers += [nn.Linear(dim, math.prod(conv_shape)), nn.Unflatten(1, conv_shape)]
            if has_conv:
                layers.append(nn.ReLU())
        if has_conv:
            c = feature_shape[0]
            if stride > 1:
                layers += [nn.Conv2d(conv_shape[0], c * stride * stride, 1), nn.PixelShuffle(stride)]
            else:
                layers.append(nn.Conv2d(conv_shape[0], c, kernel, 1, kernel // 2))
        if nonneg and layers:
            layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@torch.no_grad()
def pca_init(encoder: nn.Module, decoder: nn.Module, features: torch.Tensor, max_rows: int = 200_000) -> bool:
    """Start a spatial conv bottleneck (no FC) at the best linear code of the features: the encoder conv projects
    each stride×stride patch (or pixel, for a 1×1 conv) on the top principal components of the training patches,
    the decoder maps them back. A frozen, deep tail gives the codec a poorly conditioned gradient; this start
    already reconstructs the feature as well as any linear code of that size can. Returns whether it applied.
    """
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    dconvs = [m for m in decoder.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 1 or len(dconvs) != 1 or any(isinstance(m, nn.Linear) for m in encoder.modules()):
        return False
    enc, dec = convs[0], dconvs[0]
    k = enc.kernel_size[0]
    if enc.stride[0] != k or dec.kernel_size[0] != 1:  # only non-overlapping patches (strided or 1×1 convs)
        return False
    rows = torch.nn.functional.unfold(features, k, stride=k).transpose(1, 2).reshape(-1, features.shape[1] * k * k)
    if len(rows) > max_rows:
        rows = rows[torch.randperm(len(rows))[:max_rows]]
    mean = rows.mean(0)
    _, _, v = torch.linalg.svd(rows - mean, full_matrices=False)
    comps = v[: enc.out_channels]  # (out, C·k²), ordered as (c, i, j) like unfold and PixelShuffle
    enc.weight.copy_(comps.view_as(enc.weight))
    if enc.bias is not None:
        enc.bias.copy_(-(comps @ mean))
    dec.weight.copy_(comps.t().reshape(dec.weight.shape))
    if dec.bias is not None:
        dec.bias.copy_(mean)
    return True
