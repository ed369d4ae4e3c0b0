"""Export a co-inference variant as two packages a device and a server can run without this code base.

Layout written by :func:`export_variant` under ``OUT/``::

    manifest.json            spec, measurement, extra (e.g. predicted latency), input normalisation, I/O names and
                             shapes, codec kind, library versions, and the sha256 + size of every file below
    device/device.ts.pt      TorchScript: image (N, C, H, W) float32, normalised → symbols (N, *symbol_shape)
    device/device.onnx       the same graph in ONNX (classic exporter, ``dynamo=False``; batch axis dynamic)
    device/codec.npz         entropy-coder tables (numpy arrays, no pickle), when the variant has a byte codec
    server/server.ts.pt      TorchScript: symbols (N, *symbol_shape), the device output's dtype → logits (N, classes)
    server/server.onnx       the same graph in ONNX
    server/codec.npz         the same tables, for decoding

The device part includes the pruned backbone, the encoder and the quantizer (its output symbols are what the
entropy coder reads); the server part includes the decoder and the rest of the model. Entropy coding stays outside
ONNX: a :class:`ByteCodec` (``compress`` one image's symbols to bytes, ``decompress`` back) built from the tables by
the :data:`BYTE_CODECS` registry under the manifest's ``codec.kind``. :func:`verify_export` checks that the package,
run through onnxruntime and through the bytes path, predicts what the torch modules predict.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from coinference.errors import CoinferenceError, ConfigError
from coinference.progress import phase
from coinference.registry import Registry

FORMAT_VERSION = 1
OPSET = 17
DEVICE_IO = ("image", "symbols")
SERVER_IO = ("symbols", "logits")
ATOL = 1e-4
"""Default absolute tolerance between onnxruntime and torch logits (onnxruntime matches torch to ~1e-6 here)."""
RTOL = 1e-4
"""Default relative tolerance between onnxruntime and torch logits."""


class ExportError(CoinferenceError):
    """An export cannot be written, or an exported package does not reproduce the variant."""


@runtime_checkable
class ByteCodec(Protocol):
    """The bytes path of a variant's feature coding, outside ONNX.

    ``compress`` takes one image's symbols (``symbol_shape``, no batch axis, as the device part emits them) and
    returns the payload bytes; ``decompress`` inverts it exactly (a tensor of ``symbol_shape``; it is cast to the
    device output's dtype);
    ``tables`` are the arrays needed to rebuild the codec with ``BYTE_CODECS.get(kind)(tables)``.
    """

    kind: str

    def compress(self, symbols: torch.Tensor) -> bytes: ...

    def decompress(self, payload: bytes) -> torch.Tensor: ...

    def tables(self) -> dict[str, np.ndarray]: ...


BYTE_CODECS: Registry[Callable[[Mapping[str, np.ndarray]], ByteCodec]] = Registry("byte codec")
"""kind → factory(tables) → :class:`ByteCodec`. Codec modules register their coders here."""


class RawCodec:
    """No entropy coding: symbols as fixed-width little-endian numbers (``int8``, ``int16`` or ``float32``)."""

    kind = "raw"

    def __init__(self, shape: Sequence[int], dtype: str = "float32") -> None:
        if dtype not in ("int8", "uint8", "int16", "float32"):
            raise ConfigError(f"raw codec dtype {dtype!r} unknown; valid: int8, uint8, int16, float32")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype).newbyteorder("<")

    def compress(self, symbols: torch.Tensor) -> bytes:
        if tuple(symbols.shape) != self.shape:
            raise ExportError(f"raw codec expects symbols of shape {self.shape}, got {tuple(symbols.shape)}")
        return symbols.detach().cpu().numpy().astype(self.dtype).tobytes()

    def decompress(self, payload: bytes) -> torch.Tensor:
        want = math.prod(self.shape) * self.dtype.itemsize
        if len(payload) != want:
            raise ExportError(f"raw payload has {len(payload)} bytes, expected {want}")
        return torch.from_numpy(np.frombuffer(payload, self.dtype).astype(np.float32).reshape(self.shape))

    def tables(self) -> dict[str, np.ndarray]:
        return {"shape": np.asarray(self.shape, dtype=np.int64), "dtype": np.asarray(self.dtype.name)}

    @classmethod
    def from_tables(cls, tables: Mapping[str, np.ndarray]) -> RawCodec:
        return cls(tuple(int(s) for s in tables["shape"]), str(tables["dtype"]))


BYTE_CODECS.register("raw")(RawCodec.from_tables)


@dataclass(frozen=True)
class Normalization:
    """Input normalisation the device applies before the device part: ``x = (pixel / 255 − mean) / std``."""

    mean: tuple[float, ...]
    """Per-channel mean of [0, 1]-scaled pixels."""
    std: tuple[float, ...]
    """Per-channel standard deviation of [0, 1]-scaled pixels."""

    def to_dict(self) -> dict[str, Any]:
        return {"scale": "pixel / 255", "mean": list(self.mean), "std": list(self.std)}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import onnx

    out = {"torch": torch.__version__, "onnx": onnx.__version__}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - onnxruntime is a dependency; the package itself needs only onnx
        pass
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch 2.9+ warns on every call that TorchScript and the classic ONNX exporter are deprecated; they are still
    what a device without Python runs, so those warnings are silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def _torchscript(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    if isinstance(module, torch.jit.ScriptModule):
        return module
    with torch.no_grad(), _quiet():
        return torch.jit.trace(module, example)


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on CPU, without the deprecation warning."""
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu")


def to_onnx(module: nn.Module, example: torch.Tensor, path: Path, io: tuple[str, str], opset: int) -> None:
    """Write ``module`` as ONNX (classic exporter, batch axis dynamic; ``io`` = input and output names)."""
    with _quiet():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=[io[0]],
            output_names=[io[1]],
            dynamic_axes={io[0]: {0: "batch"}, io[1]: {0: "batch"}},
            opset_version=opset,
        )


def ort_session(path: str | Path) -> Any:
    """An onnxruntime CPU session on one intra-op thread (as a device runs it; default graph optimisations: all)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 4  # fatal only: an error reaches the caller as an exception, not as a log line too
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_variant(
    out: str | Path,
    device: nn.Module,
    server: nn.Module,
    input_shape: Sequence[int],
    *,
    codec: ByteCodec | None = None,
    normalization: Normalization | None = None,
    spec: Mapping[str, Any] | None = None,
    measurement: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    opset: int = OPSET,
    overwrite: bool = False,
) -> Path:
    """Write the device and server packages of a variant and their ``manifest.json``; returns the manifest path.

    Args:
        out: folder to write (created; must be empty unless ``overwrite``).
        device: image (N, C, H, W) normalised float32 → symbols (quantized feature, any dtype); eval mode is set.
        server: symbols (the device's output dtype, with a batch axis) → logits.
        input_shape: (C, H, W) of one image.
        codec: the bytes path (None: the feature is sent as float32 and no tables are written).
        normalization: recorded in the manifest for the device's pre-processing.
        spec, measurement, extra: JSON-serialisable dicts copied into the manifest (e.g. predicted latency).
        opset: ONNX opset.
        overwrite: replace an existing export in ``out``.

    Raises:
        ExportError: ``out`` is not empty, or a part cannot be traced or exported.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"export folder {out} is not empty (overwrite=True, or --force, replaces it)")
        for sub in ("device", "server"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "manifest.json").unlink(missing_ok=True)
    (out / "device").mkdir(parents=True, exist_ok=True)
    (out / "server").mkdir(parents=True, exist_ok=True)
    device, server = device.eval(), server.eval()
    example = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            symbols = device(example)
            logits = server(symbols)
        dev_ts, srv_ts = _torchscript(device, example), _torchscript(server, symbols)
        with _quiet():
            torch.jit.save(dev_ts, str(out / "device" / "device.ts.pt"))
            torch.jit.save(srv_ts, str(out / "server" / "server.ts.pt"))
        to_onnx(device, example, out / "device" / "device.onnx", DEVICE_IO, opset)
        to_onnx(server, symbols, out / "server" / "server.onnx", SERVER_IO, opset)
    except (RuntimeError, TypeError, ValueError, torch.jit.Error) as e:
        raise ExportError(f"cannot export the variant: {str(e).strip().splitlines()[0]}") from e
    if codec is not None:
        tables: dict[str, Any] = dict(codec.tables())
        for side in ("device", "server"):
            np.savez(out / side / "codec.npz", **tables)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec": dict(spec) if spec is not None else None,
        "measurement": dict(measurement) if measurement is not None else None,
        "extra": dict(extra) if extra is not None else {},
        "input": {
            "shape": [int(s) for s in input_shape],
            "dtype": "float32",
            "normalization": normalization.to_dict() if normalization is not None else None,
        },
        "device": {
            "torchscript": "device/device.ts.pt",
            "onnx": "device/device.onnx",
            "input": DEVICE_IO[0],
            "output": DEVICE_IO[1],
            "output_shape": list(symbols.shape[1:]),
            "output_dtype": str(symbols.dtype).removeprefix("torch."),
        },
        "server": {
            "torchscript": "server/server.ts.pt",
            "onnx": "server/server.onnx",
            "input": SERVER_IO[0],
            "input_dtype": str(symbols.dtype).removeprefix("torch."),
            "output": SERVER_IO[1],
            "output_shape": list(logits.shape[1:]),
        },
        "codec": None if codec is None else {"kind": codec.kind, "tables": ["device/codec.npz", "server/codec.npz"]},
        "onnx_opset": opset,
        "versions": _versions(),
    }
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest["files"] = {
        p.relative_to(out).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


# ------------------------------------------------------------------------------------------- loading + checks
def read_manifest(out: str | Path) -> dict[str, Any]:
    """The manifest of an export, after checking every listed file's size and sha256.

    Raises:
        ExportError: no manifest, a newer format, or a missing or altered file.
    """
    out = Path(out)
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except FileNotFoundError:
        raise ExportError(f"no manifest.json in {out}") from None
    except json.JSONDecodeError as e:
        raise ExportError(f"{out / 'manifest.json'} is not valid JSON: {e}") from None
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ExportError(f"export format {manifest['format_version']} is newer than this coinference's")
    for rel, info in manifest.get("files", {}).items():
        p = out / rel
        if not p.is_file():
            raise ExportError(f"exported file {rel} is missing from {out}")
        if p.stat().st_size != info["bytes"] or sha256_file(p) != info["sha256"]:
            raise ExportError(f"exported file {rel} does not match its sha256 in the manifest")
    return manifest


def load_codec(out: str | Path, side: str = "server") -> ByteCodec | None:
    """The byte codec of an export (from ``<side>/codec.npz`` and the manifest's kind), or None if it has none."""
    out = Path(out)
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest.get("codec") is None:
        return None
    with np.load(out / side / "codec.npz", allow_pickle=False) as z:
        tables = {k: z[k] for k in z.files}
    return BYTE_CODECS.get(manifest["codec"]["kind"])(tables)


@dataclass(frozen=True)
class VerifyReport:
    """How an exported package compared with the torch reference on a batch of images."""

    images: int
    max_abs_logit_diff: float
    """Largest |onnxruntime − torch| over all logits (bytes path on the ONNX side)."""
    symbol_mismatches: int
    """Symbols where the ONNX device part differs from torch (quantized symbols should be equal)."""
    onnx_predictions_agree: bool
    """argmax of onnxruntime (device → bytes → server) == argmax of torch, for every image."""
    bytes_predictions_agree: bool
    """argmax of torch through compress/decompress == argmax of torch without bytes, for every image."""
    bits_mean: float | None
    """Mean payload bits per image through the codec (None without a codec)."""


def verify_export(
    out: str | Path,
    images: torch.Tensor,
    reference: tuple[nn.Module, nn.Module] | None = None,
    codec: ByteCodec | None = None,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> VerifyReport:
    """Run an exported package on ``images`` three ways and compare.

    1. torch reference: ``server(device(x))`` of ``reference`` (the in-memory variant), else the package's
       TorchScript, with no bytes in between;
    2. bytes path: the reference's symbols through ``compress`` → bytes → ``decompress`` → server;
    3. onnxruntime: ``device.onnx`` → ``compress`` → bytes → ``decompress`` → ``server.onnx``.

    Every path runs one image at a time (batch 1, as a device does). Predictions (argmax) of 2 and 3 must equal
    those of 1, and the logits of 2 and 3 must be within ``atol + rtol·|ref|`` of those of 1.

    Args:
        images: (N, C, H, W) float32 images, normalised as the manifest says.
        reference: the in-memory (device, server) modules; None: the package's TorchScript.
        codec: the byte codec to use; None: rebuilt from the package (``BYTE_CODECS``).

    Raises:
        ExportError: an altered file, or outputs that differ beyond tolerance.
    """
    out = Path(out)
    manifest = read_manifest(out)
    if reference is None:
        reference = (
            load_torchscript(out / manifest["device"]["torchscript"]),
            load_torchscript(out / manifest["server"]["torchscript"]),
        )
    dev, srv = (m.eval() for m in reference)
    codec = codec if codec is not None else load_codec(out)

    def through_bytes(symbols: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        if codec is None:
            return symbols, []
        payloads = [codec.compress(s) for s in symbols]
        decoded = torch.stack([codec.decompress(p) for p in payloads]).to(symbols.dtype)
        return decoded, [8 * len(p) for p in payloads]

    x = images.float()
    sess_d, sess_s = ort_session(out / manifest["device"]["onnx"]), ort_session(out / manifest["server"]["onnx"])
    # One image at a time, as a device runs it (and as bits are counted): a traced part need not support batches.
    sym_t, logits_t, logits_b, sym_o, logits_o, bits = [], [], [], [], [], []
    with phase("verify export", len(x), "image") as advance:
        for i in range(len(x)):
            xi = x[i : i + 1]
            with torch.no_grad():
                s = dev(xi)
                sym_t.append(s)
                logits_t.append(srv(s))
                logits_b.append(srv(through_bytes(s)[0]))
            so = torch.from_numpy(sess_d.run(None, {DEVICE_IO[0]: xi.numpy()})[0])
            decoded, b = through_bytes(so)
            sym_o.append(so)
            bits += b
            logits_o.append(torch.from_numpy(sess_s.run(None, {SERVER_IO[0]: decoded.numpy()})[0]))
            advance()
    if not len(x):
        raise ExportError("verify_export needs at least one image")
    st, so_, lt, lb, lo = (torch.cat(v) for v in (sym_t, sym_o, logits_t, logits_b, logits_o))

    pred_t = lt.argmax(1)
    report = VerifyReport(
        images=len(x),
        max_abs_logit_diff=float((lo - lt).abs().max()),
        symbol_mismatches=int((so_ != st).sum()) if so_.shape == st.shape else st.numel(),
        onnx_predictions_agree=bool((lo.argmax(1) == pred_t).all()),
        bytes_predictions_agree=bool((lb.argmax(1) == pred_t).all()),
        bits_mean=float(np.mean(bits)) if bits else None,
    )
    problems = []
    if not torch.allclose(lo, lt, atol=atol, rtol=rtol):
        problems.append(f"onnxruntime logits differ from torch by up to {report.max_abs_logit_diff:.3g}")
    if not report.onnx_predictions_agree:
        problems.append("onnxruntime predictions differ from torch")
    if not report.bytes_predictions_agree:
        problems.append("predictions through the bytes path differ from torch")
    elif not torch.allclose(lb, lt, atol=atol, rtol=rtol):
        problems.append("logits through the bytes path differ from torch (is the codec lossless?)")
    if problems:
        raise ExportError(f"export {out} does not reproduce the variant: " + "; ".join(problems))
    return report
