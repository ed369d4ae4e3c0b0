"""Does a package reproduce the variant it was exported from? Checked from the package files alone.

``python -m coinference.runtime.verify PACKAGE`` checks a package against the reference it carries
(``check/reference.npz``: a few images and the symbols, logits and payload bytes the exporter's torch modules gave
for them), in a process that needs no PyTorch; ``--images FILE.npy`` (uint8 (N, C, H, W)) also runs those images
and prints their predictions. :func:`coinference.export.verify_export` applies the same rule to a live torch
reference.

**The rule** (:func:`check`). The runtime path is ``device.onnx`` → the byte coder built from the package's tables
→ bytes → the same coder → ``server.onnx``, one image at a time.

1. *Device, symbol by symbol.* An element of the runtime's symbols differs from the reference's when
   ``|runtime − ref| > SYMBOL_TOL · (1 + |ref|)``: integer symbols (indices, 8-bit values, bits) must be equal, and
   float symbols (raw features, analog channel symbols) equal to that tolerance. onnxruntime and PyTorch sum in
   different orders, so a value that lies within rounding error of a quantizer's decision boundary may land on the
   other side: at most ``FLIP_FRACTION`` of all symbols compared (and at least one) may differ. An image with such a
   flip is a *flipped image*.
2. *Bytes.* The coder must be lossless on the runtime's and the reference's symbols, and (when the reference has
   payloads) emit the reference's bytes for the reference's symbols, byte for byte.
3. *Server, on identical symbols.* ``server.onnx`` run on the reference's symbols (after the bytes round trip)
   must give the reference's logits within ``atol + rtol · |ref|`` (default 1e-4 each), one image at a time and
   all images in one batch when its batch axis is dynamic.
4. *End to end.* On every image that is not flipped, the runtime's logits must be within the same tolerance of the
   reference's and its prediction equal the reference's (unless the reference's two best logits are within that
   tolerance of each other: a tie either way). Flipped images are counted, not compared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinference.runtime.errors import PackageError
from coinference.runtime.package import SIDES, Package, load_npz
from coinference.runtime.runner import DeviceRunner, ServerRunner

SYMBOL_TOL = 1e-4
"""Absolute and relative tolerance between float symbols; integer symbols differ by at least 1 or not at all."""
FLIP_FRACTION = 1e-3
"""Largest fraction of the compared symbols that may differ from the reference (rounding-boundary flips)."""
ATOL = 1e-4
"""Default absolute tolerance between logits (onnxruntime matches torch to ~1e-6 on identical symbols)."""
RTOL = 1e-4
"""Default relative tolerance between logits."""
REFERENCE = "check/reference.npz"


@dataclass(frozen=True, eq=False)
class Reference:
    """What the exporter's torch modules gave for a few images."""

    images: np.ndarray
    """uint8 (N, C, H, W)."""
    symbols: np.ndarray
    """(N, *symbol_shape), the device part's output, one image at a time."""
    logits: np.ndarray
    """float32 (N, classes): the server part on those symbols."""
    payloads: list[bytes] | None = None
    """The exporter's codec's bytes for those symbols (None: not recorded)."""

    def save(self, path: str | Path) -> None:
        """Write as ``.npz`` (payloads concatenated, with offsets; no pickle)."""
        payloads = self.payloads or []
        offsets = np.cumsum([0, *(len(p) for p in payloads)]).astype(np.int64)
        np.savez(
            path,
            images=self.images,
            symbols=self.symbols,
            logits=self.logits.astype(np.float32),
            payload_bytes=np.frombuffer(b"".join(payloads), dtype=np.uint8),
            payload_offsets=offsets if self.payloads is not None else np.zeros(0, dtype=np.int64),
        )

    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> Reference:
        z = load_npz(Path(path), name)
        try:
            off, data = z["payload_offsets"], z["payload_bytes"].tobytes()
            payloads = [data[off[i] : off[i + 1]] for i in range(len(off) - 1)] if len(off) else None
            return cls(z["images"], z["symbols"], z["logits"], payloads)
        except KeyError as e:
            raise PackageError(f"{name or path} has no {e.args[0]!r} array") from None


@dataclass(frozen=True)
class CheckReport:
    """How a package compared with a reference (see the module's rule)."""

    images: int
    symbols: int
    """Symbol elements compared (images × symbols per image)."""
    symbol_mismatches: int
    """Elements of the runtime's symbols that differ from the reference's (rounding-boundary flips)."""
    flipped_images: int
    """Images with at least one such element."""
    max_abs_logit_diff: float
    """Largest |runtime − reference| logit with identical symbols (``server.onnx`` vs the torch server part)."""
    end_to_end_max_abs_logit_diff: float
    """Largest |runtime − reference| logit end to end over the images that are not flipped (0 when all are)."""
    predictions_agree: bool
    """The runtime's predictions equal the reference's on every image that is not flipped (ties excepted)."""
    payloads_identical: bool | None
    """The runtime coder's bytes equal the reference's payloads (None: the reference has none)."""
    bits_mean: float
    """Mean payload bits per image of the runtime (header excluded)."""
    server_batch: int
    """Images ``server.onnx`` ran on in one call (the batch check; 1 when its batch axis is fixed)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mismatch(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    a64, r64 = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if a64.shape != r64.shape:
        return np.ones(r64.shape, dtype=bool)
    return ~(np.abs(a64 - r64) <= SYMBOL_TOL * (1.0 + np.abs(r64)))


def check(package: str | Path | Package, ref: Reference, atol: float = ATOL, rtol: float = RTOL) -> CheckReport:
    """Check ``package`` against ``ref`` by the module's rule, rebuilding everything from the package's files.

    Raises:
        PackageError: an altered or unreadable file, or a rule broken (every broken rule, in one line).
    """
    if isinstance(package, Package):
        pkg = package if set(package.sides) == set(SIDES) else Package.open(package.path)
    else:
        pkg = Package.open(package)
    dev, srv = DeviceRunner(pkg), ServerRunner(pkg)
    n = len(ref.images)
    if n == 0 or len(ref.symbols) != n or len(ref.logits) != n:
        raise PackageError(f"a reference needs images, symbols and logits for ≥ 1 image; got {n}, "
                           f"{len(ref.symbols)}, {len(ref.logits)}")  # fmt: skip
    problems: list[str] = []
    mismatches = flipped = 0
    bits: list[int] = []
    rt_logits, ref_decoded, flips = [], [], []
    same_bytes: bool | None = None if ref.payloads is None else True
    lossless = True
    for i in range(n):
        s = dev.symbols(ref.images[i])
        bad = int(_mismatch(s, ref.symbols[i]).sum())
        mismatches += bad
        flipped += bad > 0
        flips.append(bad > 0)
        payload = dev.coder.encode(s)
        bits.append(8 * len(payload))
        decoded = srv.symbols(payload)
        lossless &= bool(np.array_equal(decoded, s.astype(decoded.dtype)))
        rt_logits.append(srv.logits(decoded[None])[0])
        ref_payload = dev.coder.encode(np.asarray(ref.symbols[i]))
        if ref.payloads is not None and ref_payload != ref.payloads[i]:
            same_bytes = False
        back = srv.symbols(ref_payload)
        lossless &= bool(np.array_equal(back, np.asarray(ref.symbols[i]).astype(back.dtype)))
        ref_decoded.append(back)
    total = int(np.asarray(ref.symbols).size)
    allowed = max(1, math.floor(FLIP_FRACTION * total))
    if mismatches > allowed:
        problems.append(
            f"{mismatches} of {total} device symbols differ from the reference (at most {allowed} may flip at a "
            "rounding boundary)"
        )
    if not lossless:
        problems.append(f"the {pkg.codec_kind} coder does not decode its own bytes to the symbols it coded")
    if same_bytes is False:
        problems.append(f"the {pkg.codec_kind} coder's bytes differ from the exporter's codec's")
    ref_logits = np.asarray(ref.logits, dtype=np.float32)
    sym = np.stack(ref_decoded)
    one = np.concatenate([srv.logits(sym[i : i + 1]) for i in range(n)])
    server_diff = float(np.abs(one - ref_logits).max())
    if not np.allclose(one, ref_logits, atol=atol, rtol=rtol):
        problems.append(
            f"server.onnx logits differ from the reference's on identical symbols by up to {server_diff:.3g}"
        )
    batch = n if srv.batch is None else 1
    if n > 1 and srv.batch is None:
        together = srv.logits(sym)
        if not np.allclose(together, one, atol=atol, rtol=rtol):
            diff = float(np.abs(together - one).max())
            problems.append(f"server.onnx at batch {n} differs from batch 1 by up to {diff:.3g}")
    keep = ~np.asarray(flips)
    rt = np.stack(rt_logits)
    e2e = float(np.abs(rt[keep] - ref_logits[keep]).max()) if keep.any() else 0.0
    if keep.any() and not np.allclose(rt[keep], ref_logits[keep], atol=atol, rtol=rtol):
        problems.append(f"runtime logits differ from the reference's by up to {e2e:.3g} on images without flips")
    top2 = np.sort(ref_logits, axis=1)[:, -2:] if ref_logits.shape[1] > 1 else np.zeros((n, 2))
    tie = (top2[:, 1] - top2[:, 0]) <= atol + rtol * np.abs(top2[:, 1])
    agree = bool(((rt.argmax(1) == ref_logits.argmax(1)) | tie | ~keep).all())
    if not agree:
        problems.append("runtime predictions differ from the reference's on images without flips")
    if problems:
        raise PackageError(f"package {pkg.path} does not reproduce its reference: " + "; ".join(problems))
    return CheckReport(
        images=n,
        symbols=total,
        symbol_mismatches=mismatches,
        flipped_images=flipped,
        max_abs_logit_diff=server_diff,
        end_to_end_max_abs_logit_diff=e2e,
        predictions_agree=agree,
        payloads_identical=same_bytes,
        bits_mean=float(np.mean(bits)),
        server_batch=batch,
    )


def load_reference(package: str | Path | Package) -> Reference:
    """The reference a package carries (``check/reference.npz``).

    Raises:
        PackageError: the package has none, or it is unreadable.
    """
    pkg = package if isinstance(package, Package) else Package.open(package)
    rel = (pkg.manifest.get("check") or {}).get("reference")
    if rel is None:
        raise PackageError(f"package {pkg.path} carries no reference outputs to check against")
    return Reference.load(pkg.file(rel), rel)


def check_reference(package: str | Path, atol: float = ATOL, rtol: float = RTOL) -> CheckReport:
    """:func:`check` against the reference the package carries."""
    pkg = Package.open(package)
    return check(pkg, load_reference(pkg), atol, rtol)


def run_images(package: str | Path, images: np.ndarray) -> dict[str, Any]:
    """Predictions and payload sizes of uint8 images (N, C, H, W) through the runtime (no reference)."""
    pkg = Package.open(package)
    dev, srv = DeviceRunner(pkg), ServerRunner(pkg)
    preds, sizes = [], []
    for img in np.asarray(images):
        payload = dev.encode(img)
        sizes.append(len(payload))
        preds.append(int(srv.decode(payload).argmax()))
    return {"predictions": preds, "payload_bytes": sizes}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m coinference.runtime.verify PACKAGE [--images FILE.npy]``: prints a JSON report; exit 0 when the
    package reproduces its reference, 2 (one line on stderr) when not."""
    ap = argparse.ArgumentParser(prog="python -m coinference.runtime.verify", description=__doc__.splitlines()[0])
    ap.add_argument("package", type=Path, help="the package folder (holding manifest.json)")
    ap.add_argument("--images", type=Path, help="uint8 (N, C, H, W) images (.npy) to run and predict")
    ap.add_argument("--atol", type=float, default=ATOL)
    ap.add_argument("--rtol", type=float, default=RTOL)
    args = ap.parse_args(argv)
    try:
        out: dict[str, Any] = {"check": check_reference(args.package, args.atol, args.rtol).to_dict()}
        if args.images is not None:
            try:
                images = np.load(args.images, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise PackageError(f"--images {args.images} is not a readable .npy file without pickles: {e}") from None
            out["images"] = run_images(args.package, images)
    except PackageError as e:
        print(f"verify: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a PayloadError from --images, or anything unforeseen: still one line
        print(f"verify: error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(json.dumps(out, sort_keys=True))
    return 0


BLOCK_TORCH = "import sys; sys.modules['torch'] = None; from coinference.runtime.verify import main; sys.exit(main())"
"""``python -c`` program: :func:`main` with ``import torch`` made to fail, as on a device without PyTorch."""


def verify_in_subprocess(package: str | Path, timeout_s: float = 300.0, block_torch: bool = True) -> CheckReport:
    """:func:`check_reference` in a fresh Python process (``import torch`` fails there unless ``block_torch`` is
    False): nothing of the calling process is reused.

    Raises:
        PackageError: the check failed (its message), or the process did not answer.
    """
    cmd = [sys.executable, "-c", BLOCK_TORCH] if block_torch else [sys.executable, "-m", "coinference.runtime.verify"]
    root = str(Path(__file__).resolve().parents[2])  # the folder holding coinference/, installed or not
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    try:
        proc = subprocess.run(
            [*cmd, str(package)], capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise PackageError(f"verifying {package} in a fresh process took over {timeout_s:g} s") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        last = lines[-1].removeprefix("verify: error: ") if lines else f"exit code {proc.returncode}"
        raise PackageError(last)
    return CheckReport(**json.loads(proc.stdout)["check"])


if __name__ == "__main__":
    sys.exit(main())
