"""Pareto front and hypervolume on hand-built tables (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coinference.variant import Measurement, VariantSpec
from storage import VariantRecord
from storage.pareto import hypervolume, objectives, pareto_front, pareto_ranks, reference_point

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rec(i: int, acc: float, macs: int, bits: float, status: str = "ok", **m: int) -> VariantRecord:
    spec = VariantSpec("tiny-cnn", "synthetic", "block1", seed=i)
    meas = Measurement(acc, device_macs=macs, server_macs=m.pop("server_macs", 1000), bits_mean=bits,
                       bits_max=int(bits), **m) if status == "ok" else None  # fmt: skip
    return VariantRecord(spec.key, spec, status, "x" if status == "failed" else None, meas, "r", T0, T0, {})


def keys(rs: list[VariantRecord]) -> set[str]:
    return {r.key for r in rs}


def test_objectives_minimise_error_macs_bits() -> None:
    m = Measurement(0.75, device_macs=10, server_macs=0, bits_mean=100.0, bits_max=120, header_bits=80)
    assert objectives(m) == (0.25, 10.0, 180.0)


def test_front_dominance_and_ties() -> None:
    a = rec(1, 0.90, 100, 50)  # front
    b = rec(2, 0.80, 50, 50)  # front (cheaper)
    c = rec(3, 0.80, 100, 50)  # dominated by a (and b)
    d = rec(4, 0.90, 100, 50)  # tie with a: kept
    e = rec(5, 0.70, 200, 10)  # front (fewest bits)
    f = rec(6, 0.99, 10, 1, status="failed")  # not measured: ignored
    g = rec(7, 0.99, 10, 1, status="running")
    front = pareto_front([a, b, c, d, e, f, g])
    assert keys(front) == keys([a, b, d, e])
    assert [r.key for r in front] == [
        r.key for r in sorted([a, d, b, e], key=lambda r: (*objectives(r.measurement), r.key))
    ]
    ranks = pareto_ranks([a, b, c, d, e, f])
    assert ranks[a.key] == ranks[d.key] == ranks[b.key] == ranks[e.key] == 1 and ranks[c.key] == 2
    assert f.key not in ranks


def test_accuracy_floor_and_empty() -> None:
    a, b = rec(1, 0.90, 100, 50), rec(2, 0.80, 50, 50)
    assert keys(pareto_front([a, b], accuracy_floor=0.85)) == {a.key}
    assert pareto_front([a, b], accuracy_floor=0.95) == []
    assert pareto_front([]) == [] and pareto_ranks([]) == {} and hypervolume([]) == 0.0


def test_hypervolume_hand_computed() -> None:
    # One point (0.1, 1, 1) against ref (1, 2, 3): box 0.9 × 1 × 2 = 1.8.
    a = rec(1, 0.9, 1, 1)
    assert hypervolume([a], ref=(1.0, 2.0, 3.0)) == pytest.approx(1.8)
    # Adding a dominated point changes nothing; a point outside the box contributes nothing.
    assert hypervolume([a, rec(2, 0.8, 1, 2)], ref=(1.0, 2.0, 3.0)) == pytest.approx(1.8)
    assert hypervolume([a, rec(3, 0.95, 5, 1)], ref=(1.0, 2.0, 3.0)) == pytest.approx(1.8)
    # Two non-dominated points: union of boxes.
    b = rec(4, 0.5, 1, 0.5)  # box 0.5 × 1 × 2.5 = 1.25; overlap with a's: 0.5 × 1 × 2 = 1.0
    assert hypervolume([a, b], ref=(1.0, 2.0, 3.0)) == pytest.approx(1.8 + 1.25 - 1.0)


def test_default_reference_point() -> None:
    rs = [rec(1, 0.9, 100, 50), rec(2, 0.8, 200, 10)]
    assert reference_point(rs) == pytest.approx((1.0, 220.0, 55.0))
    assert hypervolume(rs) > 0
