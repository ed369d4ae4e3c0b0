"""Channel groups of a network: which output channels must be pruned together, and who reads them.

Rule for residual coupling (docs/ARCHITECTURE.md, "Pruning"): channels joined by a residual add form one
*residual group*: the stem (or a stage's first block) and the second conv of every block of a stage write the same
stream through identity shortcuts, so channel ``c`` of all of them is pruned together or not at all. A projection
shortcut (option B) writes the stream too and joins the group. A parameter-free option-A shortcut (subsample +
zero-pad) only *carries* the previous stage's channels into the new stream; it does not tie the two stages: a
pruned channel of the old stage arrives as zeros, and a pruned channel of the new stage is masked on the shortcut
too (and never computed once shrunk). The inner channels of a block (``conv1`` → ``conv2``) and the output of a plain
conv block are groups of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from coinference.errors import ConfigError
from coinference.zoo.base import GlobalPool, SplitPoint, SplittableModel, split_model
from coinference.zoo.resnet import BasicBlock, ShortcutA


@dataclass(eq=False)
class ChannelGroup:
    """Output channels that are pruned as one.

    Attributes:
        gid: index in :attr:`Trace.groups`.
        name: readable name, e.g. ``"layer1 stream"`` or ``"layer1.0.conv1"``.
        channels: number of channels.
        residual: True for a residual stream (channels tied by residual adds).
        producers: (conv, BN) pairs writing the channels (conv output dim 0).
        consumers: convs or linears reading them (weight dim 1).
        carriers: parameter-free modules (option-A shortcuts) writing into the channels.
    """

    gid: int
    name: str
    channels: int
    residual: bool
    producers: list[tuple[nn.Conv2d, nn.BatchNorm2d | None]] = field(default_factory=list)
    consumers: list[nn.Module] = field(default_factory=list)
    carriers: list[ShortcutA] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class Site:
    """A module that the shrinking step rewrites: it reads group ``src`` (None: the image) and writes ``dst``.

    ``kind`` is "conv", "bn", "pad" (option-A shortcut), "identity" (identity shortcut) or "linear".
    """

    name: str
    kind: str
    module: nn.Module
    src: int | None
    dst: int | None
    unit: int


@dataclass(eq=False)
class Trace:
    """Groups and rewrite sites of an ``nn.Sequential`` of zoo units.

    Attributes:
        groups: the channel groups.
        sites: every conv, BN and shortcut, in forward order, with the groups they read and write.
        output_group: group of the last unit's output (the split feature for a device head), None after a linear.
        n_units: number of units traced.
    """

    groups: list[ChannelGroup]
    sites: list[Site]
    output_group: int | None
    n_units: int

    def group_by_name(self, name: str) -> ChannelGroup:
        """The group called ``name`` (a :class:`ConfigError` listing the names otherwise)."""
        for g in self.groups:
            if g.name == name:
                return g
        raise ConfigError(f"no channel group {name!r}; valid: {', '.join(g.name for g in self.groups)}")


def _conv_bn(module: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d] | None:
    conv, bn = getattr(module, "conv", None), getattr(module, "bn", None)
    if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
        return conv, bn
    return None


def trace(units: nn.Sequential, names: list[str] | None = None) -> Trace:
    """Find the channel groups of ``units`` (e.g. the device head from :func:`coinference.zoo.split_model`).

    Args:
        units: the units, in forward order (sites are named by their path in it, e.g. ``"3.conv1"``).
        names: readable unit names for the groups (e.g. ``SplittableModel.units()`` names); default: the paths.

    Understands the zoo's building blocks: conv-BN-ReLU units (ResNet stem, tiny-cnn blocks), residual
    :class:`BasicBlock` with identity, option-A or option-B shortcuts, global pooling and a final linear.

    Raises:
        ConfigError: a unit of a type it does not know (pruning it would be guesswork).
    """
    groups: list[ChannelGroup] = []
    sites: list[Site] = []
    cur: int | None = None  # group of the current activation; None while it is the input image

    def new(name: str, channels: int, residual: bool) -> int:
        groups.append(ChannelGroup(len(groups), name, channels, residual))
        return len(groups) - 1

    def conv(prefix: str, c: nn.Conv2d, bn: nn.BatchNorm2d | None, src: int | None, dst: int, u: int) -> None:
        if c.groups != 1:
            raise ConfigError(f"cannot prune grouped conv {prefix} (groups={c.groups})")
        sites.append(Site(prefix, "conv", c, src, dst, u))
        groups[dst].producers.append((c, bn))
        if src is not None:
            groups[src].consumers.append(c)

    def bn_site(prefix: str, bn: nn.BatchNorm2d, dst: int, u: int) -> None:
        sites.append(Site(prefix, "bn", bn, dst, dst, u))

    for u, (uname, unit) in enumerate(units.named_children()):
        parts = list(unit.named_children()) if isinstance(unit, nn.Sequential) else [("", unit)]
        label = names[u] if names is not None else uname
        for sub, m in parts:
            path = f"{uname}.{sub}" if sub else uname
            p = label  # readable prefix of group names; site names use `path`
            if isinstance(m, GlobalPool):
                continue
            if isinstance(m, BasicBlock):
                inner = new(f"{p}.conv1", m.conv1.out_channels, residual=False)
                conv(f"{path}.conv1", m.conv1, m.bn1, cur, inner, u)
                bn_site(f"{path}.bn1", m.bn1, inner, u)
                sc = m.shortcut
                if isinstance(sc, ShortcutA):
                    out = new(f"{p} stream", m.conv2.out_channels, residual=True)
                    sites.append(Site(f"{path}.shortcut", "pad", sc, cur, out, u))
                    groups[out].carriers.append(sc)
                elif isinstance(sc, nn.Sequential) and len(sc) == 0:
                    if cur is None:
                        raise ConfigError(f"block {p} adds the input image to its output; cannot prune it")
                    out = cur
                    sites.append(Site(f"{path}.shortcut", "identity", sc, cur, out, u))
                elif (
                    isinstance(sc, nn.Sequential)
                    and len(sc) == 2
                    and isinstance(proj := sc[0], nn.Conv2d)
                    and isinstance(pbn := sc[1], nn.BatchNorm2d)
                ):
                    out = new(f"{p} stream", m.conv2.out_channels, residual=True)
                    conv(f"{path}.shortcut.0", proj, pbn, cur, out, u)
                    bn_site(f"{path}.shortcut.1", pbn, out, u)
                else:
                    raise ConfigError(f"unknown shortcut in {p}: {type(sc).__name__}")
                conv(f"{path}.conv2", m.conv2, m.bn2, inner, out, u)
                bn_site(f"{path}.bn2", m.bn2, out, u)
                cur = out
            elif (cb := _conv_bn(m)) is not None:
                # a stem opens the first residual stream; its blocks (if any) join it through identity shortcuts
                out = new(f"{p} out", cb[0].out_channels, residual=False)
                conv(f"{path}.conv", cb[0], cb[1], cur, out, u)
                bn_site(f"{path}.bn", cb[1], out, u)
                cur = out
            elif isinstance(m, nn.Linear):
                if cur is not None:
                    groups[cur].consumers.append(m)
                sites.append(Site(path, "linear", m, cur, None, u))
                cur = None
            else:
                raise ConfigError(f"cannot prune unit {p} of type {type(m).__name__}")
    for g in groups:  # a stem's output read by identity shortcuts is a residual stream too
        if any(s.kind == "identity" and s.src == g.gid for s in sites):
            g.residual = True
            g.name = g.name.replace(" out", " stream")
    return Trace(groups, sites, cur, len(units))


def trace_split(model: SplittableModel, split: str | int | SplitPoint) -> tuple[nn.Sequential, nn.Sequential, Trace]:
    """(device head, server tail, trace of the head) of ``model`` cut at ``split``; groups carry unit names.

    Raises:
        ConfigError: no such split point.
    """
    point = model.split_point(split)
    head, tail = split_model(model, point)
    return head, tail, trace(head, [n for n, _ in model.units()][: point.index])


def filter_norms(group: ChannelGroup) -> torch.Tensor:
    """L2 norm of each channel's filters (float32, shape (channels,)), over every producing conv of the group.

    For a residual group the norm of channel ``c`` is ``sqrt(sum_k ||W_k[c]||^2)`` over its producers ``k``.
    """
    sq = torch.zeros(group.channels)
    for c, _ in group.producers:
        sq += c.weight.detach().float().flatten(1).pow(2).sum(1)
    return sq.sqrt()
