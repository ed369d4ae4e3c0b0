"""Frozen public records of the lookup table: what :class:`storage.LookupTable` returns (never ORM rows)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from coinference.variant import FIDELITIES, Measurement, VariantSpec

RUNNING, OK, FAILED = "running", "ok", "failed"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ArtifactRecord:
    """A file that belongs to a variant (checkpoint, TorchScript part, export manifest, ...)."""

    name: str
    """Role of the file, e.g. ``device``, ``server``, ``codec`` (see docs/ARCHITECTURE.md, "Lookup table")."""
    path: Path
    """Absolute path at the time it was recorded."""
    sha256: str
    """sha256 hex digest of the file's bytes when recorded."""
    size_bytes: int
    """File size in bytes when recorded."""
    created_at: datetime
    """When it was recorded (UTC)."""

    def check(self) -> str | None:
        """None when the file is still there with the recorded digest, else what is wrong (one line)."""
        if not self.path.is_file():
            return f"artifact {self.name!r}: no file at {self.path}"
        if sha256_file(self.path) != self.sha256:
            return f"artifact {self.name!r}: {self.path} changed since it was recorded (sha256 mismatch)"
        return None


@dataclass(frozen=True)
class TimingRecord:
    """One part of a variant timed in the runtime it is deployed with, on a real machine."""

    profile: str
    """The device or server profile it stands for (``local``: the machine that measured it)."""
    part: str
    """``device`` (image → payload bytes: pre-processing, the device part, entropy coding) or ``server`` (payload
    bytes → logits: entropy decoding, the server part)."""
    seconds: float
    """Median seconds per image (batch 1)."""
    samples: int
    """Timed calls behind the median."""
    runtime: str
    """What ran it, e.g. ``onnxruntime 1.22.0, 1 thread``."""
    host: str
    """The machine: host name, CPU model and count."""
    created_at: datetime
    """When it was measured (UTC)."""


@dataclass(frozen=True)
class VariantRecord:
    """One row of the lookup table: a variant's spec, its status and, when ``ok``, its measurement."""

    key: str
    """The spec's stable hash (:attr:`VariantSpec.key`), the table's natural key."""
    spec: VariantSpec
    status: str
    """``running``, ``ok`` or ``failed``."""
    error: str | None
    """Why it failed (status ``failed``), else None."""
    measurement: Measurement | None
    """What was measured (status ``ok``), else None."""
    run: str
    """Name of the run (study) that last wrote the variant."""
    created_at: datetime
    """First time the variant was recorded (UTC)."""
    updated_at: datetime
    """Last change (UTC)."""
    artifacts: dict[str, ArtifactRecord] = field(default_factory=dict)
    """Files of the variant by name."""
    timings: tuple[TimingRecord, ...] = ()
    """Measured part latencies (:meth:`LookupTable.record_timing`), oldest first."""

    def timing(self, profile: str, part: str) -> TimingRecord | None:
        """The measured latency of ``part`` (``device`` or ``server``) on ``profile``, or None."""
        return next((t for t in self.timings if t.profile == profile and t.part == part), None)


def highest_fidelity(records: Sequence[VariantRecord]) -> list[VariantRecord]:
    """One record per variant: of the records that are the same cell at different fidelities (equal
    :attr:`VariantSpec.cell_key`, e.g. the rungs of a multi-fidelity search), the highest-fidelity one that was
    measured (status ``ok``), else, when none was, the highest-fidelity one of any status.

    Fronts, floors, queries and exports read a table through this rule, so a variant is never compared at two
    budgets at once and a cheap rung's measurement never stands beside the same variant's dearer one. Records
    come back in the order their cells first appear; a table of one fidelity comes back unchanged.
    """
    best: dict[str, VariantRecord] = {}
    for r in records:
        cell = r.spec.cell_key
        have = best.get(cell)
        if have is None or _standing(r) > _standing(have):
            best[cell] = r
    return list(best.values())


def _standing(r: VariantRecord) -> tuple[bool, int]:
    """Measured before unmeasured, then the dearer fidelity (FIDELITIES is ordered cheapest first)."""
    return (r.status == OK and r.measurement is not None, FIDELITIES.index(r.spec.fidelity))
