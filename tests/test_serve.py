"""The edge server and its clients on loopback, with fake runners (a numpy linear model whose payload is float32
bytes): answers equal in-process decodes, concurrency, a frame fuzz, vanished and idle clients, graceful close,
clear errors for a taken port and an unreachable server, and a shaping proxy in the path."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest

from coinference.runtime.client import (
    ConnectionLostError,
    DeviceClient,
    EdgeClient,
    RemoteError,
    ServerUnreachableError,
    summarize,
)
from coinference.runtime.server import EdgeServer, PortInUseError, ServerConfig, in_background
from coinference.runtime.shaping import LinkShape, Shaper, ShapingProxy
from coinference.runtime.wire import (
    HEADER_BYTES,
    FrameType,
    Status,
    decode_frame,
    encode_frame,
    encode_request,
    parse_error,
    parse_reply,
    variant_id,
)

FEATURES, CLASSES, IMAGE = 16, 10, (3, 4, 4)
KEYS = [f"{i:x}" * 64 for i in (10, 11, 12)]  # three 64-hex "variant keys"


class LinearDecoder:
    """Server part: payload = FEATURES float32 values; logits = W x + b."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(CLASSES, FEATURES)).astype(np.float32)
        self.b = rng.normal(size=CLASSES).astype(np.float32)

    def decode(self, payload: bytes) -> np.ndarray:
        if len(payload) != 4 * FEATURES:
            raise ValueError(f"expected {4 * FEATURES} bytes, got {len(payload)}")
        x = np.frombuffer(payload, dtype="<f4")
        if not np.isfinite(x).all():
            raise ValueError("non-finite features")
        with np.errstate(over="ignore", invalid="ignore"):
            return (self.w @ x + self.b)[None, :]


class LinearEncoder:
    """Device part: a fixed projection of the image to FEATURES float32 values."""

    def __init__(self, seed: int) -> None:
        self.p = np.random.default_rng(seed + 100).normal(size=(FEATURES, int(np.prod(IMAGE)))).astype(np.float32)

    def encode(self, image: np.ndarray) -> bytes:
        return (self.p @ (image.reshape(-1).astype(np.float32) / 255)).astype("<f4").tobytes()


@dataclass(frozen=True)
class Encoded:
    payload: bytes
    device_s: float
    encode_s: float


class TimedEncoder(LinearEncoder):
    """An encoder that times its parts itself, as ``DeviceRunner.encode_timed`` does."""

    def encode_timed(self, image: np.ndarray) -> Encoded:
        return Encoded(self.encode(image), 0.25, 0.125)


class SlowDecoder(LinearDecoder):
    """Blocks in decode until released, telling when it started."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.started, self.release = threading.Event(), threading.Event()

    def decode(self, payload: bytes) -> np.ndarray:
        self.started.set()
        assert self.release.wait(30)
        return super().decode(payload)


class BrokenDecoder:
    def decode(self, payload: bytes) -> np.ndarray:
        raise RuntimeError("a bug")


DECODERS = {k: LinearDecoder(i) for i, k in enumerate(KEYS)}
ENCODERS = {k: LinearEncoder(i) for i, k in enumerate(KEYS)}
CONFIG = ServerConfig(idle_timeout_s=3.0, read_timeout_s=1.0, max_payload=4096)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *IMAGE), dtype=np.uint8)


def _payloads(key: str, n: int) -> list[bytes]:
    return [ENCODERS[key].encode(x) for x in _images(n)]


@contextmanager
def _serving(decoders: dict | None = None, config: ServerConfig = CONFIG) -> Iterator[EdgeServer]:
    with in_background(EdgeServer(decoders if decoders is not None else DECODERS, config)) as server:
        yield server


def _wait_for(cond: Callable[[], bool], deadline_s: float = 30.0) -> bool:
    """Poll ``cond`` until true or a generous deadline passes (no timing is asserted)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------- answers
def test_network_answers_equal_in_process_decode() -> None:
    with _serving() as server, EdgeClient("127.0.0.1", server.port) as client:
        for key in KEYS:
            for payload in _payloads(key, 8):
                reply = client.infer(key, payload)
                direct = DECODERS[key].decode(payload)[0]
                assert np.array_equal(reply.logits, direct)
                assert reply.predicted_class == int(np.argmax(direct))
                assert reply.variant_id == key[:16]
                t = reply.timings
                assert t.bytes_sent == len(payload) + HEADER_BYTES
                assert t.bytes_received == HEADER_BYTES + 12 + 4 * CLASSES
                assert t.server_s >= 0 and 0 <= t.transfer_s <= t.round_trip_s


def test_sixteen_concurrent_clients() -> None:
    def one(i: int) -> int:
        key = KEYS[i % len(KEYS)]
        wrong = 0
        with EdgeClient("127.0.0.1", port) as client:
            for payload in _payloads(key, 12):
                reply = client.infer(key, payload)
                wrong += not np.array_equal(reply.logits, DECODERS[key].decode(payload)[0])
        return wrong

    with _serving() as server:
        port = server.port
        with ThreadPoolExecutor(24) as pool:
            assert list(pool.map(one, range(24))) == [0] * 24
        assert _wait_for(lambda: server.live_connections == 0)


def test_errors_that_keep_the_connection() -> None:
    decoders = {**DECODERS, "ee" * 32: BrokenDecoder()}
    with _serving(decoders) as server, EdgeClient("127.0.0.1", server.port) as client:
        with pytest.raises(RemoteError, match="unknown_variant: unknown variant 0000000000000001") as e:
            client.infer("0000000000000001", b"")
        assert e.value.status == Status.UNKNOWN_VARIANT
        with pytest.raises(RemoteError, match="decode_error.*expected 64 bytes, got 3") as e:
            client.infer(KEYS[0], b"abc")
        assert e.value.status == Status.DECODE_ERROR
        with pytest.raises(RemoteError, match="internal_error.*RuntimeError") as e:
            client.infer("ee" * 32, b"")
        assert e.value.status == Status.INTERNAL_ERROR
        payload = _payloads(KEYS[1], 1)[0]
        assert client.infer(KEYS[1], payload).predicted_class == int(np.argmax(DECODERS[KEYS[1]].decode(payload)))
        assert server.live_connections == 1  # the same connection all along


def test_too_large_payload_closes_the_connection() -> None:
    with _serving() as server, EdgeClient("127.0.0.1", server.port) as client:
        with pytest.raises(RemoteError, match="too_large.*5000 bytes exceeds the maximum of 4096") as e:
            client.infer(KEYS[0], b"x" * 5000)
        assert e.value.status == Status.TOO_LARGE
        payload = _payloads(KEYS[0], 1)[0]
        assert client.infer(KEYS[0], payload).predicted_class >= 0  # reconnects


def test_error_frame_arrives_although_the_client_keeps_sending() -> None:
    """The server half-closes and drains before closing, so a reset never destroys its error frame."""
    with _serving() as server:
        for junk in (b"JUNK" * 500, encode_request(KEYS[0], 1, b"x" * 4000)):
            with socket.create_connection(("127.0.0.1", server.port)) as s:
                s.sendall(b"NOPE" + bytes(28) + junk)  # bad magic, then more bytes the server never parses
                s.settimeout(30)
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            frame, rest = decode_frame(data)
            assert rest == b"" and parse_error(frame.payload).status == Status.MALFORMED


def test_busy_beyond_max_connections() -> None:
    config = ServerConfig(idle_timeout_s=3.0, read_timeout_s=1.0, max_connections=2)
    payload = _payloads(KEYS[0], 1)[0]
    with _serving(config=config) as server:
        clients = [EdgeClient("127.0.0.1", server.port) for _ in range(3)]
        for c in clients[:2]:
            c.infer(KEYS[0], payload)
        with pytest.raises(RemoteError, match="busy") as e:
            clients[2].infer(KEYS[0], payload)
        assert e.value.status == Status.BUSY
        clients[0].close()
        assert _wait_for(lambda: server.live_connections == 1)
        assert clients[2].infer(KEYS[0], payload).predicted_class >= 0
        for c in clients:
            c.close()


# ------------------------------------------------------------------------------------------------- fuzz
def _fuzz_frames(rng: np.random.Generator, good: bytes) -> tuple[list[bytes], int, bool]:
    """One connection's bytes: well-framed junk (each answered, the connection goes on), then maybe one frame that
    breaks the framing. Returns the frames, how many replies to expect, and whether the last one breaks it."""
    frames = []
    for _ in range(int(rng.integers(0, 16))):
        kind = rng.integers(4)
        rid = int(rng.integers(1, 2**63))
        if kind == 0:  # random payload for a known variant: a decode error
            frames.append(encode_request(KEYS[0], rid, rng.bytes(int(rng.integers(0, 200)))))
        elif kind == 1:  # an unknown variant
            frames.append(encode_request(rng.bytes(8), rid, rng.bytes(int(rng.integers(0, 100)))))
        elif kind == 2:  # the right size but random bits (NaNs and all)
            frames.append(encode_request(KEYS[1], rid, rng.bytes(4 * FEATURES)))
        else:
            frames.append(encode_request(KEYS[2], rid, good))
    n_answered = len(frames)
    kind = rng.integers(7)
    rid = int(rng.integers(1, 2**63))
    frame = encode_request(KEYS[0], rid, rng.bytes(int(rng.integers(1, 100))))
    if kind == 0:  # random bytes
        frames.append(rng.bytes(int(rng.integers(1, 100))))
    elif kind == 1:  # a flipped byte anywhere
        b = bytearray(frame)
        b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
        frames.append(bytes(b))
    elif kind == 2:  # oversized: a header claiming more than the maximum, then a little
        frames.append(encode_request(KEYS[0], rid, b"x" * 5000)[:100])
    elif kind == 3:  # truncated, then the client half-closes
        frames.append(frame[: int(rng.integers(1, len(frame)))])
    elif kind == 4:  # a reply or error frame sent to the server, or a bad type
        frames.append(encode_frame(FrameType(int(rng.integers(2, 4))), rng.bytes(8), rid, rng.bytes(20)))
    elif kind == 5:  # a later wire version
        b = bytearray(frame)
        b[4] = 2
        frames.append(bytes(b))
    else:  # nothing breaks: the client just half-closes
        return frames, n_answered, False
    return frames, n_answered, True


async def _fuzz_connection(port: int, rng: np.random.Generator, good: bytes) -> tuple[int, int]:
    frames, n_answered, breaks = _fuzz_frames(rng, good)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(frames))
    writer.write_eof()
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)  # until the server closes
    writer.close()
    answers = []
    while data:
        f, data = decode_frame(data)
        answers.append(f)
    assert len(answers) in (n_answered, n_answered + 1) if breaks else len(answers) == n_answered
    for f in answers[:n_answered]:
        if f.type == FrameType.REPLY:  # a good payload, or random bits that happen to be finite
            assert f.variant_id in [variant_id(k) for k in KEYS]
            parse_reply(f.payload)
        else:
            assert parse_error(f.payload).status in (Status.DECODE_ERROR, Status.UNKNOWN_VARIANT)
    for f in answers[n_answered:]:
        assert f.type == FrameType.ERROR
        assert parse_error(f.payload).status in (Status.MALFORMED, Status.TOO_LARGE)
    return len(frames), len(answers)


def test_fuzz_server_survives_ten_thousand_bad_frames() -> None:
    rng = np.random.default_rng(1)
    good = _payloads(KEYS[2], 1)[0]

    async def run(port: int) -> int:
        sent = 0
        while sent < 10_000:
            batch = [_fuzz_connection(port, np.random.default_rng(rng.integers(2**32)), good) for _ in range(32)]
            sent += sum(n for n, _ in await asyncio.gather(*batch))
        return sent

    with _serving() as server:
        assert asyncio.run(run(server.port)) >= 10_000
        with EdgeClient("127.0.0.1", server.port) as client:
            reply = client.infer(KEYS[2], good)
            assert np.array_equal(reply.logits, DECODERS[KEYS[2]].decode(good)[0])
        assert _wait_for(lambda: server.live_connections == 0)


# ------------------------------------------------------------------------------------------------- lifecycle
def test_vanished_and_stalled_clients_leave_no_task() -> None:
    frame = encode_request(KEYS[0], 1, _payloads(KEYS[0], 1)[0])
    with _serving(config=ServerConfig(idle_timeout_s=0.5, read_timeout_s=0.5)) as server:
        socks = []
        for cut in (1, 10, 31, 32, 40, len(frame) - 1):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(frame[:cut])
            socks.append(s)
        idle = socket.create_connection(("127.0.0.1", server.port))  # never sends a byte
        assert _wait_for(lambda: server.live_connections == 7)
        for s in socks[:3]:
            s.close()  # vanished mid-frame
        # the other three stall mid-frame and the idle one idles: the read and idle timeouts end them
        assert _wait_for(lambda: server.live_connections == 0)
        for s in [*socks[3:], idle]:
            s.settimeout(10)
            assert s.recv(1) == b""  # closed by the server, without a reply
            s.close()


def test_idle_connection_is_reopened_by_the_client() -> None:
    config = ServerConfig(idle_timeout_s=0.2, read_timeout_s=1.0)
    payload = _payloads(KEYS[0], 1)[0]
    with _serving(config=config) as server, EdgeClient("127.0.0.1", server.port) as client:
        client.infer(KEYS[0], payload)
        assert _wait_for(lambda: server.live_connections == 0)  # the server dropped the idle connection
        assert client.infer(KEYS[0], payload).predicted_class >= 0


def test_graceful_close_finishes_in_flight_request() -> None:
    slow = SlowDecoder(0)
    payload = _payloads(KEYS[0], 1)[0]
    result: list[object] = []
    server = EdgeServer({KEYS[0]: slow}, CONFIG)

    def request() -> None:
        try:
            with EdgeClient("127.0.0.1", port) as client:
                result.append(client.infer(KEYS[0], payload))
        except Exception as e:
            result.append(e)

    def release_once_closing() -> None:
        assert _wait_for(lambda: server.closing)
        slow.release.set()

    with in_background(server):
        port = server.port
        t = threading.Thread(target=request)
        t.start()
        assert slow.started.wait(30)
        idle = EdgeClient("127.0.0.1", port)
        idle.connect()
        releaser = threading.Thread(target=release_once_closing)
        releaser.start()
    # the with block closed the server while the request was being decoded
    t.join(30)
    releaser.join(30)
    assert len(result) == 1 and not isinstance(result[0], Exception), result
    assert np.array_equal(result[0].logits, LinearDecoder(0).decode(payload)[0])  # type: ignore[attr-defined]
    assert server.live_connections == 0
    # the idle connection was closed (or, accepted as the server closed, told so), and nobody listens any more
    with pytest.raises((ServerUnreachableError, ConnectionLostError, RemoteError)) as e:
        idle.infer(KEYS[0], payload)
    assert not isinstance(e.value, RemoteError) or e.value.status == Status.SHUTTING_DOWN
    idle.close()
    with pytest.raises(ServerUnreachableError):
        EdgeClient("127.0.0.1", port).infer(KEYS[0], payload)


def test_no_reply_in_time_is_a_clear_error() -> None:
    slow = SlowDecoder(0)
    try:
        with _serving({KEYS[0]: slow}) as server:
            client = EdgeClient("127.0.0.1", server.port, timeout_s=0.2)
            client.connect()
            with pytest.raises(ConnectionLostError, match=f"^edge server at 127.0.0.1:{server.port}: no reply within"):
                client.infer(KEYS[0], _payloads(KEYS[0], 1)[0])  # on a reused connection: not retried
            slow.release.set()
    finally:
        slow.release.set()


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = f"^cannot listen on 127.0.0.1:{port}: address already in use$"
        with pytest.raises(PortInUseError, match=message), in_background(EdgeServer(DECODERS, ServerConfig(port=port))):
            pass


def test_unreachable_server_is_a_clear_error() -> None:
    port = _free_port()
    with pytest.raises(ServerUnreachableError, match=f"^cannot reach the edge server at 127.0.0.1:{port}: "):
        EdgeClient("127.0.0.1", port, timeout_s=5).infer(KEYS[0], b"")


def test_sigterm_shuts_down_gracefully() -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_serve import DECODERS
        from coinference.runtime.server import ServerConfig, run_server
        run_server(DECODERS, ServerConfig(), on_ready=lambda s: print(s.port, flush=True))
        print("closed", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        payload = _payloads(KEYS[1], 1)[0]
        with EdgeClient("127.0.0.1", port) as client:
            assert np.array_equal(client.infer(KEYS[1], payload).logits, DECODERS[KEYS[1]].decode(payload)[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert proc.stdout.read().strip() == "closed"
    finally:
        proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()


# ------------------------------------------------------------------------------------------------- device + proxy
def test_device_client_records_and_summary() -> None:
    images = _images(20, seed=3)
    labels = [int(np.argmax(DECODERS[KEYS[0]].decode(ENCODERS[KEYS[0]].encode(x)))) for x in images]
    labels[0] = (labels[0] + 1) % CLASSES  # one wrong
    with _serving() as server, EdgeClient("127.0.0.1", server.port) as client:
        device = DeviceClient(client, {KEYS[0]: ENCODERS[KEYS[0]]})
        records = device.run(images, labels)
    s = summarize(records)
    assert s.count == 20 and s.accuracy == pytest.approx(19 / 20)
    assert s.bytes_mean == 4 * FEATURES + HEADER_BYTES and s.payload_bytes_mean == 4 * FEATURES
    assert s.variants == {KEYS[0][:16]: 20} and s.switches == 0
    r = records[1]
    assert r.total_s >= r.device_s + r.transfer_s and r.total_s >= r.server_s and r.encode_s == 0
    with _serving() as server, EdgeClient("127.0.0.1", server.port) as client:
        r = DeviceClient(client, {KEYS[0]: TimedEncoder(0)}).infer(images[1], labels[1])
    assert (r.device_s, r.encode_s, r.correct) == (0.25, 0.125, True)
    assert set(s.to_dict()) >= {"accuracy", "bytes_mean", "latency_ms_median", "count"}


def test_device_client_switches_with_the_table() -> None:
    from coinference.runtime.adaptive import VariantSwitcher

    # Any real link carries 96 bytes faster than 1.2 bytes/s: after `patience` requests the client moves up.
    switcher = VariantSwitcher([(0.0, KEYS[0]), (1.0, KEYS[1])], patience=2)
    with _serving() as server, EdgeClient("127.0.0.1", server.port) as client:
        device = DeviceClient(client, {k: ENCODERS[k] for k in KEYS[:2]}, switcher=switcher)
        records = device.run(_images(5))
    assert [r.variant_id for r in records] == [KEYS[0][:16]] * 2 + [KEYS[1][:16]] * 3
    assert summarize(records).switches == 1 and all(r.rate_estimate for r in records)


def test_through_a_shaping_proxy() -> None:
    payloads = _payloads(KEYS[0], 5)
    shape = LinkShape(20_000.0, rtt_s=0.01, shape_replies=True)
    with _serving() as server:
        proxy = ShapingProxy("127.0.0.1", server.port, shape)
        with in_background(proxy), EdgeClient("127.0.0.1", proxy.port) as client:
            for p in payloads:
                reply = client.infer(KEYS[0], p)
                assert np.array_equal(reply.logits, DECODERS[KEYS[0]].decode(p)[0])
                t = reply.timings
                # a lower bound only (the link can only be slower): both transmissions and the RTT
                assert t.round_trip_s >= 0.9 * ((t.bytes_sent + t.bytes_received) / 20_000 + 0.01)
        assert _wait_for(lambda: proxy.live_connections == 0)


def test_client_side_shaper() -> None:
    payload = _payloads(KEYS[0], 1)[0]
    shaper = Shaper(LinkShape(10_000.0, rtt_s=0.005))
    with _serving() as server, EdgeClient("127.0.0.1", server.port, shaper=shaper) as client:
        for _ in range(3):
            t = client.infer(KEYS[0], payload).timings
            assert t.transfer_s >= 0.9 * (t.bytes_sent / 10_000 + 0.005)  # a lower bound only
