from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from coinference.profile import count_macs, peak_activation_bytes, png_bits, profile_model
from coinference.zoo import MODELS, build_model


@pytest.mark.parametrize("name", MODELS.names())
def test_macs_match_flop_counter_per_unit(name: str) -> None:
    """Our hook count × 2 equals torch's FlopCounterMode on every unit of every zoo model."""
    info = MODELS.get(name)
    m = build_model(name).eval()
    x = torch.zeros(1, *info.input_shape)
    with torch.no_grad():
        for unit_name, unit in m.units():
            with count_macs(unit) as ours, FlopCounterMode(display=False) as ref:
                y = unit(x)
            assert 2 * ours[0] == ref.get_total_flops(), unit_name
            x = y


def test_resnet18_cifar_profile_matches_paper_fig1() -> None:
    m = build_model("resnet18-cifar")
    p = profile_model(m, (3, 32, 32), "resnet18-cifar")
    stage = [s for s in p.splits if s.stage_end]
    assert round(stage[0].device_macs / 1e6, 2) == 1.77
    assert [round(s.device_macs / 1e6, 1) for s in stage[1:]] == [152.8, 287.0, 421.2, 555.4]
    assert [s.feature_bits for s in stage] == [2_097_152, 2_097_152, 1_048_576, 524_288, 16_384]
    assert round(p.total_macs / 1e6, 1) == 555.4
    assert round(p.total_params / 1e6, 1) == 11.2
    assert stage[-1].feature_shape == (512,)
    assert stage[0].amplification_raw == pytest.approx(2_097_152 / (3 * 32 * 32 * 8))


def test_resnet20_profile_totals_and_server_side() -> None:
    p = profile_model(build_model("resnet20"), (3, 32, 32), "resnet20")
    assert p.total_macs == 40_551_040 and p.total_params == 269_722
    for s in p.splits:
        assert s.device_macs + s.server_macs == p.total_macs
    assert [s.device_macs for s in p.splits] == sorted(s.device_macs for s in p.splits)
    assert p.splits[-1].server_macs == 64 * 10


def test_peak_activation_hand_computed() -> None:
    """TinyCNN stem on 3×8×8: conv 3·64·4 in + 8·64·4 out = 2,816 B; BN 8·64·4 in + out = 4,096 B (peak)."""
    m = build_model("tiny-cnn").eval()
    stem = m.units()[0][1]
    assert peak_activation_bytes(stem, torch.zeros(1, 3, 8, 8)) == max((3 + 8) * 64 * 4, 2 * 8 * 64 * 4)


def test_peak_activation_counts_residual_input() -> None:
    """In a residual block the block input stays alive for the add: conv1 in + out + held input."""
    m = build_model("resnet-digits").eval()
    block = m.layer1[0]
    x = torch.zeros(1, 16, 8, 8)
    act = 16 * 64 * 4
    assert peak_activation_bytes(block, x) == 3 * act


def test_png_and_amplification(synthetic) -> None:
    bits = png_bits(synthetic.test_x, sample=16)
    assert 0 < bits < 3 * 8 * 8 * 8 * 2
    p = profile_model(build_model("tiny-cnn"), (3, 8, 8), "tiny-cnn", synthetic.test_x, png_sample=16)
    assert p.input_bits_png == pytest.approx(bits)
    s = p.splits[0]
    assert s.amplification_png == pytest.approx(s.feature_bits / bits)
    assert s.feature_bits == 8 * 8 * 8 * 32
    json.dumps(p.to_dict())
