from __future__ import annotations

import math

import pytest
import torch

from coinference.errors import ConfigError, TrainingError
from coinference.evaluate import accuracy, eval_mode, outputs
from coinference.train import StepHooks, TrainConfig, augment_batch, fit
from coinference.zoo import build_model


def test_fit_learns_synthetic(synthetic) -> None:
    torch.manual_seed(0)
    m = build_model("tiny-cnn")
    before = accuracy(m, synthetic)
    res = fit(m, synthetic, TrainConfig(lr=0.05, epochs=4, batch_size=32))
    assert res.steps == math.ceil(4 * len(synthetic.train_y) / 32)  # 230 images: 256 minus the validation split
    assert accuracy(m, synthetic) > max(0.8, before)


def test_hooks_called_in_order(synthetic) -> None:
    calls: list[str] = []
    hooks = StepHooks(lambda s: calls.append(f"b{s}"), lambda s: calls.append(f"g{s}"), lambda s: calls.append(f"a{s}"))
    fit(build_model("tiny-cnn"), synthetic, TrainConfig(steps=2, batch_size=8), hooks=hooks)
    assert calls == ["b0", "g0", "a0", "b1", "g1", "a1"]


def test_nan_loss_is_typed_error(synthetic) -> None:
    with pytest.raises(TrainingError, match="loss became nan at step 0"):
        fit(
            build_model("tiny-cnn"),
            synthetic,
            TrainConfig(steps=3, batch_size=8),
            loss_fn=lambda logits, y, x: logits.sum() * float("nan"),
        )


def test_channels_last_training_hands_back_default_layout(synthetic) -> None:
    """Channels-last training updates the very Parameter objects, returns weights and gradients in the default
    layout, sees channels-last batches, and follows the default-layout run up to rounding."""
    runs = {}
    for cl in (True, False):
        torch.manual_seed(0)
        m = build_model("tiny-cnn")
        ids = [id(p) for p in m.parameters()]
        seen: list[bool] = []

        def forward(x: torch.Tensor, m=m, seen=seen) -> torch.Tensor:
            seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
            return m(x)

        res = fit(m, synthetic, TrainConfig(steps=3, batch_size=8, channels_last=cl), forward=forward)
        assert [id(p) for p in m.parameters()] == ids
        assert all(p.is_contiguous() and (p.grad is None or p.grad.is_contiguous()) for p in m.parameters())
        assert seen == [cl] * 3
        runs[cl] = (res.losses, [p.detach().clone() for p in m.parameters()])
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(runs[True][1], runs[False][1], strict=True))


def test_eval_mode_restores_every_submodule(synthetic) -> None:
    m = build_model("tiny-cnn").train()
    frozen = next(x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)).eval()  # deliberately frozen BN
    with pytest.raises(RuntimeError, match="inside"), eval_mode(m):
        assert not any(x.training for x in m.modules())
        raise RuntimeError("inside")
    assert m.training and not frozen.training
    assert all(x.training for x in m.modules() if x is not frozen)


def test_outputs_in_default_layout_equal_to_plain_forward(synthetic) -> None:
    m = build_model("tiny-cnn").eval()
    got = outputs(m, synthetic, synthetic.test_x[:20], batch_size=8)
    with torch.no_grad():
        want = m(synthetic.normalize(synthetic.test_x[:20]))
    assert got.is_contiguous() and torch.allclose(got, want, atol=1e-5)


def test_accuracy_is_an_exact_ratio_of_counts(synthetic) -> None:
    from dataclasses import replace

    m = build_model("tiny-cnn").eval()
    pred = outputs(m, synthetic, synthetic.test_x).argmax(1)
    # labels chosen so that exactly 43 of the 100 first test images are right: a float32 mean gives 0.43000001
    y = torch.where(torch.arange(100) < 43, pred[:100], (pred[:100] + 1) % 4)
    data = replace(synthetic, test_x=synthetic.test_x[:100], test_y=y)
    assert accuracy(m, data) == 43 / 100
    assert math.isnan(accuracy(m, replace(synthetic, test_x=synthetic.test_x[:0], test_y=y[:0])))


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="optimizer 'rmsprop' unknown"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="epochs must be > 0"):
        TrainConfig(epochs=0)
    assert TrainConfig(epochs=0.5, batch_size=10, subset=100).total_steps(1000) == 5


def test_augment_crop_keeps_shape_and_content() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    y = augment_batch(x, "crop-flip", g)
    assert y.shape == x.shape
    assert torch.equal(augment_batch(x, "none", g), x)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_parameter_groups_scale_the_learning_rate(schedule: str) -> None:
    from coinference.train import make_optimizer

    a, b, frozen = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    frozen.requires_grad_(False)
    cfg = TrainConfig(steps=10, lr=0.1, schedule=schedule)
    groups = [{"params": list(a.parameters())}, {"params": list(b.parameters()), "lr_scale": 0.3}]
    opt, sched = make_optimizer([*groups, {"params": list(frozen.parameters())}], cfg, 10)
    assert len(opt.param_groups) == 2  # a group with nothing to train is dropped
    for _ in range(4):
        opt.step()
        sched.step()
    lr_a, lr_b = (g["lr"] for g in opt.param_groups)
    assert lr_b == pytest.approx(0.3 * lr_a) and lr_a > 0


def test_distillation_loss_blends_labels_and_teacher() -> None:
    import torch.nn.functional as F

    from coinference.train import KD_TEMPERATURE, distillation_loss

    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    ce = F.cross_entropy(logits, y)
    torch.testing.assert_close(distillation_loss(logits, y, teacher, 0.0), ce)
    # a student equal to its teacher has no distillation loss, whatever the labels say
    torch.testing.assert_close(distillation_loss(teacher, y, teacher, 1.0), torch.zeros(()), atol=1e-6, rtol=0)
    t = KD_TEMPERATURE
    p = F.softmax(teacher / t, 1)
    kl = (p * (p.log() - F.log_softmax(logits / t, 1))).sum(1).mean()
    torch.testing.assert_close(distillation_loss(logits, y, teacher, 0.25), 0.75 * ce + 0.25 * t * t * kl)


def test_packed_distillation_uses_its_temperature() -> None:
    import torch.nn.functional as F

    from coinference.train import pack_targets, packed_distillation

    g = torch.Generator().manual_seed(1)
    logits, teacher = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1])
    packed = pack_targets(y, teacher)
    p = F.softmax(teacher / 8, 1)
    kl = (p * (p.log() - F.log_softmax(logits / 8, 1))).sum(1).mean()
    want = 0.5 * F.cross_entropy(logits, y) + 0.5 * 64 * kl
    torch.testing.assert_close(packed_distillation(0.5, 8.0)(logits, packed, logits), want)
    assert not torch.allclose(packed_distillation(0.5)(logits, packed, logits), want)
