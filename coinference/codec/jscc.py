"""Learned joint source-channel coding: the bottleneck encoder's output goes straight onto a noisy channel.

- ``jscc-awgn``: latent → power normalisation → AWGN → decoder. Analog: there is no bitstream; the device sends
  ``channel_uses`` real symbols (``compress`` refuses, ``to_symbols`` gives the channel input).
- ``jscc-bsc``: latent → tanh → sign (straight-through) → BSC → decoder. The bitstream is the packed sign bits
  (no entropy coding: it would make every flipped bit catastrophic); one bit = one channel use.

In training the channel's noise level is drawn per sample from the configured range; in evaluation it is the
fixed level set by :meth:`set_channel_level` (default ``cfg.snr_db`` / ``cfg.p``).
"""

from __future__ import annotations

import math

import torch

from coinference.codec.base import CODECS, FeatureCodec
from coinference.codec.bottleneck import Decoder, Encoder
from coinference.codec.channel import AWGNChannel, BSCChannel, Channel, normalize_power
from coinference.codec.config import CodecConfig, check_p, check_snr
from coinference.errors import ConfigError
from coinference.runtime.codecs import RawCoder, SignBitsCoder


class _JSCC(FeatureCodec):
    def __init__(self, feature_shape: tuple[int, ...], cfg: CodecConfig, nonneg: bool = True) -> None:
        super().__init__(feature_shape, cfg, nonneg)
        self.encoder = Encoder(self.feature_shape, cfg.channels, cfg.dim, cfg.stride, cfg.kernel)
        self.latent_shape = self.encoder.latent_shape
        self.decoder = Decoder(self.feature_shape, cfg.channels, cfg.dim, cfg.stride, cfg.kernel, nonneg)
        self.channel: Channel = self._make_channel()
        self.coding = True

    def _make_channel(self) -> Channel:
        raise NotImplementedError

    def set_coding(self, on: bool) -> None:
        self.coding = on
        self.channel.enabled = on

    @property
    def has_channel(self) -> bool:
        return True

    @property
    def channel_uses(self) -> int:
        return math.prod(self.latent_shape)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.channel(self._channel_input(self.encoder(feature))))

    def _channel_input(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_symbols(self, feature: torch.Tensor) -> torch.Tensor:
        return self._channel_input(self.encoder(feature)).detach()

    def from_symbols(self, symbols: torch.Tensor) -> torch.Tensor:
        """Decode received channel outputs (noise-free when they are the channel input)."""
        return self.decoder(symbols)


@CODECS.register("jscc-awgn")
class AWGNJSCC(_JSCC):
    """Analog JSCC over AWGN: ``channel_uses`` = latent size in real symbols (half as many complex uses)."""

    kind = "jscc-awgn"

    def _make_channel(self) -> Channel:
        return AWGNChannel(self.cfg.snr_db, self.cfg.snr_train_db)

    def _channel_input(self, z: torch.Tensor) -> torch.Tensor:
        return normalize_power(z)

    def set_channel_level(self, level: float, generator: torch.Generator | None = None) -> None:
        self.channel.level = check_snr(level)
        self.channel.generator = generator

    def byte_coder(self) -> RawCoder:
        """No bitstream: an export sends the real channel symbols over a digital link as float32 (4 bytes each),
        what a radio would send as they are."""
        return RawCoder(self.latent_shape, "float32", "float32")

    def encode_payload(self, symbols: torch.Tensor) -> bytes:
        raise ConfigError(
            "jscc-awgn is analog: it sends channel symbols, not bits; count channel_uses "
            f"({self.channel_uses} real symbols per sample) instead of compressing"
        )

    def decode_payload(self, payload: bytes) -> torch.Tensor:
        raise ConfigError("jscc-awgn is analog and has no bitstream to decompress")


@CODECS.register("jscc-bsc")
class BSCJSCC(_JSCC):
    """Binary JSCC over a BSC: one bit per latent value, ``channel_uses`` = latent size in bits."""

    kind = "jscc-bsc"

    def _make_channel(self) -> Channel:
        return BSCChannel(self.cfg.p, self.cfg.p_train)

    def _channel_input(self, z: torch.Tensor) -> torch.Tensor:
        soft = torch.tanh(z)
        if not self.coding:
            return soft
        hard = torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
        return hard + (soft - soft.detach()) if self.training else hard

    def set_channel_level(self, level: float, generator: torch.Generator | None = None) -> None:
        self.channel.level = check_p(level)
        self.channel.generator = generator

    def byte_coder(self) -> SignBitsCoder:
        """The packed sign bits, one per latent value (no entropy coding)."""
        return SignBitsCoder(self.latent_shape)
