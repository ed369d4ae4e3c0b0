"""Step 3 of the framework: task-oriented feature coding of the split feature.

Dimension reduction (conv + FC encoder, complementary decoder), learned scalar/vector quantization with a real
entropy-coded bitstream, learned joint source-channel coding over AWGN and BSC, and the BottleNet++ and Huffman
baselines. ``train_codec`` runs the codec phase on a frozen head; ``evaluate_codec`` measures accuracy and bits
per sample from the bytes ``compress`` emits.
"""

from coinference.codec import bottlenetpp, huffman, jscc, learned  # noqa: F401  (register the codec kinds)
from coinference.codec.base import CODECS, FeatureCodec, RawCodec, build_codec
from coinference.codec.bottleneck import Decoder, Encoder, latent_shape
from coinference.codec.channel import (
    CHANNELS,
    AWGNChannel,
    BSCChannel,
    ErasureChannel,
    awgn_capacity,
    awgn_latency_s,
    bsc_capacity,
    h2,
    normalize_power,
    separate_latency_s,
)
from coinference.codec.config import KINDS, CodecConfig
from coinference.codec.entropy import HEADER_BITS, HEADER_BYTES, BitstreamError, CategoricalCoder
from coinference.codec.quantize import ScalarQuantizer, VectorQuantizer
from coinference.codec.train import (
    CodecEval,
    DeviceSide,
    ServerSide,
    TrainedCodec,
    codec_macs,
    evaluate_codec,
    head_features,
    train_codec,
)

__all__ = [
    "CHANNELS",
    "CODECS",
    "HEADER_BITS",
    "HEADER_BYTES",
    "KINDS",
    "AWGNChannel",
    "BSCChannel",
    "BitstreamError",
    "CategoricalCoder",
    "CodecConfig",
    "CodecEval",
    "Decoder",
    "DeviceSide",
    "Encoder",
    "ErasureChannel",
    "FeatureCodec",
    "RawCodec",
    "ScalarQuantizer",
    "ServerSide",
    "TrainedCodec",
    "VectorQuantizer",
    "awgn_capacity",
    "awgn_latency_s",
    "bsc_capacity",
    "build_codec",
    "codec_macs",
    "evaluate_codec",
    "h2",
    "head_features",
    "latent_shape",
    "normalize_power",
    "separate_latency_s",
    "train_codec",
]
