"""Adaptive switching: estimate the link's throughput from recent transfers and pick the table's variant for it.

The lookup table's bandwidth table says which variant is best at which rate; a device that measures its link can
follow it. Measurements are noisy, so :class:`VariantSwitcher` adds hysteresis: it leaves the current variant only
once the estimate has stood ``hysteresis`` (relative) beyond the variant's interval for ``patience`` consecutive
requests. :class:`ThroughputEstimator` averages in the log domain (a geometric EWMA), so multiplicative noise
averages out symmetrically and a step up or down settles in the same number of requests.

With the defaults (``alpha`` 0.5, ``hysteresis`` 0.1, ``patience`` 2) and ±20 % multiplicative noise on every
sample, a step of the rate across a boundary to 1.6× beyond it (a step of 2.5× from as far the other side) is
followed within 4 requests; a step between two adjacent rows of a 4-per-decade table (1.33× each side of the
boundary) within 6, 3.2 on average. Noise around a rate ≥ 25 % away from a boundary never crosses it (the estimate is
a weighted geometric mean of the samples, so it stays within their range); at 10 % away it did not in 30,000
simulated requests; right on a boundary (where both variants are equally fast) it switches about 16 times per 1,000
requests (tests/test_adaptive.py; the simulation in its docstring).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence

from coinference.errors import ConfigError


class ThroughputEstimator:
    """Link rate from recent transfers: an EWMA of log(bytes / (seconds − RTT)).

    Args:
        alpha: weight of the newest sample, in (0, 1].
        rtt_s: round-trip time to subtract from each transfer's time before dividing, seconds (the table's rates
            are payload rates; the RTT is added separately by the latency model).
        min_transfer_s: floor of (seconds − RTT), so a transfer faster than the assumed RTT gives a large but finite
            rate.
    """

    def __init__(self, alpha: float = 0.5, rtt_s: float = 0.0, min_transfer_s: float = 1e-6) -> None:
        if not 0 < alpha <= 1:
            raise ConfigError(f"EWMA alpha {alpha}: must be in (0, 1]")
        if not (rtt_s >= 0 and math.isfinite(rtt_s)) or not min_transfer_s > 0:
            raise ConfigError(f"rtt_s {rtt_s} must be ≥ 0 and min_transfer_s {min_transfer_s} > 0")
        self.alpha = alpha
        self.rtt_s = rtt_s
        self.min_transfer_s = min_transfer_s
        self._log_rate: float | None = None
        self.samples = 0

    @property
    def rate(self) -> float | None:
        """The current estimate, bytes/s (None before the first sample)."""
        return None if self._log_rate is None else math.exp(self._log_rate)

    def add_rate(self, rate_bytes_per_s: float) -> float:
        """Fold in one rate sample (bytes/s); returns the new estimate. Non-positive or non-finite samples are
        ignored."""
        if not (rate_bytes_per_s > 0 and math.isfinite(rate_bytes_per_s)):
            return self.rate if self.rate is not None else math.nan
        x = math.log(rate_bytes_per_s)
        self._log_rate = x if self._log_rate is None else self._log_rate + self.alpha * (x - self._log_rate)
        self.samples += 1
        return math.exp(self._log_rate)

    def update(self, n_bytes: int, seconds: float) -> float:
        """Fold in one transfer of ``n_bytes`` that took ``seconds`` (RTT included); returns the estimate, bytes/s."""
        if n_bytes <= 0 or not (seconds >= 0 and math.isfinite(seconds)):
            return self.rate if self.rate is not None else math.nan
        return self.add_rate(n_bytes / max(seconds - self.rtt_s, self.min_transfer_s))


def intervals_from_rows(rows: Iterable[tuple[float, str]]) -> list[tuple[float, str]]:
    """Intervals for :class:`VariantSwitcher` from a bandwidth table sampled at rates (``(rate, key)`` rows, e.g.
    ``storage.query.bandwidth_table``'s ``(bandwidth_bytes_per_s, key)``): runs of one key merge, and each change
    of key is placed at the geometric midpoint between the two rows on either side of it."""
    pts = sorted((float(r), k) for r, k in rows)
    if not pts:
        raise ConfigError("a bandwidth table needs at least one row")
    out = [(0.0, pts[0][1])]
    for (r0, k0), (r1, k1) in itertools.pairwise(pts):
        if k1 != k0:
            out.append((math.sqrt(r0 * r1), k1))
    return out


class VariantSwitcher:
    """Follows the bandwidth table with hysteresis.

    Args:
        bandwidth_table: ``(min_rate_bytes_per_s, variant)`` rows: each variant is best from its rate up to the next
            row's (the first row also covers every lower rate, the last every higher one). Rates must increase;
            consecutive rows of one variant merge.
        hysteresis: how far (relative) the estimate must stand beyond the current variant's interval to count, e.g.
            0.1: below lo / 1.1 or at or above hi × 1.1.
        patience: consecutive counting estimates before switching (≥ 1).
        initial: the variant used before any estimate (default: the first row's, the one for the slowest link).
    """

    def __init__(
        self,
        bandwidth_table: Sequence[tuple[float, str]],
        hysteresis: float = 0.1,
        patience: int = 2,
        initial: str | None = None,
    ) -> None:
        if not bandwidth_table:
            raise ConfigError("a bandwidth table needs at least one row")
        if not (hysteresis >= 0 and math.isfinite(hysteresis)) or patience < 1:
            raise ConfigError(f"hysteresis {hysteresis} must be ≥ 0 and patience {patience} ≥ 1")
        rates: list[float] = []
        variants: list[str] = []
        for rate, variant in bandwidth_table:
            if not (rate >= 0 and math.isfinite(rate)) or (rates and rate <= rates[-1]):
                raise ConfigError(f"bandwidth table rates must be finite, ≥ 0 and increasing; got {rate} after {rates}")
            if variants and variants[-1] == variant:
                continue
            rates.append(float(rate))
            variants.append(variant)
        self._bounds = rates[1:]  # the interval of variants[i] is [bounds[i-1], bounds[i])
        self._variants = variants
        if initial is not None and initial not in variants:
            raise ConfigError(f"initial variant {initial!r} is not in the bandwidth table: {sorted(set(variants))}")
        self._index = variants.index(initial) if initial is not None else 0
        self.hysteresis = hysteresis
        self.patience = patience
        self._outside = 0
        self.switches = 0

    @property
    def current(self) -> str:
        """The variant to use now."""
        return self._variants[self._index]

    @property
    def variants(self) -> list[str]:
        """The table's variants, slowest link first (one per interval)."""
        return list(self._variants)

    def _slot(self, rate: float) -> int:
        return bisect.bisect_right(self._bounds, rate)

    def lookup(self, rate: float) -> str:
        """The table's variant at ``rate`` bytes/s, without hysteresis."""
        return self._variants[self._slot(rate)]

    def interval(self, variant: str) -> tuple[float, float]:
        """``[lo, hi)`` rates (bytes/s) where ``variant`` is the table's choice (its first interval if several)."""
        if variant not in self._variants:
            raise ConfigError(f"variant {variant!r} is not in the bandwidth table: {sorted(set(self._variants))}")
        return self._interval(self._variants.index(variant))

    def update(self, rate: float | None) -> str:
        """Take a new throughput estimate (bytes/s; None or non-finite: no information) and return the variant
        for the next request."""
        if rate is None or not (rate > 0 and math.isfinite(rate)):
            return self.current
        lo, hi = self._interval(self._index)
        margin = 1.0 + self.hysteresis
        if lo / margin <= rate < hi * margin:
            self._outside = 0
            return self.current
        self._outside += 1
        if self._outside >= self.patience:
            self._index = self._slot(rate)
            self._outside = 0
            self.switches += 1
        return self.current

    def _interval(self, i: int) -> tuple[float, float]:
        return (self._bounds[i - 1] if i > 0 else 0.0), (self._bounds[i] if i < len(self._bounds) else math.inf)
