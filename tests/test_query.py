"""Query and bandwidth table on hand-built tables (no database); latency from coinference.latency."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime

import pytest

from coinference.latency import DeviceProfile, Link, ServerProfile, end_to_end
from coinference.variant import Measurement, VariantSpec
from storage import EmptyTableError, NoFeasibleVariantError, VariantRecord
from storage.query import bandwidth_table, log_bandwidths, query

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DEV = DeviceProfile("dev", macs_per_s=1e6, memory_bytes=1_000)
SRV = ServerProfile("srv", macs_per_s=1e9)


def rec(i: int, acc: float, macs: int, bits: float, mem: int = 100, status: str = "ok", **kw: object) -> VariantRecord:
    spec = VariantSpec("tiny-cnn", "synthetic", "block1", seed=i)
    m = Measurement(acc, device_macs=macs, server_macs=0, bits_mean=bits, bits_max=int(bits),
                    device_param_bytes=mem, **kw)  # type: ignore[arg-type]  # fmt: skip
    return VariantRecord(spec.key, spec, status, None, m if status == "ok" else None, "r", T0, T0, {})


# Local (all on device, 1 s of compute, 8 bits) vs split (0.1 s compute, 8,000 bits = 1,000 bytes).
LOCAL = rec(1, 0.90, 1_000_000, 8)
SPLIT = rec(2, 0.90, 100_000, 8_000)


def test_best_depends_on_bandwidth() -> None:
    slow = query([LOCAL, SPLIT], Link(100.0), DEV, SRV)  # split: 0.1 + 10 s
    assert slow.best.record.key == LOCAL.key and [c.record.key for c in slow.runners_up] == [SPLIT.key]
    fast = query([LOCAL, SPLIT], Link(1e5), DEV, SRV)  # split: 0.1 + 0.01 s
    assert fast.best.record.key == SPLIT.key
    assert fast.best.latency == end_to_end(SPLIT.measurement, DEV, SRV, Link(1e5))  # type: ignore[arg-type]
    assert fast.best.total_s == pytest.approx(0.11)
    assert fast.feasible == 2 and fast.measured == 2


def test_rtt_and_runners_up_limit() -> None:
    rs = [rec(i, 0.9, 100_000 * i, 8) for i in range(1, 6)]
    res = query(rs, Link(1e5, rtt_s=0.5), DEV, SRV, runners_up=2)
    assert res.best.record.key == rs[0].key and res.best.latency.rtt_s == 0.5
    assert [c.record.key for c in res.runners_up] == [rs[1].key, rs[2].key]
    assert res.best.total_s < res.runners_up[0].total_s < res.runners_up[1].total_s


def test_ties_prefer_accuracy_then_bits_then_key() -> None:
    a = rec(1, 0.80, 100_000, 8_000)
    b = rec(2, 0.85, 100_000, 8_000)  # same latency, more accurate
    assert query([a, b], Link(1e3), DEV, SRV).best.record.key == b.key
    c = rec(3, 0.85, 100_000, 8_000)  # exact tie with b: the smaller key wins, deterministically
    best = query([c, b], Link(1e3), DEV, SRV).best.record.key
    assert best == min(b.key, c.key) == query([b, c], Link(1e3), DEV, SRV).best.record.key


def test_infeasible_memory_and_floor() -> None:
    big = rec(1, 0.99, 10, 8, mem=2_000)  # fastest and best, but does not fit
    ok = rec(2, 0.80, 100_000, 8)
    weak = rec(3, 0.50, 10, 8)
    assert query([big, ok, weak], Link(1e3), DEV, SRV, accuracy_floor=0.7).best.record.key == ok.key
    assert query([big, ok, weak], Link(1e3), DEV, SRV).best.record.key == weak.key


def test_nothing_feasible_says_why() -> None:
    big = rec(1, 0.99, 10, 8, mem=2_000)
    weak = rec(2, 0.50, 10, 8)
    with pytest.raises(NoFeasibleVariantError) as e:
        query([big, weak], Link(1e3), DEV, SRV, accuracy_floor=0.7)
    msg = str(e.value)
    assert "no feasible variant among 2 measured" in msg
    assert "1 below the accuracy floor 0.7000 (best 0.5000)" in msg
    assert "1 need more memory than dev's 1,000 bytes (least 2,000 bytes)" in msg
    assert "\n" not in msg


def test_empty_and_unmeasured_tables() -> None:
    with pytest.raises(EmptyTableError, match="no measured"):
        query([], Link(1e3), DEV, SRV)
    running = rec(1, 0.9, 10, 8, status="running")
    with pytest.raises(EmptyTableError):
        query([running], Link(1e3), DEV, SRV)


def test_analog_variants_need_a_symbol_rate() -> None:
    analog = rec(1, 0.9, 10, 0, channel_uses=100)
    with pytest.raises(NoFeasibleVariantError, match="symbol rate"):
        query([analog], Link(1e3), DEV, SRV)
    assert query([analog], Link(1e3, symbols_per_s=1e4), DEV, SRV).best.total_s == pytest.approx(1e-5 + 0.01)


def test_log_bandwidths() -> None:
    bws = log_bandwidths()
    assert bws[0] == pytest.approx(1e3) and bws[-1] == pytest.approx(1e8) and len(bws) == 21
    assert all(math.isclose(b / a, 10**0.25) for a, b in itertools.pairwise(bws))


def test_bandwidth_table_switches_once() -> None:
    rows = bandwidth_table([LOCAL, SPLIT], DEV, SRV)
    chosen = [r.key for r in rows]
    # split wins when 1,000 bytes take < 0.9 s: above ~1,111 B/s.
    switch = next(i for i, k in enumerate(chosen) if k == SPLIT.key)
    assert set(chosen[:switch]) == {LOCAL.key} and set(chosen[switch:]) == {SPLIT.key}
    assert rows[switch - 1].bandwidth_bytes_per_s < 1000 / 0.9 < rows[switch].bandwidth_bytes_per_s
    for r in rows:
        assert r.total_s == pytest.approx(query([LOCAL, SPLIT], Link(r.bandwidth_bytes_per_s), DEV, SRV).best.total_s)
    with pytest.raises(NoFeasibleVariantError):
        bandwidth_table([rec(1, 0.9, 10, 8, mem=5_000)], DEV, SRV)


def test_default_floor_is_best_fitting_accuracy_minus_margin() -> None:
    from storage.query import default_floor

    big = rec(3, 0.99, 10, 8, mem=10_000)  # does not fit DEV's 1,000 bytes
    failed = rec(4, 0.0, 0, 0, status="failed")
    assert default_floor([LOCAL, SPLIT, big, failed]) == pytest.approx(0.97)
    assert default_floor([LOCAL, SPLIT, big, failed], DEV) == pytest.approx(0.88)
    assert default_floor([failed], DEV) is None and default_floor([big], DEV) is None


def _timed(r: VariantRecord, device_s: float | None = None, server_s: float | None = None) -> VariantRecord:
    from dataclasses import replace

    from storage import TimingRecord

    ts = tuple(
        TimingRecord("local", part, s, 100, "onnxruntime", "host", T0)
        for part, s in (("device", device_s), ("server", server_s))
        if s is not None
    )
    return replace(r, timings=ts)


def test_measured_times_replace_macs_on_a_measured_profile_only() -> None:
    local_dev = DeviceProfile("local", macs_per_s=1e6, memory_bytes=1_000, measured=True)
    # MACs say LOCAL takes 1 s and SPLIT 0.1 s on the device; measured, LOCAL takes 1 ms and SPLIT 0.5 s.
    a, b = _timed(LOCAL, device_s=0.001), _timed(SPLIT, device_s=0.5)
    res = query([a, b], Link(1e5), local_dev, SRV)
    assert res.best.record.key == LOCAL.key and res.best.latency.device_s == 0.001
    assert res.best.measured == ("device",) and res.runners_up[0].latency.device_s == 0.5
    # the same records on a profile that is not measured: MACs, as before
    assert query([a, b], Link(1e5), DEV, SRV).best.record.key == SPLIT.key
    # a measured server part too
    local_srv = ServerProfile("local", macs_per_s=1e9, measured=True)
    c = _timed(SPLIT, device_s=0.5, server_s=0.25)
    got = query([c], Link(1e5), local_dev, local_srv).best
    assert got.latency.server_s == 0.25 and got.measured == ("device", "server")


def test_untimed_variants_are_left_out_once_any_is_timed() -> None:
    local_dev = DeviceProfile("local", macs_per_s=1e6, memory_bytes=1_000, measured=True)
    # nothing timed: every variant is ranked by MACs
    assert query([LOCAL, SPLIT], Link(1e5), local_dev, SRV).best.record.key == SPLIT.key
    # one timed: the untimed one is not ranked against it, even though its predicted time is lower
    res = query([_timed(LOCAL, device_s=0.9), SPLIT], Link(1e5), local_dev, SRV)
    assert res.best.record.key == LOCAL.key and res.feasible == 1
    better = rec(3, 0.96, 100_000, 8_000)  # above the floor, but never timed
    with pytest.raises(NoFeasibleVariantError, match="1 below the accuracy floor .*1 have no measured time"):
        query([_timed(LOCAL, device_s=0.9), better], Link(1e5), local_dev, SRV, accuracy_floor=0.95)
