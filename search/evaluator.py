"""The cached evaluator: every searcher's only way to measure a variant.

It looks a spec up in the lookup table first and answers from it when the spec was measured (or failed)
before; otherwise it marks the spec running, builds and measures it, and writes the measurement, or the
failure with its error, in one transaction. Only the process that owns the evaluator writes: distributed
searchers (Ray) send their results back to it through :meth:`CachedEvaluator.record`.

A spec left ``running`` by a killed search is evaluated again on resume (its result was lost); a spec in
the table as ``ok`` or ``failed`` is never evaluated again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from coinference.variant import Measurement, VariantSpec

Evaluate = Callable[[VariantSpec], Measurement]
"""Builds and measures one variant; raises (e.g. ``TrainingError``) on failure."""


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


class CachedEvaluator:
    """Table-backed, never-twice evaluator for one run.

    Args:
        table: the lookup table (written only from this process).
        evaluate: builds and measures a spec (a real builder, or a toy in tests).
        run: the run name recorded with each new result.
        on_outcome: called with every :class:`Outcome` (progress bars, logs).
        artifacts: files saved for a built spec (name → path), recorded with its result for export.
    """

    def __init__(
        self,
        table: Table,
        evaluate: Evaluate | None,
        run: str,
        on_outcome: Callable[[Outcome], None] | None = None,
        artifacts: Callable[[VariantSpec], dict[str, Path]] | None = None,
    ) -> None:
        self.table = table
        self.artifacts = artifacts
        self.evaluate = evaluate
        self.run = run
        self.on_outcome = on_outcome
        self.n_built = 0
        """Builds done by this evaluator object (not counting cache hits)."""

    def lookup(self, spec: VariantSpec) -> Outcome | None:
        """The stored outcome of ``spec``, or None when it was never finished."""
        rec = self.table.get(spec.key)
        if rec is None or rec.status not in ("ok", "failed"):
            return None
        return Outcome(spec, rec.status, rec.measurement, rec.error, True, rec.run)

    def __call__(self, spec: VariantSpec) -> Outcome:
        """Stored outcome of ``spec``, or build, measure and store it. Failures are returned, never raised."""
        hit = self.lookup(spec)
        if hit is not None:
            return self._emit(hit)
        if self.evaluate is None:
            raise RuntimeError("this evaluator only records results computed elsewhere")
        self.table.mark_running(spec, self.run)
        try:
            m = self.evaluate(spec)
        except Exception as e:  # failures are data; KeyboardInterrupt still stops the search
            return self.record(spec, error=error_text(e))
        return self.record(spec, measurement=m)

    def record(self, spec: VariantSpec, measurement: Measurement | None = None, error: str | None = None) -> Outcome:
        """Store a result computed elsewhere (a Ray worker), unless the spec is already finished."""
        hit = self.lookup(spec)
        if hit is not None:
            return self._emit(hit)
        if measurement is not None:
            files = self.artifacts(spec) if self.artifacts is not None else None
            self.table.record_ok(spec, measurement, self.run, artifacts=files or None)
            out = Outcome(spec, "ok", measurement, None, False, self.run)
        else:
            self.table.record_failure(spec, error or "unknown error", self.run)
            out = Outcome(spec, "failed", None, error, False, self.run)
        self.n_built += 1
        return self._emit(out)

    def _emit(self, out: Outcome) -> Outcome:
        if self.on_outcome is not None:
            self.on_outcome(out)
        return out
