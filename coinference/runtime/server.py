"""The edge server: answers request frames (docs/WIRE.md) with the server part's scores, over asyncio TCP.

One task per connection reads frames in order; each request's decode + server part runs in a thread pool (the
ONNX runtime releases the GIL), so a slow inference never holds up the other connections. Every read has a
deadline: a client that idles past ``idle_timeout_s`` between frames, or stalls inside a frame for
``read_timeout_s``, is disconnected and its task ends. A frame that breaks the framing (bad magic, version, type,
checksum, an oversized length) is answered with an error frame and the connection is closed, since the stream can
no longer be trusted to sit on a frame boundary; a well-framed request for an unknown variant or with a payload the
decoder refuses gets an error frame and the connection goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from coinference.errors import CoinferenceError, ConfigError
from coinference.runtime.errors import PayloadError
from coinference.runtime.wire import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_BYTES,
    MAX_U32,
    VARIANT_ID_BYTES,
    Frame,
    FrameType,
    Status,
    TruncatedFrameError,
    WireError,
    encode_error,
    encode_reply,
    read_frame,
    variant_hex,
    variant_id,
)

log = logging.getLogger(__name__)
_NO_VARIANT = bytes(VARIANT_ID_BYTES)


class Decoder(Protocol):
    """The server side of one variant (e.g. ``coinference.runtime.ServerRunner``)."""

    def decode(self, payload: bytes) -> np.ndarray:
        """Scores (logits) of shape (n_classes,) or (1, n_classes) for one coded payload; raises
        ``coinference.runtime.PayloadError`` (or ``ValueError``) for a payload that does not decode."""
        ...


class ServeError(CoinferenceError):
    """The server cannot start (the address is unusable)."""


class PortInUseError(ServeError):
    """Another process already listens on the address."""


@dataclass(frozen=True)
class ServerConfig:
    """Where the edge server listens and the limits it keeps."""

    host: str = "127.0.0.1"
    """Address to bind (an IP address; the loopback unless told otherwise)."""
    port: int = 0
    """TCP port (0: any free one, see :attr:`EdgeServer.port`)."""
    max_payload: int = DEFAULT_MAX_PAYLOAD
    """Largest request payload accepted, bytes; a longer one is answered ``TOO_LARGE`` and the connection closed."""
    idle_timeout_s: float = 60.0
    """Longest wait for the next frame on an open connection, seconds; then the connection is closed."""
    read_timeout_s: float = 10.0
    """Longest wait for the rest of a frame once it began, and for a reply to be taken by the client, seconds."""
    max_connections: int = 64
    """Open connections at most; one more is answered ``BUSY`` and closed."""
    workers: int = 2
    """Threads running decoders (decode + server part)."""
    grace_s: float = 10.0
    """How long :meth:`EdgeServer.close` lets in-flight requests finish, seconds."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port}: must be in 0–65535")
        if not 0 < self.max_payload <= MAX_U32:
            raise ConfigError(f"max_payload {self.max_payload}: must be in 1–{MAX_U32} bytes")
        for name in ("idle_timeout_s", "read_timeout_s", "grace_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} {value}: must be a positive number of seconds")
        if self.max_connections < 1 or self.workers < 1:
            raise ConfigError(f"max_connections {self.max_connections} and workers {self.workers} must be ≥ 1")


@dataclass
class _Connection:
    task: asyncio.Task[None]
    busy: bool = False
    """A request was read in full and is being answered (close() lets it finish)."""


class EdgeServer:
    """An asyncio TCP server answering request frames with the matching decoder's scores.

    Args:
        decoders: one decoder per variant, keyed by the variant's key (hex; its first 16 digits are the wire id)
            or by its 8-byte wire id.
        config: address and limits.

    Use ``await start()``, then ``port``; ``await serve_forever()`` until ``await close()``; or :func:`run_server`.
    """

    def __init__(self, decoders: Mapping[str | bytes, Decoder], config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self._decoders: dict[bytes, Decoder] = {}
        for key, decoder in decoders.items():
            vid = variant_id(key)
            if vid in self._decoders:
                raise ConfigError(f"two variants share the wire id {variant_hex(vid)}")
            self._decoders[vid] = decoder
        self._server: asyncio.Server | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._conns: dict[asyncio.Task[None], _Connection] = {}
        self._closing = False
        self._stopped: asyncio.Event | None = None

    # ------------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Bind and start accepting connections.

        Raises:
            PortInUseError: the address is taken. ServeError: it cannot be bound for another reason.
        """
        if self._server is not None:
            return
        host, port = self.config.host, self.config.port
        self._stopped = asyncio.Event()
        try:
            self._server = await asyncio.start_server(self._handle, host, port)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUseError(f"cannot listen on {host}:{port}: address already in use") from None
            raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="edge-decode")
        log.info("edge server listening on %s:%d with %d variants", host, self.port, len(self._decoders))

    @property
    def port(self) -> int:
        """The port the server listens on (the chosen one when the config asked for 0)."""
        if self._server is None or not self._server.sockets:
            raise ServeError("the edge server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def live_connections(self) -> int:
        """Connections whose task has not ended yet."""
        return len(self._conns)

    @property
    def closing(self) -> bool:
        """True once :meth:`close` has begun."""
        return self._closing

    @property
    def variant_ids(self) -> list[str]:
        """The wire ids of the variants served, 16 hex digits each."""
        return sorted(variant_hex(v) for v in self._decoders)

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` has finished (starting first if needed)."""
        await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish (for up to ``grace_s``), then close every connection."""
        if self._server is None or self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.grace_s
        # Stop accepting first, but keep the listener open for a few loop turns: a connection accepted just now
        # gets its transport and task only then, and Python 3.11 drops (without closing) one whose transport is
        # made after the server closed. Its task answers SHUTTING_DOWN; the kernel resets connections not accepted.
        for sock in self._server.sockets:
            with contextlib.suppress(NotImplementedError, ValueError):
                loop.remove_reader(sock.fileno())
        for _ in range(8):
            await asyncio.sleep(0)
        self._server.close()
        while self._conns:
            for conn in list(self._conns.values()):
                if not conn.busy:
                    conn.task.cancel()
            tasks = list(self._conns)
            left = deadline - loop.time()
            if left <= 0:
                for t in tasks:
                    t.cancel()
            await asyncio.wait(tasks, timeout=max(left, 0.0) or None)
        await self._server.wait_closed()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        assert self._stopped is not None
        self._stopped.set()
        log.info("edge server closed")

    async def __aenter__(self) -> EdgeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------ connections
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Connection(task)
        self._conns[conn.task] = conn
        try:
            if self._closing:
                conn.busy = True  # a short notice; close() lets it go out
                msg = "server shutting down"
                await self._refuse(reader, writer, encode_error(_NO_VARIANT, 0, Status.SHUTTING_DOWN, msg))
            elif len(self._conns) > self.config.max_connections:
                msg = f"server busy: {self.config.max_connections} connections open"
                await self._refuse(reader, writer, encode_error(_NO_VARIANT, 0, Status.BUSY, msg))
            else:
                await self._serve(conn, reader, writer)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), self.config.read_timeout_s)
        except asyncio.CancelledError:
            pass  # close() ends idle connections this way; the task ends here either way
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading its replies
        except Exception:
            log.exception("edge server: connection handler failed")
        finally:
            writer.transport.abort()  # no-op once closed; drops what a client that stopped reading left unsent
            del self._conns[conn.task]

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cfg = self.config
        while not self._closing:
            try:
                frame = await read_frame(
                    reader, cfg.max_payload, idle_timeout_s=cfg.idle_timeout_s, frame_timeout_s=cfg.read_timeout_s
                )
            except (TimeoutError, TruncatedFrameError):
                return  # idle, stalled or cut short: nothing to answer
            except WireError as e:
                await self._refuse(reader, writer, encode_error(_NO_VARIANT, 0, e.status, str(e)))
                return
            if frame is None:
                return
            if frame.type != FrameType.REQUEST:
                msg = f"expected a request frame, got {frame.type.name.lower()}"
                err = encode_error(frame.variant_id, frame.request_id, Status.MALFORMED, msg)
                await self._refuse(reader, writer, err)
                return
            conn.busy = True
            await self._send(writer, await self._answer(frame))
            conn.busy = False

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: bytes) -> None:
        """Send an error frame that ends the connection, half-close, and discard what the client still sends (at
        most one frame of ``max_payload``, for at most ``read_timeout_s``): closing a socket with unread input
        resets the connection, and a reset can destroy the error frame before the client reads it."""
        await self._send(writer, error)
        if writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        budget, end = self.config.max_payload + HEADER_BYTES, loop.time() + self.config.read_timeout_s
        while budget > 0 and loop.time() < end:
            try:
                chunk = await asyncio.wait_for(reader.read(min(budget, 1 << 16)), end - loop.time())
            except TimeoutError:
                return
            if not chunk:
                return
            budget -= len(chunk)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self.config.read_timeout_s)

    async def _answer(self, frame: Frame) -> bytes:
        vid, rid = frame.variant_id, frame.request_id
        decoder = self._decoders.get(vid)
        if decoder is None:
            held = ", ".join(self.variant_ids)
            return encode_error(vid, rid, Status.UNKNOWN_VARIANT, f"unknown variant {variant_hex(vid)}; held: {held}")
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        try:
            scores, server_s = await loop.run_in_executor(self._pool, _decode, decoder, frame.payload)
        except (ValueError, PayloadError, EOFError) as e:
            return encode_error(vid, rid, Status.DECODE_ERROR, f"payload does not decode: {e}")
        except Exception as e:  # a package the runtime cannot run, or a bug: not the client's fault
            log.exception("edge server: variant %s failed", variant_hex(vid))
            return encode_error(vid, rid, Status.INTERNAL_ERROR, f"server part failed: {_first_line(e)}")
        if scores.ndim > 1 and scores.shape[0] != 1:
            msg = f"server part gave scores of shape {scores.shape} for one request"
            return encode_error(vid, rid, Status.INTERNAL_ERROR, msg)
        try:
            return encode_reply(vid, rid, scores, server_s)
        except WireError as e:
            return encode_error(vid, rid, Status.INTERNAL_ERROR, str(e))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _decode(decoder: Decoder, payload: bytes) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    scores = np.asarray(decoder.decode(payload))
    return scores, time.perf_counter() - t0


def run_server(
    decoders: Mapping[str | bytes, Decoder],
    config: ServerConfig | None = None,
    on_ready: Callable[[EdgeServer], None] | None = None,
) -> None:
    """Serve in this thread until SIGTERM or SIGINT, then close gracefully (in-flight requests finish).

    ``on_ready(server)`` is called once the server listens (e.g. to print its port). Signal handlers are installed
    only in the main thread.

    Raises:
        PortInUseError, ServeError: the server could not start.
    """

    async def main() -> None:
        server = EdgeServer(decoders, config)
        await server.start()
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.close()))
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread, or no signals on this platform
        try:
            if on_ready is not None:
                on_ready(server)
            await server.serve_forever()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await server.close()

    asyncio.run(main())


class Service(Protocol):
    """Anything started and closed on an event loop (:class:`EdgeServer`, ``shaping.ShapingProxy``)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


S = TypeVar("S", bound=Service)


@contextmanager
def in_background(service: S, timeout_s: float = 60.0) -> Iterator[S]:
    """Run ``service`` on an event loop in a daemon thread for the ``with`` block (tests, benchmarks, demos):
    started on entry (its errors, e.g. :class:`PortInUseError`, raised here), closed gracefully on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=f"{type(service).__name__}-loop", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(service.start(), loop).result(timeout_s)
        yield service
    finally:
        try:
            asyncio.run_coroutine_threadsafe(service.close(), loop).result(timeout_s)
            asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), loop).result(timeout_s)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            loop.close()


async def _cancel_other_tasks() -> None:
    """Cancel and await every task of the running loop but this one (what ``asyncio.run`` does at its end)."""
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in rest:
        t.cancel()
    await asyncio.gather(*rest, return_exceptions=True)
