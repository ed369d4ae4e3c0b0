"""The wire format: layout, round trips, every way a frame can be bad, and a parser fuzz."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from coinference.errors import ConfigError
from coinference.runtime import wire
from coinference.runtime.wire import (
    HEADER_BYTES,
    BadFrameTypeError,
    BadMagicError,
    BadPayloadError,
    BadVersionError,
    ChecksumError,
    FrameTooLargeError,
    FrameType,
    Status,
    TruncatedFrameError,
    WireError,
    decode_frame,
    encode_error,
    encode_reply,
    encode_request,
    parse_error,
    parse_reply,
    read_frame,
    variant_id,
)

KEY = "0123456789abcdef" + "f" * 48
VID = bytes.fromhex("0123456789abcdef")


def test_header_layout_is_the_documented_one() -> None:
    frame = encode_request(KEY, 7, b"xyz")
    assert len(frame) == HEADER_BYTES + 3 == 35
    head = b"CoIn" + bytes([1, 1]) + b"\0\0" + VID + (7).to_bytes(8, "big") + (3).to_bytes(4, "big")
    assert frame[:28] == head
    assert frame[28:32] == zlib.crc32(b"xyz", zlib.crc32(head)).to_bytes(4, "big")
    assert frame[32:] == b"xyz"


def test_request_reply_error_round_trip() -> None:
    f, rest = decode_frame(encode_request(KEY, 2**64 - 1, b"\x00\x01") + b"tail")
    assert (f.type, f.variant_id, f.request_id, f.payload, rest) == (
        FrameType.REQUEST,
        VID,
        2**64 - 1,
        b"\0\1",
        b"tail",
    )
    assert f.wire_bytes == HEADER_BYTES + 2

    scores = np.array([[0.5, -2.0, 3.25, 1.0]], dtype=np.float64)
    f, _ = decode_frame(encode_reply(VID, 9, scores, server_s=0.0123456))
    body = parse_reply(f.payload)
    assert f.type == FrameType.REPLY and f.request_id == 9
    assert body.predicted_class == 2
    assert body.scores.dtype == np.float32 and np.array_equal(body.scores, scores[0].astype(np.float32))
    assert body.server_s == pytest.approx(0.012346)

    f, _ = decode_frame(encode_error(VID, 3, Status.UNKNOWN_VARIANT, "no such variant"))
    err = parse_error(f.payload)
    assert f.type == FrameType.ERROR and (err.status, err.message) == (Status.UNKNOWN_VARIANT, "no such variant")


def test_empty_payload_and_long_messages() -> None:
    f, _ = decode_frame(encode_request(VID, 1, b""))
    assert f.payload == b""
    msg = "é" * 2000  # 4,000 UTF-8 bytes: cut to 1,024 without splitting a character
    err = parse_error(decode_frame(encode_error(VID, 1, Status.INTERNAL_ERROR, msg))[0].payload)
    assert err.message == "é" * 512
    with pytest.raises(WireError, match="non-OK"):
        encode_error(VID, 1, Status.OK)
    with pytest.raises(WireError, match="scores"):
        encode_reply(VID, 1, np.zeros(0))


def test_variant_ids() -> None:
    assert variant_id(KEY) == variant_id(KEY[:16].upper()) == variant_id(VID) == VID
    for bad in ("0123", "zz23456789abcdef", b"short"):
        with pytest.raises(ConfigError, match="variant"):
            variant_id(bad)
    with pytest.raises(ConfigError, match="u64"):
        encode_request(VID, -1, b"")


def _with_header(frame: bytes, offset: int, value: bytes) -> bytes:
    """``frame`` with header bytes changed and the CRC recomputed, so only the intended check fails."""
    b = bytearray(frame)
    b[offset : offset + len(value)] = value
    b[28:32] = zlib.crc32(bytes(b[32:]), zlib.crc32(bytes(b[:28]))).to_bytes(4, "big")
    return bytes(b)


@pytest.mark.parametrize(
    ("offset", "value", "error", "status"),
    [
        (0, b"XoIn", BadMagicError, Status.MALFORMED),
        (4, b"\x02", BadVersionError, Status.MALFORMED),
        (5, b"\x00", BadFrameTypeError, Status.MALFORMED),
        (5, b"\x09", BadFrameTypeError, Status.MALFORMED),
        (6, b"\x00\x01", BadFrameTypeError, Status.MALFORMED),
        (24, (1 << 31).to_bytes(4, "big"), FrameTooLargeError, Status.TOO_LARGE),
    ],
)
def test_bad_headers(offset: int, value: bytes, error: type[WireError], status: Status) -> None:
    frame = _with_header(encode_request(VID, 1, b"abcd"), offset, value)
    with pytest.raises(error) as e:
        decode_frame(frame)
    assert e.value.status == status


def test_checksum_covers_header_and_payload() -> None:
    frame = encode_request(VID, 1, b"abcd")
    for i in [*range(8, 24), 28, 32, 35]:  # variant id, request id, the CRC itself, payload
        bad = bytearray(frame)
        bad[i] ^= 0x10
        with pytest.raises(ChecksumError):
            decode_frame(bytes(bad))


def test_oversized_and_truncated() -> None:
    frame = encode_request(VID, 1, b"x" * 100)
    with pytest.raises(FrameTooLargeError, match="100 bytes exceeds the maximum of 99"):
        decode_frame(frame, max_payload=99)
    for cut in (0, 5, 31, 32, 131):
        with pytest.raises(TruncatedFrameError):
            decode_frame(frame[:cut])


def test_reply_and_error_payloads_are_checked() -> None:
    good = decode_frame(encode_reply(VID, 1, np.ones(3)))[0].payload
    for bad in (good[:5], good[:-1], good + b"\0", b"\x01" + good[1:], good[:4] + (7).to_bytes(4, "big") + good[8:]):
        with pytest.raises(BadPayloadError):
            parse_reply(bad)
    good = decode_frame(encode_error(VID, 1, Status.BUSY, "hi"))[0].payload
    for bad in (good[:2], good + b"!", good[:-1]):
        with pytest.raises(BadPayloadError):
            parse_error(bad)
    assert parse_error(bytes([200]) + good[1:]).status == Status.INTERNAL_ERROR  # a code from a newer server


def _reader(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    if eof:
        r.feed_eof()
    return r


def test_read_frame_from_a_stream() -> None:
    async def main() -> None:
        two = encode_request(VID, 1, b"a") + encode_request(VID, 2, b"bb")
        r = _reader(two)
        assert (await read_frame(r)).payload == b"a"  # type: ignore[union-attr]
        assert (await read_frame(r)).payload == b"bb"  # type: ignore[union-attr]
        assert await read_frame(r) is None  # clean end between frames
        with pytest.raises(TruncatedFrameError):
            await read_frame(_reader(two[:20]))
        with pytest.raises(TruncatedFrameError):  # stalled inside a frame
            await read_frame(_reader(two[:10], eof=False), frame_timeout_s=0.01)
        with pytest.raises(TimeoutError):  # idle: no frame began
            await read_frame(_reader(b"", eof=False), idle_timeout_s=0.01)
        # An oversized length is refused from the header alone, before any payload arrives.
        with pytest.raises(FrameTooLargeError):
            await read_frame(_reader(encode_request(VID, 1, b"x" * 50)[:32], eof=False), max_payload=10)

    asyncio.run(main())


def test_parser_fuzz_raises_only_wire_errors() -> None:
    """Random bytes and random mutations of valid frames: every outcome is a frame or a WireError."""
    rng = np.random.default_rng(0)
    valid = [encode_request(VID, 5, b"p" * 20), encode_reply(VID, 5, np.arange(10)), encode_error(VID, 5, Status.BUSY)]
    outcomes = {"frame": 0, "error": 0}
    for i in range(20_000):
        if i % 2:
            data = rng.bytes(int(rng.integers(0, 80)))
        else:
            b = bytearray(valid[i % 3])
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(len(b)))] = int(rng.integers(256))
            data = bytes(b[: int(rng.integers(len(b) + 1))]) if rng.random() < 0.3 else bytes(b)
        try:
            f, _ = decode_frame(data, max_payload=1000)
            if f.type == FrameType.REPLY:
                parse_reply(f.payload)
            elif f.type == FrameType.ERROR:
                parse_error(f.payload)
            outcomes["frame"] += 1
        except WireError:
            outcomes["error"] += 1
    assert outcomes["error"] > 19_000  # a random mutation passes the CRC only when it changed nothing


def test_no_pickle_or_eval_in_the_runtime() -> None:
    import pathlib

    src = pathlib.Path(wire.__file__).parent
    for name in ("wire.py", "server.py", "client.py", "shaping.py", "adaptive.py"):
        text = (src / name).read_text()
        for banned in ("import pickle", "pickle.", "eval(", "exec(", "allow_pickle=True"):
            assert banned not in text, (name, banned)


def test_network_path_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import coinference.runtime.wire, coinference.runtime.server, coinference.runtime.client\n"
        "import coinference.runtime.shaping, coinference.runtime.adaptive\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None and m.startswith('torch')]\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_struct_layout_constant() -> None:
    assert struct.calcsize(">4sBBH8sQII") == HEADER_BYTES == 32
