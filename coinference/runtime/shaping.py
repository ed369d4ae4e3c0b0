"""Bandwidth emulation on loopback: a token bucket + RTT on the client's send path, or a shaping TCP proxy.

The latency model charges a request ``bytes / rate + RTT``; :class:`Shaper` makes a real loopback transfer take
that long. Its bucket keeps a *debt*: a message of ``n`` bytes takes ``n`` tokens even when fewer are there, and the
sender waits until the debt is paid (``-tokens / rate``). With ``burst_bytes`` 0 (the default) every message waits
exactly its serialisation time on an idle link, and back-to-back messages queue behind each other, as on a real
link; a positive burst lets that many bytes through at once after the link was idle. Everything is arithmetic on
an injected clock, so it is exact and testable with a fake one.

:class:`ShapingProxy` applies the same shaping to a TCP stream between unmodified clients and a server (one link
per proxy, shared by its connections). Linux ``tc`` (``tc qdisc add dev veth0 root netem delay 20ms rate 1mbit``
inside a network namespace) shapes the kernel's path instead; it needs root and is documented in docs/WIRE.md,
never required.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from coinference.errors import ConfigError


class TokenBucket:
    """A token bucket with debt: ``rate`` bytes/s, at most ``burst`` bytes of credit.

    Args:
        rate_bytes_per_s: sustained rate, bytes/s.
        burst_bytes: credit an idle link accumulates, bytes (0: none; every message pays its full time).
        clock: seconds from a monotonic clock.
    """

    def __init__(
        self, rate_bytes_per_s: float, burst_bytes: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (rate_bytes_per_s > 0 and math.isfinite(rate_bytes_per_s)):
            raise ConfigError(f"shaping rate must be > 0 bytes/s, got {rate_bytes_per_s}")
        if not (burst_bytes >= 0 and math.isfinite(burst_bytes)):
            raise ConfigError(f"shaping burst must be ≥ 0 bytes, got {burst_bytes}")
        self.rate = float(rate_bytes_per_s)
        self.burst = float(burst_bytes)
        self.clock = clock
        self._tokens = self.burst
        self._last: float | None = None

    def reserve(self, n_bytes: int) -> float:
        """Take ``n_bytes`` now; returns the seconds until they have left the link (0 when covered by credit)."""
        now = self.clock()
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + self.rate * (now - self._last))
        self._last = now
        self._tokens -= n_bytes
        return max(0.0, -self._tokens / self.rate)


@dataclass(frozen=True)
class LinkShape:
    """An emulated link."""

    rate_bytes_per_s: float
    """Payload rate, bytes/s (each direction)."""
    burst_bytes: float = 0.0
    """Token-bucket credit after idling, bytes (0: every message takes bytes / rate)."""
    rtt_s: float = 0.0
    """Round-trip time, seconds: all of it on the send path, or half each way with ``shape_replies``."""
    shape_replies: bool = False
    """Also shape replies (their own bucket at the same rate, half the RTT)."""

    def __post_init__(self) -> None:
        if not (self.rtt_s >= 0 and math.isfinite(self.rtt_s)):
            raise ConfigError(f"RTT must be ≥ 0 s, got {self.rtt_s}")
        TokenBucket(self.rate_bytes_per_s, self.burst_bytes)  # validates rate and burst

    @property
    def send_latency_s(self) -> float:
        """One-way delay added to each request, seconds."""
        return self.rtt_s / 2 if self.shape_replies else self.rtt_s

    @property
    def reply_latency_s(self) -> float:
        """One-way delay added to each reply, seconds."""
        return self.rtt_s / 2 if self.shape_replies else 0.0


SPIN_S = 0.005
"""The last part of a shaped wait that :func:`precise_sleep` spends polling the clock instead of sleeping."""


def precise_sleep(seconds: float, spin_s: float = SPIN_S) -> None:
    """Block for ``seconds``: ``time.sleep`` for all but the last ``spin_s``, then poll the clock until the deadline.

    ``time.sleep`` overshoots by the kernel's timer slack and wake-up (0.05–0.2 ms on a virtual machine), which on
    a fast emulated link is as long as the transmission it emulates; and a thread that slept for the whole wait
    wakes on a cold, possibly halted CPU. Polling the end of the wait sends the bytes when the link would have
    delivered them, from a running thread, as a device whose radio signals completion would.
    """
    deadline = time.perf_counter() + seconds
    if seconds > spin_s:
        time.sleep(seconds - spin_s)
    while time.perf_counter() < deadline:
        pass


class Shaper:
    """Delays a blocking client's sends (and optionally its replies) as ``shape`` says.

    Args:
        shape: the emulated link.
        clock: seconds from a monotonic clock (injectable for tests).
        sleep: blocks for a number of seconds (injectable for tests; default :func:`precise_sleep`).
    """

    def __init__(
        self,
        shape: LinkShape,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = precise_sleep,
    ) -> None:
        self.shape = shape
        self.sleep = sleep
        self._up = TokenBucket(shape.rate_bytes_per_s, shape.burst_bytes, clock)
        self._down = TokenBucket(shape.rate_bytes_per_s, shape.burst_bytes, clock)

    def send_delay(self, n_bytes: int) -> float:
        """Reserve ``n_bytes`` on the uplink; returns how long the send must wait, seconds."""
        return self._up.reserve(n_bytes) + self.shape.send_latency_s

    def reply_delay(self, n_bytes: int) -> float:
        """Reserve ``n_bytes`` on the downlink (0 when replies are not shaped); seconds to wait."""
        if not self.shape.shape_replies:
            return 0.0
        return self._down.reserve(n_bytes) + self.shape.reply_latency_s

    def wait_send(self, n_bytes: int) -> float:
        """Sleep for :meth:`send_delay`; returns the seconds slept."""
        d = self.send_delay(n_bytes)
        if d > 0:
            self.sleep(d)
        return d

    def wait_reply(self, n_bytes: int) -> float:
        """Sleep for :meth:`reply_delay`; returns the seconds slept."""
        d = self.reply_delay(n_bytes)
        if d > 0:
            self.sleep(d)
        return d


class ShapingProxy:
    """A loopback TCP proxy that shapes the bytes from its clients to ``target`` (and back, with
    ``shape.shape_replies``), so unmodified clients see the emulated link.

    Each chunk read is delivered once the link has carried it (one token bucket per direction, shared by all
    connections) plus the one-way delay; chunks keep their order, and later ones queue behind earlier ones.

    Args:
        target_host, target_port: the server behind the proxy.
        shape: the emulated link.
        listen_host, listen_port: where the proxy listens (port 0: any free one, see :attr:`port`).
    """

    CHUNK = 64 * 1024

    def __init__(
        self,
        target_host: str,
        target_port: int,
        shape: LinkShape,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target = (target_host, target_port)
        self.listen = (listen_host, listen_port)
        self.shape = shape
        self._up = TokenBucket(shape.rate_bytes_per_s, shape.burst_bytes)
        self._down = TokenBucket(shape.rate_bytes_per_s, shape.burst_bytes)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start listening.

        Raises:
            OSError: the listening address cannot be bound.
        """
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, *self.listen)

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        if self._server is None or not self._server.sockets:
            raise ConfigError("the shaping proxy is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def live_connections(self) -> int:
        """Proxied connections still open."""
        return len(self._tasks)

    async def close(self) -> None:
        """Stop listening and drop every proxied connection."""
        if self._server is None:
            return
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            down = (self._down, self.shape.reply_latency_s) if self.shape.shape_replies else None
            pumps = [
                asyncio.ensure_future(_pump(reader, up_writer, (self._up, self.shape.send_latency_s))),
                asyncio.ensure_future(_pump(up_reader, writer, down)),
            ]
            try:
                # An end of stream is passed on and the other direction goes on (half-close); a broken side ends both.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for p in pumps:
                    p.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (asyncio.CancelledError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()
            if up_writer is not None:
                up_writer.transport.abort()


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: tuple[TokenBucket, float] | None
) -> None:
    """Copy ``reader`` to ``writer``, each chunk delivered when the ``link`` (bucket, one-way delay) has carried it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                return
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.ensure_future(deliver())
    try:
        while True:
            chunk = await reader.read(ShapingProxy.CHUNK)
            now = loop.time()
            due = now if link is None or not chunk else now + link[0].reserve(len(chunk)) + link[1]
            queue.put_nowait((due, chunk))
            if not chunk:
                break
        await sender
        with contextlib.suppress(OSError):
            writer.write_eof()
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
