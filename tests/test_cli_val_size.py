"""--val-size: checked against the data set's training images before any work, one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from coinference.data import CIFAR10_TRAIN, DATASETS
from search.cli.common import TRAIN_IMAGES


def test_train_sizes_are_the_loaders() -> None:
    assert set(TRAIN_IMAGES) == set(DATASETS.names())
    for name in ("digits", "synthetic"):
        assert TRAIN_IMAGES[name] == len(DATASETS.get(name)().train_y)
    assert TRAIN_IMAGES["cifar10"] == 10_000 * len(CIFAR10_TRAIN)


@pytest.mark.parametrize(
    ("command", "value", "message"),
    [
        ("base", "0", "--val-size must be ≥ 1, got 0"),
        ("base", "256", "--val-size must be below synthetic's 256 training images, got 256"),
        ("build", "-5", "--val-size must be ≥ 1, got -5"),
        ("build", "1000", "--val-size must be below synthetic's 256 training images, got 1000"),
        ("prune", "0", "--val-size must be ≥ 1, got 0"),
        ("encode", "999999", "--val-size must be below synthetic's 256 training images, got 999999"),
        ("search", "256", "--val-size must be below synthetic's 256 training images, got 256"),
    ],
)
def test_bad_val_size_is_one_line_exit_2(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, value: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    extra = {
        "build": ["--split", "stem", "--fidelity", "smoke", "--cache-dir", str(tmp_path / "c")],
        "encode": ["--split", "stem"],
    }.get(command, [])
    code, out, err = run_cli(command, "--model", "tiny-cnn", "--val-size", value, *extra)
    assert code == 2, (out, err)
    assert err.strip() == f"coinfer: error: {message}"
    assert list(tmp_path.iterdir()) == []  # nothing written
