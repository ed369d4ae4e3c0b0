"""2-Step Pruning baseline (Shi et al. 2019, "Improving device-edge cooperative inference of deep learning via
2-step pruning"), adapted to residual networks.

Step 1 prunes the whole network iteratively: each round ranks every channel by the first-order Taylor criterion
of Molchanov et al. (2017), ``|sum a * dL/da|`` over a few mini-batches, L2-normalised within its group, removes the
``ceil(F0 / 16)`` globally lowest (``F0``: prunable channels at the start; a group always keeps one), and
fine-tunes briefly. It stops when the accuracy falls below 95 % of the starting accuracy (that round is undone)
or when 20 % of the channels are left.

Step 2 prunes only the layer before the split point: the split feature's live channels, Taylor-ranked, lose the
``activation_sparsity`` fraction, followed by a short fine-tune.

Budget (:attr:`TwoStepConfig.train`, as :func:`coinference.build.Builder` runs it): the rounds and step 2 together
run exactly ``train.total_steps`` optimizer steps — the budget ours gets for its whole pruning phase. Step 1 can take
at most ``R = ceil((F0 - floor) / ceil(F0 / 16))`` rounds (``floor``: the 20 % of channels left); each round
fine-tunes ``T // (R + 1)`` steps (none when that is 0) and step 2 gets the rest, so a stopping rule that ends step 1
early leaves the unused steps to step 2, and a round that is undone still counts the steps it ran. The loss is ours:
with ``distill = α > 0``, (1 − α)·cross-entropy + α·4·KL against the unpruned model's logits at temperature 2,
computed once on every training image when given (``teacher_logits``, unaugmented batches) or run on each batch.
Taylor scoring runs forward/backward passes over ``taylor_batches`` mini-batches per round without optimizer steps;
they are not counted.
Without ``train``, each round and step 2 run ``round_train`` (the original baseline's brief fine-tunes).

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
from coinference.train import (
    StepHooks,
    TrainConfig,
    fit,
    resolve_augment,
    teacher_targets,
    training_batches,
)
from coinference.zoo.base import SplitPoint, SplittableModel, split_model


@dataclass(frozen=True)
class TwoStepConfig:
    """Budget and stopping rule of the 2-step baseline."""

    activation_sparsity: float = 0.5
    """Step 2: fraction of the split feature's live channels removed, in [0, 1)."""
    round_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=20, batch_size=64, lr=0.01))
    """Short fine-tune after each step-1 round and after step 2 (when ``train`` is None)."""
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
    train: TrainConfig | None = None
    """The whole fine-tuning budget of step 1's rounds and step 2 together (its optimizer, learning rate, batch
    size, schedule per fine-tune), split as the module docstring says; None: ``round_train`` for each."""
    distill: float = 0.0
    """Weight of distillation from the unpruned model's logits in every fine-tune (1 - distill weighs the labels)."""

    def __post_init__(self) -> None:
        check_sparsity(self.activation_sparsity, "activation sparsity")
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"distill must be in [0, 1], got {self.distill}")
        if not 0 < self.accuracy_floor <= 1 or not 0 < self.min_remaining < 1 or self.divisor < 1:
            raise ConfigError(
                f"bad 2-step rule: accuracy_floor={self.accuracy_floor}, min_remaining={self.min_remaining}, "
                f"divisor={self.divisor}"
            )

    @property
    def fine_tune(self) -> TrainConfig:
        """The settings of every fine-tune (``train``'s, else ``round_train``'s)."""
        return self.train if self.train is not None else self.round_train

    def takes_teacher_logits(self, data: ImageData) -> bool:
        """Whether precomputed logits of the unpruned model can be the targets: distilled fine-tunes on
        unaugmented images (as :meth:`coinference.prune.PruneConfig.takes_teacher_logits`)."""
        return self.distill > 0 and resolve_augment(self.fine_tune.augment, data) == "none"

    def step_budget(self, f0: int, n_train: int) -> tuple[int, int, int | None]:
        """(most step-1 rounds, steps per round, total steps of rounds + step 2 or None without ``train``) for
        ``f0`` prunable channels on ``n_train`` training images."""
        per_round = math.ceil(f0 / self.divisor)
        rounds = max(0, min(self.max_rounds, math.ceil((f0 - math.ceil(self.min_remaining * f0)) / per_round)))
        if self.train is None:
            return self.max_rounds, self.round_train.total_steps(n_train), None
        total = self.train.total_steps(n_train)
        return rounds, total // (rounds + 1), total


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
    model: SplittableModel,
    split: str | int | SplitPoint,
    data: ImageData,
    cfg: TwoStepConfig,
    teacher_logits: torch.Tensor | None = None,
) -> PrunedDevice:
    """Run the 2-step baseline on a copy of ``model`` and cut it at ``split``.

    Args:
        teacher_logits: the unpruned model's logits on every training image, (len(data.train_x), classes): the
            distillation targets of unaugmented fine-tunes (``cfg.distill > 0``); None runs the unpruned model on
            each batch instead (when distilling).

    Returns:
        A :class:`PrunedDevice` whose head and tail are both shrunk (the server part was pruned too); its tail
        starts with a gather of the channels it kept from ``expand(head(x))``. Its ``history`` holds every
        fine-tune (step-1 rounds, the undone one included, then step 2) with its steps.
    """
    if teacher_logits is not None:
        if not cfg.takes_teacher_logits(data):
            raise ConfigError("teacher_logits are targets of unaugmented images: need distill > 0 and augment none")
        if len(teacher_logits) != len(data.train_x):
            raise ConfigError(f"teacher_logits has {len(teacher_logits)} rows for {len(data.train_x)} training images")
    live = cfg.distill > 0 and teacher_logits is None
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if live else None
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
    tune_cfg = cfg.fine_tune
    gen = torch.Generator().manual_seed(tune_cfg.seed)
    batches = training_batches(data, tune_cfg, gen)
    rank_batches = [next(batches) for _ in range(cfg.taylor_batches)]
    acc0 = accuracy(model, val)
    history: list[IterationLog] = []
    # with a total budget, at most the rounds it was split over (a round whose groups are down to one channel
    # removes fewer than ceil(F0 / 16) and would otherwise add a round)
    rounds, round_steps, total = cfg.step_budget(f0, len(data.train_x))
    spent = [0]

    def tune(i: int, steps: int, what: str, forward: nn.Module | None = None) -> tuple[int, float, float]:
        if steps <= 0:
            return 0, math.nan, 0.0
        train = replace(tune_cfg, steps=steps, seed=tune_cfg.seed + i)
        loss, source = teacher_targets(data, train, cfg.distill, teacher, teacher_logits)
        r = fit(
            model,
            data,
            train,
            forward=forward,
            loss_fn=loss,
            hooks=StepHooks(after_backward=masker.zero_grads),
            batches=source,
            progress=what,
        )
        spent[0] += r.steps
        return r.steps, r.final_loss, r.seconds

    for rnd in range(rounds):  # step 1: whole network
        alive = sum(int(k.sum()) for k in keep.values())
        k = min(per_round, alive - floor_alive)
        if k <= 0:
            break
        new = _drop_lowest(taylor_scores(model, tr, rank_batches), keep, k)
        snapshot = copy.deepcopy(model.state_dict())
        masker.apply(new)
        masker.make_permanent()
        steps, loss, secs = tune(rnd, round_steps, f"2-step round {rnd + 1}")
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
    last = round_steps if total is None else total - spent[0]  # step 2 gets what the rounds left of the budget
    steps, loss, secs = tune(cfg.max_rounds, last, "2-step step 2", forward=gate)  # step 2: the layer before the split
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
