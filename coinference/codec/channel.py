"""Channel layers (no trainable parameters) used in training and evaluation, and capacity references.

Conventions (docs/ARCHITECTURE.md, "Feature coding"):
- AWGN: the channel input of each sample is scaled to mean power 1 per *real* symbol; the SNR is per real
  symbol, so the noise variance is 10**(−SNR_dB/10). One channel use = one real symbol (two real symbols are one
  complex baseband use). In training the SNR of each sample is drawn uniformly (in dB) from a range.
- BSC: inputs are ±1 (binarised encoder output); each is flipped with probability p. One use = one bit.
- Erasure: each value is replaced by 0 with probability p (the receiver knows nothing of it).
- Capacities: AWGN C = W·log2(1 + SNR) bit/s (W complex uses per second = 2W real symbols per second);
  BSC C = 1 − H2(p) bits per channel use.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from coinference.codec.config import check_p, check_snr
from coinference.errors import ConfigError
from coinference.registry import Registry

DEFAULT_BANDWIDTH_HZ = 1e6


class Channel(nn.Module):
    """A noisy channel: samples its noise level per sample from ``train_range`` in training, uses ``level`` in
    evaluation (or the per-sample levels passed to ``forward``). ``generator`` makes the noise reproducible."""

    def __init__(self, level: float, train_range: tuple[float, float]) -> None:
        super().__init__()
        self.level = level
        self.train_range = train_range
        self.enabled = True
        self.generator: torch.Generator | None = None

    def levels(self, n: int) -> torch.Tensor:
        """Per-sample noise level (N,) for the current mode."""
        if self.training:
            lo, hi = self.train_range
            return lo + (hi - lo) * torch.rand(n)
        return torch.full((n,), float(self.level))

    def _rand(self, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(like.shape, generator=self.generator, dtype=like.dtype)

    def _randn(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype)


CHANNELS: Registry[type[Channel]] = Registry("channel")


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def normalize_power(x: torch.Tensor) -> torch.Tensor:
    """Scale each sample to mean power 1 per real value: x · sqrt(n / ‖x‖²)."""
    flat = x.flatten(1)
    power = flat.pow(2).mean(1).clamp_min(1e-12)
    return x / _per_sample(power.sqrt(), x)


@CHANNELS.register("awgn")
class AWGNChannel(Channel):
    """Power normalisation, then additive white Gaussian noise of variance 10**(−SNR/10) per real symbol.

    Args:
        snr_db: evaluation SNR (dB per real symbol).
        train_range: training SNR range (dB).
    """

    def __init__(self, snr_db: float = 10.0, train_range: tuple[float, float] = (0.0, 20.0)) -> None:
        super().__init__(check_snr(snr_db), (check_snr(train_range[0]), check_snr(train_range[1])))

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        x = normalize_power(x)
        if not self.enabled:
            return x
        snr = self.levels(x.shape[0]) if level is None else level
        sigma = torch.pow(10.0, -snr / 20.0)
        return x + _per_sample(sigma, x) * self._randn(x)


@CHANNELS.register("bsc")
class BSCChannel(Channel):
    """Binary symmetric channel on ±1 inputs: each symbol's sign flips with probability p."""

    def __init__(self, p: float = 0.01, train_range: tuple[float, float] = (0.0, 0.1)) -> None:
        super().__init__(check_p(p), (check_p(train_range[0]), check_p(train_range[1])))

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        if not self.enabled:
            return x
        p = self.levels(x.shape[0]) if level is None else level
        flip = self._rand(x) < _per_sample(p, x)
        return torch.where(flip, -x, x)


@CHANNELS.register("erasure")
class ErasureChannel(Channel):
    """Erasure channel: each value is lost (set to 0) with probability p."""

    def __init__(self, p: float = 0.01, train_range: tuple[float, float] = (0.0, 0.1)) -> None:
        super().__init__(check_p(p), (check_p(train_range[0]), check_p(train_range[1])))

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        if not self.enabled:
            return x
        p = self.levels(x.shape[0]) if level is None else level
        keep = self._rand(x) >= _per_sample(p, x)
        return x * keep.to(x.dtype)


def h2(p: float) -> float:
    """Binary entropy in bits."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def awgn_capacity(snr_db: float, bandwidth_hz: float = DEFAULT_BANDWIDTH_HZ) -> float:
    """Shannon capacity W·log2(1 + SNR) in bit/s of an AWGN channel of bandwidth W (Hz)."""
    if not bandwidth_hz > 0:
        raise ConfigError(f"bandwidth must be > 0 Hz, got {bandwidth_hz}")
    return bandwidth_hz * math.log2(1.0 + 10.0 ** (check_snr(snr_db) / 10.0))


def bsc_capacity(p: float) -> float:
    """Capacity 1 − H2(p) of a binary symmetric channel, in bits per channel use."""
    return 1.0 - h2(check_p(p))


def awgn_latency_s(real_symbols: float, bandwidth_hz: float = DEFAULT_BANDWIDTH_HZ) -> float:
    """Seconds to send ``real_symbols`` real channel symbols over bandwidth W (2W real symbols per second)."""
    return real_symbols / (2.0 * bandwidth_hz)


def separate_latency_s(bits: float, snr_db: float, bandwidth_hz: float = DEFAULT_BANDWIDTH_HZ) -> float:
    """Seconds to send ``bits`` source bits over AWGN with ideal (capacity-achieving) channel coding."""
    return bits / awgn_capacity(snr_db, bandwidth_hz)
