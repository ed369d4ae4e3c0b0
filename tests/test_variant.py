from __future__ import annotations

import subprocess
import sys

import pytest

from coinference.errors import ConfigError
from coinference.variant import CodecSpec, Measurement, VariantSpec, codec_for_ratio

SPEC = VariantSpec(
    "resnet20",
    "cifar10",
    "layer2.2",
    weights_sha256="ab" * 32,
    sparsity=0.5,
    codec=CodecSpec("sq", channels=8, dim=None, bits=2),
    seed=3,
)


def test_json_round_trip_and_key() -> None:
    again = VariantSpec.from_json(SPEC.to_json())
    assert again == SPEC and again.key == SPEC.key
    assert SPEC.with_(seed=4).key != SPEC.key
    assert SPEC.with_(codec={"bits": 3}).codec == CodecSpec("sq", channels=8, bits=3)


def test_key_stable_across_processes() -> None:
    code = (
        "from coinference.variant import *;"
        "print(VariantSpec('resnet20','cifar10','layer2.2',weights_sha256='ab'*32,sparsity=0.5,"
        "codec=CodecSpec('sq',channels=8,dim=None,bits=2),seed=3).key)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert out.stdout.strip() == SPEC.key


def test_spec_validation() -> None:
    with pytest.raises(ConfigError, match="sparsity must be in \\[0, 1\\), got 1.0"):
        SPEC.with_(sparsity=1.0)
    with pytest.raises(ConfigError, match="codec kind 'zip' unknown"):
        CodecSpec("zip")
    with pytest.raises(ConfigError, match="codec bits must be ≥ 1, got 0"):
        CodecSpec(bits=0)
    with pytest.raises(ConfigError, match="unknown variant spec fields: colour"):
        VariantSpec.from_dict({**SPEC.to_dict(), "colour": 1})
    with pytest.raises(ConfigError, match="version 9 is newer"):
        VariantSpec.from_dict({**SPEC.to_dict(), "version": 9})


def test_measurement_round_trip() -> None:
    m = Measurement(0.9, 100, 200, 512.0, 600, header_bits=32, versions={"torch": "2.13.0"})
    assert Measurement.from_dict(m.to_dict()) == m
    assert m.device_memory_bytes == 0


@pytest.mark.parametrize(
    ("shape", "ratio", "bits", "expect"),
    [
        ((64, 8, 8), 64, 2, CodecSpec(channels=64, stride=2)),  # spatial cut first: stride 2 keeps all channels
        ((64, 8, 8), 256, 2, CodecSpec(channels=64, stride=4)),
        ((64, 8, 8), 2048, 2, CodecSpec(channels=8, stride=4)),
        ((4, 8, 8), 2048, 2, CodecSpec(channels=1, dim=2, stride=4)),  # fewer symbols than positions: FC
        ((16, 32, 32), 512, 2, CodecSpec(channels=8, stride=4)),
        ((64,), 32, 2, CodecSpec(dim=32)),
        # a full-size FC stays (a learned transform before quantization); a bare quantizer is CodecSpec() by hand
        ((64,), 16, 2, CodecSpec(dim=64)),
        ((16, 4, 4), 20, 2, CodecSpec(channels=13, dim=205)),  # no stride fits 205 symbols in 16 channels
        ((8, 6, 6), 16, 2, CodecSpec()),  # stride 2 needs 32 > 8 channels: no conv, the whole feature quantized
        ((8, 6, 6), 18, 2, CodecSpec(channels=8, dim=256)),
    ],
)
def test_codec_for_ratio(shape, ratio, bits, expect) -> None:
    c = codec_for_ratio(shape, ratio, bits)
    assert c == expect
    if c.dim is not None:
        nominal = c.dim * bits
    else:
        nominal = (c.channels or shape[0]) * (shape[1] // c.stride) * (shape[2] // c.stride) * bits
    raw = 32
    for d in shape:
        raw *= d
    assert raw / nominal == pytest.approx(ratio, rel=0.02)


def test_codec_for_ratio_errors() -> None:
    with pytest.raises(ConfigError, match="ratio must be a finite number ≥ 1, got 0.5"):
        codec_for_ratio((8, 4, 4), 0.5)
    with pytest.raises(ConfigError, match="more than the feature's"):
        codec_for_ratio((8, 4, 4), 2, bits=8)


def test_a_later_field_at_its_default_leaves_the_key_unchanged() -> None:
    # format-1 specs (before codec stride existed) keep their keys; a stride other than 1 is part of the key
    assert "stride" not in SPEC.to_json()
    strided = SPEC.with_(codec={"stride": 2})
    assert '"stride":2' in strided.to_json() and strided.key != SPEC.key
    assert VariantSpec.from_json(strided.to_json()) == strided and VariantSpec.from_json(SPEC.to_json()) == SPEC
    # the shared codebook (what every spec had before the field) leaves keys alone; per-channel ones are part of it
    assert "codebook" not in SPEC.to_json()
    per_channel = SPEC.with_(codec={"codebook": "channel"})
    assert per_channel.key != SPEC.key and VariantSpec.from_json(per_channel.to_json()) == per_channel
    assert per_channel.codec.label.endswith("/channel") and not SPEC.codec.label.endswith("/channel")
    with pytest.raises(ConfigError, match="codec codebook 'per-pixel' unknown"):
        SPEC.with_(codec={"codebook": "per-pixel"})
