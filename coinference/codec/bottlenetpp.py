"""BottleNet++ baseline (Shao & Zhang, ICC 2020 workshops): conv encoder + sigmoid with the channel's noise level
as an extra input channel, 8-bit quantization, an AWGN or erasure channel layer, and a mirrored decoder.

The decoder mirrors the encoder and is checked to return exactly the feature's shape (the public code swapped
its decoder branches). The bitstream is the 8-bit latent values, one byte each (no entropy coding, as in the
paper). Spatial features: conv (stride×stride, or k×k) to ``channels``; flat features: a linear layer to ``dim``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from coinference.codec.base import CODECS, FeatureCodec
from coinference.codec.bottleneck import latent_shape
from coinference.codec.channel import AWGNChannel, Channel, ErasureChannel
from coinference.codec.config import CodecConfig, check_p, check_snr
from coinference.codec.entropy import BitstreamError
from coinference.codec.quantize import uniform_ste
from coinference.errors import ConfigError

BOTTLENETPP_BITS = 8


class _NoiseEncoder(nn.Module):
    """(feature, per-sample noise level) → sigmoid latent in [0, 1]."""

    def __init__(self, feature_shape: tuple[int, ...], channels: int | None, dim: int | None, stride: int, k: int):
        super().__init__()
        self.spatial = len(feature_shape) == 3
        if self.spatial:
            if channels is None:
                raise ConfigError("bottlenetpp on a spatial feature needs --channels (its conv's output channels)")
            kk, pad = (stride, 0) if stride > 1 else (k, k // 2)
            self.body: nn.Module = nn.Conv2d(feature_shape[0] + 1, channels, kk, stride, pad)
        else:
            if dim is None:
                raise ConfigError("bottlenetpp on a flat feature needs --dim (its linear layer's output size)")
            self.body = nn.Linear(feature_shape[0] + 1, dim)

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            plane = level.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:]).to(x.dtype)
        else:
            plane = level.view(-1, 1).to(x.dtype)
        return torch.sigmoid(self.body(torch.cat([x, plane], 1)))


@CODECS.register("bottlenetpp")
class BottleNetPP(FeatureCodec):
    """BottleNet++: 8 bits per latent value; channel "none", "awgn" (SNR) or "erasure" (p) from the config."""

    kind = "bottlenetpp"

    def __init__(self, feature_shape: tuple[int, ...], cfg: CodecConfig, nonneg: bool = True) -> None:
        super().__init__(feature_shape, cfg, nonneg)
        fs = self.feature_shape
        spatial = len(fs) == 3
        chans, dim = (cfg.channels, None) if spatial else (None, cfg.dim)
        self.latent_shape = latent_shape(fs, chans, dim, cfg.stride)
        self.encoder = _NoiseEncoder(fs, cfg.channels, cfg.dim, cfg.stride, cfg.kernel)
        if spatial:
            c = self.latent_shape[0]
            s = cfg.stride
            layers: list[nn.Module] = (
                [nn.Conv2d(c, fs[0] * s * s, 1), nn.PixelShuffle(s)]  # = a stride×stride transposed conv
                if s > 1
                else [nn.Conv2d(c, fs[0], cfg.kernel, 1, cfg.kernel // 2)]
            )
        else:
            layers = [nn.Linear(self.latent_shape[0], fs[0])]
        self.decoder = nn.Sequential(*layers, nn.ReLU() if nonneg else nn.Identity())
        self.channel: Channel | None = None
        if cfg.channel == "awgn":
            self.channel = AWGNChannel(cfg.snr_db, cfg.snr_train_db)
        elif cfg.channel == "erasure":
            self.channel = ErasureChannel(cfg.p, cfg.p_train)
        self.coding = True

    @property
    def has_channel(self) -> bool:
        return self.channel is not None

    def _level_input(self, level: torch.Tensor) -> torch.Tensor:
        """The noise level as the encoder sees it: SNR/20 (awgn), 10·p (erasure), 0 (none)."""
        if self.cfg.channel == "awgn":
            return level / 20.0
        return level * 10.0

    def _levels(self, n: int) -> torch.Tensor:
        if self.channel is None or not self.coding:
            return torch.zeros(n)
        return self.channel.levels(n)

    def set_coding(self, on: bool) -> None:
        self.coding = on
        if self.channel is not None:
            self.channel.enabled = on

    def set_channel_level(self, level: float, generator: torch.Generator | None = None) -> None:
        if self.channel is None:
            raise ConfigError("bottlenetpp was built without a channel (channel='none')")
        self.channel.level = check_snr(level) if self.cfg.channel == "awgn" else check_p(level)
        self.channel.generator = generator

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        level = self._levels(feature.shape[0])
        z = self.encoder(feature, self._level_input(level))
        if self.coding:
            levels = 2**BOTTLENETPP_BITS - 1
            z = uniform_ste(z, BOTTLENETPP_BITS) if self.training else torch.round(z.clamp(0, 1) * levels) / levels
        if self.channel is not None:
            z = self.channel(z, level)
        out = self.decoder(z)
        if tuple(out.shape[1:]) != self.feature_shape:  # the public code's swapped branches fail here
            raise ConfigError(f"decoder output {tuple(out.shape[1:])} does not match feature {self.feature_shape}")
        return out

    def to_symbols(self, feature: torch.Tensor) -> torch.Tensor:
        """8-bit values (int64) of the latent; the encoder is told the evaluation noise level."""
        level = self._levels(feature.shape[0])
        z = self.encoder(feature, self._level_input(level))
        return torch.round(z.clamp(0, 1) * (2**BOTTLENETPP_BITS - 1)).to(torch.int64)

    def from_symbols(self, symbols: torch.Tensor) -> torch.Tensor:
        """Noise-free decoding of 8-bit symbols."""
        return self.decoder(symbols.to(torch.float32) / (2**BOTTLENETPP_BITS - 1))

    def encode_payload(self, symbols: torch.Tensor) -> bytes:
        return symbols.flatten().numpy().astype(np.uint8).tobytes()

    def decode_payload(self, payload: bytes) -> torch.Tensor:
        n = math.prod(self.latent_shape)
        if len(payload) != n:
            raise BitstreamError(f"corrupt payload: {len(payload)} bytes for {n} 8-bit values")
        return torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).astype(np.int64)).view(self.latent_shape)
