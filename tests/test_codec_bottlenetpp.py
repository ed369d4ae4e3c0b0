"""BottleNet++ as the authors built it: conv + BatchNorm + sigmoid, channel and spatial modes, a mirrored decoder, the
bit-erasure channel, and its 8-bit symbols sent raw (the paper's count) or range-coded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from coinference.build import Builder, codec_config, load_codec
from coinference.codec import HEADER_BYTES, CodecConfig, build_codec
from coinference.codec.bottlenetpp import BitErasureChannel, BottleNetPP
from coinference.codec.state import coder_state, load_coder_state
from coinference.errors import ConfigError
from coinference.fidelity import FIDELITIES
from coinference.prune import load_pruned
from coinference.variant import CodecSpec, VariantSpec

SHAPE = (8, 8, 8)


def _codec(**kw: object) -> BottleNetPP:
    torch.manual_seed(0)
    codec = build_codec(CodecConfig("bottlenetpp", **kw), SHAPE)  # type: ignore[arg-type]
    assert isinstance(codec, BottleNetPP)
    return codec.eval()


def test_encoder_is_conv_batchnorm_sigmoid_and_the_decoder_mirrors_it() -> None:
    codec = _codec(channels=2, kernel=3)
    enc = codec.encoder
    assert isinstance(enc.body, nn.Conv2d) and enc.body.kernel_size == (3, 3) and enc.body.stride == (1, 1)
    assert enc.body.in_channels == 8  # no channel: the noise plane would be zeros, so it is left out
    assert isinstance(enc.norm, nn.BatchNorm2d) and enc.norm.num_features == 2
    z = enc(torch.randn(5, *SHAPE), torch.zeros(5))
    assert z.shape == (5, 2, 8, 8) and bool((z > 0).all() and (z < 1).all())  # a sigmoid's range
    kinds = [type(m) for m in codec.decoder]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert codec.decoder[0].kernel_size == (3, 3)
    assert codec(torch.randn(3, *SHAPE)).shape == (3, *SHAPE)
    noisy = _codec(channels=2, kernel=3, channel="awgn")
    assert noisy.encoder.body.in_channels == 9  # the noise level as one extra input plane
    flat = build_codec(CodecConfig("bottlenetpp", dim=4), (16,)).eval()
    assert [type(m) for m in flat.encoder.modules()][1:] == [nn.Linear, nn.BatchNorm1d]
    assert [type(m) for m in flat.decoder] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert flat(torch.rand(2, 16)).shape == (2, 16)


def test_spatial_mode_halves_height_and_width() -> None:
    codec = _codec(channels=2, stride=2)
    assert codec.latent_shape == (2, 4, 4)
    body = codec.encoder.body
    assert body.kernel_size == (2, 2) and body.stride == (2, 2)
    f = torch.rand(3, *SHAPE)
    assert codec.to_symbols(f).shape == (3, 2, 4, 4)
    assert codec(f).shape == (3, *SHAPE)
    # the decoder's sub-pixel conv (no bias: the BatchNorm after it has one) is the 2×2 transposed conv of stride 2
    conv = codec.decoder[0]
    assert conv.bias is None
    up = nn.ConvTranspose2d(2, 8, 2, stride=2, bias=False)
    with torch.no_grad():
        up.weight.copy_(conv.weight.view(8, 2, 2, 2).permute(3, 0, 1, 2))  # (C, i, j, c) → (c, C, i, j)
    z = torch.rand(3, 2, 4, 4)
    torch.testing.assert_close(codec.decoder[1](conv(z)), up(z))


def test_entropy_coded_bits_are_fewer_on_peaked_values_and_decode_exactly() -> None:
    raw, coded = _codec(channels=2), _codec(channels=2, entropy_coded=True)
    coded.load_state_dict(raw.state_dict())
    train = 0.05 * torch.randn(200, *SHAPE)  # small features: sigmoid outputs near 1/2, a peaked 8-bit histogram
    raw.fit_statistics(train)
    coded.fit_statistics(train)
    assert raw.coder is None and coded.coder is not None
    test = 0.05 * torch.randn(10, *SHAPE)
    for i in range(len(test)):
        f = test[i : i + 1]
        b_raw, b_coded = raw.compress(f), coded.compress(f)
        assert len(b_raw) - HEADER_BYTES == 2 * 8 * 8  # one byte per 8-bit value
        assert len(b_coded) < len(b_raw) / 2
        sym = coded.to_symbols(f)
        assert torch.equal(coded.decode_payload(coded.encode_payload(sym[0])), sym[0])
        assert torch.equal(coded.decompress(b_coded), coded.from_symbols(sym))
        assert torch.equal(coded.decompress(b_coded), raw.decompress(b_raw))  # only the bits differ
    back = _codec(channels=2, entropy_coded=True)  # the tables survive a checkpoint
    back.load_state_dict(coded.state_dict())
    load_coder_state(back, coder_state(coded))
    assert back.compress(test[:1]) == coded.compress(test[:1])


def test_entropy_coding_is_a_spec_choice_that_keeps_existing_keys() -> None:
    spec = VariantSpec("tiny-cnn", "synthetic", "stem", codec=CodecSpec("bottlenetpp", channels=2, bits=8))
    assert "entropy_coded" not in spec.to_dict()["codec"]  # the raw (paper's) spec keeps the key it had
    ec = spec.with_(codec={"entropy_coded": True})
    assert ec.key != spec.key and ec.codec.label == "bottlenetpp/c2/8b/ec"
    assert VariantSpec.from_json(ec.to_json()) == ec
    assert codec_config(ec).entropy_coded and not codec_config(spec).entropy_coded
    with pytest.raises(ConfigError, match="entropy_coded"):
        CodecSpec("sq", entropy_coded=True)
    with pytest.raises(ConfigError, match="entropy_coded"):
        CodecConfig("huffman", entropy_coded=True)


def test_bit_erasure_channel_erases_bits_not_values() -> None:
    ch = BitErasureChannel(0.0).eval()
    x = torch.round(torch.rand(4, 2, 3, 3) * 255) / 255
    torch.testing.assert_close(ch(x), x)  # p = 0: nothing lost
    ch.level = 0.5
    ch.generator = torch.Generator().manual_seed(0)
    y = ch(torch.zeros(2000))
    # each erased bit is worth half its weight: E[y] = p · 255/2 / 255 = 0.25, and values take many levels
    assert abs(float(y.mean()) - 0.25) < 0.02 and len(torch.unique(y)) > 50
    ch.enabled = False
    assert torch.equal(ch(x), x)


def test_built_variant_exports_with_its_range_coder(run_cli, tmp_path: Path) -> None:
    """An entropy-coded spatial-mode variant from the builder: its checkpoint reloads to identical bytes, and the
    export package (ONNX, runtime coder tables) verifies."""
    from storage import open_table

    codec = CodecSpec("bottlenetpp", channels=2, stride=2, bits=8, entropy_coded=True)
    spec = VariantSpec("tiny-cnn", "synthetic", "block1", fidelity="smoke", codec=codec)
    builder = Builder(cache_dir=tmp_path / "cache")
    m = builder.measure(spec)
    _, data = builder.base(spec)
    folder = tmp_path / "cache" / "variants" / spec.key
    back, _ = load_codec(folder / "codec.pt")
    head = load_pruned(folder / "device.pt").head
    val = data.evaluated_on("val").test_x[: FIDELITIES.get("smoke").bits_limit]
    with torch.no_grad():
        feats = head(data.normalize(val))
    bits = [8 * (len(back.compress(feats[i : i + 1])) - HEADER_BYTES) for i in range(len(feats))]
    assert sum(bits) / len(bits) == m.bits_mean  # the reloaded tables code as the measured codec did
    assert m.bits_mean < 2 * 4 * 4 * 8  # fewer than the raw 8 bits per latent value
    url = f"sqlite:///{tmp_path / 'lookup.db'}"
    with open_table(url) as t:
        t.record_ok(spec, m, "r1", {"device": folder / "device.pt", "codec": folder / "codec.pt"})
    out = tmp_path / "out"
    code, stdout, err = run_cli("export", "--db", url, "-b", "40KB/s", "--device", "mcu", "--out", str(out))
    assert code == 0, err
    codec = json.loads((out / "manifest.json").read_text())["codec"]
    assert codec["kind"] == "categorical" and codec["source"] == "bottlenetpp"
    assert "predictions identical" in stdout
