"""The wire format between a device and the edge server: versioned, length-prefixed, checksummed binary frames.

Every frame is a 32-byte header followed by ``payload_length`` bytes (layout and status codes: docs/WIRE.md)::

    offset size field
      0     4   magic b"CoIn"
      4     1   version (1)
      5     1   frame type: 1 request, 2 reply, 3 error
      6     2   flags (0; reserved)
      8     8   variant id: the first 8 bytes (16 hex digits) of the variant's key
     16     8   request id, u64, chosen by the client and echoed by the server
     24     4   payload length, u32 bytes
     28     4   CRC-32 of header bytes 0–27 followed by the payload

All integers are big-endian. A request's payload is the device's coded bytes; a reply's is a status, the predicted
class, the server's compute time and the scores (float32 logits); an error's is a status and a UTF-8 message.
Nothing here unpickles or evaluates anything: frames are parsed with :mod:`struct` and numpy dtypes only.
"""

from __future__ import annotations

import asyncio
import enum
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from coinference.errors import CoinferenceError, ConfigError

MAGIC = b"CoIn"
VERSION = 1
HEADER = struct.Struct(">4sBBH8sQII")
HEADER_BYTES = HEADER.size  # 32
assert HEADER_BYTES == 32
VARIANT_ID_BYTES = 8
DEFAULT_MAX_PAYLOAD = 1 << 20
"""Largest payload a reader accepts unless told otherwise, bytes (1 MiB: a raw float32 ResNet feature map of
CIFAR size is 64 KiB)."""
MAX_U32 = (1 << 32) - 1
MAX_MESSAGE_BYTES = 1024
"""Error messages are cut to this many UTF-8 bytes."""

_REPLY = struct.Struct(">BxHiI")  # status, pad, number of scores, predicted class, server compute time (µs)
_ERROR = struct.Struct(">BxH")  # status, pad, message length
_SCORE = np.dtype(">f4")


class FrameType(enum.IntEnum):
    """What a frame carries."""

    REQUEST = 1
    REPLY = 2
    ERROR = 3


class Status(enum.IntEnum):
    """Outcome of a request, carried by reply (``OK``) and error frames (the rest)."""

    OK = 0
    UNKNOWN_VARIANT = 1
    """The server holds no variant with this id; the connection stays open."""
    MALFORMED = 2
    """Bad magic, version, frame type or checksum; the server closes the connection after the error frame."""
    DECODE_ERROR = 3
    """The payload is not a valid coded feature of this variant; the connection stays open."""
    TOO_LARGE = 4
    """The payload length exceeds the server's maximum; the connection is closed."""
    BUSY = 5
    """The server is at its connection limit; the connection is closed."""
    SHUTTING_DOWN = 6
    """The server is closing and takes no new requests; the connection is closed."""
    INTERNAL_ERROR = 7
    """The server part failed on a payload that decoded (a bug, not the client's fault)."""


# ----------------------------------------------------------------------------------------------------- errors
class WireError(CoinferenceError):
    """A frame that cannot be read. ``status`` is the error code the server answers it with."""

    status: Status = Status.MALFORMED


class BadMagicError(WireError):
    """The first 4 bytes are not ``b"CoIn"``: not our protocol, or the stream lost its frame boundary."""


class BadVersionError(WireError):
    """A wire version this reader does not speak."""


class BadFrameTypeError(WireError):
    """A frame type outside :class:`FrameType` (or one the reader does not expect), or non-zero flags."""


class ChecksumError(WireError):
    """The CRC-32 does not match: the header or the payload was corrupted."""


class FrameTooLargeError(WireError):
    """The payload length exceeds the reader's maximum."""

    status = Status.TOO_LARGE


class TruncatedFrameError(WireError):
    """The stream ended (or timed out) inside a frame."""


class BadPayloadError(WireError):
    """A reply or error payload that does not parse (lengths disagree, unknown status)."""


# ----------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Frame:
    """One parsed frame."""

    type: FrameType
    variant_id: bytes
    """8 bytes (:func:`variant_id`)."""
    request_id: int
    payload: bytes

    @property
    def wire_bytes(self) -> int:
        """Bytes this frame takes on the wire (header + payload)."""
        return HEADER_BYTES + len(self.payload)


@dataclass(frozen=True)
class ReplyBody:
    """The payload of a reply frame."""

    predicted_class: int
    scores: np.ndarray
    """float32 logits, shape (n_classes,)."""
    server_s: float
    """The server's compute time for this request (decode + server part), seconds (µs resolution)."""


@dataclass(frozen=True)
class ErrorBody:
    """The payload of an error frame."""

    status: Status
    message: str


# ----------------------------------------------------------------------------------------------------- ids
def variant_id(key: str | bytes) -> bytes:
    """The 8-byte wire id of a variant: the first 16 hex digits of its key (a sha256 hex digest), or 8 raw bytes.

    Raises:
        ConfigError: a key shorter than 16 hex digits, not hex, or bytes of another length.
    """
    if isinstance(key, bytes):
        if len(key) != VARIANT_ID_BYTES:
            raise ConfigError(f"a variant id is {VARIANT_ID_BYTES} bytes, got {len(key)}")
        return key
    try:
        raw = bytes.fromhex(key[: 2 * VARIANT_ID_BYTES])
    except ValueError:
        raw = b""
    if len(raw) != VARIANT_ID_BYTES:
        raise ConfigError(f"variant key {key!r}: need at least {2 * VARIANT_ID_BYTES} hex digits")
    return raw


def variant_hex(vid: bytes) -> str:
    """The 16 hex digits of an 8-byte variant id, for messages and logs."""
    return vid.hex()


# ----------------------------------------------------------------------------------------------------- encode
def encode_frame(ftype: FrameType, vid: bytes, request_id: int, payload: bytes) -> bytes:
    """Header + payload of one frame, with its CRC-32."""
    if not 0 <= request_id < 1 << 64:
        raise ConfigError(f"request id {request_id} is outside u64")
    if len(payload) > MAX_U32:
        raise FrameTooLargeError(f"payload of {len(payload)} bytes does not fit a u32 length")
    vid = variant_id(vid)
    head = HEADER.pack(MAGIC, VERSION, int(ftype), 0, vid, request_id, len(payload), 0)[:28]
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + crc.to_bytes(4, "big") + payload


def encode_request(vid: str | bytes, request_id: int, payload: bytes) -> bytes:
    """A request frame: ``payload`` is the device's coded bytes for variant ``vid``."""
    return encode_frame(FrameType.REQUEST, variant_id(vid), request_id, payload)


def encode_reply(vid: bytes, request_id: int, scores: np.ndarray, server_s: float = 0.0) -> bytes:
    """A reply frame with the scores (any real dtype, sent as float32; one value per class), their argmax and the
    server's compute time ``server_s`` (seconds, rounded to µs, capped at ~71 minutes)."""
    flat = np.asarray(scores, dtype=np.float32).reshape(-1)
    if flat.size == 0 or flat.size > 0xFFFF:
        raise WireError(f"a reply carries 1–65535 scores, got {flat.size}")
    predicted = int(np.argmax(flat))
    us = min(MAX_U32, max(0, round(server_s * 1e6))) if math.isfinite(server_s) else 0
    body = _REPLY.pack(int(Status.OK), flat.size, predicted, us) + flat.astype(_SCORE).tobytes()
    return encode_frame(FrameType.REPLY, vid, request_id, body)


def encode_error(vid: bytes, request_id: int, status: Status, message: str = "") -> bytes:
    """An error frame with a non-OK ``status`` and a short UTF-8 ``message``."""
    if status == Status.OK:
        raise WireError("an error frame needs a non-OK status")
    text = message.encode("utf-8")[:MAX_MESSAGE_BYTES]
    text = text.decode("utf-8", "ignore").encode("utf-8")  # never cut a character in half
    return encode_frame(FrameType.ERROR, vid, request_id, _ERROR.pack(int(status), len(text)) + text)


# ----------------------------------------------------------------------------------------------------- decode
@dataclass(frozen=True)
class Header:
    """A parsed, validated header (the CRC is checked once the payload is read: :meth:`check`)."""

    type: FrameType
    variant_id: bytes
    request_id: int
    length: int
    crc: int
    raw: bytes

    def check(self, payload: bytes) -> Frame:
        """The frame, once its CRC-32 matches; raises :class:`ChecksumError` otherwise."""
        if zlib.crc32(payload, zlib.crc32(self.raw[:28])) != self.crc:
            raise ChecksumError(f"CRC-32 mismatch in frame {self.request_id} of {len(payload)} payload bytes")
        return Frame(self.type, self.variant_id, self.request_id, payload)


def parse_header(raw: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Header:
    """Validate the 32 header bytes ``raw``: magic, version, frame type, flags and length ≤ ``max_payload``."""
    if len(raw) != HEADER_BYTES:
        raise TruncatedFrameError(f"a header is {HEADER_BYTES} bytes, got {len(raw)}")
    magic, version, ftype, flags, vid, rid, length, crc = HEADER.unpack(raw)
    if magic != MAGIC:
        raise BadMagicError(f"bad magic {magic!r} (expected {MAGIC!r})")
    if version != VERSION:
        raise BadVersionError(f"wire version {version} (this side speaks {VERSION})")
    if ftype not in FrameType._value2member_map_ or flags != 0:
        raise BadFrameTypeError(f"frame type {ftype} with flags {flags:#06x}")
    if length > max_payload:
        raise FrameTooLargeError(f"payload of {length} bytes exceeds the maximum of {max_payload}")
    return Header(FrameType(ftype), vid, rid, length, crc, raw)


def decode_frame(data: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[Frame, bytes]:
    """Parse one frame from the start of ``data``; returns it and the bytes after it.

    Raises:
        TruncatedFrameError: ``data`` ends inside the frame; any other :class:`WireError` for a bad frame.
    """
    header = parse_header(data[:HEADER_BYTES], max_payload)
    end = HEADER_BYTES + header.length
    if len(data) < end:
        raise TruncatedFrameError(f"frame of {end} bytes cut at {len(data)}")
    return header.check(bytes(data[HEADER_BYTES:end])), bytes(data[end:])


async def read_frame(
    reader: asyncio.StreamReader,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    *,
    idle_timeout_s: float | None = None,
    frame_timeout_s: float | None = None,
) -> Frame | None:
    """Read one frame from an asyncio stream; ``None`` at a clean end of stream (between frames).

    Args:
        idle_timeout_s: longest wait for the first byte of the frame (None: forever).
        frame_timeout_s: longest wait for the rest of the frame once its first byte came (None: forever).

    Raises:
        TruncatedFrameError: the stream ended or timed out inside the frame. asyncio.TimeoutError: no first byte
        within ``idle_timeout_s``. Any other :class:`WireError` for a bad header or checksum; the header's errors
        are raised before a byte of the payload is read (an oversized length costs nothing).
    """
    try:
        first = await asyncio.wait_for(reader.read(1), idle_timeout_s)
    except ConnectionError:
        return None
    if not first:
        return None
    try:
        rest = await asyncio.wait_for(reader.readexactly(HEADER_BYTES - 1), frame_timeout_s)
        header = parse_header(first + rest, max_payload)
        payload = await asyncio.wait_for(reader.readexactly(header.length), frame_timeout_s)
    except asyncio.IncompleteReadError as e:
        raise TruncatedFrameError(f"stream ended inside a frame ({len(e.partial)} bytes of a part short)") from None
    except (TimeoutError, ConnectionError) as e:
        raise TruncatedFrameError(f"frame not completed: {type(e).__name__}") from None
    return header.check(payload)


def read_frame_blocking(recv_exactly: Callable[[int], bytes], max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame:
    """Read one frame through ``recv_exactly(n)`` (returns exactly ``n`` bytes or raises), for blocking sockets."""
    header = parse_header(recv_exactly(HEADER_BYTES), max_payload)
    return header.check(recv_exactly(header.length) if header.length else b"")


def parse_reply(payload: bytes) -> ReplyBody:
    """The body of a reply frame."""
    if len(payload) < _REPLY.size:
        raise BadPayloadError(f"reply payload of {len(payload)} bytes is shorter than {_REPLY.size}")
    status, n, predicted, us = _REPLY.unpack_from(payload)
    if status != Status.OK:
        raise BadPayloadError(f"reply frame with status {status} (errors travel in error frames)")
    if len(payload) != _REPLY.size + 4 * n or not 0 <= predicted < n:
        raise BadPayloadError(f"reply of {len(payload)} bytes does not hold {n} scores and class {predicted}")
    scores = np.frombuffer(payload, dtype=_SCORE, count=n, offset=_REPLY.size).astype(np.float32)
    return ReplyBody(predicted, scores, us / 1e6)


def parse_error(payload: bytes) -> ErrorBody:
    """The body of an error frame (an unknown status code is reported as ``INTERNAL_ERROR``)."""
    if len(payload) < _ERROR.size:
        raise BadPayloadError(f"error payload of {len(payload)} bytes is shorter than {_ERROR.size}")
    code, n = _ERROR.unpack_from(payload)
    if len(payload) != _ERROR.size + n:
        raise BadPayloadError(f"error payload of {len(payload)} bytes does not hold a {n}-byte message")
    status = Status(code) if code in Status._value2member_map_ and code != Status.OK else Status.INTERNAL_ERROR
    return ErrorBody(status, payload[_ERROR.size :].decode("utf-8", "replace"))
