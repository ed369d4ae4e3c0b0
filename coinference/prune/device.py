"""The result of pruning the device part: a physically shrunk head, the server tail, and how to join them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from coinference.errors import ConfigError
from coinference.profile import count_macs
from coinference.prune.activation import Expand, expand_channels, feature_bits
from coinference.prune.groups import Trace, trace
from coinference.prune.masks import Keep
from coinference.prune.shrink import ChannelGather, shrink
from coinference.zoo.base import SplitPoint, SplittableModel, split_model


@dataclass(frozen=True)
class IterationLog:
    """One pruning iteration (or round): the sparsities it ran at and its fine-tuning."""

    sparsity: float
    """Channel sparsity of the iteration."""
    activation_sparsity: float
    """Activation sparsity of the iteration."""
    steps: int
    """Optimizer steps."""
    final_loss: float
    """Mean training loss of the last 10% of steps (nan without training)."""
    seconds: float
    """Wall-clock seconds of its fine-tuning."""
    accuracy: float | None = None
    """Accuracy after the iteration, when it was measured (two-step rounds)."""


def device_cost(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(MACs per image, parameter count) of ``module`` for one input of shape ``input_shape`` (C, H, W)."""
    modes = [(m, m.training) for m in module.modules()]  # restore each flag: shared modules may differ
    module.eval()
    with torch.no_grad(), count_macs(module) as c:
        module(torch.zeros(1, *input_shape))
    for m, flag in modes:
        m.training = flag
    return c[0], sum(p.numel() for p in module.parameters())


@dataclass(frozen=True, eq=False)
class PrunedDevice:
    """A pruned co-inference model: ``tail(expand(head(x)))`` is the end-to-end classifier.

    Attributes:
        head: the physically shrunk device part (eval mode); output (N, k, H, W) or (N, k): the transmitted
            channels only, in the order of ``kept_channels``.
        tail: the server part; takes the full-shape feature ``expand(head(x))``.
        kept_channels: int64 (k,), original index of each transmitted feature channel (increasing).
        feature_shape: (C, H, W) or (C,) of the full split feature.
        split: the split point.
        input_shape: (C, H, W) of the model input.
        device_macs: MACs per image of ``head``.
        device_params: parameters of ``head``.
        sparsity: target channel sparsity of the device convs.
        activation_sparsity: fraction of the live feature channels not transmitted.
        method: "incremental" or "two-step".
        group_keep: channel group name → int64 indices of the kept channels (what the checkpoint stores).
        model: the full masked model (dense shapes, pruned entries zero) that ``tail`` belongs to.
        history: the pruning iterations.
    """

    head: nn.Module
    tail: nn.Module
    kept_channels: torch.Tensor
    feature_shape: tuple[int, ...]
    split: SplitPoint
    input_shape: tuple[int, int, int]
    device_macs: int
    device_params: int
    sparsity: float
    activation_sparsity: float
    method: str
    group_keep: dict[str, torch.Tensor]
    model: SplittableModel = field(repr=False)
    history: tuple[IterationLog, ...] = ()
    whole_network: bool = False

    @property
    def feature_bits(self) -> int:
        """Raw float32 bits per image of the transmitted feature (only the kept channels)."""
        return feature_bits(len(self.kept_channels), self.feature_shape)

    def expand(self, feature: torch.Tensor) -> torch.Tensor:
        """Scatter a transmitted feature (N, k, ...) back into zeros of the full shape (N, *feature_shape)."""
        return expand_channels(feature, self.kept_channels, self.feature_shape[0])

    def end_to_end(self) -> nn.Sequential:
        """``head → expand → tail`` as one module (shares the modules; eval mode)."""
        return nn.Sequential(self.head, Expand(self.kept_channels, self.feature_shape[0]), self.tail).eval()


def keep_by_name(tr: Trace, keep: Keep) -> dict[str, torch.Tensor]:
    """Group name → int64 kept indices (the checkpoint's form of ``keep``)."""
    return {tr.groups[g].name: k.nonzero().flatten() for g, k in keep.items()}


def keep_from_names(tr: Trace, named: dict[str, torch.Tensor]) -> Keep:
    """Group id → bool keep-mask from group name → kept indices (groups not named keep every channel)."""
    keep: Keep = {}
    for g in tr.groups:
        if g.name in named:
            k = torch.zeros(g.channels, dtype=torch.bool)
            idx = named[g.name].long()
            if len(idx) and (idx.min() < 0 or idx.max() >= g.channels):
                raise ConfigError(f"kept channels of {g.name} out of range 0..{g.channels - 1}")
            k[idx] = True
            keep[g.gid] = k
    return keep


def assemble(
    model: SplittableModel,
    split: SplitPoint,
    named_keep: dict[str, torch.Tensor],
    kept_channels: torch.Tensor,
    input_shape: tuple[int, int, int],
    *,
    sparsity: float,
    activation_sparsity: float,
    method: str,
    whole_network: bool = False,
    history: tuple[IterationLog, ...] = (),
) -> PrunedDevice:
    """Build the :class:`PrunedDevice` of a masked ``model`` (weights of pruned channels already zero).

    Args:
        model: the masked model.
        split: where it is cut.
        named_keep: group name → kept channel indices (device groups; all groups with ``whole_network``).
        kept_channels: int64 indices of the transmitted feature channels.
        input_shape: (C, H, W) of the input.
        sparsity: recorded channel sparsity.
        activation_sparsity: recorded activation sparsity.
        method: recorded method name.
        whole_network: the server part was pruned too (two-step): the tail is shrunk as well, behind a gather
            of the channels it kept from the full-shape feature.
        history: recorded iterations.
    """
    model.eval()
    names = [n for n, _ in model.units()]
    head_seq, tail_seq = split_model(model, split)
    tr = trace(head_seq, names[: split.index])
    if tr.output_group is None:
        raise ConfigError(f"split {split.name} has no channel feature")
    out_ch = tr.groups[tr.output_group].channels
    transmitted = torch.zeros(out_ch, dtype=torch.bool)
    transmitted[kept_channels.long()] = True
    head = shrink(head_seq, tr, keep_from_names(tr, named_keep), transmitted)
    tail: nn.Module = tail_seq
    if whole_network:
        full = nn.Sequential(*[m for _, m in model.units()])
        tr_full = trace(full, names)
        keep_full = keep_from_names(tr_full, named_keep)
        small = shrink(full, tr_full, keep_full)
        fg = tr.output_group  # head groups are the first groups of the full trace, in the same order
        src = keep_full[fg].nonzero().flatten() if fg in keep_full else torch.arange(out_ch)
        tail = nn.Sequential(ChannelGather(src), *list(small)[split.index :]).eval()
    with torch.no_grad():
        feat = head_seq(torch.zeros(1, *input_shape))
    macs, params = device_cost(head, input_shape)
    return PrunedDevice(
        head=head,
        tail=tail,
        kept_channels=kept_channels.long().sort().values,
        feature_shape=tuple(int(d) for d in feat.shape[1:]),
        split=split,
        input_shape=input_shape,
        device_macs=macs,
        device_params=params,
        sparsity=sparsity,
        activation_sparsity=activation_sparsity,
        method=method,
        group_keep=dict(named_keep),
        model=model,
        history=history,
        whole_network=whole_network,
    )
