"""A small, reusable supervised training loop (used by base-model preparation, pruning and codec phases).

Phases customise it through ``loss_fn`` (e.g. distillation) and :class:`StepHooks` (e.g. pruning masks),
not by copying it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coinference.data import ImageData
from coinference.errors import ConfigError, TrainingError
from coinference.progress import phase


@dataclass(frozen=True)
class TrainConfig:
    """How to train one phase."""

    optimizer: str = "sgd"
    """"sgd" (with momentum, Nesterov off) or "adam"."""
    lr: float = 0.01
    """Peak learning rate."""
    momentum: float = 0.9
    """SGD momentum (ignored by Adam)."""
    weight_decay: float = 5e-4
    """L2 weight decay."""
    epochs: float = 1.0
    """Passes over the (subset of the) training set; fractional values allowed. Ignored when ``steps`` is set."""
    steps: int | None = None
    """Exact number of optimizer steps (overrides ``epochs``)."""
    batch_size: int = 128
    """Images per step."""
    subset: int | None = None
    """Use only this many training images (a fixed random subset); None uses all."""
    schedule: str = "cosine"
    """Learning-rate schedule: "cosine" (to 0), "onecycle" or "constant"."""
    augment: str = "auto"
    """"none", "crop", "crop-flip", or "auto" (crop-flip for cifar10, crop otherwise)."""
    seed: int = 0
    """Seed of the subset, shuffling, augmentation and dropout."""
    channels_last: bool = True
    """Train on channels-last (NHWC) conv weights and image/feature batches: oneDNN trains ResNet-20's
    convolutions 1.05–1.14× faster that way on a 2-core AVX2 CPU (``bench/bench_variants.py --parts layout``). The
    trained weights are handed back in the default layout."""

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer {self.optimizer!r} unknown; valid: adam, sgd")
        if self.schedule not in ("cosine", "onecycle", "constant"):
            raise ConfigError(f"schedule {self.schedule!r} unknown; valid: constant, cosine, onecycle")
        if self.augment not in ("auto", "none", "crop", "crop-flip"):
            raise ConfigError(f"augment {self.augment!r} unknown; valid: auto, crop, crop-flip, none")
        if not self.lr > 0 or self.batch_size < 1 or (self.steps is not None and self.steps < 1):
            raise ConfigError(f"bad training budget: lr={self.lr}, batch_size={self.batch_size}, steps={self.steps}")
        if self.steps is None and not self.epochs > 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps this config runs on a training set of ``n_train`` images."""
        if self.steps is not None:
            return self.steps
        n = min(n_train, self.subset) if self.subset else n_train
        return max(1, math.ceil(self.epochs * n / self.batch_size))


@dataclass
class StepHooks:
    """Callbacks around each optimizer step (``step`` counts from 0)."""

    before_step: Callable[[int], None] | None = None
    """Called before the forward pass of a step."""
    after_backward: Callable[[int], None] | None = None
    """Called after ``loss.backward()``, before ``optimizer.step()`` (e.g. to zero masked gradients)."""
    after_step: Callable[[int], None] | None = None
    """Called after ``optimizer.step()``."""


@dataclass(frozen=True)
class TrainResult:
    """What a phase did: steps run, mean loss of the last 10% of steps, wall-clock seconds."""

    steps: int
    final_loss: float
    seconds: float
    losses: tuple[float, ...] = field(repr=False, default=())


def augment_batch(x: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding H//8, at least 1) and optional horizontal flip of an NCHW batch."""
    if mode == "none":
        return x
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    out = torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(zip(dy, dx, strict=True))])
    if mode == "crop-flip":
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(3)
    return out


def resolve_augment(mode: str, data: ImageData) -> str:
    """The concrete augmentation for ``data``: "auto" flips only natural images, and leaves the synthetic
    set (fixed pixel patterns, which crops would destroy) alone."""
    if mode != "auto":
        return mode
    return {"cifar10": "crop-flip", "synthetic": "none"}.get(data.name, "crop")


def training_indices(data: ImageData, cfg: TrainConfig, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled epochs of batches of training-image indices (``cfg``'s subset and batch size)."""
    n = len(data.train_x)
    pool = torch.randperm(n, generator=gen)[: cfg.subset] if cfg.subset and cfg.subset < n else torch.arange(n)
    bs = min(cfg.batch_size, len(pool))
    while True:
        order = pool[torch.randperm(len(pool), generator=gen)]
        for i in range(0, len(order) - bs + 1, bs):
            yield order[i : i + bs]


def training_batches(
    data: ImageData, cfg: TrainConfig, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled epochs of (normalised float images, labels) from the training split."""
    mode = resolve_augment(cfg.augment, data)
    for idx in training_indices(data, cfg, gen):
        yield data.normalize(augment_batch(data.train_x[idx], mode, gen)), data.train_y[idx]


def make_optimizer(
    params: Iterable[nn.Parameter | dict[str, Any]], cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """(optimizer, lr scheduler) for ``cfg`` over ``total_steps`` steps.

    ``params`` are parameters, or parameter groups (dicts with ``params`` and an optional ``lr_scale``, the group's
    learning rate as a multiple of ``cfg.lr``)."""
    groups: list[dict[str, Any]] = []
    for item in params:
        g: dict[str, Any] = dict(item) if isinstance(item, dict) else {"params": [item]}
        g["params"] = [p for p in g["params"] if p.requires_grad]
        g["lr"] = cfg.lr * float(g.pop("lr_scale", 1.0))
        if g["params"]:
            groups.append(g)
    if not groups:
        raise ConfigError("nothing to train: no parameter requires grad")
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
    elif cfg.schedule == "onecycle":
        max_lr = [g["lr"] for g in opt.param_groups]
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr, total_steps=total_steps, pct_start=0.15)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """PyTorch's deterministic implementations for the block (``torch.use_deterministic_algorithms``); the
    caller's setting comes back afterwards.

    Without it, the gradient of indexing a tensor with a tensor (``codebook[symbols]``: ``index_put_`` with
    ``accumulate=True``) is summed on the CPU by atomic adds from every thread, in whatever order the threads
    happen to run: 1,047 distinct results in 2,000 calls on the same inputs with two threads, which made two builds
    of one spec differ from the first quantized step on. The deterministic implementation sorts the indices
    first, and was 19x faster there (0.33 against 6.3 ms for 128 × 4 × 8 × 8 latent values on 4 levels).

    It sets the flags the kernels read (``torch._C``) rather than calling ``torch.use_deterministic_algorithms``,
    which also sets the flag of torch.compile's inductor and so imports ``torch._inductor`` and ``torch._dynamo``
    (2 s the first time in a process; nothing here is compiled). It leaves new tensors' memory unfilled
    (``torch.utils.deterministic.fill_uninitialized_memory``, which the mode turns on to catch reads of
    uninitialized memory): filling every allocation with NaN made ResNet-20 training steps 6 % slower."""
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    fill = torch._C._get_deterministic_fill_uninitialized_memory()
    torch._C._set_deterministic_algorithms(True)
    torch._C._set_deterministic_fill_uninitialized_memory(False)
    try:
        yield
    finally:
        torch._C._set_deterministic_algorithms(enabled, warn_only=warn_only)
        torch._C._set_deterministic_fill_uninitialized_memory(fill)


KD_TEMPERATURE = 2.0
"""Temperature of logit distillation (Hinton et al. 2015), in both the pruning and the codec phase."""


def distillation_loss(
    logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, alpha: float, t: float = KD_TEMPERATURE
) -> torch.Tensor:
    """``(1 - alpha)·CE(logits, labels) + alpha·t²·KL(softmax(teacher/t) ‖ softmax(logits/t))``."""
    loss = (1 - alpha) * F.cross_entropy(logits, labels) if alpha < 1 else logits.new_zeros(())
    if alpha > 0:
        student, target = F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1)
        loss = loss + alpha * t * t * F.kl_div(student, target, log_target=True, reduction="batchmean")
    return loss


def pack_targets(labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """One target tensor for :func:`fit`'s ``batches``: column 0 the label, the rest the teacher's logits."""
    return torch.cat([labels.to(torch.float32)[:, None], teacher_logits], 1)


def packed_distillation(
    alpha: float, t: float = KD_TEMPERATURE
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``loss_fn`` for :func:`fit` on :func:`pack_targets` targets: :func:`distillation_loss` of weight ``alpha``
    at temperature ``t``."""

    def loss_fn(logits: torch.Tensor, packed: torch.Tensor, _x: torch.Tensor) -> torch.Tensor:
        return distillation_loss(logits, packed[:, 0].long(), packed[:, 1:], alpha, t)

    return loss_fn


FitLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, targets, images)`` of :func:`fit`."""


def teacher_targets(
    data: ImageData,
    cfg: TrainConfig,
    alpha: float,
    teacher: nn.Module | None = None,
    teacher_logits: torch.Tensor | None = None,
) -> tuple[FitLoss | None, Iterator[tuple[torch.Tensor, torch.Tensor]] | None]:
    """(``loss_fn``, ``batches``) for :func:`fit` of a fine-tune distilled (weight ``alpha``) from an unpruned
    teacher: its precomputed ``teacher_logits`` on every training image when given (unaugmented batches of
    :func:`pack_targets` targets, drawn by ``cfg.seed``; the teacher is never run), else ``teacher`` run on each
    batch, else (None, None): labels only, ``fit``'s own batches."""
    if teacher_logits is not None:
        logits = teacher_logits

        def cached() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for idx in training_indices(data, cfg, torch.Generator().manual_seed(cfg.seed)):
                yield data.normalize(data.train_x[idx]), pack_targets(data.train_y[idx], logits[idx])

        return packed_distillation(alpha), cached()
    if teacher is not None:
        model = teacher

        def distilled(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                target = model(x)
            return distillation_loss(logits, y, target, alpha)

        return distilled, None
    return None, None


def fit(
    model: nn.Module,
    data: ImageData,
    cfg: TrainConfig,
    *,
    params: Iterable[nn.Parameter | dict[str, Any]] | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    hooks: StepHooks | None = None,
    train_mode: Callable[[], None] | None = None,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: str | None = "train",
) -> TrainResult:
    """Train ``model`` for ``cfg``'s budget on ``data``'s training split.

    Args:
        model: the module whose parameters are trained (put in train mode unless ``train_mode`` is given).
        data: training data.
        cfg: budget, optimizer and schedule.
        params: parameters or parameter groups to optimise (default: all of ``model``'s that require grad; see
            :func:`make_optimizer`).
        forward: maps a normalised batch to logits (default: ``model``); lets a phase train a composite.
        loss_fn: ``loss_fn(logits, labels, inputs)`` (default: cross-entropy).
        hooks: callbacks around each step.
        train_mode: sets train/eval modes instead of ``model.train()`` (e.g. to keep frozen BN in eval).
        batches: (inputs, targets) pairs to train on instead of augmented images from ``data`` (e.g. cached
            features of a frozen head); the budget is still counted on ``data``'s training split.
        progress: description of the loop's :func:`coinference.progress.phase` (one unit per step); None opens
            none.

    The loop is a function of ``cfg.seed``, the inputs and the intra-op thread count
    (``torch.get_num_threads()``: threads split sums between them, e.g. of batch-norm statistics), never of the
    machine's load: it seeds PyTorch's global generator (initial codebooks, sampled channel levels) and its own
    (subset, order, augmentation), and runs with :func:`deterministic_algorithms`.

    Raises:
        TrainingError: the loss became NaN or infinite.
    """
    with deterministic_algorithms():
        return _fit(model, data, cfg, params, forward, loss_fn, hooks, train_mode, batches, progress)


def _fit(
    model: nn.Module,
    data: ImageData,
    cfg: TrainConfig,
    params: Iterable[nn.Parameter | dict[str, Any]] | None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None,
    hooks: StepHooks | None,
    train_mode: Callable[[], None] | None,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None,
    progress: str | None,
) -> TrainResult:
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    total = cfg.total_steps(len(data.train_x))
    opt, sched = make_optimizer(model.parameters() if params is None else params, cfg, total)
    hooks = hooks or StepHooks()
    fwd = forward or model
    (train_mode or model.train)()
    losses: list[float] = []
    t0 = time.perf_counter()
    source = batches if batches is not None else training_batches(data, cfg, gen)
    nhwc = [p for g in opt.param_groups for p in g["params"] if p.dim() == 4] if cfg.channels_last else []
    for p in nhwc:  # the same Parameter objects (the optimizer keeps them), in the other layout
        p.data = p.data.contiguous(memory_format=torch.channels_last)
    with phase(progress, total) as advance:
        try:
            for step, (x, y) in zip(range(total), source, strict=False):
                if nhwc and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                if hooks.before_step:
                    hooks.before_step(step)
                logits = fwd(x)
                loss = loss_fn(logits, y, x) if loss_fn else F.cross_entropy(logits, y)
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss became {loss.item()} at step {step} of {total}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if hooks.after_backward:
                    hooks.after_backward(step)
                opt.step()
                sched.step()
                if hooks.after_step:
                    hooks.after_step(step)
                losses.append(loss.item())
                advance()
        finally:
            for p in nhwc:
                p.data = p.data.contiguous()
                if p.grad is not None:  # the last step's gradients, in the parameter's layout again
                    p.grad = p.grad.contiguous()
    tail = losses[-max(1, len(losses) // 10) :]
    return TrainResult(len(losses), sum(tail) / len(tail), time.perf_counter() - t0, tuple(losses))
