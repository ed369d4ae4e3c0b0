"""Reading an export package: its manifest, the format check, the sha256 of every file, and its codec.

A package (format 2, layout and manifest fields in docs/PACKAGE.md) is a folder::

    manifest.json          what the package is, how to run it, and the sha256 + size of every file below
    device/device.onnx     normalised image (N, C, H, W) float32 → symbols (N, *symbol_shape)
    device/codec.npz       the byte coder's arrays, when it has any (numpy, no pickle)
    server/server.onnx     symbols (N, *symbol_shape) → logits (N, classes)
    server/codec.npz       the same arrays, for decoding
    check/reference.npz    a few images with the symbols, logits and payloads the exporter's torch modules gave

A device needs ``manifest.json`` and ``device/``, a server ``manifest.json`` and ``server/``;
:meth:`Package.open` checks the files of the side it is asked for (all of them by default).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinference.errors import UnknownNameError
from coinference.runtime.codecs import ByteCoder, build_coder
from coinference.runtime.errors import PackageError

FORMAT = "coinference.package"
FORMAT_VERSION = 2
"""Version of the layout and manifest this runtime reads and the exporter writes (1: TorchScript + ONNX, codec
kinds without a runtime coder)."""
SIDES = ("device", "server")
VARIANT_ID_HEX = 16
"""Hex digits of the spec key that name a variant on the wire (the first 8 bytes)."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _in_scope(rel: str, side: str | None) -> bool:
    return side is None or rel.startswith(f"{side}/")


def read_manifest(path: str | Path, side: str | None = None) -> dict[str, Any]:
    """The manifest of the package in folder ``path``, after checking its format and, for every listed file of
    ``side`` ("device", "server"; None: every file), that it exists with the recorded size and sha256.

    Raises:
        PackageError: no or unreadable manifest, another format, a newer format version, or a missing or altered
            file (the message names it).
    """
    path = Path(path)
    if side is not None and side not in SIDES:
        raise PackageError(f"package side {side!r} unknown; valid: {', '.join(SIDES)}")
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise PackageError(f"no manifest.json in {path}: not an export package") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PackageError(f"{path / 'manifest.json'} is not a readable JSON manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise PackageError(f"{path / 'manifest.json'} is not a package manifest (a JSON object)")
    if manifest.get("format", FORMAT) != FORMAT:
        raise PackageError(f"{path / 'manifest.json'} is a {manifest['format']!r} manifest, not {FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PackageError(f"{path / 'manifest.json'} has no integer format_version (got {version!r})")
    if version > FORMAT_VERSION:
        raise PackageError(
            f"package {path} has format version {version}, newer than this runtime reads ({FORMAT_VERSION}); "
            "upgrade coinference"
        )
    if version < FORMAT_VERSION:
        raise PackageError(
            f"package {path} has format version {version} (TorchScript era, no runtime codec tables); "
            f"this runtime reads version {FORMAT_VERSION}: export the variant again"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise PackageError(f"{path / 'manifest.json'} lists no files")
    for rel, info in sorted(files.items()):
        if not _in_scope(rel, side):
            continue
        p = path / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise PackageError(f"package file {rel!r} lies outside the package")
        if not p.is_file():
            raise PackageError(f"package file {rel} is missing from {path}")
        if p.stat().st_size != info.get("bytes") or sha256_file(p) != info.get("sha256"):
            raise PackageError(f"package file {rel} does not match its sha256 in the manifest (altered or damaged)")
    return manifest


@dataclass(frozen=True)
class Normalization:
    """Input normalisation the device applies before the device part: ``x = (pixel / 255 − mean) / std``."""

    mean: tuple[float, ...]
    """Per-channel mean of [0, 1]-scaled pixels."""
    std: tuple[float, ...]
    """Per-channel standard deviation of [0, 1]-scaled pixels."""

    def to_dict(self) -> dict[str, Any]:
        return {"scale": "pixel / 255", "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalization:
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))

    def apply(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, H, W) → float32 model input, computed in float32 in the order
        :meth:`coinference.data.ImageData.normalize` uses (the same bits)."""
        shape = (1, -1) + (1,) * (images.ndim - 2)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        std = np.asarray(self.std, dtype=np.float32).reshape(shape)
        return (images.astype(np.float32) / np.float32(255.0) - mean) / std


IDENTITY = Normalization((0.0,), (1.0,))
"""What a package without a recorded normalisation applies: pixel / 255."""


def _section(manifest: Mapping[str, Any], name: str, path: Path) -> Mapping[str, Any]:
    sec = manifest.get(name)
    if not isinstance(sec, Mapping):
        raise PackageError(f"{path / 'manifest.json'} has no {name!r} section")
    return sec


def _ints(value: Any, what: str, path: Path) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or not all(isinstance(v, int) for v in value):
        raise PackageError(f"{path / 'manifest.json'}: {what} must be a list of integers, got {value!r}")
    return tuple(value)


@dataclass(frozen=True, eq=False)
class Package:
    """An export package, read and checked (:meth:`open`).

    Attributes:
        path: the package folder.
        manifest: the parsed manifest.json.
        key: the variant's spec key (sha256 hex of its canonical JSON), None when exported without a spec.
        variant_id: the first 16 hex digits of ``key`` (of the ONNX files' sha256 without a key): what names the
            variant on the wire.
        input_shape: (C, H, W) of one image.
        normalization: what the device applies to uint8 pixels (:data:`IDENTITY` when none was recorded).
        symbol_shape: shape of one image's symbols (the device part's output, batch excluded).
        symbol_dtype: numpy dtype name of the symbols (the server part's input).
        classes: logits per image.
        codec_kind: the runtime byte coder's kind (:data:`coinference.runtime.codecs.BYTE_CODERS`).
        analog: the symbols are real channel symbols (analog JSCC) sent as float32 over a digital link.
        predicted_payload_bytes: payload bytes per image the measurement predicts (mean; header excluded;
            4 × channel uses for analog JSCC), None without a measurement.
        predicted_latency_s: the exporter's predicted end-to-end latency (s), None when not recorded.
        extra: what the exporter recorded beside (the query, predicted latency parts, device profile).
        sides: the sides whose files were checked.
    """

    path: Path
    manifest: Mapping[str, Any]
    key: str | None
    variant_id: str
    input_shape: tuple[int, ...]
    normalization: Normalization
    symbol_shape: tuple[int, ...]
    symbol_dtype: str
    classes: int
    codec_kind: str
    analog: bool
    predicted_payload_bytes: float | None
    predicted_latency_s: float | None
    extra: Mapping[str, Any]
    sides: tuple[str, ...]

    @classmethod
    def open(cls, path: str | Path, side: str | None = None) -> Package:
        """Read the package in ``path``, checking the files of ``side`` (None: all; see :func:`read_manifest`).

        Raises:
            PackageError: see :func:`read_manifest`; also a manifest without the fields a runner needs.
        """
        path = Path(path)
        m = read_manifest(path, side)
        dev, srv, inp = (_section(m, n, path) for n in ("device", "server", "input"))
        codec = _section(m, "codec", path)
        spec = m.get("spec") or {}
        key = spec.get("key") if isinstance(spec, Mapping) else None
        if key is None:
            files = m["files"]
            seed = "".join(files[r]["sha256"] for r in (dev.get("onnx"), srv.get("onnx")) if r in files)
            vid = hashlib.sha256(seed.encode()).hexdigest()[:VARIANT_ID_HEX]
        else:
            vid = str(key)[:VARIANT_ID_HEX]
        norm = inp.get("normalization")
        meas = m.get("measurement") or {}
        extra = m.get("extra") or {}
        total = (extra.get("predicted_latency_s") or {}).get("total")
        return cls(
            path=path,
            manifest=m,
            key=None if key is None else str(key),
            variant_id=vid,
            input_shape=_ints(inp.get("shape"), "input.shape", path),
            normalization=Normalization.from_dict(norm) if norm else IDENTITY,
            symbol_shape=_ints(dev.get("output_shape"), "device.output_shape", path),
            symbol_dtype=str(srv.get("input_dtype", dev.get("output_dtype"))),
            classes=int(_ints(srv.get("output_shape"), "server.output_shape", path)[0]),
            codec_kind=str(codec.get("kind")),
            analog=bool(codec.get("analog", False)),
            predicted_payload_bytes=_payload_bytes(meas),
            predicted_latency_s=None if total is None else float(total),
            extra=extra,
            sides=SIDES if side is None else (side,),
        )

    def file(self, rel: str) -> Path:
        """Absolute path of the package file ``rel`` (as the manifest names it)."""
        return self.path / rel

    def part(self, side: str) -> Mapping[str, Any]:
        """The manifest's ``device`` or ``server`` section."""
        return _section(self.manifest, side, self.path)

    def coder(self, side: str = "server") -> ByteCoder:
        """A fresh byte coder built from the manifest's codec params and ``<side>/codec.npz``.

        Raises:
            PackageError: a codec kind without a runtime coder, or unreadable or incomplete tables.
        """
        codec = _section(self.manifest, "codec", self.path)
        tables: dict[str, Any] = dict(codec.get("params") or {})
        rel = (codec.get("tables") or {}).get(side)
        if rel is not None:
            tables.update(load_npz(self.file(rel), rel))
        try:
            return build_coder(self.codec_kind, tables)
        except UnknownNameError as e:
            raise PackageError(f"package {self.path}: {e}") from None
        except PackageError as e:
            raise PackageError(f"package {self.path}: {e}") from None


def load_npz(path: Path, name: str | None = None) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file, read with ``allow_pickle=False``.

    Raises:
        PackageError: the file is missing, not a ``.npz`` file, or holds pickled objects (named).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise PackageError(f"{name or path} is not a readable numpy .npz file without pickles: {e}") from None


def _payload_bytes(meas: Mapping[str, Any]) -> float | None:
    uses = meas.get("channel_uses")
    if uses is not None:
        return 4.0 * float(uses)
    bits = meas.get("bits_mean")
    return None if bits is None else float(bits) / 8.0
