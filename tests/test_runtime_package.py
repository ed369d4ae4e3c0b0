"""Deployable packages run by :mod:`coinference.runtime` (onnxruntime, numpy, constriction; no PyTorch).

Every codec kind the builder makes is built at the smoke budget on tiny-cnn / synthetic (3×8×8 images), saved as
the builder's checkpoints, reloaded as ``coinfer export`` reloads them and exported; the runtime's
``ServerRunner.decode(DeviceRunner.encode(image))`` must predict what the in-process torch variant predicts, with
its logits, and emit the torch codec's bytes. Also: batches through ``server.onnx``, a pruned variant whose split
output keeps no channel of an option-A shortcut, altered files and newer formats (one-line errors naming them),
the flip rule of verification, and the runtime in a process where ``import torch`` fails.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from coinference.build import Builder, load_codec
from coinference.data import load_dataset
from coinference.export import Normalization, export_variant, split_parts, verify_export
from coinference.export import load_codec as load_package_codec
from coinference.prune import load_pruned
from coinference.prune.activation import Expand
from coinference.runtime import DeviceRunner, Package, PackageError, PayloadError, ServerRunner
from coinference.runtime.verify import FLIP_FRACTION, Reference, check, load_reference, verify_in_subprocess
from coinference.variant import CodecSpec, VariantSpec

KINDS = {
    "none": (CodecSpec("none"), "raw"),
    "sq": (CodecSpec("sq", channels=2, bits=2), "categorical"),
    "sq-channel-fc": (CodecSpec("sq", channels=2, dim=8, bits=3, codebook="channel"), "categorical"),
    "vq": (CodecSpec("vq", channels=2, bits=3), "categorical"),
    "huffman": (CodecSpec("huffman"), "huffman"),
    "bottlenetpp": (CodecSpec("bottlenetpp", channels=2, bits=8), "raw"),
    "bottlenetpp-ec": (CodecSpec("bottlenetpp", channels=2, stride=2, bits=8, entropy_coded=True), "categorical"),
    "bottlenetpp-awgn": (CodecSpec("bottlenetpp", channels=2, bits=8, snr_db=10.0), "raw"),
    "jscc-bsc": (CodecSpec("jscc-bsc", channels=2, flip_p=0.01), "sign-bits"),
    "jscc-awgn": (CodecSpec("jscc-awgn", channels=2, snr_db=10.0), "raw"),
}
N_IMAGES = 16


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory, data) -> dict[str, tuple[Path, nn.Module, nn.Module, object]]:
    """kind → (package, in-memory device, in-memory server, in-memory codec module) of a built smoke variant."""
    root = tmp_path_factory.mktemp("runtime")
    builder = Builder(cache_dir=root / "cache")
    out = {}
    for name, (codec, _) in KINDS.items():
        spec = VariantSpec("tiny-cnn", "synthetic", "block1", fidelity="smoke", codec=codec)
        built = builder.build(spec)
        mem_dev, mem_srv, _ = split_parts(built.pruned.head, built.codec.codec, built.codec.tail)
        # what `coinfer export` does: rebuild the parts from the builder's checkpoints, then export
        from coinference.build import save_variant

        arts = save_variant(built, root / "variants" / name)
        pruned = load_pruned(arts["device"])
        fc, tail_state = load_codec(arts["codec"])
        tail = nn.Sequential(Expand(pruned.kept_channels, pruned.feature_shape[0]), copy.deepcopy(pruned.tail))
        tail.load_state_dict(tail_state)
        dev, srv, codec_bytes = split_parts(pruned.head, fc, tail)
        pkg = root / "pkg" / name
        export_variant(
            pkg,
            dev,
            srv,
            data.input_shape,
            codec=codec_bytes,
            normalization=Normalization(data.mean, data.std),
            spec={"key": spec.key, **spec.to_dict()},
            measurement=built.measurement.to_dict(),
            extra={"predicted_latency_s": {"total": 0.25}},
            check_images=data.test_x[:8],
        )
        out[name] = (pkg, mem_dev, mem_srv, built.codec.codec)
    return out


@pytest.mark.parametrize("name", list(KINDS))
def test_runtime_reproduces_the_torch_variant(packages, data, name: str) -> None:
    pkg, device, server, codec = packages[name]
    assert json.loads((pkg / "manifest.json").read_text())["codec"]["kind"] == KINDS[name][1]
    dev, srv = DeviceRunner(pkg), ServerRunner(pkg)
    images = data.test_x[:N_IMAGES]
    with torch.no_grad():
        sym_t = device(data.normalize(images))
        logits_t = server(sym_t).numpy()
    flips = 0
    for i in range(N_IMAGES):
        img = images[i].numpy()
        sym = dev.symbols(img)
        payload = dev.encode(img)
        logits = srv.decode(payload)
        assert logits.shape == (4,) and logits.dtype == np.float32
        same = sym.dtype.kind in "iu" and np.array_equal(sym, sym_t[i].numpy())
        if sym.dtype.kind == "f":  # raw features, analog channel symbols, Huffman's (min, max, values)
            same = np.allclose(sym, sym_t[i].numpy(), atol=1e-4, rtol=1e-4)
        flips += not same
        if not same:  # a symbol at a rounding boundary flipped: the documented exception, compared no further
            continue
        assert int(logits.argmax()) == int(logits_t[i].argmax())
        np.testing.assert_allclose(logits, logits_t[i], atol=1e-4, rtol=1e-4)
        if name != "jscc-awgn":  # the torch codec's bytes for these symbols are the runtime's, byte for byte
            assert codec.encode_payload(torch.from_numpy(sym)) == payload
    assert flips <= 1


@pytest.mark.parametrize("name", list(KINDS))
def test_server_part_runs_batches(packages, data, name: str) -> None:
    pkg = packages[name][0]
    assert json.loads((pkg / "manifest.json").read_text())["server"]["batch"] == "dynamic"
    dev, srv = DeviceRunner(pkg), ServerRunner(pkg)
    sym = np.stack([srv.symbols(dev.encode(data.test_x[i].numpy())) for i in range(3)])
    together = srv.logits(sym)
    assert together.shape == (3, 4)
    np.testing.assert_allclose(together, np.concatenate([srv.logits(s[None]) for s in sym]), atol=1e-5, rtol=1e-5)


def test_the_package_describes_itself(packages) -> None:
    pkg_dir = packages["sq"][0]
    p = Package.open(pkg_dir)
    m = json.loads((pkg_dir / "manifest.json").read_text())
    assert p.key == m["spec"]["key"] and p.variant_id == p.key[:16] and len(p.key) == 64
    assert p.input_shape == (3, 8, 8) and p.classes == 4 and p.codec_kind == "categorical" and not p.analog
    assert p.normalization.mean == tuple(m["input"]["normalization"]["mean"])
    assert p.predicted_payload_bytes == m["measurement"]["bits_mean"] / 8
    assert p.predicted_latency_s == 0.25 and p.symbol_dtype == "int64"
    awgn = Package.open(packages["jscc-awgn"][0])
    assert awgn.analog and awgn.predicted_payload_bytes == 4 * awgn.manifest["measurement"]["channel_uses"]
    timed = DeviceRunner(pkg_dir).encode_timed(load_dataset("synthetic").test_x[0].numpy())
    assert timed.device_s > 0 and timed.encode_s > 0 and isinstance(timed.payload, bytes)
    done = ServerRunner(pkg_dir).decode_timed(timed.payload)
    assert done.logits.shape == (4,) and done.decode_s > 0 and done.server_s > 0


def test_every_package_codec_loads_from_its_files(packages, data) -> None:
    """The user's report: `coinfer export` said verified, but `load_codec(out)` raised 'unknown byte codec'."""
    for name, (pkg, device, _, _) in packages.items():
        codec = load_package_codec(pkg)
        with torch.no_grad():
            sym = device(data.normalize(data.test_x[:1]))[0]
        assert torch.equal(codec.decompress(codec.compress(sym)).to(sym.dtype), sym), name
        assert verify_export(pkg).images == 8, name  # the reference outputs it carries


def test_verification_tolerates_few_boundary_flips(packages) -> None:
    pkg = packages["sq"][0]
    ref = load_reference(pkg)
    report = check(pkg, ref)
    assert report.symbol_mismatches == 0 and report.payloads_identical and report.server_batch == 8
    flipped = ref.symbols.copy()
    flipped[3, 0, 0, 0] = (flipped[3, 0, 0, 0] + 1) % 4  # a symbol at a decision boundary rounded the other way
    logits = ref.logits.copy()
    with torch.no_grad():  # the reference server's logits on its (flipped) symbols
        logits[3] = packages["sq"][2](torch.from_numpy(flipped[3:4]))[0].numpy()
    report = check(pkg, Reference(ref.images, flipped, logits, None))
    assert report.symbol_mismatches == 1 and report.flipped_images == 1 and report.predictions_agree
    assert report.payloads_identical is None
    many = ref.symbols.copy()
    many[:, 0] = (many[:, 0] + 1) % 4
    allowed = max(1, int(FLIP_FRACTION * many.size))
    with pytest.raises(PackageError, match=rf"device symbols differ from the reference \(at most {allowed} may flip"):
        check(pkg, Reference(ref.images, many, ref.logits, None))
    with pytest.raises(PackageError, match="server.onnx logits differ from the reference's on identical symbols"):
        check(pkg, Reference(ref.images, ref.symbols, ref.logits + 0.01, None))


def test_a_zero_channel_shortcut_exports_and_runs(tmp_path: Path, data) -> None:
    """resnet-digits split at layer2.1 with the stage-2 residual channels that option A carries pruned: layer2.0's
    shortcut carries no channel at all (all its kept outputs are zero padding); once a {1,0,4,4} Reshape that
    onnxruntime could not run."""
    from coinference.codec import CodecConfig, build_codec
    from coinference.prune import ChannelGather, PruneConfig, prune_device
    from coinference.zoo import build_model

    torch.manual_seed(0)
    model = build_model("resnet-digits", num_classes=4, in_channels=3).eval()
    with torch.no_grad():  # the channels option A carries (8..23 of 32) have the weakest filters: pruned first
        for block in model.layer2:
            block.conv2.weight[8:24] *= 1e-3
    pd = prune_device(model, "layer2.1", data, PruneConfig(0.5, train=None))
    gathers = [m for m in pd.head.modules() if isinstance(m, ChannelGather)]
    assert [g.src_index.numel() for g in gathers] == [0] and gathers[0].out_channels == 16
    codec = build_codec(CodecConfig("none"), (len(pd.kept_channels), *pd.feature_shape[1:])).eval()
    dev, srv, codec_bytes = split_parts(
        pd.head, codec, nn.Sequential(Expand(pd.kept_channels, pd.feature_shape[0]), pd.tail)
    )
    out = tmp_path / "pkg"
    export_variant(out, dev, srv, data.input_shape, codec=codec_bytes, normalization=Normalization(data.mean, data.std))
    report = verify_export(out, data.test_x[:8], reference=(dev, srv), codec=codec_bytes)
    assert report.predictions_agree and report.symbol_mismatches == 0
    with torch.no_grad():
        want = srv(dev(data.normalize(data.test_x[:1])))[0].numpy()
    got = ServerRunner(out).decode(DeviceRunner(out).encode(data.test_x[0].numpy()))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def _copy(pkg: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(pkg, dst)
    return dst


def test_an_altered_file_is_a_one_line_error_naming_it(packages, tmp_path: Path, data) -> None:
    pkg = _copy(packages["sq"][0], tmp_path)
    blob = bytearray((pkg / "server/codec.npz").read_bytes())
    blob[-1] ^= 0xFF
    (pkg / "server/codec.npz").write_bytes(bytes(blob))
    DeviceRunner(pkg)  # a device checks only the device's files
    with pytest.raises(PackageError) as err:
        ServerRunner(pkg)
    want = "package file server/codec.npz does not match its sha256 in the manifest (altered or damaged)"
    assert str(err.value) == want
    (pkg / "device/device.onnx").unlink()
    with pytest.raises(PackageError, match=r"^package file device/device.onnx is missing from .*copy$"):
        DeviceRunner(pkg)


def test_a_newer_or_older_format_is_a_one_line_error(packages, tmp_path: Path) -> None:
    pkg = _copy(packages["sq"][0], tmp_path)
    m = json.loads((pkg / "manifest.json").read_text())
    (pkg / "manifest.json").write_text(json.dumps({**m, "format_version": 3}))
    with pytest.raises(PackageError) as err:
        DeviceRunner(pkg)
    assert "format version 3, newer than this runtime reads (2)" in str(err.value) and "\n" not in str(err.value)
    (pkg / "manifest.json").write_text(json.dumps({**m, "format_version": 1}))
    with pytest.raises(PackageError, match="format version 1 .*export the variant again"):
        Package.open(pkg)
    shutil.rmtree(pkg / "check")
    (pkg / "manifest.json").unlink()
    with pytest.raises(PackageError, match="no manifest.json in"):
        ServerRunner(pkg)


def test_bad_images_and_payloads_are_one_line_errors(packages, data) -> None:
    pkg = packages["sq"][0]
    dev, srv = DeviceRunner(pkg), ServerRunner(pkg)
    with pytest.raises(PayloadError, match="an image must be uint8 pixels .*got float32"):
        dev.encode(data.test_x[0].numpy().astype(np.float32))
    with pytest.raises(
        PayloadError, match=r"an image must be \(C, H, W\) = \(3, 8, 8\) or a batch of one, got \(2, 3, 8, 8\)"
    ):
        dev.encode(data.test_x[:2].numpy())
    assert dev.encode(data.test_x[:1].numpy()) == dev.encode(data.test_x[0].numpy())  # a batch of one is fine
    payload = dev.encode(data.test_x[0].numpy())
    with pytest.raises(PayloadError, match="corrupt payload"):
        srv.decode(payload + b"\xff\xff\xff\xff\x01")
    with pytest.raises(PayloadError, match="a payload must be bytes, got str"):
        srv.decode("abc")  # type: ignore[arg-type]
    raw = ServerRunner(packages["none"][0])
    with pytest.raises(PayloadError, match=r"corrupt payload: 3 bytes for 512 float32 values"):
        raw.decode(b"abc")


NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` raises ImportError, as on a device without PyTorch
import numpy as np
import coinference.runtime as rt
pkg, images = sys.argv[1], np.load(sys.argv[2])
dev, srv = rt.DeviceRunner(pkg), rt.ServerRunner(pkg)
logits = [srv.decode(dev.encode(img)).tolist() for img in images]
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m] is not None)
print(__import__("json").dumps(logits))
"""


def test_the_runtime_runs_where_torch_cannot_be_imported(packages, data, tmp_path: Path) -> None:
    images = data.test_x[:4].numpy()
    np.save(tmp_path / "images.npy", images)
    for name in ("sq", "huffman", "jscc-bsc"):
        pkg = packages[name][0]
        proc = subprocess.run(
            [sys.executable, "-c", NO_TORCH, str(pkg), str(tmp_path / "images.npy")],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        srv, dev = ServerRunner(pkg), DeviceRunner(pkg)
        here = [srv.decode(dev.encode(img)) for img in images]
        assert np.array_equal(np.asarray(json.loads(proc.stdout), dtype=np.float32), np.stack(here)), name
    report = verify_in_subprocess(packages["vq"][0])
    assert report.images == 8 and report.predictions_agree and report.payloads_identical
    cli = subprocess.run(
        [sys.executable, "-m", "coinference.runtime.verify", str(packages["vq"][0]), "--images",
         str(tmp_path / "images.npy")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    doc = json.loads(cli.stdout)
    assert doc["check"]["images"] == 8 and len(doc["images"]["predictions"]) == 4


def test_a_tampered_package_fails_the_fresh_process_check_in_one_line(packages, tmp_path: Path) -> None:
    pkg = _copy(packages["huffman"][0], tmp_path)
    (pkg / "check/reference.npz").write_bytes(b"junk")
    with pytest.raises(PackageError) as err:
        verify_in_subprocess(pkg)
    assert "check/reference.npz does not match its sha256" in str(err.value) and "\n" not in str(err.value)
