"""The codec phase: build an encoder/decoder for a frozen head's output, train it, and measure it.

``train_codec(head, tail, data, CodecConfig, TrainConfig) -> TrainedCodec``. The device ``head`` (image batch →
feature (N, C, H, W) or (N, D)) stays frozen, in eval mode (BatchNorm statistics included); shapes come from
what it emits, so a pruned head works as well as a zoo one. The codec is trained through the server ``tail``
(frozen unless ``finetune_tail``; a fine-tuned tail is a copy) with cross-entropy plus distillation from the
uncoded model's logits, after a warm-up without quantization/channel. By default the head's outputs on the
training subset are computed once and cached (no augmentation then); :func:`coinference.train.fit` runs the loop.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coinference.codec.base import FeatureCodec, build_codec
from coinference.codec.bottleneck import pca_init
from coinference.codec.config import CodecConfig
from coinference.codec.entropy import HEADER_BITS, HEADER_BYTES
from coinference.codec.learned import QuantizedCodec
from coinference.data import ImageData
from coinference.errors import CoinferenceError, ConfigError
from coinference.evaluate import INFERENCE_BATCH, eval_mode, outputs
from coinference.profile import count_macs
from coinference.progress import phase, reporting
from coinference.train import (
    StepHooks,
    TrainConfig,
    TrainResult,
    fit,
    pack_targets,
    packed_distillation,
    training_batches,
)

CACHE_LIMIT_BYTES = 2 * 1024**3
STATS_SAMPLES = 5000


class DeviceSide(nn.Module):
    """The device part of a codec: feature (N, ...) → symbols (indices, bits, 8-bit values or channel input)."""

    def __init__(self, codec: FeatureCodec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.codec.to_symbols(feature)


class ServerSide(nn.Module):
    """The server part of a codec: symbols (N, ...) → decoded feature (N, ...)."""

    def __init__(self, codec: FeatureCodec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, symbols: torch.Tensor) -> torch.Tensor:
        return self.codec.from_symbols(symbols)


@dataclass(frozen=True)
class CodecEval:
    """Test-set figures of a trained codec. Bits are payload bits per sample from real bytes at batch 1."""

    accuracy: float
    bits_mean: float | None
    bits_max: int | None
    header_bits: int
    channel_uses: int | None
    channel_level: float | None
    encoder_macs: int
    decoder_macs: int
    samples_coded: int
    roundtrips_checked: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(eq=False)
class TrainedCodec:
    """A trained codec for one head output shape, with the tail to decode into.

    Attributes:
        codec: the codec module (eval mode).
        config: its configuration.
        feature_shape: head output shape (batch excluded).
        tail: the server tail to run on decoded features (a fine-tuned copy when ``finetune_tail``).
        encoder_macs: device MACs of the encoder per image (conv/linear, batch 1).
        decoder_macs: server MACs of the decoder per image.
        train_result: what the training loop did (None for kinds without learned parts).
    """

    codec: FeatureCodec
    config: CodecConfig
    feature_shape: tuple[int, ...]
    tail: nn.Module
    encoder_macs: int
    decoder_macs: int
    train_result: TrainResult | None

    @property
    def encoder(self) -> DeviceSide:
        """Device side (feature → symbols)."""
        return DeviceSide(self.codec)

    @property
    def decoder(self) -> ServerSide:
        """Server side (symbols → feature)."""
        return ServerSide(self.codec)

    header_bits = HEADER_BITS

    def compress(self, feature: torch.Tensor) -> bytes:
        """Bitstream of one feature (1, *feature_shape): a 10-byte header + payload."""
        return self.codec.compress(feature)

    def decompress(self, blob: bytes) -> torch.Tensor:
        """Feature (1, *feature_shape) of a bitstream; BitstreamError when truncated or corrupted."""
        return self.codec.decompress(blob)

    def evaluate(self, head: nn.Module, data: ImageData, **kwargs: object) -> CodecEval:
        """:func:`evaluate_codec` with this codec's tail."""
        return evaluate_codec(self, head, data, **kwargs)  # type: ignore[arg-type]


def head_features(
    head: nn.Module, data: ImageData, x_uint8: torch.Tensor, batch_size: int = INFERENCE_BATCH
) -> torch.Tensor:
    """The frozen head's outputs (float32) for uint8 images, in eval mode (the head's mode is restored), from the
    fused runtime when it supports the head, else eager PyTorch (:func:`coinference.fused.fused_outputs`). The
    features train and evaluate the codec, so which runtime computes them never depends on a timing: the same
    bits in every run on a machine, whatever its load (``bench/bench_variants.py --parts inference`` times it
    against eager on a `fast` build's training images).
    One progress phase, "head features", covers it."""
    from coinference.fused import fused_outputs  # its C kernels are compiled on first use only

    with phase("head features", len(x_uint8), "image") as advance:
        with reporting(None):  # its eager fallback runs through outputs(), a phase of its own
            out = fused_outputs(head, data, x_uint8, batch_size)
        advance(len(x_uint8))
    return out


def codec_macs(codec: FeatureCodec) -> tuple[int, int]:
    """(encoder, decoder) MACs per image of ``codec`` (batch 1, eval mode)."""
    with torch.no_grad(), eval_mode(codec):
        f = torch.zeros(1, *codec.feature_shape)
        with count_macs(codec.encoder) as enc:
            sym = codec.to_symbols(f)
        with count_macs(codec.decoder) as dec:
            codec.from_symbols(sym)
    return enc[0], dec[0]


def _cached_batches(feats: torch.Tensor, targets: torch.Tensor, bs: int, seed: int) -> Iterator:
    gen = torch.Generator().manual_seed(seed + 1)
    bs = min(bs, len(feats))
    while True:
        order = torch.randperm(len(feats), generator=gen)
        for i in range(0, len(order) - bs + 1, bs):
            idx = order[i : i + bs]
            yield feats[idx], targets[idx]


def _live_batches(
    head: nn.Module, teacher: nn.Module, data: ImageData, cfg: TrainConfig, image_teacher: nn.Module | None
) -> Iterator:
    gen = torch.Generator().manual_seed(cfg.seed)
    for x, y in training_batches(data, cfg, gen):
        with torch.no_grad():  # never yield inside it: grad mode is global and would leak into the caller
            f = head(x)
            if image_teacher is None:
                t = teacher(f)
            else:
                with eval_mode(image_teacher):
                    t = image_teacher(x)
        yield f, pack_targets(y, t)


def train_pool(data: ImageData, cfg: TrainConfig) -> torch.Tensor:
    """Indices of the training images ``cfg`` trains on (its fixed subset, as :func:`training_batches` draws it)."""
    n = len(data.train_x)
    gen = torch.Generator().manual_seed(cfg.seed)
    return torch.randperm(n, generator=gen)[: cfg.subset] if cfg.subset and cfg.subset < n else torch.arange(n)


def training_features(head: nn.Module, data: ImageData, cfg: TrainConfig) -> torch.Tensor:
    """The frozen head's outputs on the training images of ``cfg`` (pass to :func:`train_codec` to share them)."""
    return head_features(head, data, data.train_x[train_pool(data, cfg)])


def train_codec(
    head: nn.Module,
    tail: nn.Module,
    data: ImageData,
    codec_cfg: CodecConfig,
    train_cfg: TrainConfig,
    *,
    cache_features: bool | None = None,
    train_features: torch.Tensor | None = None,
    teacher: nn.Module | None = None,
    teacher_logits: torch.Tensor | None = None,
) -> TrainedCodec:
    """Build a codec for ``head``'s output and train it through ``tail`` (see the module docstring).

    Args:
        head: frozen device part (kept in eval mode; its parameters are never updated).
        tail: server part (frozen unless ``codec_cfg.finetune_tail``; then a copy is trained).
        data: training data (the statistics of the entropy model come from its training split).
        codec_cfg: the codec.
        train_cfg: budget of the codec phase.
        cache_features: compute the head's outputs once (no augmentation); None = when they fit in 2 GiB.
        train_features: those outputs, precomputed by :func:`training_features` (shared by several codecs).
        teacher: a model (normalised images → logits) to distill from, e.g. the unpruned base model; default:
            ``tail`` on the uncoded head output.
        teacher_logits: ``teacher``'s logits on every training image, (len(data.train_x), classes), precomputed
            (e.g. :meth:`coinference.build.Builder.teacher_logits`); used with cached features.

    Raises:
        ConfigError: sizes that do not fit the head's output. TrainingError: non-finite loss.
    """
    with eval_mode(head), eval_mode(tail):  # both frozen; every submodule's mode is restored, even on an error
        with torch.no_grad():
            probe = head(data.normalize(data.train_x[:2]))
        shape = tuple(int(s) for s in probe.shape[1:])
        pool = train_pool(data, train_cfg)
        if train_features is not None and tuple(train_features.shape) != (len(pool), *shape):
            raise ConfigError(f"train_features {tuple(train_features.shape)} do not match {len(pool)} × {shape}")
        if teacher_logits is not None and teacher is None:
            raise ConfigError("teacher_logits need the teacher they come from (augmented live batches run it)")
        if teacher_logits is not None and len(teacher_logits) != len(data.train_x):
            raise ConfigError(f"teacher_logits has {len(teacher_logits)} rows for {len(data.train_x)} training images")
        cache = cache_features if cache_features is not None else len(pool) * 4 * math.prod(shape) <= CACHE_LIMIT_BYTES
        if train_features is None and codec_cfg.learns and cache:
            train_features = head_features(head, data, data.train_x[pool])
        stats = (
            train_features[:STATS_SAMPLES]
            if train_features is not None
            else head_features(head, data, data.train_x[pool[:STATS_SAMPLES]])
        )
        # the codec's initial weights come from the phase's seed, not from whatever ran before (e.g. a pruning phase
        # in this process, or none when the pruned backbone came from the cache)
        torch.manual_seed(train_cfg.seed)
        codec = build_codec(codec_cfg, shape, bool(stats.min() >= 0))
        if codec_cfg.init == "pca" and isinstance(codec, QuantizedCodec):
            pca_init(codec.encoder, codec.decoder, stats)
        trained_tail = copy.deepcopy(tail) if codec_cfg.finetune_tail else tail
        result = None
        grads = {p: p.requires_grad for p in tail.parameters()}
        try:
            if codec_cfg.learns:  # learned parts, or only a fine-tuned tail (2-Step's behind Huffman)
                targets = None  # the cached features' distillation targets (None: the tail's, computed by _train)
                if train_features is not None and teacher_logits is not None:
                    targets = teacher_logits[pool]
                elif train_features is not None and teacher is not None:
                    targets = outputs(teacher, data, data.train_x[pool], progress="teacher logits")
                result = _train(
                    codec, head, teacher, tail, trained_tail, data, codec_cfg, train_cfg, pool, train_features, targets
                )
            codec.eval()
            codec.set_coding(True)
            codec.fit_statistics(stats)
        finally:
            for p, g in grads.items():
                p.requires_grad_(g)
    trained_tail.eval()
    enc, dec = codec_macs(codec)
    return TrainedCodec(codec, codec_cfg, shape, trained_tail, enc, dec, result)


def _train(
    codec: FeatureCodec,
    head: nn.Module,
    image_teacher: nn.Module | None,
    teacher: nn.Module,
    tail: nn.Module,
    data: ImageData,
    ccfg: CodecConfig,
    tcfg: TrainConfig,
    pool: torch.Tensor,
    feats: torch.Tensor | None,
    teacher_logits: torch.Tensor | None,
) -> TrainResult:
    finetune = ccfg.finetune_tail
    for p in teacher.parameters():
        p.requires_grad_(False)
    for p in tail.parameters():
        p.requires_grad_(finetune)
    if feats is not None:
        logits = teacher_logits
        if logits is None:
            with torch.no_grad():
                logits = torch.cat(
                    [teacher(feats[i : i + INFERENCE_BATCH]) for i in range(0, len(feats), INFERENCE_BATCH)]
                )
        batches = _cached_batches(feats, pack_targets(data.train_y[pool], logits), tcfg.batch_size, tcfg.seed)
    else:
        batches = _live_batches(head, teacher, data, tcfg, image_teacher)
    total = tcfg.total_steps(len(data.train_x))
    # Warm-up trains the bottleneck (and tail) without quantization; with neither there is nothing to warm up
    # (the loss would not depend on any trainable parameter), so quantization starts at step 0.
    bottleneck = [p for m in (getattr(codec, "encoder", None), getattr(codec, "decoder", None)) if m is not None
                  for p in m.parameters()]  # fmt: skip
    warm = int(ccfg.warmup * total) if bottleneck or finetune else 0
    recon: list[torch.Tensor] = [torch.zeros(())]

    def forward(f: torch.Tensor) -> torch.Tensor:
        decoded = codec(f)
        if ccfg.recon > 0:
            recon[0] = F.mse_loss(decoded, f) / f.detach().var().clamp_min(1e-12)
        return tail(decoded)

    distilled = packed_distillation(ccfg.distill, ccfg.distill_temperature)

    def loss_fn(logits: torch.Tensor, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return distilled(logits, packed, x) + codec.aux_loss + ccfg.recon * recon[0]

    def before(step: int) -> None:
        if step == 0 or step == warm:
            codec.set_coding(step >= warm)

    def after(step: int) -> None:
        if step >= warm:
            codec.anneal((step - warm + 1) / max(1, total - warm))

    def modes() -> None:
        codec.train()
        head.eval()
        tail.train(finetune)

    params: list[Any] = [{"params": list(codec.parameters())}]
    if finetune:
        params.append({"params": list(tail.parameters()), "lr_scale": ccfg.tail_lr})
    return fit(
        codec,
        data,
        tcfg,
        params=params,
        forward=forward,
        loss_fn=loss_fn,
        hooks=StepHooks(before_step=before, after_step=after),
        train_mode=modes,
        batches=batches,
        progress=f"codec {ccfg.kind}",
    )


@torch.no_grad()
def evaluate_codec(
    trained: TrainedCodec,
    head: nn.Module,
    data: ImageData,
    *,
    level: float | None = None,
    features: torch.Tensor | None = None,
    bits_samples: int | None = None,
    verify: int = 8,
    batch_size: int = INFERENCE_BATCH,
    seed: int = 0,
) -> CodecEval:
    """Accuracy and bits per sample of ``trained`` on ``data``'s test split.

    Accuracy runs the eval-mode codec batched (through its channel at ``level``: SNR dB or p, default the
    config's). Bits are counted from ``compress`` at batch 1 on the first ``bits_samples`` test images (default
    all); the header is reported apart. The first ``verify`` bitstreams are decompressed and checked bit-exact
    against the device/server path.

    Args:
        features: precomputed head outputs of the test images (saves a head pass when evaluating many codecs).
    """
    codec, tail = trained.codec, trained.tail
    # eval mode for the block only: every submodule's own mode is restored (the caller may be mid-training)
    with eval_mode(codec), eval_mode(tail):
        feats = features if features is not None else head_features(head, data, data.test_x)
        if len(feats) != len(data.test_y):
            raise ConfigError(f"{len(feats)} test features for {len(data.test_y)} test labels")
        used_level = None
        if codec.has_channel:
            used_level = float(level if level is not None else (codec.cfg.snr_db if _is_snr(codec) else codec.cfg.p))
            codec.set_channel_level(used_level, torch.Generator().manual_seed(seed))
        elif level is not None:
            raise ConfigError(f"codec {codec.kind!r} has no channel; got a channel level {level}")
        correct = 0
        layout = torch.channels_last if feats.dim() == 4 else torch.contiguous_format  # as outputs() runs models
        with phase(f"evaluate codec {codec.kind}", len(feats), "image") as advance:
            for i in range(0, len(feats), batch_size):
                logits = tail(codec(feats[i : i + batch_size].contiguous(memory_format=layout)))
                correct += int((logits.argmax(1) == data.test_y[i : i + batch_size]).sum())
                advance(len(logits))
        bits: list[int] = []
        checked = 0
        if codec.kind != "jscc-awgn":
            n = len(feats) if bits_samples is None else min(bits_samples, len(feats))
            with phase(f"count bits {codec.kind}", n, "image") as advance:
                for i in range(n):
                    f = feats[i : i + 1]
                    blob = codec.compress(f)
                    bits.append(8 * (len(blob) - HEADER_BYTES))
                    if checked < verify:
                        expect = codec.from_symbols(codec.to_symbols(f))
                        if not torch.equal(codec.decompress(blob), expect):
                            what = f"codec {codec.kind!r}: decompress(compress(x)) differs at test image {i}"
                            raise CoinferenceError(what)
                        checked += 1
                    advance()
        return CodecEval(
            accuracy=correct / len(feats),
            bits_mean=sum(bits) / len(bits) if bits else None,
            bits_max=max(bits) if bits else None,
            header_bits=HEADER_BITS,
            channel_uses=codec.channel_uses,
            channel_level=used_level,
            encoder_macs=trained.encoder_macs,
            decoder_macs=trained.decoder_macs,
            samples_coded=len(bits),
            roundtrips_checked=checked,
        )


def _is_snr(codec: FeatureCodec) -> bool:
    return codec.kind == "jscc-awgn" or (codec.kind == "bottlenetpp" and codec.cfg.channel == "awgn")
