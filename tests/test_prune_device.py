"""prune_device / two_step_prune end to end on tiny inputs, the checkpoint format, and ``coinfer prune``."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from coinference.errors import ConfigError
from coinference.evaluate import accuracy
from coinference.prune import (
    ActivationMask,
    ChannelMasker,
    PruneConfig,
    Schedule,
    TwoStepConfig,
    load_pruned,
    prune_device,
    save_pruned,
    two_step_prune,
)
from coinference.prune.device import keep_from_names
from coinference.prune.groups import trace_split
from coinference.train import TrainConfig, fit
from coinference.zoo import build_model

TRAIN = TrainConfig(steps=8, batch_size=32, lr=0.02)


@pytest.fixture(scope="module")
def digits_net(synthetic):
    torch.manual_seed(0)
    m = build_model("resnet-digits", num_classes=4, in_channels=3)
    fit(m, synthetic, TrainConfig(steps=30, batch_size=32, lr=0.05))
    return m


def test_prune_device_shape_and_equivalence(synthetic, digits_net) -> None:
    cfg = PruneConfig(0.5, 0.25, Schedule("step", steps=(0.25, 0.5)), TRAIN)
    before = {k: v.clone() for k, v in digits_net.state_dict().items()}
    pd = prune_device(digits_net, "layer1.1", synthetic, cfg)
    assert all(torch.equal(v, before[k]) for k, v in digits_net.state_dict().items())  # the input is not changed
    assert [round(h.sparsity, 3) for h in pd.history] == [0.25, 0.5] and pd.history[-1].activation_sparsity == 0.25
    assert pd.history[0].steps == 4
    assert pd.feature_shape == (16, 8, 8) and len(pd.kept_channels) == 6  # 16 → 8 live → 6 sent
    assert not pd.head.training
    x = synthetic.normalize(synthetic.test_x[:8])
    with torch.no_grad():
        f = pd.head(x)
        assert f.shape == (8, 6, 8, 8) and pd.expand(f).shape == (8, 16, 8, 8)
        e2e = pd.tail(pd.expand(f))
    torch.testing.assert_close(pd.end_to_end()(x), e2e)
    # the shrunk end-to-end model equals the masked full model
    _, _, tr = trace_split(pd.model, "layer1.1")
    masker = ChannelMasker(tr)
    masker.apply(keep_from_names(tr, pd.group_keep))
    keep = torch.zeros(16, dtype=torch.bool)
    keep[pd.kept_channels] = True
    head, tail, _ = trace_split(pd.model.eval(), "layer1.1")
    with torch.no_grad():
        ref = tail(ActivationMask(keep)(head(x)))
    masker.release()
    torch.testing.assert_close(e2e, ref, rtol=1e-5, atol=1e-5)
    # stem 3→8, block 1: 8→8→8, block 2: 8→8→6 (64 px, 3×3) — dense: 27,648 + 4 × 147,456 = 617,472
    assert pd.device_macs == 64 * 9 * (8 * 3 + 8 * 8 * 3 + 6 * 8) == 152_064
    assert accuracy(pd.end_to_end(), synthetic) > 0.25


@pytest.mark.parametrize("act", [0.25, 0.5, 0.75])
def test_activation_pruning_cuts_counted_bits_by_the_pruned_fraction(synthetic, digits_net, act: float) -> None:
    for sparsity, live in ((0.0, 32), (0.5, 16)):
        base = prune_device(digits_net, "layer2.0", synthetic, PruneConfig(sparsity, 0.0, train=None))
        pd = prune_device(digits_net, "layer2.0", synthetic, PruneConfig(sparsity, act, train=None))
        assert base.feature_bits == live * 4 * 4 * 32
        sent = len(pd.kept_channels)
        assert sent == live - round(act * live)
        assert pd.feature_bits == base.feature_bits * sent // live
        assert pd.feature_bits / base.feature_bits == pytest.approx(1 - act)
        assert pd.device_macs < base.device_macs  # the last block no longer computes the dropped channels


def test_every_zoo_model_and_split_prunes(synthetic) -> None:
    for name in ("tiny-cnn", "resnet-digits"):
        m = build_model(name, num_classes=4, in_channels=3)
        for p in m.split_points():
            pd = prune_device(m, p, synthetic, PruneConfig(0.5, 0.5, train=None))
            x = synthetic.normalize(synthetic.test_x[:2])
            assert pd.end_to_end()(x).shape == (2, 4)


def test_bad_split_and_values_are_config_errors(synthetic, digits_net) -> None:
    with pytest.raises(ConfigError, match="split point 'layer9.9' does not exist"):
        prune_device(digits_net, "layer9.9", synthetic, PruneConfig(0.5, train=None))
    with pytest.raises(ConfigError, match=r"got 1.0"):
        PruneConfig(sparsity=1.0)


def test_checkpoint_round_trip_weights_only(tmp_path: Path, synthetic, digits_net) -> None:
    pd = prune_device(digits_net, "layer2.1", synthetic, PruneConfig(0.5, 0.5, train=None))
    path = save_pruned(pd, tmp_path / "p.pt", "resnet-digits")
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == "coinference.pruned/1" and blob["split"] == "layer2.1"
    back = load_pruned(path)
    x = synthetic.normalize(synthetic.test_x[:4])
    torch.testing.assert_close(back.end_to_end()(x), pd.end_to_end()(x), rtol=0, atol=0)
    assert back.device_macs == pd.device_macs and torch.equal(back.kept_channels, pd.kept_channels)


def test_two_step_baseline(synthetic) -> None:
    torch.manual_seed(0)
    m = build_model("tiny-cnn")
    fit(m, synthetic, TrainConfig(steps=30, batch_size=32, lr=0.05))
    cfg = TwoStepConfig(0.5, TrainConfig(steps=3, batch_size=32), eval_images=64, taylor_batches=2)
    pd = two_step_prune(m, "block1", synthetic, cfg)
    steps1 = pd.history[:-1]
    assert steps1 and all(h.accuracy is not None for h in pd.history)
    # ceil(F0 / 16) = ceil(32 / 16) = 2 channels per round; it stops at the accuracy floor or at 20 % left
    assert len(steps1) <= 13 and pd.sparsity <= 0.8
    assert len(pd.kept_channels) <= 4  # step 2: half of block1's live channels
    x = synthetic.normalize(synthetic.test_x[:4])
    assert pd.end_to_end()(x).shape == (4, 4)


def test_cli_prune_writes_checkpoint(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "tiny.pt"
    code, stdout, err = run_cli(
        "prune", "--model", "tiny-cnn", "--split", "block1", "--sparsity", "0.5",
        "--activation-sparsity", "0.5", "--steps", "4", "--batch-size", "16", "--distill", "0.5", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "feature bits" in stdout and "device MACs" in stdout and "accuracy" in stdout
    assert load_pruned(out).feature_bits == 2 * 64 * 32


def test_cli_prune_latency(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import coinference.fused as fused

    args = ("prune", "--model", "tiny-cnn", "--split", "block1", "--steps", "2", "--batch-size", "16", "--latency")
    code, stdout, err = run_cli(*args, "--json", "--out", str(tmp_path / "a.pt"))
    assert code == 0, err
    blob = json.loads(stdout)
    rows = [k for k in blob if k.startswith("latency")]
    if shutil.which(os.environ.get("CC", "cc")):
        assert rows == ["latency b1, eager (ms)", "latency b1, fused (ms)"] and blob["notes"] == []
    assert all(len(blob[k]) == 2 and min(blob[k]) > 0 for k in rows)
    # no compiler: the eager figures alone, and a note that says why
    monkeypatch.setattr(fused, "_LIB", None)
    monkeypatch.setenv("COINFERENCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    code, stdout, err = run_cli(*args, "--out", str(tmp_path / "b.pt"))
    assert code == 0, err
    assert "latency b1, eager (ms)" in stdout and "fused runtime not timed" in stdout and "no-such-compiler" in stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--sparsity", "1.5"), "sparsity must be in [0, 1), got 1.5"),
        (("--split", "nowhere"), "split point 'nowhere' does not exist"),
        (("--schedule", "step", "--schedule-steps", "0.1,0.2"), "never reaches the target sparsity 0.5"),
        (("--distill", "-0.1"), "distill must be in [0, 1], got -0.1"),
        (("--method", "two-step", "--distill", "0.5"), "--distill 0.5 applies to the incremental method"),
    ],
)
def test_cli_bad_input_exit_code_2(run_cli, args: tuple[str, ...], message: str) -> None:
    code, _, err = run_cli("prune", "--model", "tiny-cnn", "--steps", "1", *args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_distillation_from_the_unpruned_model(synthetic, digits_net, monkeypatch: pytest.MonkeyPatch) -> None:
    import coinference.train as train_mod  # where the pruning phase's distillation loss is looked up

    with pytest.raises(ConfigError, match="distill must be in \\[0, 1\\], got 1.5"):
        PruneConfig(0.5, distill=1.5)
    seen: list[tuple[int, ...]] = []
    real = train_mod.distillation_loss

    def spy(logits, y, teacher, alpha, *a):
        seen.append(tuple(teacher.shape))
        assert alpha == 1.0 and not teacher.requires_grad
        return real(logits, y, teacher, alpha, *a)

    monkeypatch.setattr(train_mod, "distillation_loss", spy)
    before = {k: v.clone() for k, v in digits_net.state_dict().items()}
    kd = prune_device(digits_net, "layer1.1", synthetic, PruneConfig(0.5, train=TRAIN, distill=1.0))
    assert len(seen) == sum(h.steps for h in kd.history) and set(seen) == {(32, 4)}
    assert all(torch.equal(v, before[k]) for k, v in digits_net.state_dict().items())
    seen.clear()
    prune_device(digits_net, "layer1.1", synthetic, PruneConfig(0.5, train=TRAIN))
    assert seen == []  # labels only by default, as in the paper


def test_precomputed_teacher_logits_replace_the_live_teacher(synthetic, digits_net) -> None:
    from coinference.evaluate import outputs

    plain = TrainConfig(steps=8, batch_size=32, lr=0.02, augment="none")
    cfg = PruneConfig(0.5, train=plain, distill=0.9)
    logits = outputs(digits_net, synthetic, synthetic.train_x)
    live = prune_device(digits_net, "layer1.1", synthetic, cfg)
    cached = prune_device(digits_net, "layer1.1", synthetic, cfg, logits)
    x = synthetic.normalize(synthetic.test_x[:16])
    shuffled = prune_device(digits_net, "layer1.1", synthetic, cfg, logits[torch.randperm(len(logits))])
    with torch.no_grad():
        torch.testing.assert_close(cached.end_to_end()(x), live.end_to_end()(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(shuffled.end_to_end()(x), live.end_to_end()(x), atol=1e-3)
    with pytest.raises(ConfigError, match="need distill > 0 and augment none"):
        cropped = PruneConfig(0.5, train=replace(plain, augment="crop"), distill=0.9)
        prune_device(digits_net, "layer1.1", synthetic, cropped, logits)
    with pytest.raises(ConfigError, match="need distill > 0 and augment none"):
        prune_device(digits_net, "layer1.1", synthetic, PruneConfig(0.5, train=plain), logits)
    with pytest.raises(ConfigError, match="teacher_logits has 3 rows for 230 training images"):
        prune_device(digits_net, "layer1.1", synthetic, cfg, logits[:3])
