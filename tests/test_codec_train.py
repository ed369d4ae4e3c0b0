"""The codec phase on tiny-cnn + synthetic data: every kind trains, round-trips bytes and keeps the head frozen."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from coinference.codec import (
    HEADER_BITS,
    BitstreamError,
    CodecConfig,
    evaluate_codec,
    head_features,
    train_codec,
)
from coinference.errors import ConfigError
from coinference.evaluate import accuracy
from coinference.train import TrainConfig, fit
from coinference.zoo import build_model, split_model

FAST = TrainConfig(optimizer="adam", lr=0.01, weight_decay=0.0, steps=12, batch_size=32)


@pytest.fixture(scope="module")
def trained_tiny(synthetic):
    torch.manual_seed(0)
    m = build_model("tiny-cnn")
    fit(m, synthetic, TrainConfig(lr=0.05, epochs=4, batch_size=32))
    assert accuracy(m, synthetic) > 0.9
    return m.eval()


SPATIAL = [  # split 2: feature (8, 8, 8)
    CodecConfig("sq", channels=4, bits=2),
    CodecConfig("sq", channels=4, stride=2, dim=16, bits=3, grad="soft"),
    CodecConfig("vq", channels=4, bits=3),
    CodecConfig("jscc-bsc", channels=2, stride=2),
    CodecConfig("bottlenetpp", channels=4, stride=2, channel="erasure"),
    CodecConfig("bottlenetpp", channels=4, kernel=3, entropy_coded=True),
    CodecConfig("huffman"),
    CodecConfig("none"),
]
FLAT = [  # split 3: feature (16,) after pooling
    CodecConfig("sq", dim=8, bits=2),
    CodecConfig("vq", dim=8, bits=4),
    CodecConfig("jscc-bsc", dim=12),
    CodecConfig("bottlenetpp", dim=8, channel="awgn"),
    CodecConfig("bottlenetpp", dim=8, entropy_coded=True),
]


@pytest.mark.parametrize("split,cfg", [(2, c) for c in SPATIAL] + [(3, c) for c in FLAT], ids=lambda v: str(v)[:60])
def test_every_kind_roundtrips_bit_exactly(synthetic, trained_tiny, split, cfg) -> None:
    head, tail = split_model(trained_tiny, split)
    tc = train_codec(head, tail, synthetic, cfg, FAST)
    feats = head_features(head, synthetic, synthetic.test_x[:6])
    for i in range(len(feats)):
        f = feats[i : i + 1]
        blob = tc.compress(f)
        out = tc.decompress(blob)
        assert out.shape == f.shape
        assert torch.equal(out, tc.decoder(tc.encoder(f)))  # bit-exact: the quantized feature
        if not tc.codec.has_channel:
            assert torch.equal(out, tc.codec(f))
    ev = evaluate_codec(tc, head, synthetic, bits_samples=10)
    blobs = [tc.compress(feats[i : i + 1]) for i in range(6)]
    assert ev.bits_mean is not None and ev.header_bits == HEADER_BITS
    assert ev.bits_max >= ev.bits_mean and ev.samples_coded == 10 and ev.roundtrips_checked == 8
    assert min(8 * len(b) - HEADER_BITS for b in blobs) > 0
    if cfg.kind == "jscc-bsc":
        assert ev.channel_uses == tc.codec.channel_uses and ev.channel_level == cfg.p
    assert 0.0 <= ev.accuracy <= 1.0


def test_truncated_or_corrupted_stream_is_an_error(synthetic, trained_tiny) -> None:
    head, tail = split_model(trained_tiny, 2)
    tc = train_codec(head, tail, synthetic, CodecConfig("sq", channels=4, bits=2), FAST)
    blob = tc.compress(head_features(head, synthetic, synthetic.test_x[:1]))
    for bad in (blob[:-1], blob[:5], blob + b"\x00", blob[:12] + bytes([blob[12] ^ 1]) + blob[13:]):
        with pytest.raises(BitstreamError):
            tc.decompress(bad)


def test_head_stays_frozen_and_tail_untouched(synthetic, trained_tiny) -> None:
    head, tail = split_model(copy.deepcopy(trained_tiny), 2)
    head.train()  # even a head left in train mode must not update its BN statistics
    before_h = {k: v.clone() for k, v in head.state_dict().items()}
    before_t = {k: v.clone() for k, v in tail.state_dict().items()}
    cfg = CodecConfig("sq", channels=4, bits=2, finetune_tail=True)
    tc = train_codec(head, tail, synthetic, cfg, TrainConfig(steps=4, batch_size=32), cache_features=False)
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in before_h.items())
    assert all(torch.equal(v, tail.state_dict()[k]) for k, v in before_t.items())
    assert head.training  # mode restored
    assert tc.tail is not tail
    assert any(not torch.equal(v, tc.tail.state_dict()[k]) for k, v in before_t.items() if v.is_floating_point())
    assert all(p.requires_grad for p in tail.parameters())


def test_evaluation_restores_every_module_mode(synthetic, trained_tiny) -> None:
    """evaluate_codec runs everything in eval mode and then hands the caller its modes back (e.g. mid-training)."""
    head, tail = split_model(trained_tiny, 2)
    tc = train_codec(head, tail, synthetic, CodecConfig("sq", channels=4, bits=2, finetune_tail=True), FAST)
    head.train()
    tc.codec.train()
    tc.tail.train()
    tc.tail[0].eval()  # a submodule deliberately left in eval mode keeps it
    before = {m: m.training for net in (head, tc.codec, tc.tail) for m in net.modules()}
    ev = evaluate_codec(tc, head, synthetic, bits_samples=4)
    assert 0.0 <= ev.accuracy <= 1.0
    assert {m: m.training for m in before} == before
    assert tc.codec.training and tc.tail.training and head.training


def test_pruned_head_with_fewer_channels(synthetic, trained_tiny) -> None:
    """The codec follows the head's real output (5 channels here), not the zoo's split shape (8)."""
    head0, tail0 = split_model(trained_tiny, 2)
    head = nn.Sequential(head0, nn.Conv2d(8, 5, 1))
    tail = nn.Sequential(nn.Conv2d(5, 8, 1), tail0)
    tc = train_codec(head, tail, synthetic, CodecConfig("sq", channels=3, dim=20, bits=2), FAST)
    assert tc.feature_shape == (5, 8, 8)
    assert tc.encoder_macs == 5 * 3 * 64 + 3 * 64 * 20  # 1×1 conv + FC, per image
    assert tc.decoder_macs == 20 * 3 * 64 + 3 * 5 * 64
    with pytest.raises(ConfigError, match="conv channels 6 larger than the feature's 5 channels"):
        train_codec(head, tail, synthetic, CodecConfig("sq", channels=6), FAST)


def test_learned_codec_learns_and_compresses(synthetic, trained_tiny) -> None:
    head, tail = split_model(trained_tiny, 2)
    base = accuracy(trained_tiny, synthetic)
    cfg = CodecConfig("sq", channels=4, stride=2, bits=2)
    tc = train_codec(head, tail, synthetic, cfg, TrainConfig(optimizer="adam", lr=0.01, epochs=16, batch_size=32))
    ev = evaluate_codec(tc, head, synthetic)
    raw_bits = 32 * 8 * 8 * 8
    assert ev.accuracy >= base - 0.15, (ev.accuracy, base)  # chance is 0.25
    assert ev.bits_mean is not None and ev.bits_mean <= 2 * 4 * 4 * 4 + 32 and ev.bits_mean < raw_bits / 50


def test_bad_sizes_are_config_errors(synthetic, trained_tiny) -> None:
    head, tail = split_model(trained_tiny, 2)
    with pytest.raises(ConfigError, match="fc dim 1000 larger than the flattened feature"):
        train_codec(head, tail, synthetic, CodecConfig("sq", dim=1000), FAST)
    with pytest.raises(ConfigError, match="stride 3 does not divide"):
        train_codec(head, tail, synthetic, CodecConfig("sq", channels=4, stride=3), FAST)
    head3, tail3 = split_model(trained_tiny, 3)
    with pytest.raises(ConfigError, match="need a spatial"):
        train_codec(head3, tail3, synthetic, CodecConfig("sq", channels=4), FAST)
    with pytest.raises(ConfigError, match="analog"):
        tc = train_codec(head3, tail3, synthetic, CodecConfig("jscc-awgn", dim=8), FAST)
        tc.compress(head_features(head3, synthetic, synthetic.test_x[:1]))


def test_jscc_awgn_counts_channel_uses_and_degrades_with_noise(synthetic, trained_tiny) -> None:
    head, tail = split_model(trained_tiny, 3)
    cfg = CodecConfig("jscc-awgn", dim=8, snr_train_db=(-5.0, 20.0))
    tc = train_codec(head, tail, synthetic, cfg, TrainConfig(optimizer="adam", lr=0.01, epochs=8, batch_size=32))
    hi = evaluate_codec(tc, head, synthetic, level=20.0)
    lo = evaluate_codec(tc, head, synthetic, level=-10.0)
    assert hi.channel_uses == 8 and hi.bits_mean is None and hi.channel_level == 20.0
    assert hi.accuracy > lo.accuracy
    with pytest.raises(ConfigError, match="SNR 45.0 dB out of range"):
        evaluate_codec(tc, head, synthetic, level=45.0)


def test_pca_init_starts_at_a_good_linear_code() -> None:
    torch.manual_seed(0)
    basis = torch.randn(3, 8)
    coeffs = torch.randn(64, 4, 4, 3)
    feats = (coeffs @ basis).permute(0, 3, 1, 2).contiguous()  # (64, 8, 4, 4): rank 3 per pixel
    cfg = CodecConfig("sq", channels=3)
    from coinference.codec import build_codec
    from coinference.codec.bottleneck import pca_init

    codec = build_codec(cfg, (8, 4, 4), nonneg=False)
    codec.set_coding(False)
    assert pca_init(codec.encoder, codec.decoder, feats)
    with torch.no_grad():
        assert torch.allclose(codec(feats), feats, atol=1e-4)  # exact for rank-3 data


class _Recorder(nn.Module):
    """A teacher that records the shapes it is called on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape[1:]))
        return self.model(x)


@pytest.mark.parametrize("cache", [True, False])
def test_codec_distills_from_a_given_teacher_on_images(synthetic, trained_tiny, cache: bool) -> None:
    head, tail = split_model(trained_tiny, 2)
    teacher = _Recorder(copy.deepcopy(trained_tiny).train())
    train_codec(head, tail, synthetic, CodecConfig("sq", channels=4, bits=2), FAST, cache_features=cache,
                teacher=teacher)  # fmt: skip
    assert teacher.shapes and set(teacher.shapes) == {(3, 8, 8)}  # run on images, not on the head's features
    assert teacher.training and teacher.model.training  # the caller's mode is left as it was


def test_precomputed_teacher_logits_are_the_targets(synthetic, trained_tiny) -> None:
    from coinference.evaluate import outputs

    head, tail = split_model(trained_tiny, 2)
    cfg = CodecConfig("sq", channels=4, bits=2, distill=1.0, finetune_tail=True)
    logits = outputs(trained_tiny, synthetic, synthetic.train_x)
    teacher = _Recorder(trained_tiny)
    a = train_codec(head, tail, synthetic, cfg, FAST, teacher=teacher, teacher_logits=logits)
    assert teacher.shapes == []  # the cached features' targets are the given logits; the teacher is not run
    b = train_codec(head, tail, synthetic, cfg, FAST, teacher=teacher, teacher_logits=logits.flip(1))
    assert any(not torch.equal(p, q) for p, q in zip(a.codec.parameters(), b.codec.parameters(), strict=True))
    # with a training subset the logits of the subset's images are the targets: the same run as the teacher's own
    sub = replace(FAST, subset=100)
    c = train_codec(head, tail, synthetic, cfg, sub, teacher=trained_tiny, teacher_logits=logits)
    d = train_codec(head, tail, synthetic, cfg, sub, teacher=trained_tiny)
    for p, q in zip(c.codec.parameters(), d.codec.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="teacher_logits has 5 rows for 230 training images"):
        train_codec(head, tail, synthetic, cfg, FAST, teacher=teacher, teacher_logits=logits[:5])
    with pytest.raises(ConfigError, match="teacher_logits need the teacher"):
        train_codec(head, tail, synthetic, cfg, FAST, teacher_logits=logits)


def test_codec_start_depends_on_the_phase_seed_only(trained_tiny, synthetic) -> None:
    """Whatever drew from the global generator before (a pruning phase in this process, or nothing when the pruned
    backbone came from a cache), the codec phase starts, and so ends, the same; another seed starts elsewhere."""
    head, tail = split_model(trained_tiny, 2)
    cfg = CodecConfig("sq", channels=4, stride=2, dim=16, bits=2, init="random")
    states = []
    for before, seed in ((1, 0), (2, 0), (1, 5)):
        torch.manual_seed(before)
        torch.rand(100)
        tc = train_codec(head, tail, synthetic, cfg, replace(FAST, steps=2, seed=seed))
        states.append(tc.codec.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])
