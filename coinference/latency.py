"""Latency model: end-to-end time of a variant from its measurement, a device, a server and a link.

latency = device compute + transmission (+ RTT) + server compute, where compute = MACs / (MAC/s) and
transmission = (payload + header bits) / link rate (or channel uses / symbol rate for analog JSCC). A variant is
feasible on a device when its parameters + peak activations fit the device memory. Latency is never stored:
it is computed at query time, so one lookup table serves every bandwidth.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coinference.errors import ConfigError, UnknownNameError
from coinference.registry import Registry
from coinference.variant import Measurement


@dataclass(frozen=True)
class DeviceProfile:
    """An edge device: sustained MAC/s for conv inference and memory available to the model."""

    name: str
    macs_per_s: float
    """Sustained multiply-accumulates per second (FLOP/s / 2)."""
    memory_bytes: int
    """Memory for parameters + activations, bytes."""
    source: str = ""
    """Where the numbers come from."""
    measured: bool = False
    """Each variant's device time is its own measurement in the deployed runtime on this machine (stored in the
    lookup table under this profile's name), not MACs ÷ ``macs_per_s``; see ``storage.query``."""


@dataclass(frozen=True)
class ServerProfile:
    """An edge server: sustained MAC/s."""

    name: str
    macs_per_s: float
    source: str = ""
    measured: bool = False
    """Each variant's server time is its own measurement (as for :attr:`DeviceProfile.measured`)."""


@dataclass(frozen=True)
class Link:
    """The device→server link."""

    bandwidth_bytes_per_s: float
    """Payload rate in bytes per second."""
    rtt_s: float = 0.0
    """Round-trip time added once per inference, seconds."""
    symbols_per_s: float | None = None
    """Real channel uses per second, for analog (AWGN) JSCC variants."""

    def __post_init__(self) -> None:
        if not self.bandwidth_bytes_per_s > 0 or not math.isfinite(self.bandwidth_bytes_per_s):
            raise ConfigError(f"bandwidth must be > 0 bytes/s, got {self.bandwidth_bytes_per_s}")
        if not self.rtt_s >= 0:
            raise ConfigError(f"RTT must be ≥ 0 s, got {self.rtt_s}")


@dataclass(frozen=True)
class Latency:
    """End-to-end latency breakdown, seconds."""

    device_s: float
    transmit_s: float
    rtt_s: float
    server_s: float

    @property
    def total_s(self) -> float:
        return self.device_s + self.transmit_s + self.rtt_s + self.server_s


def end_to_end(
    m: Measurement,
    device: DeviceProfile,
    server: ServerProfile,
    link: Link,
    device_s: float | None = None,
    server_s: float | None = None,
) -> Latency:
    """Latency of a measured variant on (device, server, link).

    ``device_s`` / ``server_s``: the part's measured seconds per image, used instead of MACs ÷ MAC/s when given.

    Raises:
        ConfigError: an analog JSCC variant on a link with no symbol rate.
    """
    if m.channel_uses is not None:
        if link.symbols_per_s is None:
            raise ConfigError("an analog JSCC variant needs a link symbol rate (symbols_per_s)")
        transmit = m.channel_uses / link.symbols_per_s
    else:
        transmit = (m.bits_mean + m.header_bits) / 8 / link.bandwidth_bytes_per_s
    return Latency(
        m.device_macs / device.macs_per_s if device_s is None else device_s,
        transmit,
        link.rtt_s,
        m.server_macs / server.macs_per_s if server_s is None else server_s,
    )


def feasible(m: Measurement, device: DeviceProfile) -> bool:
    """True when the device part's parameters + peak activations fit in the device's memory."""
    return m.device_memory_bytes <= device.memory_bytes


# ------------------------------------------------------------------------------------------- profiles
DEVICES: Registry[DeviceProfile] = Registry("device profile")
SERVERS: Registry[ServerProfile] = Registry("server profile")

for _d in (
    DeviceProfile("rpi3", 12e9, 1 << 30, "Raspberry Pi 3 as in Shao & Zhang 2020: 24 GFLOP/s (= 12 GMAC/s), 1 GB RAM"),
    DeviceProfile(
        "mcu",
        120e6,
        1 << 20,
        "STM32H743-class MCU: Cortex-M7 at 480 MHz with 1 MB SRAM (ST datasheet DS12110); "
        "0.25 fp32 MAC/cycle sustained for conv layers is our assumption (FPU peak is 1 FMA/cycle)",
    ),
):
    DEVICES.register(_d.name)(_d)
SERVERS.register("rtx2080ti")(
    ServerProfile("rtx2080ti", 13.45e12 / 2, "NVIDIA RTX 2080 Ti: 13.45 TFLOP/s fp32 peak, as in the paper")
)


LATENCY_BLOCK = 10
"""Consecutive timed calls per turn in :func:`latency_pair`: steady-state latency, as a device running its head in
a loop sees it."""


def add_timing_arguments(ap: argparse.ArgumentParser, runs_b1: int) -> None:
    """The benchmarks' options for :func:`latency_pair`: ``--runs-b1``, ``--runs-b64`` and ``--block``."""
    ap.add_argument("--runs-b1", type=int, default=runs_b1)
    ap.add_argument("--runs-b64", type=int, default=30)
    ap.add_argument(
        "--block",
        type=int,
        default=LATENCY_BLOCK,
        help="consecutive timed calls per turn (1: alternate single calls, so each starts with the other head's data "
        f"in the caches); default {LATENCY_BLOCK}: steady-state latency",
    )


def interleaved_medians(
    a: Callable[[], object], b: Callable[[], object], runs: int, warmup: int, block: int = 1
) -> tuple[float, float]:
    """Median seconds per call of ``a`` and of ``b``, timed side by side (same conditions) after ``warmup`` calls
    of each: ``runs`` calls of each, in alternating turns of ``block`` consecutive timed calls.

    ``block`` 1 alternates single calls, so each call starts with the other function's data in the caches (a cold
    start that costs a small model most: a dense ResNet-20 head's activations flush a shrunk head's working set
    from L1 and L2). With ``block`` > 1 each turn starts with one untimed call, and the medians are steady-state
    latencies."""
    if block < 1:
        raise ConfigError(f"block {block}: must be at least 1")
    for _ in range(warmup):
        a()
        b()
    ta: list[float] = []
    tb: list[float] = []
    while len(ta) < runs:
        n = min(block, runs - len(ta))
        for f, times in ((a, ta), (b, tb)):
            if block > 1:
                f()
            for _ in range(n):
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def latency_pair(
    a: Callable[[Any], object], b: Callable[[Any], object], x: Any, runs: int, block: int = LATENCY_BLOCK
) -> tuple[float, float]:
    """Median seconds per forward of the modules ``a`` and ``b`` on ``x``, side by side (:func:`interleaved_medians`
    in turns of ``block`` calls, a tenth of ``runs``, at least 3, to warm up), in eval mode and without
    gradients."""
    import torch

    for m in (a, b):
        if isinstance(m, torch.nn.Module):
            m.eval()
    with torch.no_grad():
        return interleaved_medians(lambda: a(x), lambda: b(x), runs, max(3, runs // 10), block)


LOCAL = "local"
"""The profile of this machine: variants' parts timed here in the deployed runtime (``coinfer measure``)."""


def _conv_macs_per_s(seconds: float) -> float:
    """This machine's sustained conv MAC/s (a ResNet-20-like 3×3 conv stack, batch 16, PyTorch)."""
    import torch
    from torch import nn

    net = nn.Sequential(*[nn.Conv2d(32, 32, 3, padding=1, bias=False) for _ in range(4)]).eval()
    x = torch.randn(16, 32, 16, 16)
    macs_per_call = 4 * 16 * 32 * 32 * 9 * 16 * 16
    with torch.no_grad():
        net(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            net(x)
            n += 1
        dt = time.perf_counter() - t0
    return n * macs_per_call / dt


_LOCAL_SOURCE = (
    "this machine: each variant's measured time in onnxruntime (coinfer measure) where the table has one; "
    "without any, MACs ÷ a conv stack's MAC/s timed now ({:.3g} MAC/s)"
)


def calibrate_local(seconds: float = 1.0) -> DeviceProfile:
    """This machine as a device: its memory, the measured-timings flag, and a conv stack's MAC/s timed now (the
    fallback for a table with no measured times)."""
    rate = _conv_macs_per_s(seconds)
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return DeviceProfile(LOCAL, rate, int(mem), _LOCAL_SOURCE.format(rate), measured=True)


def device_profile(name: str) -> DeviceProfile:
    """A built-in device profile, or ``local`` (this machine, see :func:`calibrate_local`)."""
    if name == LOCAL:
        return calibrate_local()
    if name not in DEVICES:
        raise UnknownNameError(f"unknown device profile {name!r}; valid: {', '.join(device_names())}")
    return DEVICES.get(name)


def device_names() -> list[str]:
    """Built-in device profile names, including ``local``."""
    return sorted([*DEVICES.names(), LOCAL])


def server_profile(name: str) -> ServerProfile:
    """A built-in server profile, or ``local``: this machine as the server (measured times, as for the device)."""
    if name == LOCAL:
        rate = _conv_macs_per_s(1.0)
        return ServerProfile(LOCAL, rate, _LOCAL_SOURCE.format(rate), measured=True)
    if name not in SERVERS:
        raise UnknownNameError(f"unknown server profile {name!r}; valid: {', '.join(server_names())}")
    return SERVERS.get(name)


def server_names() -> list[str]:
    """Built-in server profile names, including ``local``."""
    return sorted([*SERVERS.names(), LOCAL])


# ------------------------------------------------------------------------------------------- parsing
BANDWIDTH_RANGE = (1.0, 1e12)
"""Rates (bytes/s) a link may have: from 1 B/s to 1 TB/s; anything outside is a typo, not a link."""
_PREFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "ki": 1024.0, "mi": 1024.0**2, "gi": 1024.0**3}
_BW = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z/]*)\s*$")
_UNIT = re.compile(r"^([kKmMgG]i?)?(B|b|bytes?|bits?)(/s|ps)$", re.IGNORECASE)


def _unit_bytes(unit: str) -> float | None:
    """Bytes per second of one ``unit`` (``KB/s`` → 1000, ``kbit/s`` → 125), or None when it is no rate unit.

    The usual convention: a capital ``B`` (or ``byte``) counts bytes, a lowercase ``b`` (or ``bit``) bits; the
    decimal prefixes k, M, G (either case) and binary Ki, Mi, Gi."""
    m = _UNIT.match(unit)
    if m is None:
        return None
    prefix, base = (m.group(1) or "").lower(), m.group(2)
    bits = base == "b" or base.lower().startswith("bit")
    return _PREFIXES[prefix] / (8.0 if bits else 1.0)


def fmt_rate(bytes_per_s: float) -> str:
    """A rate in bytes/s as a short decimal string: ``40 KB/s``, ``1.8 MB/s`` (the inverse of
    :func:`parse_bandwidth`, to three significant digits)."""
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("KB/s", 1e3)):
        if bytes_per_s >= scale:
            return f"{bytes_per_s / scale:.3g} {unit}"
    return f"{bytes_per_s:.3g} B/s"


def parse_bandwidth(text: str | float) -> float:
    """Parse a bandwidth into bytes per second.

    Accepts a bare number (bytes/s) or a number with a rate unit: a capital B (or "byte") counts bytes, a
    lowercase b (or "bit") bits, with the decimal prefixes k, M, G or the binary Ki, Mi, Gi, and "/s" or "ps":
    "40KB/s" = "40kB/s" = "40KBps" → 40,000; "320kbit/s" = "320kb/s" = "320kbps" → 40,000; "1 KiB/s" → 1,024.

    Raises:
        ConfigError: unparseable text, unknown unit, or a rate ≤ 0.
    """
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _BW.match(text)
        scale = (_unit_bytes(m.group(2)) if m.group(2) else 1.0) if m else None
        if m is None or scale is None:
            raise ConfigError(f"cannot parse bandwidth {text!r} (try e.g. 40KB/s, 320kbit/s, 5 Mbps, 125000)")
        value = float(m.group(1)) * scale
    if not math.isfinite(value):
        raise ConfigError(f"bandwidth must be finite, got {text!r}")
    if not BANDWIDTH_RANGE[0] <= value <= BANDWIDTH_RANGE[1]:
        raise ConfigError(f"bandwidth must be between 1 B/s and 1 TB/s, got {text!r} ({value:.3g} bytes/s)")
    return value
