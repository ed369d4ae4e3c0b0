"""The progress layer: phases and sinks (coinference.progress) and their stderr rendering (search.cli.progress)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from coinference.evaluate import outputs
from coinference.progress import ProgressEvent, ignore, phase, reporting
from coinference.train import TrainConfig, fit
from coinference.zoo import build_model
from search.cli.progress import LineSink, LiveSink, cli_progress


def test_without_a_sink_phases_do_nothing() -> None:
    with phase("anything", 3) as advance:
        assert advance is ignore
        advance()
        advance(2)
    events: list[ProgressEvent] = []
    with reporting(events.append), reporting(None), phase("silenced") as advance:
        advance()
    assert events == []


def test_nested_phases_report_in_order() -> None:
    events: list[ProgressEvent] = []
    with reporting(events.append):
        with phase("build", unit="part") as outer:
            with phase("prune", 2) as inner:
                inner()
                inner()
            outer()
        with phase("again"):
            pass
    seen = [(e.kind, e.description, e.total, e.completed, e.depth) for e in events]
    assert seen == [
        ("start", "build", None, 0, 0),
        ("start", "prune", 2, 0, 1),
        ("advance", "prune", 2, 1, 1),
        ("advance", "prune", 2, 2, 1),
        ("end", "prune", 2, 2, 1),
        ("advance", "build", None, 1, 0),
        ("end", "build", None, 1, 0),
        ("start", "again", None, 0, 0),
        ("end", "again", None, 0, 0),
    ]
    assert len({e.phase for e in events}) == 3
    assert events[0].unit == "part" and events[1].unit == "step"
    assert not any(e.failed for e in events)


def test_a_phase_left_by_an_error_ends_failed() -> None:
    events: list[ProgressEvent] = []
    with reporting(events.append), pytest.raises(KeyError), phase("outer"), phase("inner"):
        raise KeyError("x")
    assert [(e.kind, e.description, e.failed) for e in events if e.kind == "end"] == [
        ("end", "inner", True),
        ("end", "outer", True),
    ]
    with reporting(events.append), phase("after"):  # depth is back to 0
        pass
    assert events[-1].depth == 0


def test_fit_advances_once_per_step(synthetic) -> None:
    events: list[ProgressEvent] = []
    with reporting(events.append):
        fit(build_model("tiny-cnn"), synthetic, TrainConfig(steps=5, batch_size=8))
        fit(build_model("tiny-cnn"), synthetic, TrainConfig(steps=2, batch_size=8), progress="codec sq")
        fit(build_model("tiny-cnn"), synthetic, TrainConfig(steps=2, batch_size=8), progress=None)
    train = [e for e in events if e.description == "train"]
    assert [e.kind for e in train] == ["start"] + ["advance"] * 5 + ["end"]
    assert [e.completed for e in train] == [0, 1, 2, 3, 4, 5, 5]
    assert {e.total for e in train} == {5}
    assert [e.kind for e in events if e.description == "codec sq"] == ["start", "advance", "advance", "end"]
    assert len(events) == 7 + 4


def test_outputs_advance_by_images(synthetic) -> None:
    events: list[ProgressEvent] = []
    with reporting(events.append):
        out = outputs(build_model("tiny-cnn"), synthetic, synthetic.test_x[:50], batch_size=16, progress="logits")
    assert out.shape[0] == 50
    assert [e.completed for e in events if e.kind == "advance"] == [16, 32, 48, 50]
    assert {(e.description, e.total, e.unit) for e in events} == {("logits", 50, "image")}


def test_cli_progress_prints_plain_lines_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with cli_progress():
        with phase("prune iteration 1/4 (sparsity 0.38)", 8) as advance:
            for _ in range(8):
                advance()
        with phase("build", unit="part"), phase("codec"), phase("codec sq", 100) as steps:
            steps(100)  # one jump past every mark: no percent line
            with phase("too deep", 8) as deep:
                deep(8)
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    expected = [
        r"\[coinfer\] prune iteration 1/4 \(sparsity 0\.38\) … \(8 steps\)",
        r"\[coinfer\] prune iteration 1/4 \(sparsity 0\.38\): 25% \(2/8 steps\)",
        r"\[coinfer\] prune iteration 1/4 \(sparsity 0\.38\): 50% \(4/8 steps\)",
        r"\[coinfer\] prune iteration 1/4 \(sparsity 0\.38\): 75% \(6/8 steps\)",
        r"\[coinfer\] prune iteration 1/4 \(sparsity 0\.38\): done in \d+\.\d s",
        r"\[coinfer\] build …",
        r"\[coinfer\]   codec …",
        r"\[coinfer\]     codec sq … \(100 steps\)",
        r"\[coinfer\]     codec sq: done in \d+\.\d s",
        r"\[coinfer\]   codec: done in \d+\.\d s",
        r"\[coinfer\] build: done in \d+\.\d s",
    ]
    assert len(lines) == len(expected), err
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), line


def test_cli_progress_reports_failures_and_can_be_off(capsys: pytest.CaptureFixture[str]) -> None:
    with cli_progress(), pytest.raises(RuntimeError), phase("encode", 4) as advance:
        advance()
        raise RuntimeError
    with cli_progress(enabled=False), phase("quiet", 8) as advance:
        advance(8)
    out, err = capsys.readouterr()
    assert out == ""
    assert re.fullmatch(r"\[coinfer\] encode … \(4 steps\)\n\[coinfer\] encode: failed after \d+\.\d s\n", err)


def test_line_sink_depth_limit(capsys: pytest.CaptureFixture[str]) -> None:
    with reporting(LineSink(max_depth=0)), phase("outer"), phase("inner"):
        pass
    assert [line.split(":")[0] for line in capsys.readouterr().err.splitlines()] == [
        "[coinfer] outer …",
        "[coinfer] outer",
    ]


def test_live_sink_keeps_only_the_outermost_rows() -> None:
    sink = LiveSink()
    try:
        with reporting(sink):
            with phase("build", unit="part"), phase("codec sq", 4) as advance:
                advance(3)
                open_rows = {t.description: (t.completed, t.total) for t in sink.progress.tasks}
                assert open_rows == {"build": (0, None), "  codec sq": (3, 4)}
            with phase("verify export", 2, "image") as advance:
                advance(2)
    finally:
        sink.close()
    rows = {t.description: (t.completed, t.total, t.fields["count"]) for t in sink.progress.tasks}
    assert rows == {"build": (1, 1, ""), "verify export": (2, 2, "2/2 images")}


def test_cli_progress_module_imports_neither_torch_nor_rich() -> None:
    """Loaded on its own (the search.cli package's commands import torch themselves)."""
    path = Path(__file__).parents[1] / "search" / "cli" / "progress.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('cli_progress', {str(path)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted(m for m in ('torch', 'rich', 'typer') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=path.parents[2], check=True)
    out = run.stdout
    assert out.strip() == "[]"
