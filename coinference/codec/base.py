"""The codec plug-in point: :class:`FeatureCodec` and the ``CODECS`` registry.

Like CompressAI's models, a codec has a differentiable ``forward`` for training and ``compress``/``decompress``
that produce and read real bytes (:mod:`coinference.codec.entropy` format). Between them sit *symbols*: what the
device sends (integer indices, bits, 8-bit values or, for analog JSCC, channel symbols). ``to_symbols`` runs the
device side, ``from_symbols`` the server side; ``forward`` in eval mode equals ``from_symbols(to_symbols(x))``
(through the channel, when the codec has one).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from coinference.codec.config import CodecConfig
from coinference.codec.entropy import pack, unpack
from coinference.errors import ConfigError
from coinference.evaluate import eval_mode
from coinference.registry import Registry
from coinference.runtime.codecs import ByteCoder, RawCoder


class FeatureCodec(nn.Module):
    """Base class of feature codecs for one feature shape.

    Args:
        feature_shape: (C, H, W) or (D,) of the head's output (batch excluded).
        cfg: the codec configuration.
        nonneg: whether the feature is non-negative (post-ReLU); the decoder then ends with a ReLU.

    Attributes:
        encoder: device-side module (its conv/linear MACs are device compute).
        decoder: server-side module (its MACs are server compute).
    """

    kind: ClassVar[str] = ""

    def __init__(self, feature_shape: tuple[int, ...], cfg: CodecConfig, nonneg: bool = True) -> None:
        super().__init__()
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.cfg = cfg
        self.nonneg = nonneg
        self.encoder: nn.Module = nn.Identity()
        self.decoder: nn.Module = nn.Identity()

    # ---------------------------------------------------------------- training path
    @property
    def aux_loss(self) -> torch.Tensor:
        """Auxiliary loss of the last training forward (codebook + commitment); 0 when the codec has none."""
        return torch.zeros(())

    def set_coding(self, on: bool) -> None:
        """Switch quantization and channel on (default) or off (warm-up)."""

    def anneal(self, progress: float) -> None:
        """Called after each training step with the fraction of training done (soft-to-hard annealing)."""

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.from_symbols(self.to_symbols(feature))

    # ---------------------------------------------------------------- deployment path
    def to_symbols(self, feature: torch.Tensor) -> torch.Tensor:
        """Device side: feature batch (N, *feature_shape) → symbols (N, ...)."""
        raise NotImplementedError

    def from_symbols(self, symbols: torch.Tensor) -> torch.Tensor:
        """Server side: symbols (N, ...) → decoded feature (N, *feature_shape)."""
        raise NotImplementedError

    def fit_statistics(self, features: torch.Tensor) -> None:
        """Estimate symbol statistics (entropy model, Huffman table) on training features (N, *feature_shape)."""

    @property
    def has_channel(self) -> bool:
        """Whether ``forward`` passes the latent through a noisy channel layer."""
        return False

    @property
    def channel_uses(self) -> int | None:
        """Channel uses per sample (real symbols or bits) of the JSCC kinds; None for source codecs."""
        return None

    def set_channel_level(self, level: float, generator: torch.Generator | None = None) -> None:
        """Evaluation SNR (dB) or p of the codec's channel."""
        raise ConfigError(f"codec {self.kind!r} has no channel")

    def byte_coder(self) -> ByteCoder:
        """The runtime coder of one sample's symbols (:mod:`coinference.runtime.codecs`, numpy only): what
        :meth:`encode_payload` and :meth:`decode_payload` run, and what an export package's tables rebuild, so the
        builder's bits and a deployed runtime's bytes are the same bytes.

        Raises:
            ConfigError: statistics the coder needs are not fitted yet.
        """
        raise NotImplementedError

    def encode_payload(self, symbols: torch.Tensor) -> bytes:
        """Payload bytes of one sample's symbols (batch dimension removed)."""
        return self.byte_coder().encode(symbols.detach().cpu().numpy())

    def decode_payload(self, payload: bytes) -> torch.Tensor:
        """Symbols of one sample (no batch dimension) from payload bytes; raises BitstreamError if malformed."""
        return torch.from_numpy(np.asarray(self.byte_coder().decode(payload)))

    def check_feature(self, feature: torch.Tensor, batch_one: bool = False) -> None:
        """ConfigError unless ``feature`` is (N, *feature_shape) (N = 1 when ``batch_one``)."""
        if not isinstance(feature, torch.Tensor) or tuple(feature.shape[1:]) != self.feature_shape:
            shape = tuple(feature.shape) if isinstance(feature, torch.Tensor) else type(feature).__name__
            raise ConfigError(f"codec expects features (N, {', '.join(map(str, self.feature_shape))}), got {shape}")
        if batch_one and feature.shape[0] != 1:
            raise ConfigError(f"compress takes one sample (batch 1), got a batch of {feature.shape[0]}")

    @torch.no_grad()
    def compress(self, feature: torch.Tensor) -> bytes:
        """Bitstream (header + payload) of one feature of shape (1, *feature_shape)."""
        self.check_feature(feature, batch_one=True)
        with eval_mode(self):
            return pack(self.kind, self.encode_payload(self.to_symbols(feature)[0]))

    @torch.no_grad()
    def decompress(self, blob: bytes) -> torch.Tensor:
        """Decoded feature (1, *feature_shape) of a bitstream made by :meth:`compress`.

        Raises:
            BitstreamError: truncated, corrupted or foreign bitstream.
        """
        with eval_mode(self):
            return self.from_symbols(self.decode_payload(unpack(self.kind, blob)).unsqueeze(0))


CODECS: Registry[type[FeatureCodec]] = Registry("codec kind")


def build_codec(cfg: CodecConfig, feature_shape: tuple[int, ...], nonneg: bool = True) -> FeatureCodec:
    """A fresh codec of ``cfg.kind`` for features of ``feature_shape`` (batch excluded).

    Raises:
        ConfigError: sizes that do not fit the feature (e.g. dims larger than the feature).
        UnknownNameError: unknown kind.
    """
    return CODECS.get(cfg.kind)(tuple(feature_shape), cfg, nonneg)


@CODECS.register("none")
class RawCodec(FeatureCodec):
    """The split-only reference: the float32 feature as is (payload = 32 bits per value)."""

    kind = "none"

    def to_symbols(self, feature: torch.Tensor) -> torch.Tensor:
        return feature.to(torch.float32)

    def from_symbols(self, symbols: torch.Tensor) -> torch.Tensor:
        return symbols

    def byte_coder(self) -> RawCoder:
        return RawCoder(self.feature_shape, "float32", "float32")
