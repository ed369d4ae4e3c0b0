"""2-Step Pruning baseline (Shi et al. 2019, "Improving device-edge cooperative inference of deep learning via
2-step pruning"), adapted to residual networks.

Step 1 prunes the whole network iteratively: each round ranks every channel by the first-order Taylor criterion
of Molchanov et al. (2017), ``|sum a * dL/da|`` over a few mini-batches, L2-normalised within its group, removes the
``ceil(F0 / 16)`` globally lowest (``F0``: prunable channels at the start; a group always keeps one), and
fine-tunes briefly. It stops when the accuracy falls below 95 % of the starting accuracy (that round is undone)
or when 20 % of the channels are left.

Step 2 prunes only the layer before the split point: the split feature's live channels, Taylor-ranked, lose the
``activation_sparsity`` fraction, followed by a short fine-tune.

Adaptation to residual nets: Taylor scores are taken on a multiplicative gate shared by every writer of a channel
group (BN outputs, option-A shortcuts), so a residual stream channel is scored — and removed — as one unit (the
rule of :mod:`coinference.prune.groups`). "The layer before the split" of a residual net is the block output after
the add, so step 2 prunes transmitted channels (as activation pruning does) rather than one conv's filters.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from coinference.data import ImageData
from coinference.errors import ConfigError
from coinference.evaluate import accuracy, eval_mode
from coinference.prune.activation import ActivationMask
from coinference.prune.device import IterationLog, PrunedDevice, assemble, keep_by_name
from coinference.prune.groups import Trace, trace
from coinference.prune.masks import ChannelMasker, Keep, smallest_mask
from coinference.prune.schedule import check_sparsity
from coinference.train import StepHooks, TrainConfig, fit, training_batches
from coinference.zoo.base import SplitPoint, SplittableModel, split_model


@dataclass(frozen=True)
class TwoStepConfig:
    """Budget and stopping rule of the 2-step baseline."""

    activation_sparsity: float = 0.5
    """Step 2: fraction of the split feature's live channels removed, in [0, 1)."""
    round_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=20, batch_size=64, lr=0.01))
    """Short fine-tune after each step-1 round and after step 2."""
    accuracy_floor: float = 0.95
    """Stop step 1 when accuracy < this × the starting accuracy."""
    min_remaining: float = 0.2
    """Stop step 1 when this fraction of the channels is left."""
    divisor: int = 16
    """Each round removes ``ceil(F0 / divisor)`` channels."""
    eval_images: int = 1000
    """Validation images for the stopping rule (the first N)."""
    taylor_batches: int = 4
    """Mini-batches the Taylor scores are averaged over."""
    max_rounds: int = 100
    """Safety cap on step-1 rounds."""

    def __post_init__(self) -> None:
        check_sparsity(self.activation_sparsity, "activation sparsity")
        if not 0 < self.accuracy_floor <= 1 or not 0 < self.min_remaining < 1 or self.divisor < 1:
            raise ConfigError(
                f"bad 2-step rule: accuracy_floor={self.accuracy_floor}, min_remaining={self.min_remaining}, "
                f"divisor={self.divisor}"
            )


def taylor_scores(
    model: nn.Module, tr: Trace, batches: list[tuple[torch.Tensor, torch.Tensor]], forward: nn.Module | None = None
) -> dict[int, torch.Tensor]:
    """Group id → first-order Taylor score per channel (float64 (C,)), L2-normalised within the group.

    A gate of ones multiplies every writer of a group (BN outputs, shortcut carriers); ``|dL/dgate|`` per batch,
    summed over batches, is ``|sum a * dL/da|`` of Molchanov et al.
    """
    gates = {g.gid: torch.ones(g.channels, requires_grad=True) for g in tr.groups}
    handles = []
    for g in tr.groups:
        writers = [bn for _, bn in g.producers if bn is not None] + list(g.carriers)
        for w in writers:
            handles.append(w.register_forward_hook(_gate_hook(gates[g.gid])))
    acc = {g.gid: torch.zeros(g.channels, dtype=torch.float64) for g in tr.groups}
    try:
        with eval_mode(model):
            for x, y in batches:
                for t in gates.values():
                    t.grad = None
                F.cross_entropy((forward or model)(x), y).backward()
                for gid, t in gates.items():
                    if t.grad is not None:
                        acc[gid] += t.grad.double().abs()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return {gid: s / s.norm().clamp_min(1e-30) for gid, s in acc.items()}


def _gate_hook(gate: torch.Tensor) -> Callable[[nn.Module, object, torch.Tensor], torch.Tensor]:
    def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
        return out * gate.view((1, -1) + (1,) * (out.dim() - 2))

    return hook


def _drop_lowest(scores: dict[int, torch.Tensor], keep: Keep, k: int) -> Keep:
    cand = [(float(s[c]), gid, c) for gid, s in scores.items() for c in keep[gid].nonzero().flatten().tolist()]
    cand.sort()
    new = {g: m.clone() for g, m in keep.items()}
    for _, gid, c in cand:
        if k == 0:
            break
        if int(new[gid].sum()) > 1:
            new[gid][c] = False
            k -= 1
    return new


def two_step_prune(
    model: SplittableModel, split: str | int | SplitPoint, data: ImageData, cfg: TwoStepConfig
) -> PrunedDevice:
    """Run the 2-step baseline on a copy of ``model`` and cut it at ``split``.

    Returns:
        A :class:`PrunedDevice` whose head and tail are both shrunk (the server part was pruned too); its tail
        starts with a gather of the channels it kept from ``expand(head(x))``.
    """
    model = copy.deepcopy(model)
    point = model.split_point(split)
    names = [n for n, _ in model.units()]
    full = nn.Sequential(*[m for _, m in model.units()])
    tr = trace(full, names)
    masker = ChannelMasker(tr)
    keep: Keep = {g.gid: torch.ones(g.channels, dtype=torch.bool) for g in tr.groups}
    f0 = sum(g.channels for g in tr.groups)
    per_round = math.ceil(f0 / cfg.divisor)
    floor_alive = math.ceil(cfg.min_remaining * f0)
    val = data.evaluated_on("val").first_test(cfg.eval_images)  # the stopping rule selects: validation images
    gen = torch.Generator().manual_seed(cfg.round_train.seed)
    batches = training_batches(data, cfg.round_train, gen)
    rank_batches = [next(batches) for _ in range(cfg.taylor_batches)]
    acc0 = accuracy(model, val)
    history: list[IterationLog] = []

    def tune(i: int, forward: nn.Module | None = None) -> tuple[int, float, float]:
        r = fit(
            model,
            data,
            replace(cfg.round_train, seed=cfg.round_train.seed + i),
            forward=forward,
            hooks=StepHooks(after_backward=masker.zero_grads),
        )
        return r.steps, r.final_loss, r.seconds

    for rnd in range(cfg.max_rounds):  # step 1: whole network
        alive = sum(int(k.sum()) for k in keep.values())
        k = min(per_round, alive - floor_alive)
        if k <= 0:
            break
        new = _drop_lowest(taylor_scores(model, tr, rank_batches), keep, k)
        snapshot = copy.deepcopy(model.state_dict())
        masker.apply(new)
        masker.make_permanent()
        steps, loss, secs = tune(rnd)
        acc = accuracy(model, val)
        sparsity = 1 - sum(int(m.sum()) for m in new.values()) / f0
        history.append(IterationLog(sparsity, 0.0, steps, loss, secs, acc))
        if acc < cfg.accuracy_floor * acc0:  # undo the round that broke the floor
            model.load_state_dict(snapshot)
            masker.release()
            masker.apply(keep)
            masker.make_permanent()
            break
        keep = new

    head, tail = split_model(model, point)
    fg = trace(head, names[: point.index]).output_group
    assert fg is not None
    amask = ActivationMask(keep[fg])
    gate = nn.Sequential(head, amask, tail)
    scores = taylor_scores(gate, _feature_trace(amask, keep[fg]), rank_batches)[0]
    transmitted = smallest_mask(scores, cfg.activation_sparsity, keep[fg])
    amask.scale.copy_(transmitted.float())
    steps, loss, secs = tune(cfg.max_rounds, forward=gate)  # step 2: the layer before the split
    history.append(
        IterationLog(
            1 - sum(int(m.sum()) for m in keep.values()) / f0,
            cfg.activation_sparsity,
            steps,
            loss,
            secs,
            accuracy(gate, val),
        )
    )
    masker.release()
    return assemble(
        model,
        point,
        keep_by_name(tr, keep),
        transmitted.nonzero().flatten(),
        data.input_shape,
        sparsity=history[-1].sparsity,
        activation_sparsity=cfg.activation_sparsity,
        method="two-step",
        whole_network=True,
        history=tuple(history),
    )


def _feature_trace(amask: ActivationMask, alive: torch.Tensor) -> Trace:
    """A one-group trace whose only "writer" is the activation mask (Taylor gate on the split feature)."""
    from coinference.prune.groups import ChannelGroup

    g = ChannelGroup(0, "feature", len(alive), residual=False)
    g.carriers.append(amask)  # type: ignore[arg-type]
    return Trace([g], [], 0, 0)
