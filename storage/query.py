"""Which variant for this link? Latency is computed at query time from stored measurements with
:func:`coinference.latency.end_to_end`; memory feasibility with :func:`coinference.latency.feasible`.

Semantics of :func:`query`: among variants with status ``ok``, drop those below the accuracy floor, those whose
device memory (parameters + peak activations) exceeds the device's, analog-JSCC variants when the link has no
symbol rate, and, when the link's SNR is given, analog-JSCC variants measured at a higher SNR than the link's; rank
the rest by end-to-end latency (ties: higher accuracy, then fewer bits, then key). Every measured variant is a
candidate, not only the Pareto front: latency also depends on server MACs, which the front ignores.

Measured times: with a ``measured`` device or server profile (``local``: this machine) and a table in which
some variants' parts were timed in the deployed runtime (``coinfer measure``, stored as timings under the profile's
name), a part's time is that measurement instead of MACs ÷ MAC/s, and variants without one are left out (counted
in the error when nothing is left), so measured and predicted times are never ranked against each other.

Analog JSCC (a measurement with ``channel_uses``) sends real symbols, not bits: its transmission takes channel uses
÷ the link's symbol rate (real channel uses per second). Its accuracy was measured at one SNR (:func:`analog_snr_db`:
the spec's ``codec.snr_db``, or the codec's default evaluation SNR of 10 dB when the spec has none — training drew
SNRs from a range either way), and it is taken to hold on a link of that SNR or more, never on a noisier one: a
variant measured at 10 dB does not qualify on a 0 dB link. Without a link SNR every analog variant qualifies (the
link is assumed at least as clean as each variant's SNR).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coinference.base import DEFAULT_MARGIN
from coinference.latency import DeviceProfile, Latency, Link, ServerProfile, end_to_end, feasible
from storage.errors import EmptyTableError, NoFeasibleVariantError
from storage.pareto import measured
from storage.records import VariantRecord

BANDWIDTH_MIN = 1e3
"""Lowest rate of the precomputed table: 1 KB/s (bytes per second)."""
BANDWIDTH_MAX = 1e8
"""Highest rate of the precomputed table: 100 MB/s."""


@dataclass(frozen=True)
class Candidate:
    """A feasible variant and its predicted latency on the queried link."""

    record: VariantRecord
    latency: Latency
    measured: tuple[str, ...] = ()
    """The parts (``device``, ``server``) whose time is the variant's own measurement, not MACs ÷ MAC/s."""

    @property
    def total_s(self) -> float:
        return self.latency.total_s


@dataclass(frozen=True)
class QueryResult:
    """The best feasible variant for a link, the runners-up (best first) and how many were considered."""

    best: Candidate
    runners_up: tuple[Candidate, ...]
    feasible: int
    """Variants that passed every constraint."""
    measured: int
    """Variants with status ok."""


def _fmt_bytes(n: float) -> str:
    return f"{n:,.0f} bytes"


def default_floor(
    records: Sequence[VariantRecord], device: DeviceProfile | None = None, margin: float = DEFAULT_MARGIN
) -> float | None:
    """Default accuracy floor of queries, exports and search reports: the best accuracy among the measured
    variants that fit ``device`` (all of them when None) − ``margin``, the same margin as the variant threshold
    below the base model; None when there is no such variant."""
    accs = [
        r.measurement.accuracy for r in measured(records)
        if r.measurement is not None and (device is None or feasible(r.measurement, device))
    ]  # fmt: skip
    return max(accs) - margin if accs else None


def resolve_floor(
    records: Sequence[VariantRecord], min_accuracy: float | None, device: DeviceProfile | None = None
) -> float | None:
    """The one accuracy floor of ``pareto``, ``query``, ``export`` and a search's report: ``min_accuracy`` when
    given (0 means no floor), else :func:`default_floor` over ``records`` for ``device``."""
    if min_accuracy is None:
        return default_floor(records, device)
    return min_accuracy or None


def floor_label(floor: float | None) -> str:
    """The accuracy floor as every command and report prints it: ``accuracy ≥ 0.8800`` or ``no accuracy floor``."""
    return f"accuracy ≥ {floor:.4f}" if floor is not None else "no accuracy floor"


def analog_snr_db(record: VariantRecord) -> float | None:
    """The SNR (dB per real symbol) an analog-JSCC variant's accuracy was measured at: its spec's ``codec.snr_db``,
    else the codec's default evaluation SNR (:attr:`coinference.codec.CodecConfig.snr_db`, 10 dB); None for a
    digital variant (no channel uses)."""
    if record.measurement is None or record.measurement.channel_uses is None:
        return None
    if record.spec.codec.snr_db is not None:
        return float(record.spec.codec.snr_db)
    from coinference.codec.config import CodecConfig

    return float(CodecConfig.snr_db)


def candidates(
    records: Sequence[VariantRecord],
    link: Link,
    device: DeviceProfile,
    server: ServerProfile,
    accuracy_floor: float | None = None,
    snr_db: float | None = None,
) -> list[Candidate]:
    """Every feasible measured variant with its latency, best first.

    Args:
        snr_db: the link's SNR in dB per real symbol: analog-JSCC variants measured at a higher SNR are dropped
            (None: no such check).

    Raises:
        EmptyTableError: no variant has status ``ok``.
        NoFeasibleVariantError: none passes the constraints; the message says how many each one removed.
    """
    ok = measured(records)
    if not ok:
        raise EmptyTableError("the lookup table has no measured (status ok) variant to choose from")
    timed = {part: timed_on(ok, prof, part) for part, prof in (("device", device), ("server", server))}
    below, too_big, analog, noisy, untimed, out = [], [], 0, [], 0, []
    for r in ok:
        m = r.measurement
        assert m is not None
        needs = analog_snr_db(r)
        if accuracy_floor is not None and m.accuracy < accuracy_floor:
            below.append(m.accuracy)
        elif not feasible(m, device):
            too_big.append(m.device_memory_bytes)
        elif m.channel_uses is not None and link.symbols_per_s is None:
            analog += 1
        elif needs is not None and snr_db is not None and needs > snr_db:
            noisy.append(needs)
        elif any(prof is not None and r.timing(prof, part) is None for part, prof in timed.items()):
            untimed += 1
        else:
            dev = r.timing(timed["device"], "device") if timed["device"] else None
            srv = r.timing(timed["server"], "server") if timed["server"] else None
            lat = end_to_end(m, device, server, link, dev.seconds if dev else None, srv.seconds if srv else None)
            out.append(Candidate(r, lat, tuple(p for p, t in (("device", dev), ("server", srv)) if t is not None)))
    if not out:
        why = []
        if below:
            why.append(f"{len(below)} below the accuracy floor {accuracy_floor:.4f} (best {max(below):.4f})")
        if too_big:
            why.append(
                f"{len(too_big)} need more memory than {device.name}'s {_fmt_bytes(device.memory_bytes)} "
                f"(least {_fmt_bytes(min(too_big))})"
            )
        if analog:
            why.append(f"{analog} analog-JSCC variants need a link symbol rate")
        if untimed:
            why.append(f"{untimed} have no measured time on this machine (coinfer measure times them)")
        if noisy:
            why.append(
                f"{len(noisy)} analog-JSCC variants were measured at a higher SNR than the link's {snr_db:g} dB "
                f"(lowest {min(noisy):g} dB)"
            )
        raise NoFeasibleVariantError(f"no feasible variant among {len(ok)} measured: " + "; ".join(why))
    out.sort(key=_rank)
    return out


def timed_on(records: Sequence[VariantRecord], profile: DeviceProfile | ServerProfile, part: str) -> str | None:
    """The profile name whose stored timings of ``part`` rank ``records``: a ``measured`` profile (``local``) with
    at least one timing among them; None (MACs ÷ MAC/s for every variant) otherwise. Once one variant is timed,
    only timed variants are candidates: measured and MAC-predicted times are never ranked against each other."""
    if not getattr(profile, "measured", False):
        return None
    return profile.name if any(r.timing(profile.name, part) is not None for r in records) else None


def _rank(c: Candidate) -> tuple[float, float, float, str]:
    m = c.record.measurement
    assert m is not None
    return (c.total_s, -m.accuracy, m.bits_mean + m.header_bits, c.record.key)


def query(
    records: Sequence[VariantRecord],
    link: Link,
    device: DeviceProfile,
    server: ServerProfile,
    accuracy_floor: float | None = None,
    runners_up: int = 3,
    snr_db: float | None = None,
) -> QueryResult:
    """The feasible variant with the least end-to-end latency on ``link`` (of SNR ``snr_db``, when given), and up
    to ``runners_up`` next best.

    Raises:
        EmptyTableError, NoFeasibleVariantError: see :func:`candidates`.
    """
    cands = candidates(records, link, device, server, accuracy_floor, snr_db)
    return QueryResult(cands[0], tuple(cands[1 : 1 + max(0, runners_up)]), len(cands), len(measured(records)))


@dataclass(frozen=True)
class BandwidthChoice:
    """One row of the precomputed table: at ``bandwidth_bytes_per_s``, deploy ``key``."""

    bandwidth_bytes_per_s: float
    key: str
    total_s: float
    """Predicted end-to-end latency there, seconds."""
    accuracy: float
    bits: float
    """Bits per image (payload + header)."""

    def to_dict(self) -> dict[str, float | str]:
        return {
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "key": self.key,
            "total_s": self.total_s,
            "accuracy": self.accuracy,
            "bits": self.bits,
        }


def log_bandwidths(lo: float = BANDWIDTH_MIN, hi: float = BANDWIDTH_MAX, per_decade: int = 4) -> list[float]:
    """Log-spaced rates from ``lo`` to ``hi`` bytes/s inclusive, ``per_decade`` steps per factor of 10."""
    if not 0 < lo <= hi or per_decade < 1:
        raise ValueError(f"need 0 < lo ≤ hi and per_decade ≥ 1, got {lo}, {hi}, {per_decade}")
    n = max(1, round(math.log10(hi / lo) * per_decade)) + 1
    return [float(x) for x in np.geomspace(lo, hi, n)]


def bandwidth_table(
    records: Sequence[VariantRecord],
    device: DeviceProfile,
    server: ServerProfile,
    rtt_s: float = 0.0,
    accuracy_floor: float | None = None,
    bandwidths: Sequence[float] | None = None,
    symbols_per_s: float | None = None,
    snr_db: float | None = None,
) -> list[BandwidthChoice]:
    """The best variant at each rate (default :func:`log_bandwidths`: 1 KB/s … 100 MB/s, 4 per decade), for
    devices that look the answer up instead of running a query. Feasibility does not depend on the rate, so
    either every row has a variant or :class:`NoFeasibleVariantError` is raised. ``symbols_per_s`` and ``snr_db``
    describe the link for analog-JSCC variants (the same at every rate; see :func:`candidates`)."""
    rows = []
    for bw in bandwidths if bandwidths is not None else log_bandwidths():
        link = Link(bw, rtt_s=rtt_s, symbols_per_s=symbols_per_s)
        c = candidates(records, link, device, server, accuracy_floor, snr_db)[0]
        m = c.record.measurement
        assert m is not None
        rows.append(BandwidthChoice(bw, c.record.key, c.total_s, m.accuracy, m.bits_mean + m.header_bits))
    return rows
