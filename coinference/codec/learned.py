"""Learned source coding (paper IV-B.2): bottleneck encoder → learned scalar or vector quantizer → entropy code.

Symbol statistics are estimated on training data after training (:meth:`fit_statistics`): one categorical model
per latent channel (spatial latents) or per latent element (flat latents) for scalar quantization, one shared
model for vector quantization; constriction's range coder turns each sample's symbols into bytes.
"""

from __future__ import annotations

import numpy as np
import torch

from coinference.codec.base import CODECS, FeatureCodec
from coinference.codec.bottleneck import Decoder, Encoder
from coinference.codec.config import CodecConfig
from coinference.codec.entropy import CategoricalCoder
from coinference.codec.quantize import ScalarQuantizer, VectorQuantizer
from coinference.errors import ConfigError
from coinference.evaluate import INFERENCE_BATCH, eval_mode


class QuantizedCodec(FeatureCodec):
    """Encoder → quantizer → decoder, with an entropy coder fitted on training symbols."""

    def __init__(self, feature_shape: tuple[int, ...], cfg: CodecConfig, nonneg: bool = True) -> None:
        super().__init__(feature_shape, cfg, nonneg)
        self.encoder = Encoder(self.feature_shape, cfg.channels, cfg.dim, cfg.stride, cfg.kernel)
        self.latent_shape = self.encoder.latent_shape
        self.decoder = Decoder(self.feature_shape, cfg.channels, cfg.dim, cfg.stride, cfg.kernel, nonneg)
        self.quantizer: ScalarQuantizer | VectorQuantizer = self._make_quantizer()
        self.coder: CategoricalCoder | None = None

    def _make_quantizer(self) -> ScalarQuantizer | VectorQuantizer:
        raise NotImplementedError

    def _contexts(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def aux_loss(self) -> torch.Tensor:
        return self.quantizer.aux_loss

    def set_coding(self, on: bool) -> None:
        self.quantizer.enabled = on

    def anneal(self, progress: float) -> None:
        # Soft-to-hard: the soft assignment's temperature falls geometrically from 1 to 1e-3.
        self.quantizer.temperature = float(10.0 ** (-3.0 * min(1.0, max(0.0, progress))))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer(self.encoder(feature)))

    def to_symbols(self, feature: torch.Tensor) -> torch.Tensor:
        return self.quantizer.symbols(self.encoder(feature))

    def from_symbols(self, symbols: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.dequantize(symbols))

    @torch.no_grad()
    def fit_statistics(self, features: torch.Tensor, batch_size: int = INFERENCE_BATCH) -> None:
        with eval_mode(self):
            chunks = [self.to_symbols(features[i : i + batch_size]) for i in range(0, len(features), batch_size)]
        syms = torch.cat(chunks)
        self.coder = CategoricalCoder.fit(syms.numpy(), self.quantizer.levels, self._contexts())

    def _require_coder(self) -> CategoricalCoder:
        if self.coder is None:
            raise ConfigError("the entropy model is not fitted: call fit_statistics on training features first")
        return self.coder

    def byte_coder(self) -> CategoricalCoder:
        return self._require_coder()


@CODECS.register("sq")
class ScalarQuantCodec(QuantizedCodec):
    """Learned scalar quantizer (L = 2**bits levels) on every latent value, one codebook shared by all (or one per
    latent channel, ``CodecConfig.codebook``); range-coded, one model per channel (spatial latents) or element
    (flat latents)."""

    kind = "sq"

    def _make_quantizer(self) -> ScalarQuantizer:
        channels = self.latent_shape[0] if self.cfg.codebook == "channel" else None
        return ScalarQuantizer(self.cfg.bits, self.cfg.grad, self.cfg.commitment, channels)

    def _contexts(self) -> np.ndarray:
        shape = self.latent_shape
        if len(shape) == 3:  # one model per channel, shared over positions
            return np.broadcast_to(np.arange(shape[0])[:, None, None], shape).copy()
        return np.arange(int(np.prod(shape))).reshape(shape)


@CODECS.register("vq")
class VectorQuantCodec(QuantizedCodec):
    """Learned vector quantizer: one of L = 2**bits codewords per latent vector (the channel vector at each
    position of a spatial latent, or the whole flat latent, as the authors' code does at the last splits)."""

    kind = "vq"

    def _make_quantizer(self) -> VectorQuantizer:
        return VectorQuantizer(self.latent_shape[0], self.cfg.bits, self.cfg.grad, self.cfg.commitment)

    def _contexts(self) -> np.ndarray:
        return np.zeros(self.latent_shape[1:], dtype=np.int64)
