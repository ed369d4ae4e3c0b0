"""The cached evaluator: every searcher's only way to measure a variant.

It looks a spec up in the lookup table first and answers from it when the spec was measured (or failed)
before; otherwise it marks the spec running, builds and measures it, and writes the measurement, or the
failure with its error, in one transaction. Only the process that owns the evaluator writes: distributed
searchers (Ray) send their results back to it through :meth:`CachedEvaluator.record`.

A spec left ``running`` by a killed search is evaluated again on resume (its result was lost); a spec in
the table as ``ok`` or ``failed`` is not evaluated again, unless the evaluator was made with
``retry_failed``: then each ``failed`` spec it is asked for is rebuilt once.

**Which failures are data.** A build can fail because of the variant or because of the machine it runs on;
:func:`is_environment_error` tells them apart:

- *environment* (nothing is recorded, the search stops with :class:`~coinference.errors.EnvironmentProblem`,
  the CLI exits 2, and a later run builds the spec): ``DataError`` (missing or corrupt data set),
  ``CheckpointError`` (unreadable or mismatched weights), ``OSError`` and its subclasses (no such file,
  permission denied, disk full, quota, broken pipe, connection and time-outs), ``MemoryError`` and
  ``torch.OutOfMemoryError``, ``ImportError`` (a missing package or module), ``EnvironmentProblem`` itself,
  ``KeyboardInterrupt``; a ``RuntimeError`` whose message says the disk is full (``torch.save`` reports a
  full disk that way); and any other exception raised ``from`` one of those (its explicit ``__cause__``).
- *variant* (recorded as ``failed``, answered from the table next time): everything else, in particular
  ``TrainingError`` (a NaN loss), ``ConfigError`` raised for a spec, shape errors (``RuntimeError``,
  ``ValueError``) and a ``BitstreamError`` (a ``DataError``, but raised by the variant's own codec).

When in doubt the rule says *variant*: a wrong "environment" answer would stop every later run at the same
spec, while a wrong "failed" is one ``retry_failed`` away from being rebuilt.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from coinference.errors import CheckpointError, CoinferenceError, DataError, EnvironmentProblem
from coinference.variant import Measurement, VariantSpec

Evaluate = Callable[[VariantSpec], Measurement]
"""Builds and measures one variant; raises (e.g. ``TrainingError``) on failure."""

ENVIRONMENT_ERRORS: tuple[type[BaseException], ...] = (
    EnvironmentProblem,
    DataError,
    CheckpointError,
    OSError,
    MemoryError,
    ImportError,
    KeyboardInterrupt,
)
"""Exception classes that blame the machine or the inputs, not the variant."""

DISK_FULL_MESSAGES = (
    "no space left on device",
    "disk quota exceeded",
    "pytorchstreamwriter failed writing file",
)
"""Lower-case message fragments of a ``RuntimeError`` that reports a full disk without an ``OSError``."""


def _loaded(module: str, name: str) -> tuple[type[BaseException], ...]:
    """``module.name`` when that module is already imported (else nothing can have raised it), as a tuple."""
    cls = getattr(sys.modules.get(module), name, None)
    return (cls,) if isinstance(cls, type) and issubclass(cls, BaseException) else ()


def is_environment_error(e: BaseException) -> bool:
    """True when ``e`` blames the machine or the inputs rather than the variant (see the module docstring)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, _loaded("coinference.codec.entropy", "BitstreamError")):
            return False  # the variant's own codec made a bad bitstream
        if isinstance(cur, ENVIRONMENT_ERRORS + _loaded("torch", "OutOfMemoryError")):
            return True
        if isinstance(cur, RuntimeError) and any(m in str(cur).lower() for m in DISK_FULL_MESSAGES):
            return True
        if isinstance(cur, CoinferenceError):
            return False  # our own errors say what they are; their cause does not change that
        cur = cur.__cause__  # a wrapper raised `from` an environment error is one too
    return False


class Table(Protocol):
    """The part of ``storage.LookupTable`` the evaluator uses."""

    def get(self, key: str) -> Any: ...
    def mark_running(self, spec: VariantSpec, run: str) -> Any: ...
    def record_ok(
        self, spec: VariantSpec, measurement: Measurement, run: str, artifacts: dict | None = None
    ) -> Any: ...
    def record_failure(self, spec: VariantSpec, error: str, run: str) -> Any: ...
    def variants(self, status: str | None = None, run: str | None = None) -> list[Any]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """What one evaluation request gave."""

    spec: VariantSpec
    status: str
    """"ok" or "failed"."""
    measurement: Measurement | None
    error: str | None
    cached: bool
    """True when answered from the table (no build)."""
    run: str
    """The run that measured it."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def error_text(e: BaseException) -> str:
    """One line for the table: exception type and message."""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}"[:2000]


def environment_problem(key: str, error: str) -> EnvironmentProblem:
    """The error a search stops with when building ``key`` failed for an environment reason (``error``: one line)."""
    return EnvironmentProblem(
        f"variant {key[:12]} not built, and not recorded as failed: {error} "
        "(a problem of the machine or the inputs; fix it and run again)"
    )


class CachedEvaluator:
    """Table-backed, never-twice evaluator for one run.

    Args:
        table: the lookup table (written only from this process).
        evaluate: builds and measures a spec (a real builder, or a toy in tests).
        run: the run name recorded with each new result.
        on_outcome: called with every :class:`Outcome` (progress bars, logs).
        artifacts: files saved for a built spec (name → path), recorded with its result for export.
        retry_failed: rebuild a spec stored as ``failed`` instead of answering it from the table, once per
            evaluator (a retry that fails again is answered from the table afterwards).
    """

    def __init__(
        self,
        table: Table,
        evaluate: Evaluate | None,
        run: str,
        on_outcome: Callable[[Outcome], None] | None = None,
        artifacts: Callable[[VariantSpec], dict[str, Path]] | None = None,
        retry_failed: bool = False,
    ) -> None:
        self.table = table
        self.artifacts = artifacts
        self.evaluate = evaluate
        self.run = run
        self.on_outcome = on_outcome
        self.retry_failed = retry_failed
        self.n_built = 0
        """Builds done by this evaluator object (not counting cache hits)."""
        self._recorded: set[str] = set()
        """Keys whose result this evaluator wrote (a retried failure is not retried twice)."""

    def lookup(self, spec: VariantSpec) -> Outcome | None:
        """The stored outcome of ``spec``, or None when it was never finished."""
        rec = self.table.get(spec.key)
        if rec is None or rec.status not in ("ok", "failed"):
            return None
        return Outcome(spec, rec.status, rec.measurement, rec.error, True, rec.run)

    def stored(self, spec: VariantSpec) -> Outcome | None:
        """What this evaluator answers ``spec`` with without a build: :meth:`lookup`, except for a ``failed`` spec
        that ``retry_failed`` rebuilds (None then, until this evaluator has recorded its new result)."""
        hit = self.lookup(spec)
        if hit is not None and hit.status == "failed" and self.retry_failed and spec.key not in self._recorded:
            return None
        return hit

    def __call__(self, spec: VariantSpec) -> Outcome:
        """Stored outcome of ``spec``, or build, measure and store it.

        A variant failure is returned (status ``failed``), never raised.

        Raises:
            EnvironmentProblem: the build failed for a reason of the machine or the inputs
                (:func:`is_environment_error`); nothing is recorded and the spec stays ``running``, so a later
                run builds it. ``KeyboardInterrupt`` propagates unchanged.
        """
        hit = self.stored(spec)
        if hit is not None:
            return self._emit(hit)
        if self.evaluate is None:
            raise RuntimeError("this evaluator only records results computed elsewhere")
        self.table.mark_running(spec, self.run)
        try:
            m = self.evaluate(spec)
        except Exception as e:  # variant failures are data; KeyboardInterrupt is not caught
            if is_environment_error(e):
                raise environment_problem(spec.key, error_text(e)) from e
            return self.record(spec, error=error_text(e))
        return self.record(spec, measurement=m)

    def record(self, spec: VariantSpec, measurement: Measurement | None = None, error: str | None = None) -> Outcome:
        """Store a result computed elsewhere (a Ray worker), unless :meth:`stored` answers the spec already (a
        failure being retried is replaced, an ``ok`` variant never)."""
        hit = self.stored(spec)
        if hit is not None:
            return self._emit(hit)
        if measurement is not None:
            files = self.artifacts(spec) if self.artifacts is not None else None
            self.table.record_ok(spec, measurement, self.run, artifacts=files or None)
            out = Outcome(spec, "ok", measurement, None, False, self.run)
        else:
            self.table.record_failure(spec, error or "unknown error", self.run)
            out = Outcome(spec, "failed", None, error, False, self.run)
        self._recorded.add(spec.key)
        self.n_built += 1
        return self._emit(out)

    def _emit(self, out: Outcome) -> Outcome:
        if self.on_outcome is not None:
            self.on_outcome(out)
        return out
