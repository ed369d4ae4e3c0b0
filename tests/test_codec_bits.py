"""Bitstream, entropy coder, quantizers and Huffman coder (no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coinference.codec import (
    HEADER_BYTES,
    BitstreamError,
    CategoricalCoder,
    CodecConfig,
    ScalarQuantizer,
    VectorQuantizer,
    build_codec,
)
from coinference.codec.entropy import empirical_entropy_bits, pack, unpack
from coinference.codec.huffman import HuffmanCoder
from coinference.errors import ConfigError


def test_header_roundtrip_and_damage_detected() -> None:
    blob = pack("sq", b"\x01\x02\x03payload")
    assert len(blob) == HEADER_BYTES + 10
    assert unpack("sq", blob) == b"\x01\x02\x03payload"
    with pytest.raises(BitstreamError, match="truncated bitstream: header says 10 payload bytes, got 9"):
        unpack("sq", blob[:-1])
    with pytest.raises(BitstreamError, match="truncated bitstream: 4 bytes"):
        unpack("sq", blob[:4])
    bad = bytearray(blob)
    bad[-3] ^= 0x10
    with pytest.raises(BitstreamError, match="CRC-32 mismatch"):
        unpack("sq", bytes(bad))
    with pytest.raises(BitstreamError, match="made by codec 'sq', not 'vq'"):
        unpack("vq", blob)
    with pytest.raises(BitstreamError, match="magic byte"):
        unpack("sq", b"\x00" + blob[1:])


def test_range_coder_roundtrip_and_rate_near_entropy() -> None:
    rng = np.random.default_rng(0)
    probs = np.array([0.55, 0.25, 0.15, 0.05])
    sample = rng.choice(4, size=(200, 64), p=probs)
    coder = CategoricalCoder.fit(sample, 4, np.zeros(64, dtype=np.int64))
    total = 0
    for row in sample:
        payload = coder.encode(row)
        assert np.array_equal(coder.decode(payload), row)
        total += 8 * len(payload)
    # Per-sample messages pay a small flush overhead; one long message must be within 3 % of the entropy.
    long = CategoricalCoder(coder.probs, np.zeros(sample.size, dtype=np.int64))
    bits = 8 * len(long.encode(sample.ravel()))
    h = empirical_entropy_bits(sample)
    assert h <= bits * 1.0001 and bits <= 1.03 * h, (bits, h)
    assert total < 1.3 * h  # per-sample (64 symbols) overhead stays modest


def test_range_coder_rejects_garbage() -> None:
    coder = CategoricalCoder(np.full((1, 4), 0.25), np.zeros(32, dtype=np.int64))
    payload = coder.encode(np.arange(32) % 4)
    with pytest.raises(BitstreamError):
        coder.decode(payload + b"\xff\xff\xff\xff\x01")
    with pytest.raises(ValueError, match="expected 32 symbols"):
        coder.encode(np.zeros(31))


def test_scalar_quantizer_has_exactly_L_levels_and_ste_gradient() -> None:
    torch.manual_seed(0)
    for bits in (1, 2, 3):
        q = ScalarQuantizer(bits).train()
        z = torch.randn(64, 32, requires_grad=True)
        out = q(z)
        assert q.codebook.numel() == 2**bits
        assert torch.unique(out.detach()).numel() == 2**bits  # quantile init puts every level in use
        assert int(q.symbols(z).max()) == 2**bits - 1 and int(q.symbols(z).min()) == 0
        (out.sum() + q.aux_loss).backward()
        assert torch.allclose(z.grad, torch.ones_like(z) + z.grad - 1)  # finite
        assert z.grad.abs().sum() > 0 and q.codebook.grad is not None
        q.eval()
        assert torch.equal(q(z), q.dequantize(q.symbols(z)))


@pytest.mark.parametrize("bits", [2, 5])  # 5: more levels than COMPARE_LEVELS, one search per channel
def test_channel_codebooks_fit_each_channels_scale(bits: int) -> None:
    torch.manual_seed(0)
    scale = torch.tensor([0.01, 1.0, 100.0]).view(1, 3, 1, 1)
    z = (torch.randn(64, 3, 5, 5) * scale).requires_grad_(True)
    q = ScalarQuantizer(bits, channels=3).train()
    out = q(z)
    levels = 2**bits
    assert q.codebook.shape == (3, levels)
    sym = q.symbols(z)
    assert sym.shape == z.shape
    for c in range(3):  # every channel spreads over all of its own levels
        assert torch.unique(sym[:, c]).numel() == levels
    # each value's symbol is its nearest level of its own channel
    cb = q.sorted_codebook().detach()
    nearest = (z.detach().unsqueeze(-1) - cb.view(1, 3, 1, 1, levels)).abs().argmin(-1)
    assert torch.equal(sym, nearest)
    (out.sum() + q.aux_loss).backward()
    assert z.grad is not None and q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0
    q.eval()
    assert torch.equal(q(z), q.dequantize(sym))
    shared = ScalarQuantizer(bits).train()
    shared(z)
    assert torch.unique(shared.symbols(z)[:, 0]).numel() <= 2  # one set of levels leaves the weak channel behind
    with pytest.raises(ConfigError, match="quantizer of 3 channels"):
        q.symbols(torch.randn(2, 4, 5, 5))


def test_codebooks_start_at_lloyd_max() -> None:
    torch.manual_seed(0)
    u = torch.rand(200_000)
    q = ScalarQuantizer(2).train()
    q(u)  # uniform on [0, 1): the Lloyd-Max quantizer of 4 levels is 1/8, 3/8, 5/8, 7/8
    torch.testing.assert_close(q.sorted_codebook().detach(), torch.tensor([1, 3, 5, 7]) / 8, atol=0.01, rtol=0)
    skewed = torch.distributions.Exponential(1.0).sample((4096, 2))
    per_channel = ScalarQuantizer(2, channels=2).train()
    per_channel(skewed)
    cb = per_channel.sorted_codebook().detach()
    sym = per_channel.symbols(skewed)
    for c in range(2):  # a fixed point: each level is the mean of the values it is nearest to
        means = torch.stack([skewed[:, c][sym[:, c] == k].mean() for k in range(4)])
        torch.testing.assert_close(cb[c], means, atol=1e-3, rtol=0)
    quantiles = torch.quantile(skewed[:, 0], (torch.arange(4) + 0.5) / 4)
    mse_quantiles = ((skewed[:, 0, None] - quantiles).abs().min(1).values ** 2).mean()
    assert ((skewed - per_channel.dequantize(sym)) ** 2)[:, 0].mean() < 0.9 * mse_quantiles


def test_soft_to_hard_forward_is_hard() -> None:
    q = ScalarQuantizer(2, grad="soft").train()
    q.temperature = 0.5
    z = torch.randn(100)
    out = q(z)
    assert torch.unique(out.detach()).numel() <= 4


def test_vector_quantizer_one_codeword_per_vector() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=6, bits=3).train()
    z = torch.randn(8, 6, 4, 4, requires_grad=True)
    out = vq(z)
    assert out.shape == z.shape and vq.codebook.shape == (8, 6)
    sym = vq.symbols(z)
    assert sym.shape == (8, 4, 4) and int(sym.max()) < 8
    vq.eval()
    assert torch.equal(vq(z), vq.dequantize(vq.symbols(z)))
    flat = VectorQuantizer(dim=5, bits=2).eval()
    assert flat.symbols(torch.randn(3, 5)).shape == (3,)


def test_huffman_coder_roundtrip_and_length() -> None:
    rng = np.random.default_rng(1)
    counts = np.bincount(rng.geometric(0.2, 5000).clip(0, 255), minlength=256)
    coder = HuffmanCoder(counts)
    s = rng.geometric(0.2, 1000).clip(0, 255)
    data = coder.encode(s)
    assert np.array_equal(coder.decode(data, len(s)), s)
    assert 8 * len(data) < 8 * len(s)  # much shorter than 8 bits per symbol
    with pytest.raises(BitstreamError):
        coder.decode(data[: len(data) // 4], len(s))


@pytest.mark.parametrize("kind", ["huffman", "none"])
def test_baseline_codecs_roundtrip(kind: str) -> None:
    codec = build_codec(CodecConfig(kind), (4, 3, 3)).eval()
    feats = torch.rand(20, 4, 3, 3) * 3
    codec.fit_statistics(feats)
    blob = codec.compress(feats[:1])
    out = codec.decompress(blob)
    assert torch.equal(out, codec(feats[:1]))
    if kind == "none":
        assert torch.equal(out, feats[:1]) and len(blob) - HEADER_BYTES == 4 * 36
    else:
        assert (out - feats[:1]).abs().max() <= 3 / 255 + 1e-6
    with pytest.raises(BitstreamError):
        codec.decompress(blob[:-2])
    with pytest.raises(ConfigError, match="one sample"):
        codec.compress(feats[:2])
    with pytest.raises(ConfigError, match=r"expects features \(N, 4, 3, 3\)"):
        codec.compress(torch.zeros(1, 4, 3))
