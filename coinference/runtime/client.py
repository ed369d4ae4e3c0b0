"""The device side of the network path: :class:`EdgeClient` sends coded payloads and reads replies (docs/WIRE.md);
:class:`DeviceClient` runs a variant's device part first and records where each request's time went.

Blocking sockets, one persistent connection: a request is one ``sendall`` of its frame and one read of the reply.
A connection the server closed while idle (its idle timeout) is reopened once, transparently.
"""

from __future__ import annotations

import itertools
import math
import socket
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from coinference.errors import CoinferenceError
from coinference.runtime.adaptive import ThroughputEstimator, VariantSwitcher
from coinference.runtime.shaping import Shaper
from coinference.runtime.wire import (
    DEFAULT_MAX_PAYLOAD,
    Frame,
    FrameType,
    Status,
    WireError,
    encode_request,
    parse_error,
    parse_reply,
    read_frame_blocking,
    variant_hex,
    variant_id,
)


class ClientError(CoinferenceError):
    """The device cannot get an answer from the edge server."""


class ServerUnreachableError(ClientError):
    """No connection to the server could be made."""


class ConnectionLostError(ClientError):
    """The connection broke, or no reply came in time, during a request."""


class _StaleConnectionError(ConnectionLostError):
    """A connection opened by an earlier request broke (e.g. the server's idle timeout closed it)."""


class RemoteError(ClientError):
    """The server answered with an error frame. ``status`` says why (:class:`~coinference.runtime.wire.Status`)."""

    def __init__(self, message: str, status: Status) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Timings:
    """Where one request's time on the network went."""

    round_trip_s: float
    """From just before the send (shaping delay included) to the reply read in full, seconds."""
    server_s: float
    """The server's compute time as it reports it (decode + server part), seconds."""
    bytes_sent: int
    """Request frame: payload + 32 header bytes."""
    bytes_received: int
    """Reply frame: header + status, class, time and scores."""

    @property
    def transfer_s(self) -> float:
        """Round trip minus server compute: both transmissions, RTT and queueing, seconds."""
        return max(0.0, self.round_trip_s - self.server_s)


@dataclass(frozen=True)
class Reply:
    """The server's answer to one request."""

    variant_id: str
    """16 hex digits."""
    request_id: int
    predicted_class: int
    logits: np.ndarray
    """float32 scores, shape (n_classes,)."""
    timings: Timings


class EdgeClient:
    """A blocking client of :class:`~coinference.runtime.server.EdgeServer`.

    Args:
        host, port: the server.
        timeout_s: longest wait to connect, and for each reply, seconds.
        shaper: delays each send (and reply) as an emulated link would; None: the real link only.
        max_payload: largest reply payload accepted, bytes.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout_s: float = 10.0,
        shaper: Shaper | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.shaper = shaper
        self.max_payload = max_payload
        self._sock: socket.socket | None = None
        self._ids = itertools.count(1)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self) -> None:
        """Open the connection now (otherwise the first request opens it).

        Raises:
            ServerUnreachableError: refused, timed out or the name does not resolve.
        """
        if self._sock is not None:
            return
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise ServerUnreachableError(f"cannot reach the edge server at {self.address}: {reason}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock

    def close(self) -> None:
        """Close the connection (a later request opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> EdgeClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv_exactly(self, n: int) -> bytes:
        assert self._sock is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionLostError("the server closed the connection")
            buf += chunk
        return bytes(buf)

    def _exchange(self, frame: bytes) -> tuple[Frame, float]:
        """Send ``frame``, read one frame back; returns it and the seconds in between (shaping included)."""
        reused = self._sock is not None
        self.connect()
        assert self._sock is not None
        t0 = time.perf_counter()
        if self.shaper is not None:
            self.shaper.wait_send(len(frame))
        try:
            self._sock.sendall(frame)
            reply = read_frame_blocking(self._recv_exactly, self.max_payload)
        except TimeoutError:
            self.close()
            raise ConnectionLostError(f"edge server at {self.address}: no reply within {self.timeout_s} s") from None
        except (ConnectionLostError, ConnectionError) as e:
            self.close()
            error = _StaleConnectionError if reused else ConnectionLostError
            raise error(f"edge server at {self.address}: {e}") from None
        except WireError as e:
            self.close()
            raise ConnectionLostError(f"edge server at {self.address} sent a bad frame: {e}") from None
        if self.shaper is not None:
            self.shaper.wait_reply(reply.wire_bytes)
        return reply, time.perf_counter() - t0

    def infer(self, variant: str | bytes, payload: bytes) -> Reply:
        """Send one coded ``payload`` for ``variant`` (its key or 8-byte id) and wait for the scores.

        Raises:
            RemoteError: the server answered with an error (unknown variant, bad payload, busy, ...).
            ServerUnreachableError, ConnectionLostError: no answer.
        """
        vid = variant_id(variant)
        rid = next(self._ids)
        frame = encode_request(vid, rid, payload)
        try:
            reply, round_trip = self._exchange(frame)
        except _StaleConnectionError:  # the server dropped the connection while it idled: once more, on a fresh one
            reply, round_trip = self._exchange(frame)
        if reply.type == FrameType.ERROR:
            err = parse_error(reply.payload)
            if err.status not in (Status.UNKNOWN_VARIANT, Status.DECODE_ERROR, Status.INTERNAL_ERROR):
                self.close()  # the server closes the connection after these
            raise RemoteError(f"edge server at {self.address}: {err.status.name.lower()}: {err.message}", err.status)
        if reply.type != FrameType.REPLY or reply.request_id != rid or reply.variant_id != vid:
            self.close()
            raise ConnectionLostError(
                f"edge server at {self.address} answered request {rid} with a {reply.type.name.lower()} frame for "
                f"request {reply.request_id}"
            )
        try:
            body = parse_reply(reply.payload)
        except WireError as e:
            raise ConnectionLostError(f"edge server at {self.address} sent a bad reply: {e}") from None
        timings = Timings(round_trip, body.server_s, len(frame), reply.wire_bytes)
        return Reply(variant_hex(vid), rid, body.predicted_class, body.scores, timings)


# ------------------------------------------------------------------------------------------------- device
class Encoder(Protocol):
    """The device side of one variant (e.g. ``coinference.runtime.DeviceRunner``): image → coded bytes.

    An encoder that also has ``encode_timed(image)``, returning an object with ``payload``, ``device_s`` and
    ``encode_s`` (as ``DeviceRunner`` does), has its device part and its coder timed apart; otherwise the whole of
    ``encode`` counts as device time.
    """

    def encode(self, image: np.ndarray) -> bytes:
        """Coded payload of one uint8 image (C, H, W)."""
        ...


def _encode(encoder: Encoder, image: np.ndarray) -> tuple[bytes, float, float]:
    """(payload, device seconds, coder seconds) of one image."""
    timed = getattr(encoder, "encode_timed", None)
    if timed is not None:
        e = timed(image)
        return bytes(e.payload), float(e.device_s), float(e.encode_s)
    t0 = time.perf_counter()
    payload = encoder.encode(image)
    return payload, time.perf_counter() - t0, 0.0


@dataclass(frozen=True)
class RequestRecord:
    """One image through device, link and server."""

    variant_id: str
    """16 hex digits."""
    predicted_class: int
    label: int | None
    device_s: float
    """Device part (normalisation + device network), seconds; with a plain :class:`Encoder`, its whole ``encode``."""
    encode_s: float
    """Byte coder (entropy coding), seconds; 0 with a plain :class:`Encoder`."""
    transfer_s: float
    """Network round trip minus server compute, seconds."""
    server_s: float
    """Server compute as the server reports it, seconds."""
    total_s: float
    """From the image to the class, seconds (device + coder + round trip)."""
    payload_bytes: int
    bytes_sent: int
    """Request frame on the wire (payload + 32)."""
    bytes_received: int
    """Reply frame on the wire."""
    rate_estimate: float | None = None
    """Throughput estimate after this request, bytes/s (adaptive clients only)."""

    @property
    def correct(self) -> bool | None:
        return None if self.label is None else self.predicted_class == self.label


class DeviceClient:
    """Runs a variant's device part, sends its bytes through an :class:`EdgeClient`, and times every stage.

    Args:
        client: the connection to the edge server.
        encoders: the device side of each variant, keyed by variant key (or 16-hex id).
        variant: the variant to use (default: the switcher's, else the only one).
        switcher: follows the bandwidth table with the measured throughput (adaptive switching).
        estimator: the throughput estimate fed to ``switcher`` (default: :class:`ThroughputEstimator`\\ ()).
    """

    def __init__(
        self,
        client: EdgeClient,
        encoders: Mapping[str, Encoder],
        variant: str | None = None,
        switcher: VariantSwitcher | None = None,
        estimator: ThroughputEstimator | None = None,
    ) -> None:
        self.client = client
        self._encoders = {variant_hex(variant_id(k)): e for k, e in encoders.items()}
        if not self._encoders:
            raise ClientError("a device client needs at least one variant")
        self.switcher = switcher
        self.estimator = estimator if estimator is not None else ThroughputEstimator()
        if switcher is not None:
            missing = {variant_hex(variant_id(v)) for v in switcher.variants} - set(self._encoders)
            if missing:
                raise ClientError(f"the bandwidth table names variants with no device package: {sorted(missing)}")
        if variant is None:
            variant = switcher.current if switcher is not None else next(iter(self._encoders))
            if switcher is None and len(self._encoders) > 1:
                raise ClientError(f"choose a variant among {sorted(self._encoders)}")
        self._variant = self._check(variant)

    def _check(self, variant: str) -> str:
        vid = variant_hex(variant_id(variant))
        if vid not in self._encoders:
            raise ClientError(f"no device package for variant {vid}; have {sorted(self._encoders)}")
        return vid

    @property
    def variant(self) -> str:
        """The variant the next request uses (16 hex digits)."""
        return self._variant

    def infer(self, image: np.ndarray, label: int | None = None) -> RequestRecord:
        """Classify one uint8 image (C, H, W) through device and server."""
        vid = self._variant
        t0 = time.perf_counter()
        payload, device_s, encode_s = _encode(self._encoders[vid], image)
        reply = self.client.infer(vid, payload)
        total_s = time.perf_counter() - t0
        tm = reply.timings
        rate = None
        if self.switcher is not None:
            rate = self.estimator.update(tm.bytes_sent, tm.transfer_s)
            self._variant = self._check(self.switcher.update(rate))
        return RequestRecord(
            variant_id=vid,
            predicted_class=reply.predicted_class,
            label=None if label is None else int(label),
            device_s=device_s,
            encode_s=encode_s,
            transfer_s=tm.transfer_s,
            server_s=tm.server_s,
            total_s=total_s,
            payload_bytes=len(payload),
            bytes_sent=tm.bytes_sent,
            bytes_received=tm.bytes_received,
            rate_estimate=rate,
        )

    def run(self, images: Iterable[np.ndarray], labels: Iterable[int] | None = None) -> list[RequestRecord]:
        """:meth:`infer` each image in order (with its label, when given)."""
        if labels is None:
            return [self.infer(x) for x in images]
        return [self.infer(x, int(y)) for x, y in zip(images, labels, strict=True)]


@dataclass(frozen=True)
class Summary:
    """What a run of requests measured."""

    count: int
    accuracy: float | None
    """Fraction of labelled requests answered correctly (None without labels)."""
    bytes_mean: float
    """Mean request frame on the wire (payload + 32), bytes."""
    payload_bytes_mean: float
    reply_bytes_mean: float
    latency_ms_median: float
    """Median total time, device + network + server, ms."""
    latency_ms_p90: float
    device_ms_median: float
    encode_ms_median: float
    transfer_ms_median: float
    server_ms_median: float
    variants: dict[str, int] = field(default_factory=dict)
    """Requests per variant (16-hex id)."""
    switches: int = 0
    """Changes of variant between consecutive requests."""

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def summarize(records: Sequence[RequestRecord]) -> Summary:
    """Totals and medians of a run (see :class:`Summary`)."""
    if not records:
        raise ClientError("no requests to summarise")
    labelled = [r.correct for r in records if r.correct is not None]
    totals = [r.total_s * 1e3 for r in records]
    counts: dict[str, int] = {}
    for r in records:
        counts[r.variant_id] = counts.get(r.variant_id, 0) + 1
    return Summary(
        count=len(records),
        accuracy=sum(labelled) / len(labelled) if labelled else None,
        bytes_mean=statistics.fmean(r.bytes_sent for r in records),
        payload_bytes_mean=statistics.fmean(r.payload_bytes for r in records),
        reply_bytes_mean=statistics.fmean(r.bytes_received for r in records),
        latency_ms_median=statistics.median(totals),
        latency_ms_p90=_quantile(totals, 0.9),
        device_ms_median=statistics.median(r.device_s * 1e3 for r in records),
        encode_ms_median=statistics.median(r.encode_s * 1e3 for r in records),
        transfer_ms_median=statistics.median(r.transfer_s * 1e3 for r in records),
        server_ms_median=statistics.median(r.server_s * 1e3 for r in records),
        variants=counts,
        switches=sum(a.variant_id != b.variant_id for a, b in itertools.pairwise(records)),
    )


def _quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
