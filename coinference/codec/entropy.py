"""The bitstream: a fixed 10-byte header and an entropy-coded payload (constriction's range coder).

Format of one coded sample (all integers big-endian)::

    byte 0      magic 0xC1
    byte 1      version (high 4 bits) | codec kind code (low 4 bits)
    bytes 2..5  payload length in bytes (uint32)
    bytes 6..9  CRC-32 of bytes 0..5 followed by the payload
    bytes 10..  payload (codec-specific; for sq/vq: the range coder's 32-bit words, little-endian, with up to
                3 zero bytes at the end of the last word dropped: the decoder pads them back)

Bits per sample are ``8 × len(payload)``; the header (80 bits) is reported apart. ``unpack`` refuses a blob
whose magic, version, kind, length or checksum do not match, so a truncated or corrupted stream is an error,
never a silently wrong tensor.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from coinference.runtime.codecs import CategoricalCoder
from coinference.runtime.errors import PayloadError

MAGIC = 0xC1
VERSION = 1
HEADER = struct.Struct(">BBI")
HEADER_BYTES = HEADER.size + 4
HEADER_BITS = 8 * HEADER_BYTES
KIND_CODES = {"sq": 1, "vq": 2, "jscc-awgn": 3, "jscc-bsc": 4, "bottlenetpp": 5, "huffman": 6, "none": 7}


BitstreamError = PayloadError
"""A bitstream is truncated, corrupted, or was made by another codec (the runtime's :class:`PayloadError`: the
range coder, :class:`CategoricalCoder`, lives in :mod:`coinference.runtime.codecs`, which needs no PyTorch)."""

__all__ = [
    "HEADER_BITS",
    "HEADER_BYTES",
    "BitstreamError",
    "CategoricalCoder",
    "empirical_entropy_bits",
    "pack",
    "unpack",
]


def pack(kind: str, payload: bytes) -> bytes:
    """Header + ``payload`` for codec ``kind``."""
    head = HEADER.pack(MAGIC, (VERSION << 4) | KIND_CODES[kind], len(payload))
    crc = zlib.crc32(head + payload) & 0xFFFFFFFF
    return head + struct.pack(">I", crc) + payload


def unpack(kind: str, blob: bytes) -> bytes:
    """The payload of ``blob`` after checking its header and checksum.

    Raises:
        BitstreamError: too short, wrong magic/version/kind, length mismatch (truncated or padded), bad CRC.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise BitstreamError(f"bitstream must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < HEADER_BYTES:
        raise BitstreamError(f"truncated bitstream: {len(blob)} bytes, the header alone is {HEADER_BYTES}")
    magic, vk, length = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise BitstreamError(f"not a coinference bitstream: magic byte 0x{magic:02x}, expected 0x{MAGIC:02x}")
    if vk >> 4 != VERSION:
        raise BitstreamError(f"bitstream version {vk >> 4} unsupported (this build reads {VERSION})")
    if vk & 0xF != KIND_CODES[kind]:
        names = {v: k for k, v in KIND_CODES.items()}
        raise BitstreamError(f"bitstream was made by codec {names.get(vk & 0xF, vk & 0xF)!r}, not {kind!r}")
    payload = blob[HEADER_BYTES:]
    if len(payload) != length:
        what = "truncated" if len(payload) < length else "overlong"
        raise BitstreamError(f"{what} bitstream: header says {length} payload bytes, got {len(payload)}")
    (crc,) = struct.unpack_from(">I", blob, HEADER.size)
    if zlib.crc32(blob[: HEADER.size] + payload) & 0xFFFFFFFF != crc:
        raise BitstreamError("corrupt bitstream: CRC-32 mismatch")
    return payload


def empirical_entropy_bits(symbols: np.ndarray) -> float:
    """N × H(empirical distribution) of a flat symbol array, in bits (the i.i.d. lower bound)."""
    _, counts = np.unique(np.asarray(symbols).ravel(), return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())
