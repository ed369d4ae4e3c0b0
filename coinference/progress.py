"""Progress of long computations, told to whoever listens.

Science code marks its long parts as *phases*::

    with phase("train", total=steps) as advance:
        for step in range(steps):
            ...
            advance()

and knows nothing of how (or whether) they are shown. A front end installs a *sink* for a block with
:func:`reporting`; the sink then receives a :class:`ProgressEvent` when a phase starts, advances and ends. Phases
nest (a variant's build holds its pruning, codec and evaluation phases); each event carries its depth. The sink
lives in a :class:`contextvars.ContextVar`: without one (the default, and in threads started without the caller's
context) :func:`phase` yields a function that does nothing, so a loop of thousands of steps pays one empty call per
step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, Protocol

EventKind = Literal["start", "advance", "end"]


@dataclass(frozen=True)
class ProgressEvent:
    """One change of a phase, as a sink receives it."""

    kind: EventKind
    """"start" (``completed`` is 0), "advance" (``completed`` grew) or "end" (the phase's block was left)."""
    phase: int
    """Id of the phase, unique within the process: the events of one phase share it."""
    description: str
    """What the phase does, e.g. "prune iteration 2/4 (sparsity 0.38)"."""
    total: int | None
    """Units of work the phase will do (None: unknown)."""
    completed: int
    """Units done so far (at "end": all that were reported, which may fall short of ``total`` after an error)."""
    depth: int
    """Number of phases open around this one (0: outermost)."""
    unit: str = "step"
    """What one unit is (singular: "step", "image", "iteration")."""
    failed: bool = False
    """At "end": the block was left by an exception."""


ProgressSink = Callable[[ProgressEvent], None]
"""Receives every event of every phase opened while it is installed; called in the thread that runs the phase."""


class Advance(Protocol):
    """What :func:`phase` yields: ``advance(n)`` reports ``n`` more units done."""

    def __call__(self, n: int = 1) -> None: ...


_sink: ContextVar[ProgressSink | None] = ContextVar("coinference_progress_sink", default=None)
_depth: ContextVar[int] = ContextVar("coinference_progress_depth", default=0)
_ids = itertools.count(1)


def ignore(n: int = 1) -> None:
    """An :class:`Advance` that reports nothing (what :func:`phase` yields when no sink is installed)."""


@contextmanager
def reporting(sink: ProgressSink | None) -> Iterator[None]:
    """Send the events of the phases opened in the block to ``sink`` (None: to nobody)."""
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)


@contextmanager
def phase(description: str | None, total: int | None = None, unit: str = "step") -> Iterator[Advance]:
    """A phase of work for the block: the installed sink hears when it starts, advances and ends.

    Args:
        description: what the phase does (one short line); None opens no phase (a caller's way to stay silent).
        total: units of work it will do (None: unknown, e.g. a phase made of sub-phases).
        unit: what one unit is, singular.

    Yields:
        ``advance(n=1)``: report ``n`` more units done. Without a sink (or a description) it is :func:`ignore`.
    """
    sink = _sink.get()
    if sink is None or description is None:
        yield ignore
        return
    pid, depth = next(_ids), _depth.get()
    completed = 0

    def advance(n: int = 1) -> None:
        nonlocal completed
        completed += n
        sink(ProgressEvent("advance", pid, description, total, completed, depth, unit))

    sink(ProgressEvent("start", pid, description, total, 0, depth, unit))
    token = _depth.set(depth + 1)
    failed = True
    try:
        yield advance
        failed = False
    finally:
        _depth.reset(token)
        sink(ProgressEvent("end", pid, description, total, completed, depth, unit, failed))
