"""Adaptive switching: the throughput estimate and the variant switcher's hysteresis, under seeded ±20 % noise.

Simulated requests only (no network): each request's transfer is ``rate × U(0.8, 1.2)`` bytes/s.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from coinference.errors import ConfigError
from coinference.runtime.adaptive import ThroughputEstimator, VariantSwitcher, intervals_from_rows

TABLE = [(0.0, "slow"), (10_000.0, "mid"), (100_000.0, "fast")]


def _run(rates: list[float], switcher: VariantSwitcher, seed: int, noise: float = 0.2) -> list[str]:
    """The variant chosen after each request at these link rates, with seeded multiplicative noise."""
    rng = np.random.default_rng(seed)
    est = ThroughputEstimator()
    out = []
    for r in rates:
        n_bytes = int(rng.integers(100, 5000))  # payload sizes vary; the rate is what matters
        seconds = n_bytes / (r * rng.uniform(1 - noise, 1 + noise))
        out.append(switcher.update(est.update(n_bytes, seconds)))
    return out


def _flips(chosen: list[str]) -> int:
    return sum(a != b for a, b in itertools.pairwise(chosen))


def test_estimator() -> None:
    est = ThroughputEstimator(alpha=0.5)
    assert est.rate is None
    assert est.update(1000, 0.5) == pytest.approx(2000)
    assert est.update(1000, 0.125) == pytest.approx(4000)  # geometric mean of 2000 and 8000
    assert est.update(0, 1.0) == pytest.approx(4000)  # no information
    assert est.update(100, float("nan")) == pytest.approx(4000)
    assert est.samples == 2
    with_rtt = ThroughputEstimator(rtt_s=0.1)
    assert with_rtt.update(1000, 0.6) == pytest.approx(2000)  # the RTT is not transmission
    with pytest.raises(ConfigError):
        ThroughputEstimator(alpha=0)


def test_lookup_and_intervals() -> None:
    sw = VariantSwitcher(TABLE)
    assert [sw.lookup(r) for r in (0, 9_999, 10_000, 99_999, 1e9)] == ["slow", "slow", "mid", "mid", "fast"]
    assert sw.interval("mid") == (10_000.0, 100_000.0) and sw.interval("fast") == (100_000.0, math.inf)
    assert sw.current == "slow"  # the slowest link's variant until measured
    merged = VariantSwitcher([(0, "a"), (5, "a"), (10, "b"), (20, "b")])
    assert merged.variants == ["a", "b"] and merged.interval("b") == (10, math.inf)
    # A table sampled at rates (as the lookup table's bandwidth table): changes at geometric midpoints.
    rows = [(1e3, "x"), (1e4, "x"), (1e5, "y"), (1e6, "z"), (1e7, "z")]
    assert intervals_from_rows(rows) == [
        (0.0, "x"),
        (pytest.approx(math.sqrt(1e9)), "y"),
        (pytest.approx(1e5 * math.sqrt(10)), "z"),
    ]
    for bad in ([], [(5, "a"), (5, "b")], [(10, "a"), (1, "b")], [(-1, "a")], [(math.nan, "a")]):
        with pytest.raises(ConfigError):
            VariantSwitcher(bad)
    with pytest.raises(ConfigError, match="not in the bandwidth table"):
        VariantSwitcher(TABLE, initial="nope")


def test_no_switch_on_noise_inside_an_interval() -> None:
    for seed in range(5):
        sw = VariantSwitcher(TABLE, initial="mid")
        chosen = _run([math.sqrt(1e9)] * 1000, sw, seed)  # the middle of "mid" (log scale)
        assert set(chosen) == {"mid"} and sw.switches == 0


@pytest.mark.parametrize(
    ("rate", "variant"), [(12_500.0, "mid"), (8_000.0, "slow"), (125_000.0, "fast"), (80_000.0, "mid")]
)
def test_no_switch_on_noise_25_percent_from_a_boundary(rate: float, variant: str) -> None:
    for seed in range(5):
        sw = VariantSwitcher(TABLE, initial=variant)
        assert set(_run([rate] * 1000, sw, seed)) == {variant}
        # starting on the wrong side, it moves over once and stays
        other = "slow" if variant != "slow" else "mid"
        sw = VariantSwitcher(TABLE, initial=other)
        chosen = _run([rate] * 1000, sw, seed)
        assert chosen[-1] == variant and _flips(chosen) == 1 and chosen.index(variant) < 5


def test_noise_ten_percent_from_a_boundary_does_not_flap() -> None:
    for seed in range(5):
        for rate, variant in ((11_000.0, "mid"), (10_000 / 1.1, "slow")):
            sw = VariantSwitcher(TABLE, initial=variant)
            assert _flips(_run([rate] * 1000, sw, seed)) == 0


@pytest.mark.parametrize("factor", [2.5, 4.0, 10.0])
def test_step_change_switches_within_five_requests(factor: float) -> None:
    """From ``factor``^½ below a boundary to as far above it (and back down), with noise on every request."""
    worst = 0
    for seed in range(200):
        lo, hi = 10_000 / math.sqrt(factor), 10_000 * math.sqrt(factor)
        for before, after, want in ((lo, hi, "mid"), (hi, lo, "slow")):
            sw = VariantSwitcher(TABLE, initial="slow" if want == "mid" else "mid")
            chosen = _run([before] * 30 + [after] * 30, sw, seed)
            assert set(chosen[:30]) == {chosen[0]} and set(chosen[30 + 5 :]) == {want}
            worst = max(worst, chosen[30:].index(want) + 1)
            assert _flips(chosen) == 1
    assert worst <= 5


def test_step_across_several_intervals() -> None:
    sw = VariantSwitcher(TABLE, initial="slow")
    chosen = _run([3_000.0] * 20 + [1e6] * 20 + [3_000.0] * 20, sw, seed=0)
    assert chosen[19] == "slow" and set(chosen[25:40]) == {"fast"} and set(chosen[45:]) == {"slow"}
    # Each step may pass through "mid" while the estimate travels, but never turns back on the way.
    order = {"slow": 0, "mid": 1, "fast": 2}
    up, down = [order[c] for c in chosen[:40]], [order[c] for c in chosen[40:]]
    assert up == sorted(up) and down == sorted(down, reverse=True)
