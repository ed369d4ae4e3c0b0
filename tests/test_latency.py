from __future__ import annotations

import pytest

from coinference.errors import ConfigError, UnknownNameError
from coinference.latency import (
    DeviceProfile,
    Link,
    ServerProfile,
    calibrate_local,
    device_profile,
    end_to_end,
    feasible,
    interleaved_medians,
    parse_bandwidth,
)
from coinference.variant import Measurement

DEV = DeviceProfile("d", macs_per_s=1e9, memory_bytes=10_000)
SRV = ServerProfile("s", macs_per_s=1e12)


def test_latency_hand_computed() -> None:
    m = Measurement(
        0.9, device_macs=2_000_000, server_macs=3_000_000_000, bits_mean=7_968.0, bits_max=8_000, header_bits=32
    )
    lat = end_to_end(m, DEV, SRV, Link(1_000.0, rtt_s=0.05))
    assert lat.device_s == pytest.approx(0.002)
    assert lat.transmit_s == pytest.approx(1.0)  # 8,000 bits = 1,000 bytes at 1,000 B/s
    assert lat.server_s == pytest.approx(0.003)
    assert lat.total_s == pytest.approx(1.055)


def test_analog_jscc_uses_symbol_rate() -> None:
    m = Measurement(0.9, 0, 0, bits_mean=0.0, bits_max=0, channel_uses=500)
    assert end_to_end(m, DEV, SRV, Link(1.0, symbols_per_s=1e3)).transmit_s == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="symbol rate"):
        end_to_end(m, DEV, SRV, Link(1.0))


def test_memory_feasibility() -> None:
    fits = Measurement(0.9, 1, 1, 1.0, 1, device_param_bytes=6_000, device_peak_activation_bytes=4_000)
    too_big = Measurement(0.9, 1, 1, 1.0, 1, device_param_bytes=6_000, device_peak_activation_bytes=4_001)
    assert feasible(fits, DEV) and not feasible(too_big, DEV)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("40KB/s", 40_000),
        ("5 Mbit/s", 625_000),
        ("125000", 125_000),
        ("1 KiB/s", 1024),
        ("8 kbps", 1000),
        (2.5, 2.5),
        ("1e3 B/s", 1000),
        ("40kB/s", 40_000),
        ("40KBps", 40_000),  # a capital B counts bytes
        ("40 kb/s", 5_000),  # a lowercase b counts bits
        ("320kbit/s", 40_000),
        ("40kbps", 5_000),
        ("2 MiB/s", 2 * 1024**2),
        ("10 bytes/s", 10),
    ],
)
def test_parse_bandwidth(text, value) -> None:
    assert parse_bandwidth(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["fast", "", "-5KB/s", "0", "10 furlongs/s", "nan", "40k", "40kB", "40 KB/h", "1e999"])
def test_parse_bandwidth_rejects(text) -> None:
    with pytest.raises(ConfigError):
        parse_bandwidth(text)


def test_profiles() -> None:
    assert device_profile("rpi3").macs_per_s == 12e9 and device_profile("rpi3").memory_bytes == 1 << 30
    with pytest.raises(UnknownNameError, match="unknown device profile 'jetson'; valid: local, mcu, rpi3"):
        device_profile("jetson")
    local = calibrate_local(0.05)
    assert local.macs_per_s > 1e6 and local.memory_bytes > 1 << 20
    with pytest.raises(ConfigError, match="bandwidth must be > 0"):
        Link(0.0)


def test_interleaved_medians_turns() -> None:
    calls: list[str] = []
    interleaved_medians(lambda: calls.append("a"), lambda: calls.append("b"), runs=5, warmup=1, block=2)
    # warm-up pair; then turns of one untimed and two timed calls (the last turn one timed call) of each
    assert "".join(calls) == "ab" + "aaabbb" * 2 + "aabb"
    calls.clear()
    interleaved_medians(lambda: calls.append("a"), lambda: calls.append("b"), runs=3, warmup=0)
    assert "".join(calls) == "ababab"  # block 1: single calls alternate, none untimed
    with pytest.raises(ConfigError, match="block 0"):
        interleaved_medians(lambda: None, lambda: None, runs=3, warmup=0, block=0)
