"""Export round trip on a tiny model: tiny-cnn split after block1, a 1×1-conv encoder with a 16-level quantizer,
and a nibble-packing byte codec defined here. Tolerances: quantized symbols must be equal, logits within 1e-5
(onnxruntime vs torch), predictions identical (ONNX and bytes paths)."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from coinference.data import load_dataset
from coinference.export import (
    BYTE_CODECS,
    ExportError,
    Normalization,
    RawCodec,
    export_variant,
    load_codec,
    load_torchscript,
    read_manifest,
    verify_export,
)
from coinference.zoo import build_model, split_model

LEVELS = 16
LOGIT_ATOL = 1e-5


class Encoder(nn.Module):
    """1×1 conv to 2 channels, tanh, uniform 16-level quantizer: symbols are integers 0..15 (as float32)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (torch.tanh(self.conv(x)) + 1) / 2 * (LEVELS - 1)
        if self.training:  # straight-through estimator while training; exact integers in eval (exported)
            return y + (torch.round(y) - y).detach()
        return torch.round(y)


class Decoder(nn.Module):
    def __init__(self, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, cout, 1)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(s / (LEVELS - 1) * 2 - 1))


class NibbleCodec:
    """Two 4-bit symbols per byte: a trivial, exact byte codec."""

    kind = "test-nibble"

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def compress(self, symbols: torch.Tensor) -> bytes:
        s = symbols.detach().to(torch.uint8).flatten().numpy()
        s = np.pad(s, (0, len(s) % 2))
        return (s[0::2] << 4 | s[1::2]).astype(np.uint8).tobytes()

    def decompress(self, payload: bytes) -> torch.Tensor:
        b = np.frombuffer(payload, np.uint8)
        s = np.stack([b >> 4, b & 15], 1).flatten()[: math.prod(self.shape)]
        return torch.from_numpy(s.astype(np.float32).reshape(self.shape))

    def tables(self) -> dict[str, np.ndarray]:
        return {"shape": np.asarray(self.shape, dtype=np.int64)}


def _nibble(tables: Mapping[str, np.ndarray]) -> NibbleCodec:
    return NibbleCodec(tuple(int(s) for s in tables["shape"]))


if "test-nibble" not in BYTE_CODECS:
    BYTE_CODECS.register("test-nibble")(_nibble)


@functools.cache
def tiny_variant(seed: int = 0, steps: int = 30) -> tuple[nn.Module, nn.Module]:
    """A briefly trained variant (so that its predictions differ between images); cached, never modified."""
    torch.manual_seed(seed)
    head, tail = split_model(build_model("tiny-cnn", num_classes=4), "block1")
    device, server = nn.Sequential(head, Encoder(8)), nn.Sequential(Decoder(8), tail)
    data = load_dataset("synthetic")
    opt = torch.optim.Adam([*device.parameters(), *server.parameters()], lr=0.02)
    for i in range(steps):
        idx = torch.arange(i * 32, i * 32 + 32) % len(data.train_y)
        loss = nn.functional.cross_entropy(server(device(data.normalize(data.train_x[idx]))), data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return device.eval(), server.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module, nn.Module]:
    out = tmp_path_factory.mktemp("export") / "pkg"
    device, server = tiny_variant()
    export_variant(
        out,
        device,
        server,
        (3, 8, 8),
        codec=NibbleCodec((2, 8, 8)),
        normalization=Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        spec={"model": "tiny-cnn", "split": "block1"},
        measurement={"accuracy": 0.5},
        extra={"predicted_latency_s": {"total": 0.01}},
    )
    return out, device, server


def images(n: int = 32) -> torch.Tensor:
    data = load_dataset("synthetic")
    return data.normalize(data.test_x[:n])


def test_the_tiny_variant_is_not_constant(exported) -> None:
    _, device, server = exported
    with torch.no_grad():
        assert len(set(server(device(images())).argmax(1).tolist())) >= 3


def test_layout_and_manifest(exported) -> None:
    out, _, _ = exported
    m = read_manifest(out)
    want = {"device/device.ts.pt", "device/device.onnx", "device/codec.npz", "server/server.ts.pt",
            "server/server.onnx", "server/codec.npz"}  # fmt: skip
    assert set(m["files"]) == want and all(len(v["sha256"]) == 64 for v in m["files"].values())
    assert m["device"]["output_shape"] == [2, 8, 8] and m["server"]["output_shape"] == [4]
    assert m["input"]["normalization"]["mean"] == [0.5, 0.5, 0.5] and m["codec"]["kind"] == "test-nibble"
    assert m["spec"]["split"] == "block1" and m["extra"]["predicted_latency_s"]["total"] == 0.01
    assert m["versions"]["torch"] == torch.__version__


def test_onnx_equals_torch(exported) -> None:
    out, device, server = exported
    x = images()
    with torch.no_grad():
        sym, logits = device(x), server(device(x))
    d = ort.InferenceSession(str(out / "device/device.onnx"), providers=["CPUExecutionProvider"])
    s = ort.InferenceSession(str(out / "server/server.onnx"), providers=["CPUExecutionProvider"])
    sym_o = d.run(None, {"image": x.numpy()})[0]
    assert np.array_equal(sym_o, sym.numpy())  # quantized symbols: exactly equal
    assert sym_o.min() >= 0 and sym_o.max() <= LEVELS - 1 and np.array_equal(sym_o, np.round(sym_o))
    logits_o = s.run(None, {"symbols": sym_o})[0]
    np.testing.assert_allclose(logits_o, logits.numpy(), atol=LOGIT_ATOL, rtol=0)
    ts = load_torchscript(out / "device/device.ts.pt")
    assert torch.equal(ts(x), sym)


def test_verify_bytes_path(exported) -> None:
    out, device, server = exported
    report = verify_export(out, images(), reference=(device, server), atol=LOGIT_ATOL, rtol=0)
    assert report.onnx_predictions_agree and report.bytes_predictions_agree and report.symbol_mismatches == 0
    assert report.max_abs_logit_diff <= LOGIT_ATOL
    assert report.bits_mean == 2 * 8 * 8 * 4  # 128 symbols × 4 bits, from the real bytes
    codec = load_codec(out)
    assert isinstance(codec, NibbleCodec)
    sym = device(images(1))[0]
    assert torch.equal(codec.decompress(codec.compress(sym)), sym)
    # the package's own TorchScript as the reference
    assert verify_export(out, images(8)).images == 8


def test_verify_fails_on_a_different_variant(exported) -> None:
    out, _, _ = exported
    other = tiny_variant(seed=5)
    with pytest.raises(ExportError, match="does not reproduce"):
        verify_export(out, images(), reference=other)


def test_verify_fails_on_a_lossy_bytes_path(exported) -> None:
    out, device, server = exported

    class Lossy(NibbleCodec):
        def decompress(self, payload: bytes) -> torch.Tensor:
            return torch.zeros(self.shape)

    with pytest.raises(ExportError, match="bytes path"):
        verify_export(out, images(), reference=(device, server), codec=Lossy((2, 8, 8)))


def test_tampered_file_is_detected(tmp_path: Path) -> None:
    device, server = tiny_variant()
    export_variant(tmp_path / "p", device, server, (3, 8, 8))
    (tmp_path / "p/server/server.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="server/server.onnx does not match its sha256"):
        verify_export(tmp_path / "p", images())


def test_float_path_without_codec_and_overwrite(tmp_path: Path) -> None:
    device, server = tiny_variant()
    export_variant(tmp_path / "p", device, server, (3, 8, 8))
    m = json.loads((tmp_path / "p/manifest.json").read_text())
    assert m["codec"] is None and not (tmp_path / "p/device/codec.npz").exists()
    assert verify_export(tmp_path / "p", images(), reference=(device, server)).bits_mean is None
    with pytest.raises(ExportError, match="not empty"):
        export_variant(tmp_path / "p", device, server, (3, 8, 8))
    export_variant(tmp_path / "p", device, server, (3, 8, 8), codec=RawCodec((2, 8, 8), "int8"), overwrite=True)
    assert verify_export(tmp_path / "p", images(), reference=(device, server)).bits_mean == 2 * 8 * 8 * 8


def test_raw_codec_round_trip() -> None:
    c = RawCodec((2, 3), "int16")
    s = torch.tensor([[1.0, -2, 300], [0, 5, -7]])
    assert torch.equal(c.decompress(c.compress(s)), s)
    assert BYTE_CODECS.get("raw")(c.tables()).shape == (2, 3)
    with pytest.raises(ExportError, match="expects symbols of shape"):
        c.compress(torch.zeros(3))
