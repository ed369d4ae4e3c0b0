from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from coinference.data import (
    CIFAR10_DIRNAME,
    CIFAR10_TEST,
    CIFAR10_TRAIN,
    DATASETS,
    VAL_FRACTION,
    download_cifar10,
    load_dataset,
)
from coinference.errors import ConfigError, DataError, UnknownNameError


def _write_batch(path: Path, n: int = 20, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    d = {
        "batch_label": "test",
        "labels": rng.integers(0, 10, n).tolist(),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"f{i}.png" for i in range(n)],
    }
    path.write_bytes(pickle.dumps(d, protocol=4))


@pytest.fixture
def fake_cifar(tmp_path: Path) -> Path:
    root = tmp_path / CIFAR10_DIRNAME
    root.mkdir()
    for i, name in enumerate((*CIFAR10_TRAIN, CIFAR10_TEST)):
        _write_batch(root / name, seed=i)
    return tmp_path


def test_registry_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="valid: cifar10, digits, synthetic"):
        load_dataset("mnist")
    assert set(DATASETS.names()) == {"cifar10", "digits", "synthetic"}


def test_digits_fixed_split_and_range() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape[1:] == (1, 8, 8) and a.train_x.dtype == torch.uint8
    assert len(a.train_x) + len(a.val_x) + len(a.test_x) == 1797
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)
    assert int(a.train_x.max()) == 255
    x = a.normalize(torch.cat([a.train_x, a.val_x]))  # the statistics of the training images before the hold-out
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2


def test_synthetic_shapes(synthetic) -> None:
    assert synthetic.input_shape == (3, 8, 8) and synthetic.num_classes == 4
    assert synthetic.train_y.max() < 4


def test_cifar_reads_standard_layout(fake_cifar: Path) -> None:
    d = load_dataset("cifar10", fake_cifar)
    assert d.train_x.shape == (90, 3, 32, 32) and d.val_x.shape == (10, 3, 32, 32) and d.test_x.shape == (20, 3, 32, 32)
    raw = pickle.loads((fake_cifar / CIFAR10_DIRNAME / CIFAR10_TEST).read_bytes())
    # channel-planar rows: the first 1024 values are the red plane, row-major
    assert np.array_equal(d.test_x[3, 0].numpy().ravel(), raw["data"][3, :1024])
    # the batches folder itself is accepted too
    assert load_dataset("cifar10", fake_cifar / CIFAR10_DIRNAME).test_x.shape[0] == 20


def test_cifar_errors(fake_cifar: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="does not exist: .*nope"):
        load_dataset("cifar10", tmp_path / "nope")
    batches = fake_cifar / CIFAR10_DIRNAME
    (batches / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 batch file: .*data_batch_3"):
        load_dataset("cifar10", fake_cifar)
    (batches / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="corrupt CIFAR-10 batch .*data_batch_3"):
        load_dataset("cifar10", fake_cifar)
    bad = {"labels": [0, 1], "data": np.zeros((2, 100), dtype=np.uint8)}
    (batches / "data_batch_3").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"wrongly shaped .*\(2, 100\)"):
        load_dataset("cifar10", fake_cifar)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_restricted_unpickler_refuses_code(fake_cifar: Path) -> None:
    path = fake_cifar / CIFAR10_DIRNAME / CIFAR10_TEST
    path.write_bytes(pickle.dumps({"data": _Evil(), "labels": [0]}))
    with pytest.raises(DataError, match="is not allowed"):
        load_dataset("cifar10", fake_cifar)


def _tarball(tmp_path: Path) -> Path:
    src = tmp_path / "src" / CIFAR10_DIRNAME
    src.mkdir(parents=True)
    for i, name in enumerate((*CIFAR10_TRAIN, CIFAR10_TEST)):
        _write_batch(src / name, n=4, seed=i)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname=CIFAR10_DIRNAME)
    out = tmp_path / "cifar.tar.gz"
    out.write_bytes(buf.getvalue())
    return out


def test_download_verifies_checksum(tmp_path: Path) -> None:
    tgz = _tarball(tmp_path)
    md5 = hashlib.md5(tgz.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="checksum mismatch"):
        download_cifar10(tmp_path / "bad", url=tgz.as_uri(), md5="0" * 32)
    assert not (tmp_path / "bad" / CIFAR10_DIRNAME).exists()
    root = download_cifar10(tmp_path / "good", url=tgz.as_uri(), md5=md5)
    assert (root / CIFAR10_TEST).is_file()
    assert load_dataset("cifar10", tmp_path / "good").test_x.shape == (4, 3, 32, 32)


# ------------------------------------------------------------------------------------------ validation split
def test_validation_split_is_held_out_of_training_stratified_and_fixed() -> None:
    d = load_dataset("digits")
    assert len(d.val_y) == round(1347 * VAL_FRACTION) == 135 and d.split_id == "val135-s0"
    full = DATASETS.get("digits")()  # the loader itself: no hold-out
    pool = {bytes(x.numpy()) for x in full.train_x}
    train = {bytes(x.numpy()) for x in d.train_x}
    val = [bytes(x.numpy()) for x in d.val_x]
    # every validation image comes from the training pool, and none of them is trained on
    assert all(v in pool for v in val) and not (set(val) & train)
    assert len(d.train_y) + len(d.val_y) == len(full.train_y)
    counts = torch.bincount(d.val_y, minlength=10)
    assert int(counts.min()) >= 12 and int(counts.max()) <= 15  # stratified: 13–14 of each class
    again = load_dataset("digits")
    assert torch.equal(again.val_x, d.val_x) and torch.equal(again.train_y, d.train_y)


def test_validation_size_is_chosen_and_checked() -> None:
    d = load_dataset("synthetic", val_size=50)
    assert len(d.val_y) == 50 and len(d.train_y) == 206 and d.split_id == "val50-s0"
    for bad in (0, -3, 256, 1000):
        with pytest.raises(DataError, match=f"got {bad}"):
            load_dataset("synthetic", val_size=bad)


def test_evaluated_on_points_evaluation_at_the_validation_images() -> None:
    d = load_dataset("synthetic")
    v = d.evaluated_on("val")
    assert torch.equal(v.test_x, d.val_x) and torch.equal(v.test_y, d.val_y) and v.evaluated == "val"
    assert d.evaluated_on("test") is d and v.evaluated_on("val") is v
    assert torch.equal(v.first_test(5).test_y, d.val_y[:5])
    with pytest.raises(ConfigError):
        d.evaluated_on("train")
