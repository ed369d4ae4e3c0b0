"""Mask semantics: masked weights stay put during an iteration, come back at its end; residual groups agree."""

from __future__ import annotations

import pytest
import torch

from coinference.prune import ChannelMasker, select_by_norm, trace
from coinference.prune.groups import trace_split
from coinference.prune.masks import smallest_mask
from coinference.train import StepHooks, TrainConfig, fit
from coinference.zoo import build_model, split_model


def _digits_net():  # resnet-digits on the synthetic set: 3×8×8, 4 classes; has identity and option-A shortcuts
    torch.manual_seed(0)
    return build_model("resnet-digits", num_classes=4, in_channels=3)


def _masked_entries(masker: ChannelMasker) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(t, m == 0) for t, m in masker._masks.values() if isinstance(t, torch.nn.Parameter)]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masked_weights_frozen_during_iteration_and_restored(synthetic, optimizer: str) -> None:
    model = _digits_net()
    fit(model, synthetic, TrainConfig(steps=3, batch_size=32))  # non-zero momentum-worthy weights and BN stats
    head, tail, tr = trace_split(model, "layer2.1")
    masker = ChannelMasker(tr)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    masker.apply(select_by_norm(tr, 0.5))
    entries = _masked_entries(masker)
    assert entries and sum(int(m.sum()) for _, m in entries) > 100
    assert all(bool((t[m] == 0).all()) for t, m in entries)
    seen: list[bool] = []

    def check(_step: int) -> None:
        seen.append(all(bool((t[m] == 0).all()) for t, m in entries))

    cfg = TrainConfig(optimizer=optimizer, steps=6, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.1)
    fit(model, synthetic, cfg, forward=lambda x: tail(head(x)), hooks=StepHooks(None, masker.zero_grads, check))
    assert seen == [True] * 6
    masker.restore()
    for t, m in entries:
        assert torch.equal(t[m], before[id(t)][m])  # masked entries: back to their start-of-iteration values
    changed = [not torch.equal(t[~m], before[id(t)][~m]) for t, m in entries]
    assert any(changed)  # the unmasked ones did train
    assert not masker.active and not masker._hooks


def test_negative_control_leaky_shortcut_moves_masked_weights(synthetic) -> None:
    # the check above can fail: if the option-A shortcut were not masked, data would leak into masked stream
    # channels and their BN shifts and readers' input slices would train, unless gradients are masked
    model = _digits_net()
    head, tail, tr = trace_split(model, "layer2.1")
    masker = ChannelMasker(tr)
    masker.apply(select_by_norm(tr, 0.5))
    entries = _masked_entries(masker)
    for h in masker._hooks:
        h.remove()
    fwd = lambda x: tail(head(x))
    fit(model, synthetic, TrainConfig(steps=3, batch_size=32, lr=0.05), forward=fwd, hooks=StepHooks())
    assert not all(bool((t[m] == 0).all()) for t, m in entries)
    masker.apply(select_by_norm(tr, 0.5))  # same leak, gradients masked: nothing moves
    entries = _masked_entries(masker)
    for h in masker._hooks:
        h.remove()
    fit(model, synthetic, TrainConfig(steps=3, batch_size=32), forward=fwd, hooks=StepHooks(None, masker.zero_grads))
    assert all(bool((t[m] == 0).all()) for t, m in entries)


def test_masked_channels_output_exact_zeros_including_option_a_shortcut() -> None:
    model = _digits_net().eval()
    head, _, tr = trace_split(model, "layer2.1")
    stream = tr.group_by_name("layer2.0 stream")
    assert stream.residual and stream.carriers  # option-A shortcut carries stage-1 channels into it
    keep = select_by_norm(tr, 0.5)
    ChannelMasker(tr).apply(keep)
    with torch.no_grad():
        f = head(torch.randn(4, 3, 8, 8))
    dropped = (~keep[stream.gid]).nonzero().flatten()
    assert f.shape == (4, 32) and torch.equal(f[:, dropped], torch.zeros(4, len(dropped)))


def test_residual_groups_pruned_together_or_left_alone() -> None:
    model = _digits_net()
    _head, _, tr = trace_split(model, "layer1.1")
    stream = tr.group_by_name("stem stream")
    # the stem and both blocks' conv2 write the stage-1 stream through identity shortcuts: one group
    assert stream.residual and len(stream.producers) == 3
    assert {g.name for g in tr.groups if not g.residual} == {"layer1.0.conv1", "layer1.1.conv1"}
    keep = select_by_norm(tr, 0.5)
    masker = ChannelMasker(tr)
    masker.apply(keep)
    zero_rows = [(conv.weight.flatten(1).abs().sum(1) == 0) for conv, _ in stream.producers]
    for rows in zero_rows:  # every writer of the stream lost exactly the same channels
        assert torch.equal(rows, ~keep[stream.gid])
    assert int((~keep[stream.gid]).sum()) == 8
    masker.restore()
    kept = select_by_norm(tr, 0.5, residual="keep")
    assert bool(kept[stream.gid].all()) and not bool(kept[tr.group_by_name("layer1.0.conv1").gid].all())


def test_ranking_uses_l2_norm_of_filters() -> None:
    model = build_model("tiny-cnn")
    head, _ = split_model(model, "stem")
    tr = trace(head)
    w = model.stem.conv.weight
    with torch.no_grad():
        w.fill_(1.0)
        # channel 0: one big weight (large L1 = 3, L2 = 3); channel 1: all 27 at 0.5 (L1 = 13.5, L2 ≈ 2.6)
        w[0].zero_()
        w[0, 0, 0, 0] = 3.0
        w[1].fill_(0.5)
    keep = select_by_norm(tr, 1 / 8)  # drop one of 8 channels: the smallest L2 norm is channel 1, not 0
    assert keep[0].tolist() == [True, False] + [True] * 6
    assert smallest_mask(torch.tensor([3.0, 1.0, 2.0]), 1 / 3).tolist() == [True, False, True]
