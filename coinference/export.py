"""Export a co-inference variant as a package that a device and a server run without this code base's PyTorch
side: ONNX parts, the byte coder's tables and a manifest, run by :mod:`coinference.runtime` (onnxruntime, numpy,
constriction).

Layout written by :func:`export_variant` under ``OUT/`` (format :data:`FORMAT_VERSION`; fields in docs/PACKAGE.md)::

    manifest.json            spec (with its key), measurement, extra (e.g. predicted latency), input shape and
                             normalisation, I/O names, shapes, dtypes and batch axes, the codec (runtime coder kind
                             and params), library versions, and the sha256 + size of every file below
    device/device.onnx       normalised image (N, C, H, W) float32 → symbols (N, *symbol_shape)
    device/codec.npz         the byte coder's arrays (numpy, no pickle), when it has any
    server/server.onnx       symbols (N, *symbol_shape), the device output's dtype → logits (N, classes)
    server/codec.npz         the same arrays, for decoding
    check/reference.npz      a few uint8 images with the symbols, logits and payload bytes the torch modules gave

The device part holds the pruned backbone, the encoder and the quantizer (its output symbols are what the byte coder
reads); the server part the decoder and the rest of the model. ONNX is the deployment format (classic exporter,
``dynamo=False``); its batch axes are declared dynamic only when onnxruntime runs them at batch 2, else fixed at 1.
TorchScript is not written (deprecated upstream, and nothing in a package needs it); TorchScript *artifacts* of a
variant are still read (:func:`load_torchscript`, ``storage.export``). Coding stays outside ONNX: a runtime
:class:`~coinference.runtime.ByteCoder` (``encode`` one image's symbols to bytes, ``decode`` back), seen from torch as
a :class:`ByteCodec`. :func:`verify_export` checks a package by rebuilding everything from its files.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from coinference.errors import CoinferenceError
from coinference.progress import phase
from coinference.registry import Registry
from coinference.runtime.codecs import BYTE_CODERS, ByteCoder, RawCoder, build_coder, coder_tables
from coinference.runtime.errors import PackageError
from coinference.runtime.package import FORMAT, FORMAT_VERSION, IDENTITY, Normalization, Package, sha256_file
from coinference.runtime.package import read_manifest as _read_manifest
from coinference.runtime.runner import onnx_session
from coinference.runtime.verify import ATOL, REFERENCE, RTOL, CheckReport, Reference, check, check_reference

if TYPE_CHECKING:
    from coinference.codec.base import FeatureCodec

__all__ = [
    "ATOL",
    "BYTE_CODECS",
    "CHECK_IMAGES",
    "FORMAT_VERSION",
    "RTOL",
    "ByteCodec",
    "ExportError",
    "Normalization",
    "RawCodec",
    "RuntimeCodec",
    "VerifyReport",
    "export_variant",
    "feature_byte_codec",
    "load_codec",
    "load_torchscript",
    "ort_session",
    "read_manifest",
    "sha256_file",
    "split_parts",
    "to_onnx",
    "verify_export",
]

OPSET = 17
DEVICE_IO = ("image", "symbols")
SERVER_IO = ("symbols", "logits")
CHECK_IMAGES = 8
"""Images whose torch outputs a package carries as its reference (``check/reference.npz``)."""
VerifyReport = CheckReport
"""What :func:`verify_export` returns (:class:`coinference.runtime.verify.CheckReport`)."""


class ExportError(CoinferenceError):
    """An export cannot be written, or an exported package does not reproduce the variant."""


@runtime_checkable
class ByteCodec(Protocol):
    """The bytes path of a variant's feature coding, outside ONNX, seen from torch.

    ``compress`` takes one image's symbols (``symbol_shape``, no batch axis, as the device part emits them) and
    returns the payload bytes; ``decompress`` inverts it exactly; ``tables`` are the arrays that rebuild it with
    ``BYTE_CODECS.get(kind)(tables)``. Only a codec whose ``kind`` has a runtime coder can be exported.
    """

    kind: str

    def compress(self, symbols: torch.Tensor) -> bytes: ...

    def decompress(self, payload: bytes) -> torch.Tensor: ...

    def tables(self) -> dict[str, np.ndarray]: ...


class RuntimeCodec:
    """A runtime :class:`~coinference.runtime.ByteCoder` as a torch-side :class:`ByteCodec` (the same bytes).

    Args:
        coder: the runtime coder.
        source: the feature codec kind it codes for (e.g. "sq"; recorded in the manifest).
        analog: the symbols are real channel symbols (analog JSCC), sent as they are.
    """

    def __init__(self, coder: ByteCoder, source: str | None = None, analog: bool = False) -> None:
        self.coder = coder
        self.kind = coder.kind
        self.source = source
        self.analog = analog

    def compress(self, symbols: torch.Tensor) -> bytes:
        return self.coder.encode(symbols.detach().cpu().numpy())

    def decompress(self, payload: bytes) -> torch.Tensor:
        return torch.from_numpy(np.array(self.coder.decode(payload)))

    def tables(self) -> dict[str, np.ndarray]:
        return coder_tables(self.coder)


class RawCodec(RuntimeCodec):
    """No entropy coding: symbols as fixed-width little-endian numbers (``dtype`` on the wire: int8, uint8, int16 or
    float32), decoded as float32 (the runtime's ``raw`` coder)."""

    def __init__(self, shape: Sequence[int], dtype: str = "float32") -> None:
        super().__init__(RawCoder(shape, dtype, "float32"))


BYTE_CODECS: Registry[Callable[[Mapping[str, np.ndarray]], ByteCodec]] = Registry("byte codec")
"""kind → factory(tables) → :class:`ByteCodec`: every runtime coder kind (:data:`coinference.runtime.BYTE_CODERS`),
wrapped for torch tensors."""


def _wrapped(kind: str) -> Callable[[Mapping[str, np.ndarray]], ByteCodec]:
    return lambda tables: RuntimeCodec(build_coder(kind, tables))


for _kind in BYTE_CODERS:
    BYTE_CODECS.register(_kind)(_wrapped(_kind))


def feature_byte_codec(codec: FeatureCodec) -> RuntimeCodec:
    """The bytes path of a coinference feature codec: its runtime coder (:meth:`FeatureCodec.byte_coder`)."""
    return RuntimeCodec(codec.byte_coder(), source=codec.kind, analog=codec.kind == "jscc-awgn")


def split_parts(head: nn.Module, codec: FeatureCodec, tail: nn.Module) -> tuple[nn.Module, nn.Module, RuntimeCodec]:
    """(device, server, byte codec) of a built variant: device = ``head`` → ``codec.to_symbols``; server =
    ``codec.from_symbols`` → ``tail`` (which starts with the channel expand of a pruned variant)."""
    from coinference.codec.train import DeviceSide, ServerSide

    codec.eval()
    device = nn.Sequential(head, DeviceSide(codec)).eval()
    server = nn.Sequential(ServerSide(codec), tail).eval()
    return device, server, feature_byte_codec(codec)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch 2.9+ warns on every call that TorchScript and the classic ONNX exporter are deprecated; the classic
    exporter is still what writes a graph a device's onnxruntime runs, and TorchScript artifacts are still read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on CPU, without the deprecation warning (for TorchScript artifacts of a variant)."""
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu")


def to_onnx(
    module: nn.Module, example: torch.Tensor, path: Path, io: tuple[str, str], opset: int, dynamic: bool = True
) -> None:
    """Write ``module`` as ONNX (classic exporter; ``io`` = input and output names; batch axis dynamic or 1)."""
    axes = {io[0]: {0: "batch"}, io[1]: {0: "batch"}} if dynamic else None
    with _quiet():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=[io[0]],
            output_names=[io[1]],
            dynamic_axes=axes,
            opset_version=opset,
        )


def ort_session(path: str | Path) -> Any:
    """An onnxruntime CPU session on one intra-op thread (as a device runs it; default graph optimisations: all)."""
    return onnx_session(path)


def _runs_at(path: Path, example: np.ndarray, io: tuple[str, str], batch: int, out_shape: Sequence[int]) -> bool:
    """Whether onnxruntime runs the model at ``batch`` (``example`` repeated) with outputs of the right shape."""
    try:
        x = np.repeat(example, batch, axis=0)
        y = onnx_session(path).run(None, {io[0]: x})[0]
    except Exception:  # onnxruntime's own exception types; PackageError when it cannot even load the model
        return False
    return tuple(y.shape) == (batch, *out_shape)


def _export_part(
    module: nn.Module, example: torch.Tensor, path: Path, io: tuple[str, str], opset: int, out_shape: Sequence[int]
) -> int | str:
    """Write ``module`` as ONNX with a batch axis that tells the truth: "dynamic" when onnxruntime runs it at batch
    2, else exported again with batch 1 fixed (returned as 1).

    Raises:
        ExportError: onnxruntime cannot run the part even at batch 1.
    """
    to_onnx(module, example, path, io, opset, dynamic=True)
    ex = example.numpy()
    if _runs_at(path, ex, io, 2, out_shape) and _runs_at(path, ex, io, 1, out_shape):
        return "dynamic"
    to_onnx(module, example, path, io, opset, dynamic=False)
    if not _runs_at(path, ex, io, 1, out_shape):
        try:
            onnx_session(path).run(None, {io[0]: ex})
            why = "wrong output shape"
        except Exception as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"onnxruntime cannot run the exported {path.parent.name}/{path.name}: {why}")
    return 1


def _versions() -> dict[str, str]:
    import onnx

    out = {"torch": torch.__version__, "onnx": onnx.__version__, "numpy": np.__version__}
    with contextlib.suppress(ImportError):
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    return out


def _uint8_images(images: Any, input_shape: Sequence[int]) -> np.ndarray:
    a = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4 or tuple(a.shape[1:]) != tuple(input_shape) or not len(a):
        shape = ", ".join(map(str, input_shape))
        raise ExportError(f"images must be uint8 (N ≥ 1, {shape}) as the data sets store them; got {a.dtype} {a.shape}")
    return a


def _reference(
    device: nn.Module,
    server: nn.Module,
    images: np.ndarray,
    norm: Normalization,
    codec: ByteCodec | None,
    what: str = "verify export",
) -> Reference:
    """The torch modules' outputs for ``images``, one image at a time (batch 1, as a device runs it)."""
    x = torch.from_numpy(norm.apply(images))
    symbols, logits, payloads = [], [], []
    with torch.no_grad(), phase(what, len(x), "image") as advance:
        for i in range(len(x)):
            s = device(x[i : i + 1])
            symbols.append(s[0].numpy())
            logits.append(server(s)[0].float().numpy())
            if codec is not None:
                payloads.append(bytes(codec.compress(s[0])))
            advance()
    return Reference(images, np.stack(symbols), np.stack(logits), payloads if codec is not None else None)


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
    check_images: Any = None,
    opset: int = OPSET,
    overwrite: bool = False,
) -> Path:
    """Write the device and server packages of a variant and their ``manifest.json``; returns the manifest path.

    Args:
        out: folder to write (created; must be empty unless ``overwrite``).
        device: image (N, C, H, W) normalised float32 → symbols (quantized feature, any dtype); eval mode is set.
        server: symbols (the device's output dtype, with a batch axis) → logits.
        input_shape: (C, H, W) of one image.
        codec: the bytes path; its kind needs a runtime coder (:data:`coinference.runtime.BYTE_CODERS`). None: the
            symbols are sent as float32 (``raw``).
        normalization: what the device applies to uint8 pixels (None: pixel / 255).
        spec, measurement, extra: JSON-serialisable dicts copied into the manifest (``spec["key"]`` names the
            variant; e.g. predicted latency in ``extra``).
        check_images: uint8 (N, C, H, W) images whose torch outputs the package carries as its reference (None:
            :data:`CHECK_IMAGES` seeded random images).
        opset: ONNX opset.
        overwrite: replace an existing export in ``out``.

    Raises:
        ExportError: ``out`` is not empty, a codec without a runtime coder, or a part that cannot be traced,
            exported or run by onnxruntime.
    """
    out = Path(out)
    if codec is not None and codec.kind not in BYTE_CODERS:
        raise ExportError(
            f"byte codec {codec.kind!r} has no runtime coder, so no device could decode it; "
            f"valid: {', '.join(sorted(BYTE_CODERS))}"
        )
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"export folder {out} is not empty (overwrite=True, or --force, replaces it)")
        for sub in ("device", "server", "check"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "manifest.json").unlink(missing_ok=True)
    for sub in ("device", "server", "check"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    device, server = device.eval(), server.eval()
    norm = normalization or IDENTITY
    if check_images is None:
        rng = np.random.default_rng(0)
        check_images = rng.integers(0, 256, (CHECK_IMAGES, *input_shape), dtype=np.uint8)
    images = _uint8_images(check_images, input_shape)
    example = torch.from_numpy(norm.apply(images[:1]))
    try:
        with torch.no_grad():
            symbols = device(example)
            logits = server(symbols)
        dtype = str(symbols.dtype).removeprefix("torch.")
        symbol_shape = list(symbols.shape[1:])
        device_batch = _export_part(device, example, out / "device/device.onnx", DEVICE_IO, opset, symbol_shape)
        server_batch = _export_part(
            server, symbols, out / "server/server.onnx", SERVER_IO, opset, list(logits.shape[1:])
        )
    except (RuntimeError, TypeError, ValueError, torch.jit.Error) as e:
        raise ExportError(f"cannot export the variant: {str(e).strip().splitlines()[0]}") from e
    if codec is None:
        codec = RuntimeCodec(RawCoder(symbol_shape, "float32", dtype))
    runtime = getattr(codec, "coder", None)
    params = runtime.params() if runtime is not None else {}
    arrays = runtime.arrays() if runtime is not None else dict(codec.tables())
    tables = None
    if arrays:
        tables = {side: f"{side}/codec.npz" for side in ("device", "server")}
        for rel in tables.values():
            np.savez(out / rel, **arrays)
    _reference(device, server, images, norm, codec, "reference outputs").save(out / REFERENCE)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec": dict(spec) if spec is not None else None,
        "measurement": dict(measurement) if measurement is not None else None,
        "extra": dict(extra) if extra is not None else {},
        "input": {
            "shape": [int(s) for s in input_shape],
            "dtype": "uint8",
            "normalization": normalization.to_dict() if normalization is not None else None,
        },
        "device": {
            "onnx": "device/device.onnx",
            "input": DEVICE_IO[0],
            "input_dtype": "float32",
            "output": DEVICE_IO[1],
            "output_shape": symbol_shape,
            "output_dtype": dtype,
            "batch": device_batch,
        },
        "server": {
            "onnx": "server/server.onnx",
            "input": SERVER_IO[0],
            "input_dtype": dtype,
            "output": SERVER_IO[1],
            "output_shape": list(logits.shape[1:]),
            "batch": server_batch,
        },
        "codec": {
            "kind": codec.kind,
            "source": getattr(codec, "source", None),
            "analog": bool(getattr(codec, "analog", False)),
            "params": params,
            "tables": tables,
        },
        "check": {"reference": REFERENCE, "images": len(images)},
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
    """The manifest of an export, after checking its format and every listed file's size and sha256.

    Raises:
        ExportError: no manifest, a newer format, or a missing or altered file (named).
    """
    try:
        return _read_manifest(out)
    except PackageError as e:
        raise ExportError(str(e)) from None


def load_codec(out: str | Path, side: str = "server") -> RuntimeCodec:
    """The byte codec of an export, rebuilt from the manifest's codec section and ``<side>/codec.npz``.

    Raises:
        ExportError: an altered file, or tables the codec kind cannot be built from.
    """
    try:
        pkg = Package.open(out, side)
        codec = pkg.manifest["codec"]
        return RuntimeCodec(pkg.coder(side), codec.get("source"), bool(codec.get("analog", False)))
    except PackageError as e:
        raise ExportError(str(e)) from None


def verify_export(
    out: str | Path,
    images: Any = None,
    reference: tuple[nn.Module, nn.Module] | None = None,
    codec: ByteCodec | None = None,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> VerifyReport:
    """Check that an exported package reproduces the variant, rebuilding everything from the package's files: the
    manifest, the byte coder from its tables, and onnxruntime sessions of the ONNX parts. Nothing of the exporting
    process is reused; the reference is only compared with.

    The rule (:mod:`coinference.runtime.verify`): the device part's symbols must equal the reference's (float
    symbols within 1e-4), except for at most 0.1 % of them (and at least one) that may flip at a quantizer's rounding
    boundary; the coder must be lossless and, given ``codec``, emit its bytes; ``server.onnx`` on identical symbols
    must give the reference's logits within ``atol + rtol·|ref|``, at batch 1 and all images at once; end to end,
    every image without a flip must give those logits and the same prediction.

    Args:
        images: uint8 (N, C, H, W) images, normalised by the package's manifest as a device would.
        reference: the in-memory (device, server) modules run on ``images``; None: the reference outputs the package
            carries (``check/reference.npz``; ``images`` must then be None).
        codec: the exporter's byte codec, whose bytes the runtime coder's must equal (never used to decode).

    Raises:
        ExportError: an altered file, or a package that does not reproduce the reference (every reason, one line).
    """
    try:
        if reference is None:
            if images is not None:
                raise ExportError("verify_export: images need a reference (device, server) to be compared with")
            return check_reference(out, atol, rtol)
        pkg = Package.open(out)
        x = _uint8_images(images, pkg.input_shape)
        ref = _reference(reference[0].eval(), reference[1].eval(), x, pkg.normalization, codec)
        return check(pkg, ref, atol, rtol)
    except PackageError as e:
        raise ExportError(str(e)) from None
