"""Channel layers (statistical tests) and capacity formulas."""

from __future__ import annotations

import math

import pytest
import torch

from coinference.codec import (
    CHANNELS,
    AWGNChannel,
    BSCChannel,
    CodecConfig,
    ErasureChannel,
    awgn_capacity,
    bsc_capacity,
    h2,
    normalize_power,
)
from coinference.errors import ConfigError, UnknownNameError


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_awgn_power_and_noise_variance_match_snr(snr_db: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 500, generator=g) * 7 + 3
    ch = AWGNChannel(snr_db).eval()
    ch.generator = g
    tx = normalize_power(x)
    y = ch(x)
    power = tx.pow(2).mean(1)
    assert torch.allclose(power, torch.ones_like(power), atol=1e-5)  # exactly 1 per real symbol, per sample
    noise = (y - tx).flatten()
    var = float(noise.var())
    expect = 10 ** (-snr_db / 10)
    # 100,000 samples: the variance estimate has relative std sqrt(2/n) ≈ 0.45 %; allow 3 %.
    assert abs(var / expect - 1) < 0.03, (var, expect)
    assert abs(float(noise.mean())) < 4 * math.sqrt(expect / noise.numel())


def test_awgn_training_draws_snr_from_range() -> None:
    torch.manual_seed(0)
    ch = AWGNChannel(10.0, (0.0, 20.0)).train()
    levels = ch.levels(10_000)
    assert float(levels.min()) >= 0 and float(levels.max()) <= 20 and abs(float(levels.mean()) - 10) < 0.3


@pytest.mark.parametrize("p", [0.001, 0.01, 0.1])
def test_bsc_flip_rate_matches_p(p: float) -> None:
    g = torch.Generator().manual_seed(1)
    ch = BSCChannel(p).eval()
    ch.generator = g
    x = torch.ones(100, 10_000)
    flipped = float((ch(x) < 0).float().mean())
    sd = math.sqrt(p * (1 - p) / x.numel())
    assert abs(flipped - p) < 5 * sd, (flipped, p)
    assert set(ch(-x).unique().tolist()) <= {-1.0, 1.0}


def test_erasure_rate() -> None:
    ch = ErasureChannel(0.2).eval()
    ch.generator = torch.Generator().manual_seed(2)
    assert abs(float((ch(torch.ones(100_000)[None]) == 0).float().mean()) - 0.2) < 0.01


def test_capacities_against_known_values() -> None:
    assert awgn_capacity(0.0) == pytest.approx(1e6)  # log2(1 + 1) = 1 bit/s/Hz
    assert awgn_capacity(10 * math.log10(3), bandwidth_hz=2e6) == pytest.approx(4e6)  # W·log2(4)
    assert awgn_capacity(20.0) == pytest.approx(1e6 * math.log2(101))
    assert bsc_capacity(0.0) == 1.0
    assert bsc_capacity(0.5) == pytest.approx(0.0)
    assert bsc_capacity(0.11) == pytest.approx(0.5, abs=0.001)  # H2(0.11) ≈ 0.4999
    assert h2(0.5) == pytest.approx(1.0)


def test_out_of_range_levels_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="SNR 60.0 dB out of range"):
        AWGNChannel(60.0)
    with pytest.raises(ConfigError, match="p 0.7 out of range"):
        BSCChannel(0.7)
    with pytest.raises(ConfigError, match="p -0.1 out of range"):
        bsc_capacity(-0.1)
    with pytest.raises(ConfigError, match="bandwidth must be > 0"):
        awgn_capacity(10.0, bandwidth_hz=0)
    with pytest.raises(ConfigError, match="SNR -50 dB"):
        CodecConfig("jscc-awgn", snr_db=-50)
    with pytest.raises(ConfigError, match="bits must be in"):
        CodecConfig(bits=0)
    with pytest.raises(ConfigError, match="distill_temperature must be > 0, got 0"):
        CodecConfig(distill_temperature=0)
    with pytest.raises(UnknownNameError, match="valid: awgn, bsc, erasure"):
        CHANNELS.get("rayleigh")
