"""Incremental, communication-aware pruning of the device part (step 2 of Shao & Zhang 2020).

Each pruning iteration ``i``:

1. ranks every channel group of the device part by the L2 norm of its filters and masks the smallest ``S_i``
   fraction (:mod:`coinference.prune.masks`), and ranks the live channels of the split feature by activation
   energy and masks the smallest ``A_i`` fraction of them (activation pruning);
2. fine-tunes the whole network through the masked forward with :func:`coinference.train.fit` (a fresh optimizer
   per iteration; masked entries stay exactly zero, see :class:`ChannelMasker`), on the labels or, with
   ``distill > 0``, also on the logits of the unpruned model (knowledge distillation, temperature 2: the soft
   targets recover a pruned network in far fewer steps than labels alone; without augmentation they can be
   precomputed once per base model);
3. removes the mask and restores the masked weights to their values from step 1 (they may come back next time).

At the last iteration ``S_n`` is the target and the mask is made permanent instead; the masked network is then
shrunk to a physically smaller head (:mod:`coinference.prune.shrink`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import torch

from coinference.data import ImageData
from coinference.errors import ConfigError
from coinference.prune.activation import ActivationMask, channel_energy, select_transmitted
from coinference.prune.device import IterationLog, PrunedDevice, assemble, keep_by_name
from coinference.prune.groups import trace_split
from coinference.prune.masks import ChannelMasker, select_by_norm
from coinference.prune.schedule import Schedule, as_schedule, check_sparsity
from coinference.train import (
    StepHooks,
    TrainConfig,
    fit,
    resolve_augment,
    teacher_targets,
)
from coinference.zoo.base import SplitPoint, SplittableModel

RESIDUAL_RULES = ("joint", "keep")


@dataclass(frozen=True)
class PruneConfig:
    """How to prune the device part of one variant."""

    sparsity: float = 0.5
    """Target fraction of each device channel group's channels removed, in [0, 1)."""
    activation_sparsity: float = 0.0
    """Fraction of the split feature's live channels not transmitted, in [0, 1)."""
    schedule: Schedule | str = field(default_factory=Schedule)
    """How the sparsity rises over the iterations (a :class:`Schedule` or its kind, "cubic" or "step")."""
    train: TrainConfig | None = field(default_factory=lambda: TrainConfig(epochs=1.0, subset=6000, lr=0.01))
    """Total fine-tuning budget, split evenly over the iterations (seed ``+ i`` per iteration); None prunes in one
    shot at the target without training."""
    residual: str = "joint"
    """Residual groups: "joint" (pruned as units) or "keep" (left whole)."""
    calibration: int = 256
    """Training images used to rank the feature channels by activation energy."""
    distill: float = 0.0
    """Weight of distillation from the unpruned model's logits in the fine-tuning loss (1 - distill weighs the
    labels); 0 trains on the labels alone, as the paper does. Each step then runs the unpruned model forward too."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        object.__setattr__(self, "activation_sparsity", check_sparsity(self.activation_sparsity, "activation sparsity"))
        object.__setattr__(self, "schedule", as_schedule(self.schedule))
        if self.residual not in RESIDUAL_RULES:
            raise ConfigError(f"residual rule {self.residual!r} unknown; valid: {', '.join(RESIDUAL_RULES)}")
        if self.calibration < 1:
            raise ConfigError(f"calibration needs at least 1 image, got {self.calibration}")
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"distill must be in [0, 1], got {self.distill}")
        self.plan_schedule.sparsities(self.sparsity)  # a schedule that never reaches the target fails here

    def takes_teacher_logits(self, data: ImageData) -> bool:
        """Whether precomputed logits of the unpruned model can be this phase's targets: a distilled fine-tune on
        unaugmented images (an augmented batch is a new image, whose logits only a live teacher gives)."""
        return self.train is not None and self.distill > 0 and resolve_augment(self.train.augment, data) == "none"

    @property
    def plan_schedule(self) -> Schedule:
        """The schedule as a :class:`Schedule` (a kind given by name gets its default settings)."""
        return as_schedule(self.schedule)


def calibration_batch(data: ImageData, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` normalised training images (a fixed random subset), float32 (n, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.train_x), generator=g)[: min(n, len(data.train_x))]
    return data.normalize(data.train_x[idx])


def prune_device(
    model: SplittableModel,
    split: str | int | SplitPoint,
    data: ImageData,
    cfg: PruneConfig,
    teacher_logits: torch.Tensor | None = None,
) -> PrunedDevice:
    """Prune the device part of ``model`` (a copy; ``model`` is not changed) for a cut at ``split``.

    Args:
        model: a zoo model with trained weights.
        split: split point (name, index or :class:`SplitPoint`).
        data: training data for fine-tuning and calibration (normalised as the weights expect).
        cfg: sparsities, schedule and budget.
        teacher_logits: the unpruned model's logits on every training image, (len(data.train_x), classes),
            precomputed (e.g. :meth:`coinference.build.Builder.teacher_logits`): with ``distill > 0`` and no
            augmentation they are the distillation targets, so the unpruned model is not run at every step.

    Returns:
        The shrunk head, the server tail and the transmitted channels; the tail is the model's own server part
        (fine-tuned along, unchanged in shape), fed ``expand(head(x))``.

    Raises:
        ConfigError: no such split point, or sparsities/schedule out of range.
        TrainingError: the loss diverged.
    """
    if teacher_logits is not None:
        if not cfg.takes_teacher_logits(data):
            raise ConfigError("teacher_logits are targets of unaugmented images: need distill > 0 and augment none")
        if len(teacher_logits) != len(data.train_x):
            raise ConfigError(f"teacher_logits has {len(teacher_logits)} rows for {len(data.train_x)} training images")
    live = cfg.distill > 0 and cfg.train is not None and teacher_logits is None
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if live else None
    model = copy.deepcopy(model)
    point = model.split_point(split)
    head, tail, tr = trace_split(model, point)
    assert tr.output_group is not None
    fg = tr.groups[tr.output_group]
    masker = ChannelMasker(tr)
    amask = ActivationMask(torch.ones(fg.channels, dtype=torch.bool))
    calib = calibration_batch(data, cfg.calibration, cfg.train.seed if cfg.train else 0)

    if cfg.train is None:
        plan = [(cfg.sparsity, cfg.activation_sparsity)]
        per_iter = 0
    else:
        s = cfg.plan_schedule.sparsities(cfg.sparsity)
        prog = cfg.plan_schedule.progress(cfg.sparsity)
        plan = [(si, cfg.activation_sparsity * pi) for si, pi in zip(s, prog, strict=True)]
        per_iter = max(1, cfg.train.total_steps(len(data.train_x)) // len(plan))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return tail(amask(head(x)))

    history: list[IterationLog] = []
    transmitted = torch.ones(fg.channels, dtype=torch.bool)
    for i, (s_i, a_i) in enumerate(plan):
        keep = select_by_norm(tr, s_i, cfg.residual)
        masker.apply(keep)
        transmitted = select_transmitted(channel_energy(head, calib), keep[fg.gid], a_i)
        amask.scale.copy_(transmitted.float())
        if cfg.train is not None:
            train = replace(cfg.train, steps=per_iter, seed=cfg.train.seed + i)
            loss, batches = teacher_targets(data, train, cfg.distill, teacher, teacher_logits)
            res = fit(
                model,
                data,
                train,
                forward=forward,
                loss_fn=loss,
                hooks=StepHooks(after_backward=masker.zero_grads),
                batches=batches,
                progress=f"prune iteration {i + 1}/{len(plan)} (sparsity {s_i:.2f})",
            )
            history.append(IterationLog(s_i, a_i, res.steps, res.final_loss, res.seconds))
        else:
            history.append(IterationLog(s_i, a_i, 0, math.nan, 0.0))
        if i < len(plan) - 1:
            masker.restore()
    keep = masker.make_permanent()
    masker.release()
    return assemble(
        model,
        point,
        keep_by_name(tr, keep),
        transmitted.nonzero().flatten(),
        data.input_shape,
        sparsity=cfg.sparsity,
        activation_sparsity=cfg.activation_sparsity,
        method="incremental",
        history=tuple(history),
    )
