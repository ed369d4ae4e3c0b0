"""The deployment runtime: read an export package and run its device and server sides with onnxruntime, numpy and
constriction only — ``import coinference.runtime`` never imports PyTorch::

    from coinference.runtime import DeviceRunner, ServerRunner

    payload = DeviceRunner("runs/export").encode(image)   # uint8 (C, H, W) → bytes
    logits = ServerRunner("runs/export").decode(payload)  # bytes → float32 (classes,)

Package format (version :data:`FORMAT_VERSION`): docs/PACKAGE.md. ``python -m coinference.runtime.verify PACKAGE``
checks a package against the reference outputs it carries, in a process without PyTorch.
"""

from coinference.runtime.codecs import BYTE_CODERS, ByteCoder, build_coder
from coinference.runtime.errors import PackageError, PayloadError
from coinference.runtime.package import FORMAT_VERSION, Normalization, Package, read_manifest
from coinference.runtime.runner import Decoded, DeviceRunner, Encoded, ServerRunner

__all__ = [
    "BYTE_CODERS",
    "FORMAT_VERSION",
    "ByteCoder",
    "Decoded",
    "DeviceRunner",
    "Encoded",
    "Normalization",
    "Package",
    "PackageError",
    "PayloadError",
    "ServerRunner",
    "build_coder",
    "read_manifest",
]
