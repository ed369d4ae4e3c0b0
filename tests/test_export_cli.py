"""``coinfer export`` end to end: a variant recorded with the artifacts a builder writes (TorchScript device and
server parts and a codec table file, or the builder's own checkpoints) is chosen by bandwidth, exported, verified
from the package files (also in a fresh process without PyTorch), and the export recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import tiny_variant

from coinference.data import load_dataset
from coinference.export import load_codec, verify_export
from coinference.runtime import DeviceRunner, ServerRunner
from coinference.variant import Measurement, VariantSpec
from storage import open_table

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SPEC = VariantSpec("tiny-cnn", "synthetic", "block1")
MEAS = Measurement(0.9, device_macs=5_000, server_macs=20_000, bits_mean=1024.0, bits_max=1024,
                   device_param_bytes=4_000)  # fmt: skip


def write_artifacts(folder: Path) -> dict[str, Path]:
    """What the builder records: TorchScript parts and the codec's tables (here the raw int8 codec)."""
    folder.mkdir(parents=True, exist_ok=True)
    device, server = tiny_variant()
    x = torch.zeros(1, 3, 8, 8)
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(device, x), str(folder / "device.pt"))
        torch.jit.save(torch.jit.trace(server, device(x)), str(folder / "server.pt"))
    np.savez(folder / "codec.npz", kind=np.asarray("raw"), shape=np.asarray([2, 8, 8]), dtype=np.asarray("int8"))
    return {"device": folder / "device.pt", "server": folder / "server.pt", "codec": folder / "codec.npz"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_artifacts(tmp_path_factory.mktemp("built"))


@pytest.fixture
def db(tmp_path: Path, built: dict[str, Path]) -> tuple[str, dict[str, Path]]:
    url = f"sqlite:///{tmp_path / 'lookup.db'}"
    (tmp_path / "ckpt").mkdir()
    arts = {name: Path(shutil.copy(p, tmp_path / "ckpt" / p.name)) for name, p in built.items()}
    with open_table(url) as t:
        t.record_ok(SPEC, MEAS, "r1", arts)
    return url, arts


def test_export_writes_verified_packages(run_cli, db, tmp_path: Path) -> None:
    url, _ = db
    out = tmp_path / "out"
    code, stdout, err = run_cli("export", "--db", url, "--bandwidth", "40KB/s", "--device", "rpi3", "--out", str(out))
    assert code == 0, err
    assert "verified on 64 test images from the package files alone" in stdout and "predictions identical" in stdout
    assert "fresh process without PyTorch" in stdout and "1,024 payload bits/image" in stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["spec"]["key"] == SPEC.key and m["measurement"]["val_accuracy"] == 0.9
    assert m["extra"]["query"]["bandwidth_bytes_per_s"] == 40_000 and m["extra"]["query"]["device"] == "rpi3"
    assert m["extra"]["predicted_latency_s"]["transmit"] == pytest.approx(1024 / 8 / 40_000)
    data = load_dataset("synthetic")
    assert m["input"]["normalization"]["mean"] == list(data.mean) and m["codec"]["kind"] == "raw"
    assert m["codec"]["params"] == {"dtype": "int8", "shape": [2, 8, 8], "symbol_dtype": "float32"}
    report = verify_export(out)  # against the reference outputs the package carries
    assert report.bits_mean == 2 * 8 * 8 * 8 and report.images == 8
    device, server = tiny_variant()
    img = data.test_x[0].numpy()
    with torch.no_grad():
        want = server(device(data.normalize(data.test_x[:1])))[0].numpy()
    np.testing.assert_allclose(ServerRunner(out).decode(DeviceRunner(out).encode(img)), want, atol=1e-5, rtol=0)
    with open_table(url, create=False) as t:
        rec = t.get(SPEC.key)
    assert rec is not None and rec.artifacts["export/manifest"].path == (out / "manifest.json").resolve()
    # a second export into the same folder needs --force
    code, _, err = run_cli("export", "--db", url, "-b", "40KB/s", "--out", str(out))
    assert code == 2 and "not empty" in err
    code, _, err = run_cli("export", "--db", url, "-b", "40KB/s", "--out", str(out), "--force")
    assert code == 0, err


def test_missing_or_altered_artifacts_are_named(run_cli, db, tmp_path: Path) -> None:
    url, arts = db
    arts["server"].write_bytes(b"changed")
    code, _, err = run_cli("export", "--db", url, "-b", "40KB/s", "--out", str(tmp_path / "a"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "artifact 'server'" in err and "sha256 mismatch" in err
    with open_table(url) as t:  # a better variant that the builder recorded without parts
        t.record_ok(SPEC.with_(seed=1), Measurement(0.95, 10, 10, 8.0, 8), "r2")
    code, _, err = run_cli("export", "--db", url, "-b", "40KB/s", "--out", str(tmp_path / "b"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "has no 'device' artifact to export (recorded: none)" in err


def test_export_from_builder_checkpoints(run_cli, tmp_path: Path) -> None:
    """The coinference builder's own artifacts (pruned model + codec checkpoint): rebuilt, exported, verified."""
    build = pytest.importorskip("coinference.build", reason="the variant builder (coinference.build) is not here")
    from coinference.variant import CodecSpec

    spec = VariantSpec("tiny-cnn", "synthetic", "block1", fidelity="smoke", codec=CodecSpec("sq", channels=2, bits=2))
    builder = build.Builder(cache_dir=tmp_path / "cache")
    m = builder.measure(spec)
    folder = tmp_path / "cache" / "variants" / spec.key
    url = f"sqlite:///{tmp_path / 'lookup.db'}"
    with open_table(url) as t:
        t.record_ok(spec, m, "r1", {"device": folder / "device.pt", "codec": folder / "codec.pt"})
    out = tmp_path / "out"
    code, stdout, err = run_cli("export", "--db", url, "-b", "40KB/s", "--device", "mcu", "--out", str(out))
    assert code == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["codec"]["kind"] == "categorical" and man["codec"]["source"] == "sq"
    assert "predictions identical" in stdout
    # the user's report: "verified", but the package's codec did not load (no coder for kind 'coinference.sq')
    codec = load_codec(out)
    data = load_dataset("synthetic")
    payload = DeviceRunner(out).encode(data.test_x[0].numpy())
    assert codec.compress(codec.decompress(payload)) == payload
    assert ServerRunner(out).decode(payload).shape == (4,)


def test_a_failed_export_leaves_the_out_folder_as_it_was(run_cli, db, tmp_path: Path, monkeypatch) -> None:
    import storage.export

    url, _ = db
    args = ("export", "--db", url, "--bandwidth", "40KB/s", "--device", "rpi3")
    fresh = tmp_path / "new" / "out"
    real = storage.export.verify_export

    def broken(out, *a, **k):
        real(out, *a, **k)  # the package verifies, then the runtime fails as onnxruntime did on a pruned shortcut
        raise RuntimeError(f"[ONNXRuntimeError] Reshape node failed in {out}")

    monkeypatch.setattr(storage.export, "verify_export", broken)
    code, _, err = run_cli(*args, "--out", str(fresh))
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("coinfer: error: variant ") and "cannot be exported" in lines[-1]
    assert str(fresh) in lines[-1] and ".partial-" not in err  # the message names --out, not the staging folder
    assert not (tmp_path / "new").exists()  # not even the parent folder it would have made
    monkeypatch.setattr(storage.export, "verify_export", real)
    old = tmp_path / "old"
    assert run_cli(*args, "--out", str(old))[0] == 0
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    monkeypatch.setattr(storage.export, "verify_export", broken)
    assert run_cli(*args, "--out", str(old), "--force")[0] == 2
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []
