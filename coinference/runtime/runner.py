"""Running a package: :class:`DeviceRunner` (uint8 image → payload bytes) and :class:`ServerRunner` (payload bytes →
logits), with onnxruntime, numpy and the package's byte coder; no PyTorch.

Both run one image at a time on one intra-op thread, as a device does and as the lookup table's bits were counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinference.runtime.codecs import ByteCoder
from coinference.runtime.errors import PackageError, PayloadError
from coinference.runtime.package import Package


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session (``threads`` intra-op threads; graph optimisations: all).

    Raises:
        PackageError: onnxruntime cannot load the model (the message names the file).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 4  # fatal only: an error reaches the caller as an exception, not as a log line too
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise PackageError(f"onnxruntime cannot load {path}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _open(package: str | Path | Package, side: str) -> Package:
    if isinstance(package, Package) and side in package.sides:
        return package
    return Package.open(package.path if isinstance(package, Package) else package, side)


def _run(session: Any, feed: dict[str, np.ndarray], what: str) -> np.ndarray:
    try:
        return np.asarray(session.run(None, feed)[0])
    except Exception as e:  # onnxruntime's exception types; the package, not the input, is at fault
        raise PackageError(f"onnxruntime cannot run {what}: {_first_line(e)}") from None


@dataclass(frozen=True)
class Encoded:
    """One image through the device side, with its timings."""

    payload: bytes
    """The coded symbols (no header)."""
    device_s: float
    """Seconds of normalisation + ``device.onnx``."""
    encode_s: float
    """Seconds of the byte coder."""


@dataclass(frozen=True, eq=False)
class Decoded:
    """One payload through the server side, with its timings."""

    logits: np.ndarray
    """float32 (classes,)."""
    decode_s: float
    """Seconds of the byte coder."""
    server_s: float
    """Seconds of ``server.onnx``."""


class DeviceRunner:
    """The device side of a package: a uint8 image (C, H, W), as the data sets store it, → payload bytes.

    Args:
        package: the package folder (its ``manifest.json`` and ``device/`` files are checked) or an opened
            :class:`Package`.
        threads: onnxruntime intra-op threads.

    Raises:
        PackageError: see :meth:`Package.open`; also a device part onnxruntime cannot load.
    """

    def __init__(self, package: str | Path | Package, threads: int = 1) -> None:
        self.package = _open(package, "device")
        part = self.package.part("device")
        self.coder: ByteCoder = self.package.coder("device")
        self._input = str(part.get("input", "image"))
        self._session = onnx_session(self.package.file(str(part["onnx"])), threads)

    def normalize(self, image: Any) -> np.ndarray:
        """The device part's input (1, C, H, W) float32 of a uint8 image (C, H, W) or a batch of one.

        Raises:
            PayloadError: not uint8, or not of the package's input shape.
        """
        a = np.asarray(image)
        shape = self.package.input_shape
        if a.dtype != np.uint8:
            raise PayloadError(f"an image must be uint8 pixels (as the data sets store them), got {a.dtype}")
        if a.shape == shape:
            a = a[None]
        if a.shape != (1, *shape):
            want = ", ".join(map(str, shape))
            raise PayloadError(f"an image must be (C, H, W) = ({want}) or a batch of one, got {a.shape}")
        return self.package.normalization.apply(a)

    def symbols(self, image: Any) -> np.ndarray:
        """The device part's output for one image (``symbol_shape``, batch axis removed)."""
        x = self.normalize(image)
        return _run(self._session, {self._input: x}, "device.onnx")[0]

    def encode_timed(self, image: Any) -> Encoded:
        """:meth:`encode` with the seconds spent in the device part and in the coder."""
        t0 = time.perf_counter()
        s = self.symbols(image)
        t1 = time.perf_counter()
        payload = self.coder.encode(s)
        return Encoded(payload, t1 - t0, time.perf_counter() - t1)

    def encode(self, image: Any) -> bytes:
        """The payload bytes of one uint8 image (C, H, W) or (1, C, H, W)."""
        return self.encode_timed(image).payload


class ServerRunner:
    """The server side of a package: payload bytes → logits.

    Args:
        package: the package folder (its ``manifest.json`` and ``server/`` files are checked) or an opened
            :class:`Package`.
        threads: onnxruntime intra-op threads.

    Raises:
        PackageError: see :meth:`Package.open`; also a server part onnxruntime cannot load.
    """

    def __init__(self, package: str | Path | Package, threads: int = 1) -> None:
        self.package = _open(package, "server")
        part = self.package.part("server")
        self.coder: ByteCoder = self.package.coder("server")
        self._input = str(part.get("input", "symbols"))
        self._dtype = np.dtype(self.package.symbol_dtype)
        self.batch: int | None = None if part.get("batch", "dynamic") == "dynamic" else int(part["batch"])
        """The server part's fixed batch size, None when its batch axis is dynamic."""
        self._session = onnx_session(self.package.file(str(part["onnx"])), threads)

    def symbols(self, payload: bytes) -> np.ndarray:
        """The decoded symbols (``symbol_shape``, the server part's dtype) of one payload.

        Raises:
            PayloadError: a payload that is not bytes, truncated or corrupted.
        """
        s = np.asarray(self.coder.decode(payload))
        if s.shape != self.package.symbol_shape:
            raise PackageError(
                f"package {self.package.path}: its {self.package.codec_kind} coder decodes symbols of shape "
                f"{s.shape}, the server part takes {self.package.symbol_shape}"
            )
        return s.astype(self._dtype, copy=False)

    def logits(self, symbols: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 of decoded symbols (N, *symbol_shape): one ``server.onnx`` call for the batch
        (one per image when its batch axis is fixed at 1)."""
        s = np.asarray(symbols).astype(self._dtype, copy=False)
        if s.shape[1:] != self.package.symbol_shape:
            raise PayloadError(f"symbols must be (N, *{self.package.symbol_shape}), got {s.shape}")
        if self.batch is not None and len(s) != self.batch:
            return np.concatenate([self.logits(s[i : i + 1]) for i in range(len(s))])
        return _run(self._session, {self._input: s}, "server.onnx").astype(np.float32, copy=False)

    def decode_timed(self, payload: bytes) -> Decoded:
        """:meth:`decode` with the seconds spent in the coder and in the server part."""
        t0 = time.perf_counter()
        s = self.symbols(payload)
        t1 = time.perf_counter()
        logits = self.logits(s[None])[0]
        return Decoded(logits, t1 - t0, time.perf_counter() - t1)

    def decode(self, payload: bytes) -> np.ndarray:
        """Logits (classes,) float32 of one payload."""
        return self.decode_timed(payload).logits
