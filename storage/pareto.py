"""Pareto front of measured variants over (validation accuracy ↑, device MACs ↓, bits ↓), via moocore.

Convention: every objective is **minimised**. A variant's objective vector is

    f = (1 − validation accuracy, device MACs per image, bits per image)

(the test accuracy is never an objective: it is reported, not selected on)

with bits = ``bits_mean + header_bits`` (what one image puts on the link; channel uses for analog JSCC). Only
variants with status ``ok`` and a measurement take part. Ties (identical vectors) are all kept on the front: neither
dominates the other. Hypervolume is computed in these raw units against a reference point that is worse than every
point, by default ``(1, 1.1 × max device MACs, 1.1 × max bits)`` over the variants given; pass the same explicit
reference to compare two tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np

from coinference.variant import Measurement
from storage.records import OK, VariantRecord

OBJECTIVES = ("error = 1 − validation accuracy", "device MACs", "bits per image")
REFERENCE_MARGIN = 1.1
"""Default reference point: this factor times the worst device MACs and bits (error: 1)."""


def objectives(m: Measurement) -> tuple[float, float, float]:
    """The minimisation vector ``(1 − validation accuracy, device MACs, bits per image)``."""
    return (1.0 - float(m.val_accuracy), float(m.device_macs), float(m.bits_mean + m.header_bits))


def measured(records: Sequence[VariantRecord]) -> list[VariantRecord]:
    """The records with status ``ok`` and a measurement, in the given order."""
    return [r for r in records if r.status == OK and r.measurement is not None]


def objective_matrix(records: Sequence[VariantRecord]) -> np.ndarray:
    """(n, 3) array of :func:`objectives` of measured records (all records must be measured)."""
    rows = [objectives(r.measurement) for r in records if r.measurement is not None]
    if len(rows) != len(records):
        raise ValueError("objective_matrix needs measured records (see measured())")
    return np.asarray(rows, dtype=float).reshape(len(rows), 3)


def _sort_key(r: VariantRecord) -> tuple[float, float, float, str]:
    return (*objectives(r.measurement), r.key)  # type: ignore[arg-type]


def pareto_ranks(records: Sequence[VariantRecord]) -> dict[str, int]:
    """Non-dominated sorting: key → rank, 1 for the front, 2 for the front once the first is removed, ..."""
    ok = measured(records)
    if not ok:
        return {}
    ranks = moocore.pareto_rank(objective_matrix(ok))
    return {r.key: int(k) + 1 for r, k in zip(ok, ranks, strict=True)}


def pareto_front(records: Sequence[VariantRecord], accuracy_floor: float | None = None) -> list[VariantRecord]:
    """Measured variants not dominated by another (ties kept), optionally only those with accuracy ≥ floor.

    Sorted by error, then device MACs, then bits, then key (deterministic).
    """
    ok = measured(records)
    if accuracy_floor is not None:
        ok = [r for r in ok if r.measurement is not None and r.measurement.val_accuracy >= accuracy_floor]
    if not ok:
        return []
    keep = moocore.is_nondominated(objective_matrix(ok), keep_weakly=True)
    return sorted((r for r, k in zip(ok, keep, strict=True) if k), key=_sort_key)


def reference_point(records: Sequence[VariantRecord]) -> tuple[float, float, float]:
    """Default hypervolume reference: ``(1, 1.1 × max device MACs, 1.1 × max bits)`` over measured records."""
    ok = measured(records)
    if not ok:
        return (1.0, 1.0, 1.0)
    f = objective_matrix(ok)
    return (1.0, float(f[:, 1].max()) * REFERENCE_MARGIN or 1.0, float(f[:, 2].max()) * REFERENCE_MARGIN or 1.0)


def hypervolume(records: Sequence[VariantRecord], ref: Sequence[float] | None = None) -> float:
    """Hypervolume dominated by the measured records (units: error × MACs × bits) up to ``ref``.

    Points not strictly better than ``ref`` in every objective contribute nothing.
    """
    ok = measured(records)
    if not ok:
        return 0.0
    r = np.asarray(reference_point(ok) if ref is None else ref, dtype=float)
    return float(moocore.hypervolume(objective_matrix(ok), ref=r))
