"""Byte coders: one sample's symbols (a numpy array, no batch axis) ↔ payload bytes, with numpy and constriction
only. The feature codecs (:mod:`coinference.codec`) code their symbols with these very classes, so a package's
runtime emits the bytes the builder counted, bit for bit.

===============  ==========================================================================  ======================
kind             payload                                                                     feature codecs
===============  ==========================================================================  ======================
``raw``          the symbols as fixed-width little-endian numbers (``dtype``: float32, int8,  ``none`` (float32),
                 uint8, int16), decoded as ``symbol_dtype``                                   ``bottlenetpp`` (uint8),
                                                                                              ``jscc-awgn`` (float32)
``categorical``  constriction's range coder, one categorical model per *context*             ``sq``, ``vq``,
                 (:class:`CategoricalCoder`)                                                  ``bottlenetpp`` + entropy
``huffman``      min and max as two little-endian float32, then the Huffman code of the       ``huffman``
                 8-bit symbols (:class:`MinMaxHuffmanCoder`)
``sign-bits``    one bit per value (1 for > 0), ``numpy.packbits`` order; decoded as ±1       ``jscc-bsc``
===============  ==========================================================================  ======================

Analog JSCC (``jscc-awgn``) has no bitstream: its device output are real channel symbols that a radio would send
as they are. Over a real (TCP) link they go as ``raw`` float32, 4 bytes per real symbol; the lookup table's
latencies count channel uses at the link's symbol rate instead (``--symbol-rate``).

A coder's ``params()`` (JSON values) go into the manifest's codec section and its ``arrays()`` into ``codec.npz``;
:func:`build_coder` rebuilds it from the two merged (or from one ``.npz`` holding both, as a builder's ``codec``
artifact does).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import constriction
import numpy as np

from coinference.registry import Registry
from coinference.runtime.errors import PackageError, PayloadError


@runtime_checkable
class ByteCoder(Protocol):
    """One sample's symbols (numpy, no batch axis) ↔ payload bytes.

    ``decode(encode(s))`` equals ``s`` exactly (as ``symbol_dtype``). ``params()`` are JSON values and
    ``arrays()`` numpy arrays; together they rebuild the coder with ``build_coder(kind, params | arrays)``.
    """

    kind: str

    def encode(self, symbols: np.ndarray) -> bytes: ...

    def decode(self, payload: bytes) -> np.ndarray: ...

    def params(self) -> dict[str, Any]: ...

    def arrays(self) -> dict[str, np.ndarray]: ...


BYTE_CODERS: Registry[Callable[[Mapping[str, Any]], ByteCoder]] = Registry("runtime byte coder")
"""kind → factory(tables) → :class:`ByteCoder`; ``tables`` map names to JSON values or numpy arrays."""


def build_coder(kind: str, tables: Mapping[str, Any]) -> ByteCoder:
    """The coder of ``kind`` from its params and arrays.

    Raises:
        UnknownNameError: ``kind`` has no runtime coder (the message lists the valid kinds).
        PackageError: tables missing an entry or holding values the coder refuses.
    """
    factory = BYTE_CODERS.get(kind)
    try:
        return factory(tables)
    except KeyError as e:
        raise PackageError(f"{kind} codec tables have no {e.args[0]!r} entry") from None
    except (ValueError, TypeError) as e:
        raise PackageError(f"{kind} codec tables are malformed: {e}") from None


def coder_tables(coder: ByteCoder) -> dict[str, np.ndarray]:
    """``params()`` and ``arrays()`` of ``coder`` as one dict of numpy arrays (what a ``.npz`` file holds)."""
    return {**{k: np.asarray(v) for k, v in coder.params().items()}, **coder.arrays()}


def _payload(payload: bytes | bytearray | memoryview) -> bytes:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise PayloadError(f"a payload must be bytes, got {type(payload).__name__}")
    return bytes(payload)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in np.asarray(value).ravel())


def _text(value: Any) -> str:
    return str(np.asarray(value).item()) if not isinstance(value, str) else value


# ------------------------------------------------------------------------------------------------------ raw
RAW_DTYPES = ("float32", "int8", "uint8", "int16")


class RawCoder:
    """Symbols as fixed-width little-endian numbers, no entropy coding.

    Args:
        shape: symbol shape of one sample.
        dtype: number type on the wire: float32, int8, uint8 or int16 (values must fit it).
        symbol_dtype: numpy dtype name of the decoded symbols (what the server part takes).
    """

    kind = "raw"

    def __init__(self, shape: Sequence[int], dtype: str = "float32", symbol_dtype: str = "float32") -> None:
        if dtype not in RAW_DTYPES:
            raise ValueError(f"raw codec dtype {dtype!r} unknown; valid: {', '.join(RAW_DTYPES)}")
        self.shape = tuple(int(s) for s in shape)
        self.wire = np.dtype(dtype).newbyteorder("<")
        self.symbol_dtype = np.dtype(symbol_dtype)

    def encode(self, symbols: np.ndarray) -> bytes:
        s = np.asarray(symbols)
        if s.shape != self.shape:
            raise PayloadError(f"raw codec expects symbols of shape {self.shape}, got {s.shape}")
        return s.astype(self.wire).tobytes()

    def decode(self, payload: bytes) -> np.ndarray:
        data = _payload(payload)
        n = math.prod(self.shape)
        if len(data) != n * self.wire.itemsize:
            raise PayloadError(f"corrupt payload: {len(data)} bytes for {n} {self.wire.name} values")
        return np.frombuffer(data, self.wire).astype(self.symbol_dtype).reshape(self.shape)

    def params(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.wire.name, "symbol_dtype": self.symbol_dtype.name}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def from_tables(cls, tables: Mapping[str, Any]) -> RawCoder:
        sym = _text(tables["symbol_dtype"]) if "symbol_dtype" in tables else "float32"
        return cls(_shape(tables["shape"]), _text(tables["dtype"]), sym)


BYTE_CODERS.register("raw")(RawCoder.from_tables)


# ---------------------------------------------------------------------------------------------- categorical
class CategoricalCoder:
    """Entropy coder of integer symbols in [0, L) with a categorical model per *context* (e.g. per channel).

    Payload: constriction's range-coder words, little-endian, with the last word's zero high bytes dropped (the
    decoder pads them back, so this is lossless).

    Args:
        probs: (n_contexts, L) weights (need not be normalised; each row must have a positive sum). Kept as given
            (``weights``), so a coder rebuilt from its tables normalises them to the same bits.
        contexts: int array of the symbol tensor's shape (batch excluded): the context row of each symbol.
    """

    kind = "categorical"

    def __init__(self, probs: np.ndarray, contexts: np.ndarray) -> None:
        weights = np.asarray(probs, dtype=np.float64)
        if weights.ndim != 2 or not np.all(np.isfinite(weights)) or weights.min() < 0 or (weights.sum(1) <= 0).any():
            raise ValueError("probs must be a finite, non-negative (n_contexts, L) table with positive rows")
        self.weights = weights
        self.probs = weights / weights.sum(1, keepdims=True)
        self.contexts = np.asarray(contexts, dtype=np.int64)
        if self.contexts.size and (self.contexts.min() < 0 or self.contexts.max() >= len(weights)):
            raise ValueError(f"contexts must lie in [0, {len(weights)}), the rows of probs")
        self.levels = weights.shape[1]
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
        """Payload bytes of one sample's symbols (the contexts' shape)."""
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
            PayloadError: the payload does not decode to exactly one sample's symbols.
        """
        data = _payload(payload)
        words = np.frombuffer(data + bytes(-len(data) % 4), dtype="<u4").astype(np.uint32)
        try:
            coder = constriction.stream.queue.RangeDecoder(words)
            out = coder.decode(self._model, self._table)
        except Exception as e:  # constriction raises plain exceptions on malformed data
            raise PayloadError(f"corrupt payload: {e}") from None
        if not coder.maybe_exhausted():
            raise PayloadError("corrupt payload: data left over after the last symbol")
        return np.asarray(out, dtype=np.int64).reshape(self.contexts.shape)

    def ideal_bits(self, symbols: np.ndarray) -> float:
        """Information content −Σ log2 p(symbol) of one or more samples under the model (bits)."""
        s = np.asarray(symbols, dtype=np.int64).reshape(-1, self.num_symbols)
        p = self._table[np.arange(self.num_symbols)[None, :], s]
        return float(-np.log2(p).sum())

    def params(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"probs": self.weights, "contexts": self.contexts}

    @classmethod
    def from_tables(cls, tables: Mapping[str, Any]) -> CategoricalCoder:
        return cls(np.asarray(tables["probs"]), np.asarray(tables["contexts"]))


BYTE_CODERS.register("categorical")(CategoricalCoder.from_tables)


# -------------------------------------------------------------------------------------------------- huffman
class HuffmanCoder:
    """A Huffman code over L symbols built from (pseudo-)counts (constriction's Huffman trees), byte-aligned.

    Args:
        counts: (L,) symbol counts; one pseudo-count is added to each, so every symbol stays encodable.
    """

    def __init__(self, counts: np.ndarray) -> None:
        self.counts = np.asarray(counts, dtype=np.float64)
        if self.counts.ndim != 1 or not np.all(np.isfinite(self.counts)) or self.counts.min(initial=0) < 0:
            raise ValueError("Huffman counts must be a finite, non-negative (L,) array")
        self.probs = self.counts + 1.0
        self.levels = len(self.probs)
        self._enc = constriction.symbol.huffman.EncoderHuffmanTree(self.probs)
        self._dec = constriction.symbol.huffman.DecoderHuffmanTree(self.probs)

    def encode(self, symbols: np.ndarray) -> bytes:
        """Code bits of a flat symbol array, LSB-first in little-endian 32-bit words, cut to whole bytes."""
        enc = constriction.symbol.QueueEncoder()
        for s in np.asarray(symbols).ravel().tolist():
            enc.encode_symbol(s, self._enc)
        words, nbits = enc.get_compressed_and_bitrate()
        return words.astype("<u4").tobytes()[: (nbits + 7) // 8]

    def decode(self, data: bytes, n: int) -> np.ndarray:
        """``n`` symbols from bytes made by :meth:`encode`; PayloadError if they run out."""
        padded = data + bytes(-len(data) % 4)
        dec = constriction.symbol.QueueDecoder(np.frombuffer(padded, dtype="<u4").astype(np.uint32))
        try:
            out = [dec.decode_symbol(self._dec) for _ in range(n)]
        except Exception as e:  # constriction raises when the bits run out
            raise PayloadError(f"corrupt Huffman payload: {e}") from None
        return np.asarray(out, dtype=np.int64)

    def mean_code_length(self) -> float:
        """Expected code length in bits per symbol under the training distribution (for reports)."""
        enc = constriction.symbol.QueueEncoder()
        lengths = []
        for s in range(self.levels):
            before = enc.get_compressed_and_bitrate()[1]
            enc.encode_symbol(s, self._enc)
            lengths.append(enc.get_compressed_and_bitrate()[1] - before)
        p = self.probs / self.probs.sum()
        return float((p * np.asarray(lengths)).sum())


_RANGE = struct.Struct("<ff")


class MinMaxHuffmanCoder:
    """The Huffman baseline's payload: the sample's min and max as two little-endian float32 (64 bits of side
    information, counted in the payload), then the Huffman code of its 8-bit symbols.

    Symbols: float64 (2 + numel,) — min, max, then the 8-bit symbols (exact in float64).

    Args:
        coder: the Huffman code of the 8-bit symbols.
        numel: 8-bit symbols per sample.
    """

    kind = "huffman"

    def __init__(self, coder: HuffmanCoder, numel: int) -> None:
        self.coder = coder
        self.numel = int(numel)

    def encode(self, symbols: np.ndarray) -> bytes:
        s = np.asarray(symbols, dtype=np.float64).ravel()
        if s.size != 2 + self.numel:
            raise PayloadError(f"huffman codec expects {2 + self.numel} symbols (min, max, values), got {s.size}")
        return _RANGE.pack(float(s[0]), float(s[1])) + self.coder.encode(s[2:].astype(np.int64))

    def decode(self, payload: bytes) -> np.ndarray:
        data = _payload(payload)
        if len(data) < _RANGE.size:
            raise PayloadError(f"corrupt Huffman payload: {len(data)} bytes, the range alone is {_RANGE.size}")
        lo, hi = _RANGE.unpack_from(data)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise PayloadError(f"corrupt Huffman payload: range [{lo}, {hi}]")
        sym = self.coder.decode(data[_RANGE.size :], self.numel)
        return np.concatenate([np.asarray([lo, hi], dtype=np.float64), sym.astype(np.float64)])

    def params(self) -> dict[str, Any]:
        return {"numel": self.numel}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"counts": self.coder.counts}

    @classmethod
    def from_tables(cls, tables: Mapping[str, Any]) -> MinMaxHuffmanCoder:
        return cls(HuffmanCoder(np.asarray(tables["counts"])), int(np.asarray(tables["numel"])))


BYTE_CODERS.register("huffman")(MinMaxHuffmanCoder.from_tables)


# ------------------------------------------------------------------------------------------------ sign bits
class SignBitsCoder:
    """One bit per value (1 where the symbol is > 0), packed by ``numpy.packbits`` (first value in the high bit of
    the first byte, the last byte zero-padded); decoded as ±1 float32 of ``shape``.

    Args:
        shape: symbol shape of one sample.
    """

    kind = "sign-bits"

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.bits = math.prod(self.shape)

    def encode(self, symbols: np.ndarray) -> bytes:
        flat = np.asarray(symbols).ravel()
        if flat.size != self.bits:
            raise PayloadError(f"sign-bits codec expects {self.bits} symbols, got {flat.size}")
        return np.packbits((flat > 0).astype(np.uint8)).tobytes()

    def decode(self, payload: bytes) -> np.ndarray:
        data = _payload(payload)
        if len(data) != (self.bits + 7) // 8:
            raise PayloadError(f"corrupt payload: {len(data)} bytes for {self.bits} bits")
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: self.bits]
        return (bits.astype(np.float32) * 2 - 1).reshape(self.shape)

    def params(self) -> dict[str, Any]:
        return {"shape": list(self.shape)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def from_tables(cls, tables: Mapping[str, Any]) -> SignBitsCoder:
        return cls(_shape(tables["shape"]))


BYTE_CODERS.register("sign-bits")(SignBitsCoder.from_tables)
