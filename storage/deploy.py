"""Deploying a lookup table: which variants a device needs, their packages on disk, and their parts timed on this
machine in the runtime they are deployed with.

- :func:`deploy_choices`: the variants the table's bandwidth table picks for a device at some rate (split variants
  only: a whole-model candidate has no split package to serve), with the rate range each one covers.
- :func:`ensure_export`: a variant's verified package under ``<home>/exports/<key[:16]>``, written once and reused
  while its files still match their manifest.
- :func:`time_package` / :func:`measure_local`: median seconds per image of the device side (pre-processing, the
  device part, entropy coding) and the server side as the device waits for it (a loopback request to the edge
  server: framing, sockets, entropy decoding, the server part, the reply) in ``coinference.runtime``
  (onnxruntime, one thread, batch 1), stored as the variant's ``local`` timings.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinference.latency import LOCAL, DeviceProfile, ServerProfile
from storage.query import bandwidth_table
from storage.records import VariantRecord

TIMING_RUNS = 200
"""Timed images per part by default."""
TIMING_WARMUP = 10
"""Untimed calls before timing (onnxruntime's first runs allocate and pick kernels)."""


@dataclass(frozen=True)
class DeployChoice:
    """A variant the bandwidth table picks for a device, from ``min_rate`` (bytes/s) up to the next choice's."""

    key: str
    min_rate: float
    """Lowest rate of the grid at which the table picks it (the grid's lowest rate for the first choice)."""


def deploy_choices(
    records: Sequence[VariantRecord],
    device: DeviceProfile,
    server: ServerProfile,
    rtt_s: float = 0.0,
    accuracy_floor: float | None = None,
    rates: Sequence[float] | None = None,
) -> list[DeployChoice]:
    """The split variants the bandwidth table picks at some rate of ``rates`` (default: the query grid), in
    rising rate order; consecutive rates with the same pick are one choice. Whole-model candidates are left out."""
    from storage.query import log_bandwidths

    split = [r for r in records if not r.spec.whole_model]
    rows = bandwidth_table(split, device, server, rtt_s, accuracy_floor, rates or log_bandwidths())
    out: list[DeployChoice] = []
    for row in rows:
        if not out or out[-1].key != row.key:
            out.append(DeployChoice(row.key, row.bandwidth_bytes_per_s))
    return out


def export_dir(home: Path, key: str) -> Path:
    """Where :func:`ensure_export` keeps a variant's package."""
    return Path(home) / "exports" / key[:16]


def ensure_export(
    record: VariantRecord,
    home: Path,
    images: np.ndarray,
    input_shape: tuple[int, int, int],
    normalization: Any,
    fresh_process: bool = True,
) -> tuple[Path, bool]:
    """The verified package of ``record`` under ``home/exports``: the existing one when it opens (files match
    their sha256) and is of this variant, else a new export verified on ``images`` (uint8 (N, C, H, W)).

    Returns:
        (package folder, whether it was written now).
    """
    from coinference.runtime import Package, PackageError
    from storage.export import export_record

    out = export_dir(home, record.key)
    if (out / "manifest.json").is_file():
        try:
            if Package.open(out).key == record.key:
                return out, False
        except PackageError:
            pass  # altered or from an older format: exported again below
    export_record(record, out, images, input_shape, normalization, overwrite=out.exists(), fresh_process=fresh_process)
    return out, True


def time_package(package: Path, images: np.ndarray, runs: int = TIMING_RUNS) -> tuple[float, float]:
    """(device seconds, server seconds) per image: the medians of :func:`time_package_samples`."""
    device, server = time_package_samples(package, images, runs)
    return statistics.median(device), statistics.median(server)


def time_package_samples(
    package: Path, images: np.ndarray, runs: int = TIMING_RUNS, offset: int = 0
) -> tuple[list[float], list[float]]:
    """(device seconds, server seconds) of each of ``runs`` images (uint8 (N, C, H, W), cycled from ``offset``),
    timed the way a device runs: one image after another, each encoded, sent and answered before the next, one
    onnxruntime thread each side (back-to-back loops of one side alone run warmer than that and read low):

    - device: ``DeviceRunner.encode`` (uint8 image → payload bytes);
    - server: what the device waits for once its bytes are sent, with no link delay: the request's round trip to an
      :class:`~coinference.runtime.server.EdgeServer` on loopback running the package's ``ServerRunner`` (framing,
      sockets, the server's event loop and worker hand-off, entropy decoding, the server part, the reply). On a
      real link the transmission of the framed bytes and the link's RTT come on top.
    """
    from coinference.runtime import DeviceRunner, ServerRunner
    from coinference.runtime.client import EdgeClient
    from coinference.runtime.server import EdgeServer, ServerConfig, in_background

    dev, srv = DeviceRunner(package), ServerRunner(package)
    key = dev.package.key or dev.package.variant_id
    device: list[float] = []
    server: list[float] = []
    with (
        in_background(EdgeServer({key: srv}, ServerConfig(workers=1))) as edge,
        EdgeClient("127.0.0.1", edge.port) as client,
    ):
        for i in range(TIMING_WARMUP + runs):
            image = images[(offset + i) % len(images)]
            t0 = time.perf_counter()
            payload = dev.encode(image)
            t1 = time.perf_counter()
            client.infer(key, payload)
            t2 = time.perf_counter()
            if i >= TIMING_WARMUP:
                device.append(t1 - t0)
                server.append(t2 - t1)
    return device, server


def runtime_label() -> str:
    """What the timings ran on, as stored with them."""
    import onnxruntime

    return f"coinference.runtime, onnxruntime {onnxruntime.__version__}, 1 thread, batch 1"


def host_label() -> str:
    """This machine, as stored with its timings: host name, processor and CPU count."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs"


def measure_local(table: Any, record: VariantRecord, package: Path, images: np.ndarray, runs: int) -> VariantRecord:
    """Time ``record``'s package on this machine and store both parts as its ``local`` timings."""
    device_s, server_s = time_package(package, images, runs)
    runtime, host = runtime_label(), host_label()
    table.record_timing(record.key, LOCAL, "device", device_s, runs, runtime, host)
    return table.record_timing(record.key, LOCAL, "server", server_s, runs, runtime, host)
