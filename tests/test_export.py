"""Export round trip on a tiny model: tiny-cnn split after block1, a 1×1-conv encoder with a 16-level quantizer,
and the runtime's range coder fitted to its symbols. Tolerances: quantized symbols must be equal, logits within
1e-5 (onnxruntime vs torch), predictions identical (ONNX and bytes paths)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from coinference.data import load_dataset
from coinference.export import (
    BYTE_CODECS,
    FORMAT_VERSION,
    ExportError,
    Normalization,
    RawCodec,
    RuntimeCodec,
    export_variant,
    load_codec,
    read_manifest,
    verify_export,
)
from coinference.runtime import PayloadError
from coinference.runtime.codecs import CategoricalCoder
from coinference.zoo import build_model, split_model

LEVELS = 16
LOGIT_ATOL = 1e-5
SYMBOL_SHAPE = (2, 8, 8)


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


def range_codec() -> RuntimeCodec:
    """The runtime's range coder, one model per symbol channel, fitted on the tiny variant's training symbols."""
    device, _ = tiny_variant()
    data = load_dataset("synthetic")
    with torch.no_grad():
        sym = device(data.normalize(data.train_x[:64])).numpy()
    contexts = np.broadcast_to(np.arange(2)[:, None, None], SYMBOL_SHAPE).copy()
    return RuntimeCodec(CategoricalCoder.fit(sym, LEVELS, contexts), source="test")


NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def uint8_images(n: int = 32) -> np.ndarray:
    return load_dataset("synthetic").test_x[:n].numpy()


def normalized(n: int = 32) -> torch.Tensor:
    return torch.from_numpy(NORM.apply(uint8_images(n)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module, nn.Module, RuntimeCodec]:
    out = tmp_path_factory.mktemp("export") / "pkg"
    device, server = tiny_variant()
    codec = range_codec()
    export_variant(
        out,
        device,
        server,
        (3, 8, 8),
        codec=codec,
        normalization=NORM,
        spec={"model": "tiny-cnn", "split": "block1"},
        measurement={"accuracy": 0.5, "bits_mean": 100.0},
        extra={"predicted_latency_s": {"total": 0.01}},
        check_images=uint8_images(6),
    )
    return out, device, server, codec


def test_the_tiny_variant_is_not_constant(exported) -> None:
    _, device, server, _ = exported
    with torch.no_grad():
        assert len(set(server(device(normalized())).argmax(1).tolist())) >= 3


def test_layout_and_manifest(exported) -> None:
    out, _, _, _ = exported
    m = read_manifest(out)
    want = {"device/device.onnx", "device/codec.npz", "server/server.onnx", "server/codec.npz", "check/reference.npz"}
    assert set(m["files"]) == want and all(len(v["sha256"]) == 64 for v in m["files"].values())
    assert not list(out.rglob("*.ts.pt"))  # no TorchScript in a package
    assert m["format_version"] == FORMAT_VERSION == 2 and m["format"] == "coinference.package"
    assert m["device"]["output_shape"] == [2, 8, 8] and m["server"]["output_shape"] == [4]
    assert m["device"]["batch"] == m["server"]["batch"] == "dynamic"
    assert m["input"]["normalization"]["mean"] == [0.5, 0.5, 0.5] and m["input"]["dtype"] == "uint8"
    assert m["codec"]["kind"] == "categorical" and m["codec"]["source"] == "test" and m["codec"]["params"] == {}
    assert m["codec"]["tables"] == {"device": "device/codec.npz", "server": "server/codec.npz"}
    with np.load(out / "server/codec.npz", allow_pickle=False) as z:
        assert set(z.files) == {"probs", "contexts"}
    assert m["check"] == {"reference": "check/reference.npz", "images": 6}
    assert m["spec"]["split"] == "block1" and m["extra"]["predicted_latency_s"]["total"] == 0.01
    assert m["versions"]["torch"] == torch.__version__


def test_onnx_equals_torch_at_batch_1_and_3(exported) -> None:
    out, device, server, _ = exported
    d = ort.InferenceSession(str(out / "device/device.onnx"), providers=["CPUExecutionProvider"])
    s = ort.InferenceSession(str(out / "server/server.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = normalized(n)
        with torch.no_grad():
            sym, logits = device(x), server(device(x))
        sym_o = d.run(None, {"image": x.numpy()})[0]
        assert sym_o.shape == (n, *SYMBOL_SHAPE) and np.array_equal(sym_o, sym.numpy())  # quantized: equal
        assert sym_o.min() >= 0 and sym_o.max() <= LEVELS - 1 and np.array_equal(sym_o, np.round(sym_o))
        logits_o = s.run(None, {"symbols": sym_o})[0]
        np.testing.assert_allclose(logits_o, logits.numpy(), atol=LOGIT_ATOL, rtol=0)


def test_verify_rebuilds_the_codec_from_the_files(exported) -> None:
    out, device, server, codec = exported
    report = verify_export(out, uint8_images(), reference=(device, server), codec=codec, atol=LOGIT_ATOL, rtol=0)
    assert report.images == 32 and report.predictions_agree and report.symbol_mismatches == 0
    assert report.payloads_identical and report.max_abs_logit_diff <= LOGIT_ATOL and report.server_batch == 32
    assert 0 < report.bits_mean < 2 * 8 * 8 * 4  # range-coded: fewer than 4 bits per 16-level symbol
    fresh = load_codec(out)
    assert isinstance(fresh, RuntimeCodec) and fresh.coder is not codec.coder and fresh.kind == "categorical"
    sym = device(normalized(1))[0]
    assert fresh.compress(sym) == codec.compress(sym)
    assert torch.equal(fresh.decompress(fresh.compress(sym)).float(), sym)
    # the reference outputs the package carries
    assert verify_export(out).images == 6


def test_verify_fails_on_a_different_variant(exported) -> None:
    out, _, _, _ = exported
    other = tiny_variant(seed=5)
    with pytest.raises(ExportError, match="does not reproduce"):
        verify_export(out, uint8_images(), reference=other)


def test_verify_fails_when_the_exporter_coded_other_bytes(exported) -> None:
    out, device, server, _ = exported
    with pytest.raises(ExportError, match="bytes differ from the exporter's codec's"):
        verify_export(out, uint8_images(8), reference=(device, server), codec=RawCodec(SYMBOL_SHAPE, "uint8"))


def test_tampered_file_is_detected(tmp_path: Path) -> None:
    device, server = tiny_variant()
    export_variant(tmp_path / "p", device, server, (3, 8, 8))
    (tmp_path / "p/server/server.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="server/server.onnx does not match its sha256"):
        verify_export(tmp_path / "p")


def test_float_path_without_codec_and_overwrite(tmp_path: Path) -> None:
    device, server = tiny_variant()
    export_variant(tmp_path / "p", device, server, (3, 8, 8))
    m = json.loads((tmp_path / "p/manifest.json").read_text())
    assert m["codec"]["kind"] == "raw" and m["codec"]["params"]["dtype"] == "float32"
    assert m["codec"]["tables"] is None and not (tmp_path / "p/device/codec.npz").exists()
    assert m["input"]["normalization"] is None  # pixel / 255
    assert verify_export(tmp_path / "p", uint8_images(), reference=(device, server)).bits_mean == 2 * 8 * 8 * 32
    with pytest.raises(ExportError, match="not empty"):
        export_variant(tmp_path / "p", device, server, (3, 8, 8))
    export_variant(tmp_path / "p", device, server, (3, 8, 8), codec=RawCodec(SYMBOL_SHAPE, "int8"), overwrite=True)
    assert verify_export(tmp_path / "p", uint8_images(), reference=(device, server)).bits_mean == 2 * 8 * 8 * 8


def test_a_codec_without_a_runtime_coder_is_refused(tmp_path: Path) -> None:
    device, server = tiny_variant()
    codec = RawCodec(SYMBOL_SHAPE)
    codec.kind = "test-nibble"  # a torch-side codec that no device could decode
    with pytest.raises(ExportError, match="'test-nibble' has no runtime coder.*valid: categorical, huffman, raw"):
        export_variant(tmp_path / "p", device, server, (3, 8, 8), codec=codec)
    assert not (tmp_path / "p").exists()


def test_images_must_be_uint8(exported) -> None:
    out, device, server, _ = exported
    with pytest.raises(ExportError, match=r"images must be uint8 \(N ≥ 1, 3, 8, 8\).*float32"):
        verify_export(out, normalized(4), reference=(device, server))


def test_raw_codec_round_trip() -> None:
    c = RawCodec((2, 3), "int16")
    s = torch.tensor([[1.0, -2, 300], [0, 5, -7]])
    assert torch.equal(c.decompress(c.compress(s)), s)
    back = BYTE_CODECS.get("raw")(c.tables())
    assert isinstance(back, RuntimeCodec) and back.coder.shape == (2, 3)
    assert set(BYTE_CODECS) == {"categorical", "huffman", "raw", "sign-bits"}
    with pytest.raises(PayloadError, match="expects symbols of shape"):
        c.compress(torch.zeros(3))
