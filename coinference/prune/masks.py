"""Channel masks on a traced network: which channels are masked, and what masking does to the weights.

Masking channel ``c`` of a group zeroes every parameter entry that belongs to it: the producing convs' filters
``W[c]`` (and biases), the BN scale and shift ``gamma[c]``, ``beta[c]``, and the consumers' input slices
``W[:, c]``; option-A shortcuts that carry data into the group get an output mask. The channel's output is then
exactly zero (BN yields ``0 * x + 0``), so the masked network computes what the physically shrunk one computes.

While a mask is applied, :meth:`ChannelMasker.zero_grads` (after ``backward``) zeroes the gradients of the masked
entries. With the entries themselves at zero, SGD's weight decay (``wd * 0``) and momentum (a buffer that starts at
zero in the iteration's fresh optimizer and only ever receives zero) and Adam's moments all leave them at exactly
zero. :meth:`ChannelMasker.restore` puts back the values (and BN running statistics) from when the mask was applied;
:meth:`ChannelMasker.make_permanent` keeps them at zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from coinference.prune.groups import ChannelGroup, Trace, filter_norms

Keep = dict[int, torch.Tensor]
"""Group id → bool tensor (channels,), True for the channels that stay."""


def n_pruned(channels: int, sparsity: float) -> int:
    """Channels to mask for ``sparsity`` of ``channels``: the nearest integer, keeping at least one."""
    return min(channels - 1, math.floor(sparsity * channels + 0.5))


def smallest_mask(scores: torch.Tensor, sparsity: float, alive: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask (bool, like ``scores``) that drops the ``sparsity`` fraction of lowest-scoring channels.

    Args:
        scores: importance per channel, shape (C,).
        sparsity: fraction to drop, of the ``alive`` channels.
        alive: channels still in play (bool (C,)); dead ones stay dropped. Default: all.
    """
    alive = torch.ones_like(scores, dtype=torch.bool) if alive is None else alive.clone()
    idx = alive.nonzero().flatten()
    k = n_pruned(len(idx), sparsity) if len(idx) else 0
    if k > 0:
        # stable sort: ties (e.g. zero filters) drop the lower index first, deterministically
        order = torch.sort(scores[idx].double(), stable=True).indices
        alive[idx[order[:k]]] = False
    return alive


def select_by_norm(trace: Trace, sparsity: float, residual: str = "joint") -> Keep:
    """Per group, keep all but the ``sparsity`` fraction of channels with the smallest filter L2 norm.

    Args:
        trace: the traced network.
        sparsity: fraction of each group's channels to mask, in [0, 1).
        residual: "joint" prunes residual groups as units; "keep" leaves them whole.
    """
    keep: Keep = {}
    for g in trace.groups:
        if g.residual and residual == "keep":
            keep[g.gid] = torch.ones(g.channels, dtype=torch.bool)
        else:
            keep[g.gid] = smallest_mask(filter_norms(g), sparsity)
    return keep


class ChannelMasker:
    """Applies, freezes, restores or makes permanent the channel masks of a traced network (in place).

    Args:
        trace: groups of the network whose modules are masked (the modules are shared, not copied).
    """

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self._masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(tensor) → (tensor, 0/1 mask)
        self._saved: dict[int, torch.Tensor] = {}
        self._hooks: list[RemovableHandle] = []
        self.keep: Keep = {}

    @property
    def active(self) -> bool:
        """True while a mask is applied."""
        return bool(self.keep)

    def _mark(self, t: torch.Tensor | None, dim: int, dropped: torch.Tensor) -> None:
        if t is None:
            return
        entry = self._masks.get(id(t))
        mask = entry[1] if entry else torch.ones_like(t)
        mask.index_fill_(dim, dropped, 0.0)
        self._masks[id(t)] = (t, mask)

    def _mark_group(self, g: ChannelGroup, dropped: torch.Tensor) -> None:
        for conv, bn in g.producers:
            self._mark(conv.weight, 0, dropped)
            self._mark(conv.bias, 0, dropped)
            if bn is not None:
                self._mark(bn.weight, 0, dropped)
                self._mark(bn.bias, 0, dropped)
                self._mark(bn.running_mean, 0, dropped)
                self._mark(bn.running_var, 0, dropped)
        for c in g.consumers:
            assert isinstance(c.weight, torch.Tensor)
            self._mark(c.weight, 1, dropped)
        if g.carriers:
            scale = torch.ones(g.channels)
            scale[dropped] = 0.0
            for sc in g.carriers:
                self._hooks.append(sc.register_forward_hook(_channel_scale_hook(scale)))

    @torch.no_grad()
    def apply(self, keep: Keep) -> None:
        """Mask the channels that ``keep`` drops: remember their values, then zero them (restores a previous mask
        first if one is active)."""
        if self.active:
            self.restore()
        self.keep = {g: k.clone() for g, k in keep.items()}
        for g in self.trace.groups:
            k = self.keep.get(g.gid)
            if k is not None and not bool(k.all()):
                self._mark_group(g, (~k).nonzero().flatten())
        for key, (t, m) in self._masks.items():
            self._saved[key] = t.detach().clone()
            t.mul_(m)

    @torch.no_grad()
    def zero_grads(self, _step: int = 0) -> None:
        """Zero the gradients of masked entries (a :class:`coinference.train.StepHooks` ``after_backward``)."""
        for t, m in self._masks.values():
            if isinstance(t, nn.Parameter) and t.grad is not None:
                t.grad.mul_(m)

    @torch.no_grad()
    def restore(self) -> None:
        """Remove the mask: masked entries get back the values they had when :meth:`apply` ran."""
        for key, (t, m) in self._masks.items():
            t.copy_(torch.where(m.bool(), t, self._saved[key]))
        self.release()

    @torch.no_grad()
    def make_permanent(self) -> Keep:
        """Make the applied mask permanent: the masked entries stay at zero for good (a later :meth:`restore` or
        :meth:`apply` no longer brings them back). The mask stays active (gradients still zeroed, carriers still
        masked) until :meth:`release`. Returns the keep-masks."""
        for key, (t, _) in self._masks.items():
            self._saved[key] = t.detach().clone()
        return self.keep

    def release(self) -> None:
        """Stop masking without touching any value: remove the carriers' output hooks and forget the mask."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._masks.clear()
        self._saved.clear()
        self.keep = {}


def _channel_scale_hook(scale: torch.Tensor) -> Callable[[nn.Module, object, torch.Tensor], torch.Tensor]:
    view = scale.view(1, -1, 1, 1)

    def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        return out * view.to(out.dtype)

    return hook
