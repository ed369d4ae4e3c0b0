"""Fidelity presets: the same variant spec trained at smoke (tests), screen (the cheap rung of a multi-fidelity
search), fast (CPU searches) or full (GPU) budgets."""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from coinference.registry import Registry
from coinference.train import KD_TEMPERATURE, TrainConfig


@dataclass(frozen=True)
class Fidelity:
    """Training budgets of the two phases of building a variant, and of evaluation."""

    name: str
    base: TrainConfig
    """Base model trained from scratch when a spec has no pretrained weights (cached per model/data set/seed)."""
    prune: TrainConfig
    """Pruning phase (device part fine-tuned under incremental masks)."""
    codec: TrainConfig
    """Codec phase (encoder/decoder trained, backbone frozen)."""
    eval_limit: int | None
    """Evaluate on the first N validation images (the accuracy that selects) and the first N test images (the
    accuracy reported); None: all of each."""
    bits_limit: int | None
    """Count bytes at batch 1 on the first N evaluated validation images (None: all of them)."""
    codec_tail: bool = False
    """Fine-tune the server tail together with the codec (the tail is then part of the variant's artifacts)."""
    prune_distill: float = 0.0
    """Weight of distillation from the unpruned base model's logits in the pruning phase (0: labels only)."""
    base_teacher: bool = False
    """The codec phase distills from the unpruned base model's logits (computed once per base model and cached on
    disk) instead of the pruned, uncoded model's. A distilled pruning phase (``prune_distill > 0``) that trains
    without augmentation takes its targets from the same cached logits instead of running the base model."""
    codec_temperature: float = KD_TEMPERATURE
    """Temperature of the codec phase's distillation (:attr:`CodecConfig.distill_temperature`)."""
    classifier_temperature: float | None = None
    """The codec phase's temperature instead of :attr:`codec_temperature` when the server part has no convolution
    (e.g. only pooling and the classifier after the last stage); None: the same for every variant. A high
    temperature asks the student for the teacher's logit values, not only their ranking, which a single linear layer
    after a narrow bottleneck cannot match (:meth:`codec_temperature_for`)."""

    def codec_temperature_for(self, server: nn.Module) -> float:
        """The codec phase's distillation temperature for a variant whose server part is ``server``."""
        if self.classifier_temperature is not None and not any(
            isinstance(m, nn.modules.conv._ConvNd) for m in server.modules()
        ):
            return self.classifier_temperature
        return self.codec_temperature


FIDELITIES: Registry[Fidelity] = Registry("fidelity")
_FAST = Fidelity(
    "fast",
    TrainConfig(epochs=15, batch_size=64, lr=0.05, schedule="onecycle"),
    # 6,400 image draws, nearly all distinct: augmentation adds nothing, and without it the base model's logits
    # (computed once per base model) are the distillation targets
    TrainConfig(steps=100, batch_size=64, lr=0.01, schedule="cosine", augment="none"),
    # head outputs of 19,200 training images are computed once and each used once (150 × 128)
    TrainConfig(steps=150, batch_size=128, lr=5e-3, optimizer="adam", weight_decay=0.0, subset=19200),
    eval_limit=2000,
    bits_limit=500,
    codec_tail=True,
    prune_distill=0.9,
    base_teacher=True,
    # softer targets carry more per image at this short budget (bench_variants.py --parts ablation); variants
    # whose server part is only the classifier lose by it, and keep 2 (--parts temperature, docs/RESULTS.md)
    codec_temperature=8.0,
    classifier_temperature=2.0,
)
_SCREEN = replace(
    _FAST,
    name="screen",
    # the cheap rung of a multi-fidelity search below `fast`: the same phases, base teacher, temperatures and
    # evaluation split at about a quarter of the training and half the evaluation (its rank agreement with `fast` on
    # validation accuracy is measured by bench/build_reference.py)
    prune=replace(_FAST.prune, steps=25),
    codec=replace(_FAST.codec, steps=40, subset=5120),
    eval_limit=1000,
    bits_limit=200,
)
for _f in (
    Fidelity(
        "smoke",
        TrainConfig(steps=30, batch_size=32, lr=0.05, schedule="onecycle"),
        TrainConfig(steps=4, batch_size=16, lr=0.01),
        TrainConfig(steps=6, batch_size=16, lr=0.01, optimizer="adam", weight_decay=0.0),
        eval_limit=64,
        bits_limit=16,
    ),
    _SCREEN,
    _FAST,
    Fidelity(
        "full",
        TrainConfig(epochs=100, batch_size=128, lr=0.1, schedule="onecycle"),
        TrainConfig(epochs=30, batch_size=128, lr=0.01, schedule="cosine"),
        TrainConfig(epochs=30, batch_size=128, lr=1e-3, optimizer="adam", weight_decay=0.0),
        eval_limit=None,
        bits_limit=None,
        codec_tail=True,
        prune_distill=0.9,
        base_teacher=True,
    ),
):
    FIDELITIES.register(_f.name)(_f)
