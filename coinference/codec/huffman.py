"""Huffman baseline for the split-only and 2-Step baselines: 8-bit uniform quantization of the float feature on
its own (per-tensor) [min, max], Huffman code built from the symbol frequencies of training features.

The Huffman trees come from constriction (``constriction.symbol.huffman``, the same well-kept library as the
range coder), so no coder of our own is needed. Payload: min and max as two little-endian float32 (64 bits of side
information, counted in the payload), then the code bits, LSB-first in little-endian 32-bit words, cut to whole
bytes.
"""

from __future__ import annotations

import numpy as np
import torch

from coinference.codec.base import CODECS, FeatureCodec
from coinference.codec.config import CodecConfig
from coinference.codec.quantize import uniform_quantize
from coinference.errors import ConfigError
from coinference.evaluate import INFERENCE_BATCH
from coinference.runtime.codecs import HuffmanCoder, MinMaxHuffmanCoder

HUFFMAN_BITS = 8

__all__ = ["HUFFMAN_BITS", "HuffmanCodec", "HuffmanCoder", "per_tensor_range"]


def per_tensor_range(feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of each sample of (N, ...), as float32 of shape (N, 1, ...) for broadcasting."""
    flat = feature.flatten(1).to(torch.float32)
    shape = (-1,) + (1,) * (feature.dim() - 1)
    return flat.min(1).values.view(shape), flat.max(1).values.view(shape)


@CODECS.register("huffman")
class HuffmanCodec(FeatureCodec):
    """No learned parts: 8-bit per-tensor uniform quantization + Huffman code of training frequencies."""

    kind = "huffman"

    def __init__(self, feature_shape: tuple[int, ...], cfg: CodecConfig, nonneg: bool = True) -> None:
        super().__init__(feature_shape, cfg, nonneg)
        self.coder: HuffmanCoder | None = None
        self.numel = int(np.prod(self.feature_shape))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        lo, hi = per_tensor_range(feature)
        return uniform_quantize(feature.to(torch.float32), lo, hi, HUFFMAN_BITS)[1]

    def to_symbols(self, feature: torch.Tensor) -> torch.Tensor:
        """(N, 2 + numel) float64 rows: min, max, then the 8-bit symbols (exact in float64)."""
        lo, hi = per_tensor_range(feature)
        sym = uniform_quantize(feature.to(torch.float32), lo, hi, HUFFMAN_BITS)[0]
        return torch.cat([lo.flatten(1), hi.flatten(1), sym.flatten(1)], 1).to(torch.float64)

    def from_symbols(self, symbols: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * len(self.feature_shape)
        lo = symbols[:, 0].to(torch.float32).view(shape)
        hi = symbols[:, 1].to(torch.float32).view(shape)
        sym = symbols[:, 2:].to(torch.float32).view(-1, *self.feature_shape)
        scale = torch.where(hi - lo > 0, hi - lo, torch.ones_like(hi))
        return sym / (2**HUFFMAN_BITS - 1) * scale + lo

    @torch.no_grad()
    def fit_statistics(self, features: torch.Tensor, batch_size: int = INFERENCE_BATCH) -> None:
        counts = np.zeros(2**HUFFMAN_BITS, dtype=np.float64)
        for i in range(0, len(features), batch_size):
            sym = self.to_symbols(features[i : i + batch_size])[:, 2:].to(torch.int64)
            counts += np.bincount(sym.numpy().ravel(), minlength=2**HUFFMAN_BITS)
        self.coder = HuffmanCoder(counts)

    def _require_coder(self) -> HuffmanCoder:
        if self.coder is None:
            raise ConfigError("the Huffman table is not built: call fit_statistics on training features first")
        return self.coder

    def byte_coder(self) -> MinMaxHuffmanCoder:
        """min and max as two float32, then the Huffman code of the 8-bit symbols."""
        return MinMaxHuffmanCoder(self._require_coder(), self.numel)
