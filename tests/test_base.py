from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coinference.base import load_base, prepare_base, recorded_accuracy
from coinference.errors import CheckpointError, ConfigError
from coinference.evaluate import accuracy
from coinference.train import TrainConfig
from coinference.zoo import file_sha256


def test_prepare_base_trains_records_and_reloads(tmp_path: Path) -> None:
    out = tmp_path / "base.pt"
    b = prepare_base("tiny-cnn", "synthetic", TrainConfig(epochs=3, lr=0.05, batch_size=32), out=out)
    assert b.accuracy > 0.7 and b.accuracy_before is None
    assert b.sha256 == file_sha256(out) and recorded_accuracy(out) == b.accuracy
    assert b.threshold() == b.accuracy - 0.02
    assert not list(tmp_path.glob("*.tmp"))
    net, data = load_base("tiny-cnn", "synthetic", out)
    assert data.mean == b.data.mean
    # the recorded accuracy (the threshold) is the validation images'; the test accuracy is recorded apart
    assert accuracy(net, data.evaluated_on("val")) == b.accuracy
    assert accuracy(net, data) == b.test_accuracy == recorded_accuracy(out, "test")
    # the checkpoint is plain tensors + primitives: loads with weights_only=True
    assert set(torch.load(out, weights_only=True)) == {
        "state_dict", "model", "dataset", "val_accuracy", "test_accuracy", "split_id", "mean", "std"
    }  # fmt: skip
    # a base trained without one validation split never meets data that holds out other images
    with pytest.raises(ConfigError, match="validation split val26-s0"):
        load_base("tiny-cnn", "synthetic", out, val_size=40)


def test_base_checkpoint_from_before_the_validation_split_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.pt"
    torch.save({"state_dict": {}, "model": "tiny-cnn", "dataset": "synthetic", "accuracy": 0.9}, old)
    with pytest.raises(CheckpointError, match="before the validation split"):
        recorded_accuracy(old)


def test_cli_base(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "b.pt"
    code, text, err = run_cli("base", "--model", "tiny-cnn", "--epochs", "2", "--lr", "0.05", "--out", str(out))
    assert code == 0, err
    assert "validation accuracy after" in text and "test accuracy after" in text and out.is_file()
    code, text, err = run_cli(
        "base", "--model", "tiny-cnn", "--weights", str(out), "--epochs", "0.5", "--out", str(tmp_path / "c.pt")
    )
    assert code == 0 and "validation accuracy before" in text, err
