"""Search metrics that compare tables honestly: hypervolume on normalised log objectives, and deployment regret.

**Log-normalised hypervolume.** The objective vector is storage.pareto's (error = 1 − val accuracy, device MACs,
bits = ``bits_mean + header_bits``; all minimised). Each coordinate is mapped to [0, 1] by *fixed* bounds
(:class:`LogBounds`), the same for every table of every model, so two tables are compared on one scale:

* error: linear on [0, 1];
* device MACs per image: log10 on [1e3, 1e11] (1e3: below any conv layer; 1e11: ~8× ResNet-152's 1.2e10);
* bits per image: log10 on [1, 1e8] (1e8: ~20× a raw float32 ImageNet image).

Values outside the bounds are clamped, so 0 device MACs (a server-only variant) sits at the lower bound and log(0)
is never taken. The reference point is (1, 1, 1), the upper corner: the largest possible volume is 1 (a perfect,
free variant), and a variant at the upper bound of any objective adds nothing. Each factor of 10 in MACs or bits
counts alike and the cheap corner of a table weighs less than in raw units (storage.pareto's linear hypervolume). The
fixed box is wider than any one table, so part of every table's volume is shared: on bench/bench_search.py's synthetic
``resnet-digits`` table the best single variant holds 0.74 of the exhaustive log volume (0.83 of the linear one).
Benches report the ratio to the exhaustive table's log hypervolume, with deployment regret beside it.

**Deployment regret.** A fixed, seeded sample of edge environments (:func:`edge_environments`): a link rate
log-uniform on 1 KB/s … 10 MB/s, a device profile (``rpi3`` or ``mcu``, equally likely) and an accuracy margin
uniform on [0, 0.05]. An environment's floor is the best val accuracy the *exhaustive* table offers on its device
minus the margin, so one sample serves any model and data set. Each table answers with storage.query.query (the
ranking every command uses: feasible variants by end-to-end latency on the ``rtx2080ti`` server, no RTT), and

    regret = latency(candidate's choice) / latency(exhaustive table's choice) − 1     (0 = as good as exhaustive)

A candidate table with no variant meeting the floor and the device's memory scores ``penalty`` (default 10, i.e. as
if 11× slower); the count of such environments is reported beside it. Environments the exhaustive table cannot
serve either have no regret (None) and are left out of the median and p90.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import moocore
import numpy as np

from coinference.errors import ConfigError
from coinference.latency import DEVICES, SERVERS, Link
from coinference.variant import Measurement
from storage.errors import EmptyTableError, NoFeasibleVariantError
from storage.pareto import measured, objectives
from storage.query import default_floor, query
from storage.records import VariantRecord

ENV_BANDWIDTH = (1e3, 1e7)
"""Link rates of :func:`edge_environments`, bytes/s: 1 KB/s … 10 MB/s, log-uniform."""
ENV_DEVICES = ("rpi3", "mcu")
"""Device profiles of :func:`edge_environments`, equally likely (named, not read from the registry, so a new
profile never changes the sample)."""
ENV_MARGIN = (0.0, 0.05)
"""Accuracy margins of :func:`edge_environments` below the exhaustive table's best on the device, uniform."""
ENV_SERVER = "rtx2080ti"
"""The server of every environment."""
INFEASIBLE_PENALTY = 10.0
"""Regret of an environment the candidate table cannot serve (as if 11× slower than the exhaustive table's best)."""


def _check_range(what: str, lo: float, hi: float, positive: bool) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi and (lo > 0 if positive else True)):
        need = "0 < low < high" if positive else "low < high"
        raise ConfigError(f"{what} bounds ({lo}, {hi}): need finite {need}")


def _num(x: float) -> str:
    """1e+11 → ``1e11``; numbers from 0.001 to 999 as they are."""
    return f"{x:g}" if 1e-3 <= abs(x) < 1e3 else f"{x:.3g}".replace("e+0", "e").replace("e+", "e")


@dataclass(frozen=True)
class LogBounds:
    """Fixed bounds mapping each objective to [0, 1], and the hypervolume reference point in that space."""

    error: tuple[float, float] = (0.0, 1.0)
    """1 − val accuracy mapped linearly (clamped)."""
    macs: tuple[float, float] = (1e3, 1e11)
    """Device MACs per image mapped on a log10 scale (clamped; 0 MACs → the lower bound)."""
    bits: tuple[float, float] = (1.0, 1e8)
    """Bits per image (payload + header; channel uses for analog JSCC) mapped on a log10 scale (clamped)."""
    reference: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Reference point (error, MACs, bits) in normalised units; a point adds volume only where it is below it."""

    def __post_init__(self) -> None:
        _check_range("error", *self.error, positive=False)
        _check_range("device MACs", *self.macs, positive=True)
        _check_range("bits", *self.bits, positive=True)
        if len(self.reference) != 3 or not all(math.isfinite(r) and r > 0 for r in self.reference):
            raise ConfigError(f"reference {self.reference}: need three finite values > 0")

    def describe(self) -> str:
        """One line stating the bounds and the reference, for reports."""
        e, m, b = self.error, self.macs, self.bits
        ref = ", ".join(f"{r:g}" for r in self.reference)
        return (
            f"error linear on [{e[0]:g}, {e[1]:g}], device MACs log10 on [{_num(m[0])}, {_num(m[1])}], "
            f"bits log10 on [{_num(b[0])}, {_num(b[1])}], clamped; reference ({ref})"
        )

    def normalise(self, f: np.ndarray) -> np.ndarray:
        """(n, 3) raw objective vectors (error, device MACs, bits) → (n, 3) in [0, 1]."""
        f = np.asarray(f, dtype=float).reshape(-1, 3)
        if not np.isfinite(f).all():
            raise ConfigError(f"non-finite objective vector {f[~np.isfinite(f).all(axis=1)][0].tolist()}")
        out = np.empty_like(f)
        out[:, 0] = (np.clip(f[:, 0], *self.error) - self.error[0]) / (self.error[1] - self.error[0])
        for j, (lo, hi) in ((1, self.macs), (2, self.bits)):
            # clip before the log: 0 MACs (server-only variants) lands on the lower bound, never log(0)
            x = np.log10(np.clip(f[:, j], lo, hi))
            out[:, j] = (x - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        return out


DEFAULT_BOUNDS = LogBounds()
"""Bounds for any CIFAR- or ImageNet-scale model: see the module docstring."""


def _measurements(items: Sequence[VariantRecord | Measurement]) -> list[Measurement]:
    """Measurements as given, and those of the measured (status ``ok``) records."""
    ms = [x for x in items if isinstance(x, Measurement)]
    recs = [x for x in items if not isinstance(x, Measurement)]
    return ms + [r.measurement for r in measured(recs) if r.measurement is not None]


def normalised_objectives(
    items: Sequence[VariantRecord | Measurement], bounds: LogBounds = DEFAULT_BOUNDS
) -> np.ndarray:
    """(n, 3) normalised (error, log MACs, log bits) of the measurements and measured records, in [0, 1]."""
    ms = _measurements(items)
    return bounds.normalise(np.asarray([objectives(m) for m in ms], dtype=float).reshape(len(ms), 3))


def log_hypervolume(items: Sequence[VariantRecord | Measurement], bounds: LogBounds = DEFAULT_BOUNDS) -> float:
    """Hypervolume of :func:`normalised_objectives` up to ``bounds.reference`` (unitless; ≤ 1 at the default
    reference). Failed and running records count nothing; no measured variant → 0."""
    f = normalised_objectives(items, bounds)
    if not len(f):
        return 0.0
    return float(moocore.hypervolume(f, ref=np.asarray(bounds.reference, dtype=float)))


def contribution_order(measurements: Sequence[Measurement], bounds: LogBounds = DEFAULT_BOUNDS) -> list[int]:
    """Indices of ``measurements``, best first: by non-dominated rank (the front first; :func:`moocore.pareto_rank`
    on the raw objectives, as :func:`storage.pareto.pareto_ranks`), then within a rank by hypervolume contribution
    to that rank in :func:`log_hypervolume`'s normalised space (larger first: what adds most to the score a search
    is judged by), then by position (the caller orders ties, e.g. by key). Of equal points the first gets the
    point's contribution and the others none, so a repeated vector does not hide itself."""
    if not measurements:
        return []
    raw = np.asarray([objectives(m) for m in measurements], dtype=float).reshape(len(measurements), 3)
    ranks = moocore.pareto_rank(raw)
    f = bounds.normalise(raw)
    ref = np.asarray(bounds.reference, dtype=float)
    gain = np.zeros(len(measurements))
    for k in np.unique(ranks):
        idx = np.flatnonzero(ranks == k)
        points, first = np.unique(f[idx], axis=0, return_index=True)
        gain[idx[first]] = moocore.hv_contributions(points, ref=ref)
    return sorted(range(len(measurements)), key=lambda i: (int(ranks[i]), -float(gain[i]), i))


# ------------------------------------------------------------------------------------------- regret
@dataclass(frozen=True)
class EdgeEnv:
    """One deployment situation: a link, a device and how much accuracy it may give up."""

    bandwidth_bytes_per_s: float
    """Link payload rate, bytes/s (no RTT)."""
    device: str
    """Device profile name (``coinference.latency.DEVICES``)."""
    accuracy_margin: float
    """The floor is the exhaustive table's best val accuracy on ``device`` minus this."""


def edge_environments(
    n: int = 200,
    seed: int = 0,
    bandwidth: tuple[float, float] = ENV_BANDWIDTH,
    devices: Sequence[str] = ENV_DEVICES,
    margin: tuple[float, float] = ENV_MARGIN,
) -> list[EdgeEnv]:
    """``n`` environments drawn with ``random.Random(seed)`` (reproducible across Python versions): bandwidth
    log-uniform on ``bandwidth`` (bytes/s), device uniform over ``devices``, margin uniform on ``margin``."""
    if n < 1:
        raise ConfigError(f"n = {n}: need at least one environment")
    _check_range("bandwidth", *bandwidth, positive=True)
    if not (0 <= margin[0] <= margin[1] <= 1):
        raise ConfigError(f"accuracy margin range {margin}: need 0 ≤ low ≤ high ≤ 1")
    if not devices:
        raise ConfigError("no device profile to draw from")
    for d in devices:
        DEVICES.get(d)  # an unknown name raises, listing the valid ones
    rng = random.Random(seed)
    lo, hi = math.log10(bandwidth[0]), math.log10(bandwidth[1])
    out = []
    for _ in range(n):
        bw = 10 ** (lo + (hi - lo) * rng.random())
        dev = devices[min(int(rng.random() * len(devices)), len(devices) - 1)]
        out.append(EdgeEnv(bw, dev, margin[0] + (margin[1] - margin[0]) * rng.random()))
    return out


@dataclass(frozen=True)
class Regret:
    """Deployment regret of a candidate table against the exhaustive one over a list of environments."""

    per_env: tuple[float | None, ...]
    """Regret per environment, in order: latency ratio − 1, ``penalty`` where the candidate cannot serve it, None
    where the exhaustive table cannot serve it either."""
    infeasible: int
    """Environments the candidate could not serve (scored the penalty)."""

    @property
    def scored(self) -> list[float]:
        """The regrets that are defined (not None)."""
        return [r for r in self.per_env if r is not None]

    @property
    def median(self) -> float:
        """Median regret over the defined environments (NaN when none is)."""
        s = self.scored
        return float(np.median(s)) if s else math.nan

    @property
    def p90(self) -> float:
        """90th percentile (linear interpolation) over the defined environments (NaN when none is)."""
        s = self.scored
        return float(np.percentile(s, 90)) if s else math.nan


def _best_latency(records: Sequence[VariantRecord], env: EdgeEnv, floor: float | None) -> float | None:
    """End-to-end seconds of the variant storage.query.query picks, None when the table cannot serve ``env``."""
    device, server = DEVICES.get(env.device), SERVERS.get(ENV_SERVER)
    try:
        q = query(records, Link(env.bandwidth_bytes_per_s), device, server, floor, runners_up=0)
    except (EmptyTableError, NoFeasibleVariantError):
        return None
    return q.best.total_s


@dataclass(frozen=True)
class Baseline:
    """What the exhaustive table offers in each environment, computed once for many candidate tables."""

    envs: tuple[EdgeEnv, ...]
    floors: tuple[float | None, ...]
    """Accuracy floor per environment: the exhaustive table's best val accuracy on the device − the margin (None:
    no variant fits the device)."""
    latency_s: tuple[float | None, ...]
    """End-to-end seconds of the exhaustive table's choice per environment (None: it cannot serve it)."""


def exhaustive_baseline(exhaustive: Sequence[VariantRecord], envs: Sequence[EdgeEnv]) -> Baseline:
    """The floors and best latencies of ``exhaustive`` in ``envs``."""
    best_acc = {d: default_floor(exhaustive, DEVICES.get(d), margin=0.0) for d in {e.device for e in envs}}
    floors: list[float | None] = []
    for e in envs:
        top = best_acc[e.device]
        floors.append(None if top is None else top - e.accuracy_margin)
    latency = [_best_latency(exhaustive, e, f) for e, f in zip(envs, floors, strict=True)]
    return Baseline(tuple(envs), tuple(floors), tuple(latency))


def regret_against(
    candidate: Sequence[VariantRecord], baseline: Baseline, penalty: float = INFEASIBLE_PENALTY
) -> Regret:
    """Regret of deploying from ``candidate`` instead of the baseline's table, per environment."""
    if not (math.isfinite(penalty) and penalty >= 0):
        raise ConfigError(f"penalty {penalty}: need a finite value ≥ 0")
    out: list[float | None] = []
    infeasible = 0
    for env, floor, ref in zip(baseline.envs, baseline.floors, baseline.latency_s, strict=True):
        if ref is None:
            out.append(None)
            continue
        got = _best_latency(candidate, env, floor)
        if got is None:
            infeasible += 1
            out.append(penalty)
        else:
            out.append(got / ref - 1.0 if ref > 0 else penalty * (got > 0))
    return Regret(tuple(out), infeasible)


def deployment_regret(
    candidate: Sequence[VariantRecord],
    exhaustive: Sequence[VariantRecord],
    envs: Sequence[EdgeEnv],
    penalty: float = INFEASIBLE_PENALTY,
) -> Regret:
    """Regret of deploying from ``candidate`` instead of ``exhaustive`` in each of ``envs`` (see the module
    docstring); non-negative when ``candidate`` is a subset of ``exhaustive``. To score many candidates against
    one table, build :func:`exhaustive_baseline` once and call :func:`regret_against`."""
    return regret_against(candidate, exhaustive_baseline(exhaustive, envs), penalty)
