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

import constriction
import numpy as np

from coinference.errors import DataError

MAGIC = 0xC1
VERSION = 1
HEADER = struct.Struct(">BBI")
HEADER_BYTES = HEADER.size + 4
HEADER_BITS = 8 * HEADER_BYTES
KIND_CODES = {"sq": 1, "vq": 2, "jscc-awgn": 3, "jscc-bsc": 4, "bottlenetpp": 5, "huffman": 6, "none": 7}


class BitstreamError(DataError):
    """A bitstream is truncated, corrupted, or was made by another codec."""


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


class CategoricalCoder:
    """Entropy coder of integer symbols in [0, L) with a categorical model per *context* (e.g. per channel).

    Args:
        probs: (n_contexts, L) probabilities (need not be normalised; each row must have a positive sum).
        contexts: int array of the symbol tensor's shape (batch excluded): the context row of each symbol.
    """

    def __init__(self, probs: np.ndarray, contexts: np.ndarray) -> None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or not np.all(np.isfinite(probs)) or probs.min() < 0 or (probs.sum(1) <= 0).any():
            raise ValueError("probs must be a finite, non-negative (n_contexts, L) table with positive rows")
        self.probs = probs / probs.sum(1, keepdims=True)
        self.contexts = np.asarray(contexts, dtype=np.int64)
        self.levels = probs.shape[1]
        self._table = self.probs[self.contexts.ravel()]  # (n_symbols, L), float64
        self._model = constriction.stream.model.Categorical(perfect=False)

    @classmethod
    def fit(cls, symbols: np.ndarray, levels: int, contexts: np.ndarray, prior: float = 0.5) -> CategoricalCoder:
        """Estimate the per-context probabilities from training symbols (N, *shape) with ``prior`` pseudo-counts."""
        symbols = np.asarray(symbols, dtype=np.int64)
        ctx = np.broadcast_to(contexts, symbols.shape).ravel()
        n_ctx = int(contexts.max()) + 1
        counts = np.zeros((n_ctx, levels), dtype=np.float64)
        np.add.at(counts, (ctx, symbols.ravel()), 1.0)
        return cls(counts + prior, contexts)

    @property
    def num_symbols(self) -> int:
        """Symbols per sample."""
        return int(self.contexts.size)

    def encode(self, symbols: np.ndarray) -> bytes:
        """Payload bytes of one sample's symbols (the contexts' shape): range-coder words, little-endian, with the
        last word's zero high bytes dropped (the decoder pads them back, so this is lossless)."""
        flat = np.asarray(symbols, dtype=np.int32).ravel()
        if flat.size != self.num_symbols or flat.min(initial=0) < 0 or flat.max(initial=0) >= self.levels:
            raise ValueError(f"expected {self.num_symbols} symbols in [0, {self.levels}), got {flat.size}")
        coder = constriction.stream.queue.RangeEncoder()
        coder.encode(flat, self._model, self._table)
        data = coder.get_compressed().astype("<u4").tobytes()
        cut = 0
        while cut < 3 and len(data) - cut > 0 and data[len(data) - cut - 1] == 0:
            cut += 1
        return data[: len(data) - cut]

    def decode(self, payload: bytes) -> np.ndarray:
        """Symbols (int64, the contexts' shape) of a payload made by :meth:`encode`.

        Raises:
            BitstreamError: the payload does not decode to exactly one sample's symbols.
        """
        words = np.frombuffer(payload + bytes(-len(payload) % 4), dtype="<u4").astype(np.uint32)
        try:
            coder = constriction.stream.queue.RangeDecoder(words)
            out = coder.decode(self._model, self._table)
        except Exception as e:  # constriction raises plain exceptions on malformed data
            raise BitstreamError(f"corrupt payload: {e}") from None
        if not coder.maybe_exhausted():
            raise BitstreamError("corrupt payload: data left over after the last symbol")
        return np.asarray(out, dtype=np.int64).reshape(self.contexts.shape)

    def ideal_bits(self, symbols: np.ndarray) -> float:
        """Information content −Σ log2 p(symbol) of one or more samples under the model (bits)."""
        s = np.asarray(symbols, dtype=np.int64).reshape(-1, self.num_symbols)
        p = self._table[np.arange(self.num_symbols)[None, :], s]
        return float(-np.log2(p).sum())


def empirical_entropy_bits(symbols: np.ndarray) -> float:
    """N × H(empirical distribution) of a flat symbol array, in bits (the i.i.d. lower bound)."""
    _, counts = np.unique(np.asarray(symbols).ravel(), return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())
