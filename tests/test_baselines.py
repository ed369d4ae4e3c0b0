from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import coinference.codec.train as codec_train
import coinference.prune.two_step as two_step
from coinference.baselines import BASELINES, baseline_specs, on_device_only, server_png
from coinference.build import Builder, phase_budget
from coinference.evaluate import accuracy, outputs
from coinference.fidelity import FIDELITIES
from coinference.profile import module_cost, png_sizes
from coinference.prune import TwoStepConfig, two_step_prune
from coinference.train import TrainConfig, fit
from coinference.variant import CodecSpec, VariantSpec
from coinference.zoo import build_model


def test_on_device_and_png(synthetic) -> None:
    torch.manual_seed(0)
    m = build_model("tiny-cnn")
    total = module_cost(m, synthetic.input_shape)
    dev = on_device_only(m, synthetic)
    assert dev.device_macs == total.macs and dev.server_macs == 0 and dev.bits_mean == 2  # 4 classes
    val = synthetic.evaluated_on("val")
    assert dev.val_accuracy == accuracy(m, val) and dev.test_accuracy == accuracy(m, synthetic)
    png = server_png(m, synthetic, bits_limit=10)
    sizes = png_sizes(synthetic.val_x[:10], sample=None)  # bits select: counted on validation images
    assert png.device_macs == 0 and png.server_macs == total.macs
    assert png.bits_mean == sizes.mean() and png.bits_max == sizes.max()
    five = server_png(m, synthetic, eval_limit=5)
    assert five.val_accuracy == accuracy(m, val.first_test(5))
    assert five.test_accuracy == accuracy(m, synthetic.first_test(5))


def test_every_baseline_has_a_small_grid_at_every_split() -> None:
    base = VariantSpec("resnet20", "cifar10", "stem", sparsity=0.5, fidelity="fast", seed=3, val_size=500)
    shapes = {"layer1.2": (16, 32, 32), "layer2.2": (32, 16, 16), "layer3.2": (64,), "odd": (8, 5, 5)}
    grids = baseline_specs(base, shapes)
    assert tuple(grids) == BASELINES
    for by_split in grids.values():
        assert list(by_split) == list(shapes)
        for split, specs in by_split.items():
            assert 1 <= len(specs) <= 6 and len(set(specs)) == len(specs)
            assert all(s.split == split and s.seed == 3 and s.val_size == 500 and s.fidelity == "fast" for s in specs)
    assert {len(v) for v in grids["split+huffman"].values()} == {1}
    [plain] = grids["split+huffman"]["layer1.2"]
    assert plain.sparsity == 0 and plain.pruning == "incremental" and plain.codec == CodecSpec("huffman", bits=8)
    two = grids["2-step+huffman"]["layer2.2"]
    assert [s.activation_sparsity for s in two] == [0.25, 0.5, 0.75]
    assert all(s.pruning == "two-step" and s.sparsity == 0 and s.codec.kind == "huffman" for s in two)
    # BottleNet++: channel mode C/4, C/8, C/16 (kernel 3, theirs) and the spatial mode (2×2, stride 2) at C/4
    assert [(c.codec.channels, c.codec.stride) for c in grids["bottlenet++"]["layer1.2"]] == [
        (4, 1), (2, 1), (1, 1), (4, 2)
    ]  # fmt: skip
    assert all(c.codec.kernel == 3 and c.codec.bits == 8 for c in grids["bottlenet++"]["layer1.2"])
    assert [c.codec.dim for c in grids["bottlenet++"]["layer3.2"]] == [16, 8, 4]  # flat: no spatial mode
    assert [c.codec.stride for c in grids["bottlenet++"]["odd"]] == [1, 1]  # 5×5: no spatial mode; C/8 = C/16
    for split in shapes:  # the same grid, range-coded; the raw specs keep their keys (no entropy_coded in them)
        raw, coded = grids["bottlenet++"][split], grids["bottlenet++ ec"][split]
        assert [s.with_(codec={"entropy_coded": True}) for s in raw] == coded
        assert all("entropy_coded" not in s.to_dict()["codec"] for s in raw)


def test_budgets_match_ours() -> None:
    fast = FIDELITIES.get("fast")
    base = VariantSpec("resnet20", "cifar10", "layer1.2", fidelity="fast")
    ours = phase_budget(base.with_(sparsity=0.25, codec=CodecSpec("sq", channels=4, stride=2)), fast, 45000)
    grids = baseline_specs(base, {"layer1.2": (16, 32, 32)})
    two = phase_budget(grids["2-step+huffman"]["layer1.2"][0], fast, 45000)
    bnpp = phase_budget(grids["bottlenet++"]["layer1.2"][0], fast, 45000)
    split = phase_budget(grids["split+huffman"]["layer1.2"][0], fast, 45000)
    assert (ours.prune_steps, ours.prune_distill, ours.codec_steps, ours.tail) == (100, 0.9, 150, True)
    assert (two.prune_steps, two.prune_distill, two.codec_steps, two.tail, two.learned) == (100, 0.9, 150, True, False)
    assert two.codec_distill == ours.codec_distill
    assert (bnpp.prune_steps, bnpp.codec_steps, bnpp.tail) == (0, 150, True)
    assert split.describe() == "no training"
    assert two.describe() == "prune 100 steps (KD 0.9) + codec 150 steps (tail only, KD 0.5)"


@pytest.fixture(scope="module")
def trained_tiny(synthetic):
    torch.manual_seed(0)
    m = build_model("tiny-cnn")
    fit(m, synthetic, TrainConfig(steps=30, batch_size=32, lr=0.05))
    return m.eval()


def _count_fits(monkeypatch: pytest.MonkeyPatch, module) -> list[dict]:
    """Replace ``module.fit`` by a spy that records each call's steps, loss and targets (and then trains)."""
    calls: list[dict] = []
    real = module.fit

    def spy(model, data, cfg, **kw):
        call = {"steps": cfg.total_steps(len(data.train_x)), "loss_fn": kw.get("loss_fn"), "targets": [], "kw": kw}
        if kw.get("batches") is not None:
            source = kw["batches"]

            def seen():
                for x, y in source:
                    call["targets"].append(y)
                    yield x, y

            kw = {**kw, "batches": seen()}
        calls.append(call)
        r = real(model, data, cfg, **kw)
        assert r.steps == call["steps"]
        return r

    monkeypatch.setattr(module, "fit", spy)
    return calls


def _rows_of(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether every row of ``a`` is, exactly, a row of ``b``."""
    return bool((a[:, None, :] == b[None]).all(-1).any(1).all())


@pytest.mark.parametrize("steps", [23, 3])
def test_two_step_spends_exactly_the_budget_distilled(synthetic, trained_tiny, monkeypatch, steps) -> None:
    calls = _count_fits(monkeypatch, two_step)
    logits = outputs(trained_tiny, synthetic, synthetic.train_x)
    train = TrainConfig(steps=steps, batch_size=16, augment="none")
    cfg = TwoStepConfig(0.5, train=train, distill=0.9, eval_images=64, taylor_batches=2)
    pd = two_step_prune(trained_tiny, "block1", synthetic, cfg, teacher_logits=logits)
    # rounds (the undone one too) + step 2 = the budget; 3 steps < 14 fine-tunes: the rounds get none, step 2 all
    assert sum(c["steps"] for c in calls) == steps == sum(h.steps for h in pd.history)
    rounds, per_round, total = cfg.step_budget(8 + 8 + 16, len(synthetic.train_x))
    assert total == steps and per_round == steps // (rounds + 1) and pd.history[-1].steps >= per_round
    # every fine-tune distills from the unpruned model's logits (the given ones, rows of the training images)
    assert calls and all(c["loss_fn"] is not None for c in calls)
    for y in (y for c in calls for y in c["targets"]):
        assert _rows_of(y[:, 1:], logits)


def test_two_step_distills_from_a_live_teacher_without_cached_logits(synthetic, trained_tiny, monkeypatch) -> None:
    calls = _count_fits(monkeypatch, two_step)
    cfg = TwoStepConfig(0.5, train=TrainConfig(steps=10, batch_size=16), distill=0.5, eval_images=64)
    two_step_prune(trained_tiny, "block1", synthetic, cfg)
    assert sum(c["steps"] for c in calls) == 10 and all(c["loss_fn"] is not None for c in calls)


def test_builder_gives_two_step_ours_budget_and_tail_fine_tuning(tmp_path: Path, monkeypatch) -> None:
    smoke = FIDELITIES.get("smoke")
    fid = replace(smoke, prune=replace(smoke.prune, augment="none"), codec_tail=True, prune_distill=0.9,
                  base_teacher=True)  # fmt: skip
    b = Builder(cache_dir=tmp_path, fidelities={"smoke": fid})
    spec = VariantSpec("tiny-cnn", "synthetic", "block1", pruning="two-step", activation_sparsity=0.5,
                       codec=CodecSpec("huffman", bits=8), fidelity="smoke")  # fmt: skip
    prune_calls = _count_fits(monkeypatch, two_step)
    codec_calls = _count_fits(monkeypatch, codec_train)
    built = b.build(spec)
    n = len(b.base(spec)[1].train_x)
    budget = phase_budget(spec, fid, n)
    ours_spec = spec.with_(pruning="incremental", sparsity=0.5, codec=CodecSpec("sq", channels=2, bits=2))
    ours = phase_budget(ours_spec, fid, n)
    assert sum(c["steps"] for c in prune_calls) == budget.prune_steps == ours.prune_steps == 4
    teacher = b.teacher_logits(spec)
    assert all(c["loss_fn"] is not None for c in prune_calls)
    for y in (y for c in prune_calls for y in c["targets"]):
        assert _rows_of(y[:, 1:], teacher)  # the base model's cached logits
    # the codec phase: Huffman learns nothing, so its budget fine-tunes the tail, distilled from the base model
    [call] = codec_calls
    assert call["steps"] == budget.codec_steps == ours.codec_steps == 6 and budget.tail and not budget.learned
    groups = call["kw"]["params"]
    assert sum(len(g["params"]) for g in groups) == len(list(built.codec.tail.parameters()))
    assert built.codec.config.finetune_tail and built.codec.config.kind == "huffman"
    for y in call["targets"]:
        assert _rows_of(y[:, 1:], teacher)
    # split-only + Huffman stays the base model cut as it is: nothing trained at all
    codec_calls.clear()
    plain = b.build(spec.with_(pruning="incremental", activation_sparsity=0.0))
    assert codec_calls == [] and not plain.codec.config.finetune_tail
