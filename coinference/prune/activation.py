"""Activation pruning: a channel mask on the transmitted split feature, and scattering it back for the server.

The feature is the split-point output (after the residual add and ReLU, or the pooled vector at the last split).
Its channels are ranked by their mean energy ``E[a_c^2]`` over a calibration batch; the ``activation_sparsity``
fraction of the *live* channels (those the channel pruning left) with the least energy is not transmitted. The
transmitted size therefore counts ``kept × H × W`` values: exactly the unpruned fraction of the live feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from coinference.evaluate import eval_mode
from coinference.profile import FLOAT_BITS
from coinference.prune.masks import smallest_mask


@torch.no_grad()
def channel_energy(head: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Mean squared activation per feature channel, float64 shape (C,), of ``head`` on normalised inputs ``x``."""
    total: torch.Tensor | None = None
    with eval_mode(head):
        for i in range(0, len(x), batch_size):
            f = head(x[i : i + batch_size]).double()
            s = f.pow(2).sum(dim=[d for d in range(f.dim()) if d != 1])
            total = s if total is None else total + s
    assert total is not None, "empty calibration batch"
    return total / len(x)


def select_transmitted(energy: torch.Tensor, alive: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool (C,) mask of transmitted channels: ``alive`` minus the ``sparsity`` fraction of it with least energy."""
    return smallest_mask(energy, sparsity, alive)


def feature_bits(n_channels: int, feature_shape: tuple[int, ...]) -> int:
    """Raw float32 bits per image of a feature of ``feature_shape`` (C, ...) of which ``n_channels`` are sent."""
    spatial = 1
    for d in feature_shape[1:]:
        spatial *= int(d)
    return n_channels * spatial * FLOAT_BITS


def expand_index(kept: torch.Tensor, channels: int) -> torch.Tensor:
    """int64 (channels,): for each channel of the full feature, its position in the sent feature with one zero
    channel put in front (0: not sent, ``i + 1``: sent as channel ``i``)."""
    index = torch.zeros(channels, dtype=torch.long, device=kept.device)
    index[kept.long()] = torch.arange(1, len(kept) + 1, device=kept.device)
    return index


def expand_channels(feature: torch.Tensor, kept: torch.Tensor, channels: int) -> torch.Tensor:
    """Scatter transmitted channels back into zeros: (N, k, ...) → (N, channels, ...), channel ``i`` → ``kept[i]``.

    Written as a gather from the feature with one zero channel put in front, not as a scatter into zeros: the same
    values, and an exported (ONNX) graph keeps a dynamic batch axis and has no zero-sized tensor."""
    return _gather_with_zero(feature, expand_index(kept, channels))


def _gather_with_zero(feature: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    pad = (0, 0) * (feature.dim() - 2) + (1, 0)  # one zero channel before channel 0 (F.pad lists the last dim first)
    return F.pad(feature, pad).index_select(1, index)


class ActivationMask(nn.Module):
    """Multiplies the feature's channels by a fixed 0/1 mask (the masked model's view of activation pruning).

    Args:
        keep: bool (C,), True for transmitted channels.
    """

    scale: torch.Tensor

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", keep.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape)


class Expand(nn.Module):
    """Server-side inverse of activation pruning: scatter the transmitted channels into a zero feature.

    Args:
        kept: int64 (k,), original channel index of each transmitted channel.
        channels: channels of the full feature.
    """

    kept: torch.Tensor
    index: torch.Tensor

    def __init__(self, kept: torch.Tensor, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.register_buffer("kept", kept.clone().long())
        # derived from ``kept``, so not saved: checkpoints keep the one buffer they always had
        self.register_buffer("index", expand_index(self.kept, channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _gather_with_zero(x, self.index)
