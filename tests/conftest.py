"""Shared fixtures: tiny data and an in-process CLI runner."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch

from coinference.data import ImageData, load_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic() -> ImageData:
    """3×8×8 images of 4 classes (256 train, 128 test)."""
    return load_dataset("synthetic")


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``coinfer ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from search.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["coinfer", *args])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run
