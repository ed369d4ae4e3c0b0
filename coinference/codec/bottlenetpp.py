"""BottleNet++ baseline (Shao & Zhang, ICC 2020 workshops), built as the authors' ``compression_module.py``
(github.com/shaojiawei07/BottleNetPlusPlus) builds it:

- **encoder**: the channel's noise level as one extra input plane, then conv → BatchNorm → sigmoid. *Channel mode*
  (``stride`` 1): a k×k conv, padded (theirs: 3×3; a spec's default kernel is 3), cuts C to ``channels`` at full
  resolution. *Spatial mode* (``stride`` s > 1; theirs: 2): an s×s conv of stride s also cuts H and W by s. A flat
  (D,) feature (a pooled vector, which their code never splits at) takes linear → BatchNorm1d → sigmoid to ``dim``.
- **quantizer**: the sigmoid output in [0, 1] to 8 bits, straight-through in training.
- **channel layer** (no parameters): none (an error-free digital link, what every other variant's bits assume),
  AWGN, or their binary erasure channel on the 8 bits of each value (:class:`BitErasureChannel`).
- **decoder**, mirrored: k×k conv (channel mode) or s×s transposed conv of stride s (spatial mode) → BatchNorm →
  ReLU (for a non-negative, post-ReLU feature — theirs always were; none otherwise). The transposed conv is
  written as a sub-pixel conv (1×1 conv to C·s² channels + pixel shuffle, without a bias: the BatchNorm after it
  has one): with kernel = stride it is the same map, weight for weight, and the MAC counter counts it.

Where this differs from their code, on purpose: their decoder's two branches are swapped in the last version (the
3×3 conv after the spatial encoder, the transposed conv after the channel one: wrong output shapes), so they are
paired as the paper describes, and the decoder is checked to return the feature's shape; the noise level is drawn
per sample (theirs: once per batch) and given to the encoder as SNR/20 (AWGN) or 10·p (erasure); AWGN uses the
project's convention (power-normalised, SNR per real symbol; theirs adds noise of a given std to the unquantized
sigmoid output); their erasure quantizes with round(256·x), which wraps 1.0 to 0, where this uses round(255·x);
with no channel the noise plane would be all zeros and contribute nothing, so it is left out (with its MACs).

**Bits** (``CodecConfig.entropy_coded``): False (the paper's count) sends each 8-bit value as one byte, no entropy
coding; True range-codes the same 8-bit symbols (constriction's range coder, as ``sq`` does) with one categorical
model per latent channel (spatial latents) or element (flat latents), fitted on training symbols. Only the bits
differ: the network, its training and its accuracy are the same.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from coinference.codec.base import CODECS, FeatureCodec
from coinference.codec.bottleneck import latent_shape
from coinference.codec.channel import AWGNChannel, Channel
from coinference.codec.config import CodecConfig, check_p, check_snr
from coinference.codec.entropy import CategoricalCoder
from coinference.codec.quantize import uniform_ste
from coinference.errors import ConfigError
from coinference.evaluate import INFERENCE_BATCH, eval_mode
from coinference.runtime.codecs import RawCoder

BOTTLENETPP_BITS = 8
_TOP = 2**BOTTLENETPP_BITS - 1


class BitErasureChannel(Channel):
    """The authors' binary erasure channel on 8-bit values in [0, 1]: each of the 8 bits of ``round(255·x)`` is
    erased with probability p and counts half its weight (the receiver's expectation of an unknown bit).
    Gradients pass straight through."""

    def __init__(self, p: float = 0.01, train_range: tuple[float, float] = (0.0, 0.1)) -> None:
        super().__init__(check_p(p), (check_p(train_range[0]), check_p(train_range[1])))

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        if not self.enabled:
            return x
        p = (self.levels(x.shape[0]) if level is None else level).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        sym = torch.round(x.detach().clamp(0, 1) * _TOP).to(torch.int64)
        out = torch.zeros_like(x)
        for b in range(BOTTLENETPP_BITS):
            bit = ((sym >> b) & 1).to(x.dtype)
            erased = (self._rand(x) < p).to(x.dtype)
            out = out + (2**b) * (bit * (1 - erased) + 0.5 * erased)
        return out.detach() / _TOP + (x - x.detach())


class _NoiseEncoder(nn.Module):
    """(feature, per-sample noise level) → conv/linear → BatchNorm → sigmoid latent in [0, 1]."""

    def __init__(
        self, feature_shape: tuple[int, ...], channels: int | None, dim: int | None, stride: int, k: int, plane: bool
    ) -> None:
        super().__init__()
        self.spatial = len(feature_shape) == 3
        self.plane = plane
        extra = 1 if plane else 0
        if self.spatial:
            if channels is None:
                raise ConfigError("bottlenetpp on a spatial feature needs --channels (its conv's output channels)")
            kk, pad = (stride, 0) if stride > 1 else (k, k // 2)
            self.body: nn.Module = nn.Conv2d(feature_shape[0] + extra, channels, kk, stride, pad)
            self.norm: nn.Module = nn.BatchNorm2d(channels)
        else:
            if dim is None:
                raise ConfigError("bottlenetpp on a flat feature needs --dim (its linear layer's output size)")
            self.body = nn.Linear(feature_shape[0] + extra, dim)
            self.norm = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        if self.plane:
            if self.spatial:
                plane = level.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:]).to(x.dtype)
            else:
                plane = level.view(-1, 1).to(x.dtype)
            x = torch.cat([x, plane], 1)
        return torch.sigmoid(self.norm(self.body(x)))


def _decoder(feature_shape: tuple[int, ...], latent: tuple[int, ...], stride: int, k: int, nonneg: bool) -> nn.Module:
    """The mirrored decoder: conv / transposed conv (as a sub-pixel conv) / linear → BatchNorm → ReLU."""
    fs = feature_shape
    layers: list[nn.Module]
    if len(fs) == 3:
        c = latent[0]
        if stride > 1:  # = ConvTranspose2d(c, C, stride, stride): one C·s² 1×1 conv, each s×s patch one pixel
            layers = [
                nn.Conv2d(c, fs[0] * stride * stride, 1, bias=False),
                nn.PixelShuffle(stride),
                nn.BatchNorm2d(fs[0]),
            ]
        else:
            layers = [nn.Conv2d(c, fs[0], k, 1, k // 2), nn.BatchNorm2d(fs[0])]
    else:
        layers = [nn.Linear(latent[0], fs[0]), nn.BatchNorm1d(fs[0])]
    return nn.Sequential(*layers, nn.ReLU() if nonneg else nn.Identity())


@CODECS.register("bottlenetpp")
class BottleNetPP(FeatureCodec):
    """BottleNet++: 8 bits per latent value, raw or range-coded (``cfg.entropy_coded``); channel "none", "awgn"
    (SNR) or "erasure" (p) from the config."""

    kind = "bottlenetpp"

    def __init__(self, feature_shape: tuple[int, ...], cfg: CodecConfig, nonneg: bool = True) -> None:
        super().__init__(feature_shape, cfg, nonneg)
        fs = self.feature_shape
        spatial = len(fs) == 3
        chans, dim = (cfg.channels, None) if spatial else (None, cfg.dim)
        self.latent_shape = latent_shape(fs, chans, dim, cfg.stride)
        self.encoder = _NoiseEncoder(fs, cfg.channels, cfg.dim, cfg.stride, cfg.kernel, cfg.channel != "none")
        self.decoder = _decoder(fs, self.latent_shape, cfg.stride, cfg.kernel, nonneg)
        self.channel: Channel | None = None
        if cfg.channel == "awgn":
            self.channel = AWGNChannel(cfg.snr_db, cfg.snr_train_db)
        elif cfg.channel == "erasure":
            self.channel = BitErasureChannel(cfg.p, cfg.p_train)
        self.coding = True
        self.coder: CategoricalCoder | None = None

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
            z = uniform_ste(z, BOTTLENETPP_BITS) if self.training else torch.round(z.clamp(0, 1) * _TOP) / _TOP
        if self.channel is not None:
            z = self.channel(z, level)
        out = self.decoder(z)
        if tuple(out.shape[1:]) != self.feature_shape:
            raise ConfigError(f"decoder output {tuple(out.shape[1:])} does not match feature {self.feature_shape}")
        return out

    def to_symbols(self, feature: torch.Tensor) -> torch.Tensor:
        """8-bit values (int64) of the latent; the encoder is told the evaluation noise level."""
        level = self._levels(feature.shape[0])
        z = self.encoder(feature, self._level_input(level))
        return torch.round(z.clamp(0, 1) * _TOP).to(torch.int64)

    def from_symbols(self, symbols: torch.Tensor) -> torch.Tensor:
        """Noise-free decoding of 8-bit symbols."""
        return self.decoder(symbols.to(torch.float32) / _TOP)

    def _contexts(self) -> np.ndarray:
        """Context of each latent value: its channel (spatial latents) or its element (flat latents)."""
        shape = self.latent_shape
        if len(shape) == 3:
            return np.broadcast_to(np.arange(shape[0])[:, None, None], shape).copy()
        return np.arange(math.prod(shape)).reshape(shape)

    @torch.no_grad()
    def fit_statistics(self, features: torch.Tensor, batch_size: int = INFERENCE_BATCH) -> None:
        """The range coder's per-context probabilities of the 8-bit symbols (only when ``entropy_coded``)."""
        if not self.cfg.entropy_coded:
            return
        with eval_mode(self):
            chunks = [self.to_symbols(features[i : i + batch_size]) for i in range(0, len(features), batch_size)]
        self.coder = CategoricalCoder.fit(torch.cat(chunks).numpy(), 2**BOTTLENETPP_BITS, self._contexts())

    def _require_coder(self) -> CategoricalCoder:
        if self.coder is None:
            raise ConfigError("the entropy model is not fitted: call fit_statistics on training features first")
        return self.coder

    def byte_coder(self) -> CategoricalCoder | RawCoder:
        """The range coder when ``entropy_coded``, else one byte per 8-bit value."""
        if self.cfg.entropy_coded:
            return self._require_coder()
        return RawCoder(self.latent_shape, "uint8", "int64")
