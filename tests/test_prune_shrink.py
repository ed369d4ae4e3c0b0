"""Physical shrinking: the shrunk head equals the masked one, and its MACs and parameters drop accordingly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from coinference.profile import count_macs
from coinference.prune import ActivationMask, ChannelGather, ChannelMasker, device_cost, select_by_norm, shrink
from coinference.prune.activation import expand_channels
from coinference.prune.groups import trace_split
from coinference.prune.masks import smallest_mask
from coinference.zoo import MODELS, build_model


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.1)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)


def _cases() -> list[tuple[str, str]]:
    out = []
    for name in ("tiny-cnn", "resnet-digits", "resnet20", "resnet18-cifar"):
        points = build_model(name).split_points()
        if name == "resnet18-cifar":  # big: a projection-shortcut split and the pooled last one suffice
            points = [p for p in points if p.name in ("layer2.0", "layer4.1")]
        out += [(name, p.name) for p in points]
    return out


@pytest.mark.parametrize(("name", "split"), _cases())
def test_shrunk_head_equals_masked_head(name: str, split: str) -> None:
    torch.manual_seed(0)
    info = MODELS.get(name)
    model = build_model(name).eval()
    _randomise_bn(model)
    head, _, tr = trace_split(model, split)
    dense_macs, dense_params = device_cost(head, info.input_shape)
    keep = select_by_norm(tr, 0.5)
    ChannelMasker(tr).apply(keep)
    assert tr.output_group is not None
    alive = keep[tr.output_group]
    transmitted = smallest_mask(torch.arange(len(alive), dtype=torch.float), 0.25, alive)
    small = shrink(head, tr, keep, transmitted)
    x = torch.randn(2, *info.input_shape)
    with torch.no_grad():
        masked = ActivationMask(transmitted)(head(x))
        out = small(x)
    kept = transmitted.nonzero().flatten()
    assert out.shape[1] == len(kept) < masked.shape[1]
    torch.testing.assert_close(expand_channels(out, kept, masked.shape[1]), masked, rtol=1e-5, atol=1e-5)
    macs, params = device_cost(small, info.input_shape)
    assert macs < dense_macs and params < dense_params


def test_mac_and_param_counts_are_exact_for_tiny_cnn() -> None:
    model = build_model("tiny-cnn").eval()
    head, _, tr = trace_split(model, "block1")
    keep = select_by_norm(tr, 0.5)  # stem 8 → 4 channels, block1 8 → 4
    transmitted = smallest_mask(torch.arange(8, dtype=torch.float), 0.5, keep[tr.output_group])  # 4 → 2 sent
    small = shrink(head, tr, keep, transmitted)
    macs, params = device_cost(small, (3, 8, 8))
    # stem: 64 px × 4 out × 3 in × 9; block1: 64 px × 2 out × 4 in × 9 — dense would be 13,824 + 36,864
    assert macs == 64 * 4 * 3 * 9 + 64 * 2 * 4 * 9
    assert params == (4 * 3 * 9 + 2 * 4) + (2 * 4 * 9 + 2 * 2)  # conv weights + BN scale/shift
    with count_macs(head) as c:
        head.eval()(torch.zeros(1, 3, 8, 8))
    assert c[0] == 13_824 + 36_864


def test_channel_gather_zero_fills_missing_sources() -> None:
    g = ChannelGather(torch.tensor([2, -1, 0]), stride=2)
    x = torch.arange(3 * 16, dtype=torch.float).view(1, 3, 4, 4)
    y = g(x)
    assert y.shape == (1, 3, 2, 2)
    assert torch.equal(y[0, 0], x[0, 2, ::2, ::2]) and torch.equal(y[0, 1], torch.zeros(2, 2))
    assert torch.equal(y[0, 2], x[0, 0, ::2, ::2])
