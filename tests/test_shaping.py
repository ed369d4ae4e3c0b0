"""Bandwidth emulation: the token bucket's arithmetic on a fake clock, and a shaping proxy in the path."""

from __future__ import annotations

import pytest

from coinference.errors import ConfigError
from coinference.runtime.shaping import LinkShape, Shaper, TokenBucket


class FakeClock:
    """A clock that only moves when slept on (or told to)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_bucket_without_burst_charges_every_byte() -> None:
    clock = FakeClock()
    b = TokenBucket(1000.0, 0.0, clock)
    assert b.reserve(500) == pytest.approx(0.5)  # an idle link: its serialisation time
    assert b.reserve(250) == pytest.approx(0.75)  # back to back: queued behind the first
    clock.now += 0.75
    assert b.reserve(100) == pytest.approx(0.1)  # the queue drained
    clock.now += 10  # idle time earns no credit without a burst
    assert b.reserve(1000) == pytest.approx(1.0)


def test_bucket_with_burst() -> None:
    clock = FakeClock()
    b = TokenBucket(1000.0, 300.0, clock)
    assert b.reserve(200) == 0.0  # covered by the initial credit
    assert b.reserve(200) == pytest.approx(0.1)  # 100 bytes short
    clock.now += 0.1 + 0.3  # pays the debt, then earns 300 back (capped at the burst)
    assert b.reserve(300) == 0.0
    clock.now += 100
    assert b.reserve(1300) == pytest.approx(1.0)  # never more credit than the burst


def test_shaper_delays_are_bytes_over_rate_plus_rtt() -> None:
    clock = FakeClock()
    s = Shaper(LinkShape(10_000.0, rtt_s=0.05), clock=clock, sleep=clock.sleep)
    assert s.wait_send(1000) == pytest.approx(0.1 + 0.05)  # the whole RTT on the send path
    assert s.wait_reply(72) == 0.0  # replies unshaped
    assert clock.slept == [pytest.approx(0.15)]
    both = Shaper(LinkShape(10_000.0, rtt_s=0.05, shape_replies=True), clock=clock, sleep=clock.sleep)
    assert both.send_delay(1000) == pytest.approx(0.1 + 0.025)
    assert both.reply_delay(500) == pytest.approx(0.05 + 0.025)  # its own bucket: not behind the request


def test_shaper_is_deterministic() -> None:
    def run() -> list[float]:
        clock = FakeClock()
        s = Shaper(LinkShape(2_000.0, burst_bytes=100, rtt_s=0.01), clock=clock, sleep=clock.sleep)
        out = []
        for i in range(50):
            out.append(s.wait_send(40 + 7 * i))
            clock.now += 0.003 * (i % 5)
        return out

    assert run() == run()


def test_bad_link_shapes() -> None:
    for kwargs in (
        {"rate_bytes_per_s": 0.0},
        {"rate_bytes_per_s": float("inf")},
        {"rate_bytes_per_s": 1.0, "burst_bytes": -1.0},
        {"rate_bytes_per_s": 1.0, "rtt_s": -0.1},
    ):
        with pytest.raises(ConfigError):
            LinkShape(**kwargs)  # type: ignore[arg-type]


def test_precise_sleep_sleeps_all_but_the_spin_then_reaches_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from coinference.runtime import shaping

    slept: list[float] = []
    monkeypatch.setattr(shaping.time, "sleep", slept.append)  # the spin alone has to reach the deadline now
    t0 = time.perf_counter()
    shaping.precise_sleep(0.004, spin_s=0.001)
    assert time.perf_counter() - t0 >= 0.004  # never early: the deadline is polled
    assert slept == [pytest.approx(0.003)]
    slept.clear()
    shaping.precise_sleep(0.0005, spin_s=0.001)  # shorter than the spin: no sleep at all
    assert slept == []
    assert Shaper(LinkShape(1000.0)).sleep is shaping.precise_sleep  # what a shaped client waits with by default
