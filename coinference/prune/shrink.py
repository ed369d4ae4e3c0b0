"""Physical shrinking: turn permanent channel masks into a smaller network with fewer channels.

Every conv keeps the input channels its source group kept and the output channels its group kept; BN layers are
sliced alike; shortcuts become :class:`ChannelGather` (or stay identities when nothing moves). The writers of the
last unit produce only the *transmitted* feature channels, so the shrunk head's output is the feature after
activation pruning. The result computes exactly (up to float rounding) what the masked network computes on the
channels it keeps.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from coinference.errors import ConfigError
from coinference.prune.groups import Site, Trace
from coinference.prune.masks import Keep


class ChannelGather(nn.Module):
    """A shortcut over kept channels: subsample by ``stride``, then output channel ``i`` = input channel ``src[i]``
    (zeros where ``src[i] == -1``, e.g. the zero padding of an option-A shortcut).

    Args:
        src: int64 (C_out,), input position per output channel or -1.
        stride: spatial subsampling (2 for a stage's first block).
    """

    dst_index: torch.Tensor
    src_index: torch.Tensor
    gather_index: torch.Tensor

    def __init__(self, src: torch.Tensor, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        valid = src >= 0
        self.out_channels = len(src)
        self.register_buffer("dst_index", valid.nonzero().flatten())
        self.register_buffer("src_index", src[valid].long())
        # input position + 1 per output channel, 0 for a zero channel put in front; derived, so not saved
        self.register_buffer("gather_index", src.long().clamp_min(-1) + 1, persistent=False)
        self.dense = bool(valid.all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.dense:
            return x.index_select(1, self.src_index)
        # a gather from the input with one zero channel in front, not a scatter into zeros: the same values, and an
        # exported graph has no zero-sized tensor when no channel is carried (all padding) and a dynamic batch axis
        return F.pad(x, (0, 0, 0, 0, 1, 0)).index_select(1, self.gather_index)


def _conv(c: nn.Conv2d, inp: torch.Tensor, out: torch.Tensor) -> nn.Conv2d:
    new = nn.Conv2d(
        len(inp),
        len(out),
        c.kernel_size,  # type: ignore[arg-type]
        c.stride,  # type: ignore[arg-type]
        c.padding,  # type: ignore[arg-type]
        c.dilation,  # type: ignore[arg-type]
        bias=c.bias is not None,
        padding_mode=c.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(c.weight[out][:, inp])
        if c.bias is not None and new.bias is not None:
            new.bias.copy_(c.bias[out])
    return new


def _bn(b: nn.BatchNorm2d, out: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(out), b.eps, b.momentum, b.affine, b.track_running_stats)
    with torch.no_grad():
        if b.affine:
            new.weight.copy_(b.weight[out])
            new.bias.copy_(b.bias[out])
        if b.running_mean is not None and new.running_mean is not None:
            new.running_mean.copy_(b.running_mean[out])
        if b.running_var is not None and new.running_var is not None:
            new.running_var.copy_(b.running_var[out])
        if b.num_batches_tracked is not None and new.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(b.num_batches_tracked)
    return new


def _gather(site: Site, inp: torch.Tensor, out: torch.Tensor) -> nn.Module | None:
    offset = int(getattr(site.module, "pad", 0)) if site.kind == "pad" else 0
    pos = {int(c): i for i, c in enumerate(inp.tolist())}
    src = torch.tensor([pos.get(int(o) - offset, -1) for o in out.tolist()], dtype=torch.long)
    if site.kind == "identity" and len(inp) == len(out) and torch.equal(src, torch.arange(len(inp))):
        return None  # nothing moves: keep the identity
    return ChannelGather(src, 2 if site.kind == "pad" else 1)


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def shrink(head: nn.Sequential, tr: Trace, keep: Keep, transmitted: torch.Tensor | None = None) -> nn.Sequential:
    """A physically smaller copy of ``head`` (``head`` itself is not changed); returned in eval mode.

    Args:
        head: the masked network, traced as ``tr``.
        tr: its trace.
        keep: group id → bool (channels,) of kept channels (missing groups keep everything).
        transmitted: bool (C,) over the output group: the channels the last unit produces (default: all it kept).

    Returns:
        The shrunk network; its output has ``transmitted.sum()`` channels, in increasing original order.
    """
    new = copy.deepcopy(head)
    last = tr.n_units - 1

    def idx(gid: int | None, n: int) -> torch.Tensor:
        if gid is None or gid not in keep:
            return torch.arange(n)
        return keep[gid].nonzero().flatten()

    for s in tr.sites:
        n_in = tr.groups[s.src].channels if s.src is not None else int(getattr(s.module, "in_channels", 0))
        inp = idx(s.src, n_in)
        if s.dst is None:
            out = torch.arange(0)
        elif transmitted is not None and s.unit == last and s.dst == tr.output_group:
            out = transmitted.nonzero().flatten()
        else:
            out = idx(s.dst, tr.groups[s.dst].channels)
        if len(out) == 0 and s.dst is not None:
            raise ConfigError(f"pruning left no channel in {s.name}")
        if s.kind == "conv":
            assert isinstance(s.module, nn.Conv2d)
            _set(new, s.name, _conv(s.module, inp, out))
        elif s.kind == "bn":
            assert isinstance(s.module, nn.BatchNorm2d)
            _set(new, s.name, _bn(s.module, out))
        elif s.kind in ("pad", "identity") and (g := _gather(s, inp, out)) is not None:
            _set(new, s.name, g)
        elif s.kind == "linear":
            assert isinstance(s.module, nn.Linear)
            lin = nn.Linear(len(inp), s.module.out_features, bias=s.module.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(s.module.weight[:, inp])
                if s.module.bias is not None and lin.bias is not None:
                    lin.bias.copy_(s.module.bias)
            _set(new, s.name, lin)
    return new.eval()
