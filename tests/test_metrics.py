"""Log-normalised hypervolume and deployment regret on hand-built tables (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from coinference.errors import ConfigError, UnknownNameError
from coinference.latency import DEVICES, SERVERS
from coinference.variant import Measurement, VariantSpec
from storage import VariantRecord
from storage.metrics import (
    DEFAULT_BOUNDS,
    ENV_BANDWIDTH,
    ENV_DEVICES,
    ENV_MARGIN,
    EdgeEnv,
    LogBounds,
    Regret,
    deployment_regret,
    edge_environments,
    exhaustive_baseline,
    log_hypervolume,
    normalised_objectives,
    regret_against,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rec(i: int, acc: float, macs: int, bits: float, status: str = "ok", memory: int = 1_000) -> VariantRecord:
    """A variant with ``bits`` per image in total (payload ``bits − 80`` + an 80-bit header)."""
    spec = VariantSpec("tiny-cnn", "synthetic", "block1", seed=i)
    meas = Measurement(acc, device_macs=macs, server_macs=1_000_000, bits_mean=bits - 80, bits_max=int(bits),
                       header_bits=80, device_param_bytes=memory) if status == "ok" else None  # fmt: skip
    return VariantRecord(spec.key, spec, status, "x" if status == "failed" else None, meas, "r", T0, T0, {})


# ------------------------------------------------------------------------------------ log hypervolume
def test_single_point_by_hand() -> None:
    # error 0.1; log10 1e7 = 7 → (7 − 3) / 8 = 0.5; log10 1e4 = 4 → (4 − 0) / 8 = 0.5
    a = rec(1, 0.9, 10**7, 1e4)
    assert normalised_objectives([a]) == pytest.approx(np.array([[0.1, 0.5, 0.5]]))
    assert log_hypervolume([a]) == pytest.approx(0.9 * 0.5 * 0.5)
    assert log_hypervolume([a.measurement]) == pytest.approx(0.225)  # type: ignore[list-item]


def test_dominated_point_adds_nothing_and_non_dominated_adds() -> None:
    a = rec(1, 0.9, 10**7, 1e4)
    assert log_hypervolume([a, rec(2, 0.85, 10**8, 1e4)]) == pytest.approx(0.225)
    b = rec(3, 0.8, 10**5, 1e4)  # (0.2, 0.25, 0.5): box 0.8 × 0.75 × 0.5 = 0.3; overlap with a's 0.8 × 0.5 × 0.5
    assert log_hypervolume([a, b]) == pytest.approx(0.225 + 0.3 - 0.2)
    assert log_hypervolume([a, b]) > log_hypervolume([a])


def test_clamping_and_zero_macs() -> None:
    server_only = rec(1, 0.9, 0, 1e4)  # device MACs 0: clamped to the lower bound, never log(0)
    f = normalised_objectives([server_only, rec(2, 0.9, 10, 1e4), rec(3, 0.9, 10**12, 1e9)])
    assert f == pytest.approx(np.array([[0.1, 0.0, 0.5], [0.1, 0.0, 0.5], [0.1, 1.0, 1.0]]))
    assert log_hypervolume([server_only]) == pytest.approx(0.9 * 1.0 * 0.5)
    assert log_hypervolume([rec(3, 0.9, 10**12, 1e9)]) == 0.0  # on the reference: no volume


def test_unmeasured_ignored_and_bounds_checked() -> None:
    a = rec(1, 0.9, 10**7, 1e4)
    assert log_hypervolume([a, rec(2, 0.99, 0, 1, status="failed"), rec(3, 0.99, 0, 1, status="running")]) == (
        pytest.approx(0.225)
    )
    assert log_hypervolume([]) == 0.0 and normalised_objectives([]).shape == (0, 3)
    wide = LogBounds(reference=(1.1, 1.1, 1.1))
    assert log_hypervolume([a], wide) == pytest.approx(1.0 * 0.6 * 0.6)
    assert "[1e3, 1e11]" in DEFAULT_BOUNDS.describe() and "reference (1, 1, 1)" in DEFAULT_BOUNDS.describe()
    with pytest.raises(ConfigError, match="0 < low < high"):
        LogBounds(macs=(0.0, 1e9))
    with pytest.raises(ConfigError, match="reference"):
        LogBounds(reference=(1.0, 1.0, -1.0))


# ------------------------------------------------------------------------------------------- regret
FLOORED = rec(1, 0.95, 10**6, 1e5)  # most accurate, many bits
MID = rec(2, 0.94, 10**7, 1e3)
CHEAP = rec(3, 0.90, 10**5, 1e2)  # fastest on a slow link
TABLE = [FLOORED, MID, CHEAP]


def latency(r: VariantRecord, bw: float) -> float:
    m = r.measurement
    assert m is not None
    return m.device_macs / 12e9 + (m.bits_mean + m.header_bits) / 8 / bw + m.server_macs / (13.45e12 / 2)


def test_env_sample_deterministic_and_in_range() -> None:
    envs = edge_environments()
    assert envs == edge_environments(seed=0) and envs != edge_environments(seed=1)
    assert len(envs) >= 200
    assert all(ENV_BANDWIDTH[0] <= e.bandwidth_bytes_per_s <= ENV_BANDWIDTH[1] for e in envs)
    assert all(ENV_MARGIN[0] <= e.accuracy_margin <= ENV_MARGIN[1] for e in envs)
    assert {e.device for e in envs} == set(ENV_DEVICES) <= set(DEVICES.names())
    assert SERVERS.get("rtx2080ti").macs_per_s == 13.45e12 / 2  # the server latency() above assumes
    with pytest.raises(UnknownNameError, match="rpi3"):
        edge_environments(devices=("toaster",))


def test_regret_zero_against_itself() -> None:
    envs = edge_environments()
    r = deployment_regret(TABLE, TABLE, envs)
    assert r.infeasible == 0 and r.scored and set(r.scored) == {0.0} and r.median == r.p90 == 0.0
    base = exhaustive_baseline(TABLE, envs)  # computed once, reused for many candidates
    assert regret_against([MID, CHEAP], base) == deployment_regret([MID, CHEAP], TABLE, envs)


def test_regret_when_the_best_variant_is_missing() -> None:
    env = EdgeEnv(1e3, "rpi3", 0.05)  # floor 0.90: CHEAP is the fastest
    r = deployment_regret([FLOORED, MID], TABLE, [env])
    assert r.per_env == pytest.approx((latency(MID, 1e3) / latency(CHEAP, 1e3) - 1,))
    assert r.per_env[0] > 0 and r.infeasible == 0


def test_infeasible_candidate_gets_the_penalty_and_undefined_envs_are_left_out() -> None:
    tight = EdgeEnv(1e5, "rpi3", 0.0)  # floor 0.95: only FLOORED qualifies
    assert deployment_regret([MID, CHEAP], TABLE, [tight]) == Regret((10.0,), 1)
    assert deployment_regret([MID, CHEAP], TABLE, [tight], penalty=3.0).per_env == (3.0,)
    assert deployment_regret([], TABLE, [tight]).infeasible == 1
    big = [rec(4, 0.9, 10**5, 1e2, memory=2 << 20)]  # needs 2 MiB: fits rpi3, not mcu
    r = deployment_regret(big, big, [EdgeEnv(1e5, "mcu", 0.01), EdgeEnv(1e5, "rpi3", 0.01)])
    assert r.per_env == (None, 0.0) and r.infeasible == 0
    with pytest.raises(ConfigError, match="penalty"):
        deployment_regret(TABLE, TABLE, [tight], penalty=float("inf"))


def test_regret_summary() -> None:
    r = Regret((0.0, 1.0, None, 3.0), 1)
    assert r.median == 1.0 and r.p90 == pytest.approx(1.0 + 0.8 * 2.0)
