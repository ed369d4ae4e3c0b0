"""Progress of a long command on stderr, never on stdout (``--json`` output stays clean).

``with cli_progress(): ...`` installs a :mod:`coinference.progress` sink for the block: on a terminal, a live
``rich`` table with one row per open phase (bar, done/total, elapsed time and the time remaining); elsewhere (logs,
CI, tests), plain lines that depend only on counts, never on the clock. rich is imported only for a terminal, and
torch never, so importing this module costs nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

from coinference.progress import ProgressEvent, reporting

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

PREFIX = "[coinfer]"
"""Start of every plain line."""
LINE_DEPTH = 2
"""Deepest phase (0: outermost) that prints plain lines: a build prints its parts and their training loops, a
search (one level more) its variants' parts, and neither a line per training step."""
PERCENT_MIN_TOTAL = 8
"""Phases of at least this many units also print a line at 25, 50 and 75 %."""


def _units(unit: str, n: int | None) -> str:
    return unit if n == 1 else f"{unit}s"


def _count(event: ProgressEvent) -> str:
    """``12/40 steps``; ``12 steps`` without a total; nothing before the first unit of a phase without a total."""
    if event.total is not None:
        return f"{event.completed}/{event.total} {_units(event.unit, event.total)}"
    return f"{event.completed} {_units(event.unit, event.completed)}" if event.completed else ""


class LineSink:
    """Plain progress lines on stderr (looked up at each line, so a redirected ``sys.stderr`` gets them).

    A phase of depth ≤ ``max_depth`` prints ``[coinfer] <description> …`` when it starts, ``<description>: 50%
    (20/40 steps)`` as it passes 25, 50 and 75 % (totals ≥ :data:`PERCENT_MIN_TOTAL`; a jump past several marks
    prints the last), and ``<description>: done in 12.3 s`` (or ``failed after``) when it ends. Nested phases are
    indented by two spaces per level.
    """

    def __init__(self, max_depth: int = LINE_DEPTH) -> None:
        self.max_depth = max_depth
        self._started: dict[int, float] = {}
        self._quarters: dict[int, int] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.depth > self.max_depth:
            return
        if event.kind == "start":
            self._started[event.phase] = time.perf_counter()
            self._quarters[event.phase] = 0
            size = f" ({event.total} {_units(event.unit, event.total)})" if event.total is not None else ""
            self._line(event, f" …{size}")
        elif event.kind == "advance":
            total = event.total
            if total is None or total < PERCENT_MIN_TOTAL or event.completed >= total:
                return
            quarter = min(3, 4 * event.completed // total)
            if quarter > self._quarters.get(event.phase, 3):
                self._quarters[event.phase] = quarter
                self._line(event, f": {25 * quarter}% ({_count(event)})")
        else:
            seconds = time.perf_counter() - self._started.pop(event.phase, time.perf_counter())
            self._quarters.pop(event.phase, None)
            self._line(event, f": {'failed after' if event.failed else 'done in'} {seconds:.1f} s")

    @staticmethod
    def _line(event: ProgressEvent, text: str) -> None:
        print(f"{PREFIX} {'  ' * event.depth}{event.description}{text}", file=sys.stderr, flush=True)


class LiveSink:
    """A live ``rich`` progress table on stderr: description (indented by depth), bar, done/total, elapsed and
    remaining time. A row leaves when its phase ends, except an outermost one, which stays (finished) as a
    record. Started at the first event; :meth:`close` draws the last frame and gives the terminal back."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress: Progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            # rich would print stdout through the stderr console, above the table; only where both are the screen
            redirect_stdout=_is_terminal(sys.stdout),
        )
        self._tasks: dict[int, TaskID] = {}
        self._started = False

    def __call__(self, event: ProgressEvent) -> None:
        p = self.progress
        if event.kind == "start":
            if not self._started:
                p.start()
                self._started = True
            description = "  " * event.depth + event.description
            self._tasks[event.phase] = p.add_task(description, total=event.total, count=_count(event))
            return
        task = self._tasks.get(event.phase)
        if task is None:
            return
        if event.kind == "advance":
            p.update(task, completed=event.completed, count=_count(event))
            return
        del self._tasks[event.phase]
        if event.depth > 0:
            p.remove_task(task)
            return
        if event.total is None and not event.failed:  # a full bar instead of an endless pulse
            p.update(task, total=1, completed=1)
        if event.failed:
            p.update(task, description=f"{event.description} (failed)")
        p.stop_task(task)

    def close(self) -> None:
        """Draw the last frame and stop the live display (if it started)."""
        if self._started:
            self.progress.stop()
            self._started = False


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@contextmanager
def cli_progress(enabled: bool = True) -> Iterator[None]:
    """Show the progress of the phases run in the block on stderr: a :class:`LiveSink` when stderr is a terminal,
    else a :class:`LineSink`. ``enabled=False`` shows nothing (e.g. for ``--quiet``)."""
    if not enabled:
        with reporting(None):
            yield
        return
    if not _is_terminal(sys.stderr):
        with reporting(LineSink()):
            yield
        return
    sink = LiveSink()
    try:
        with reporting(sink):
            yield
    finally:
        sink.close()
