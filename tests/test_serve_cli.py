"""``coinfer serve`` and ``coinfer infer`` end to end on loopback: a tiny table of two tiny-cnn variants (one sends
8× fewer bits but costs the device 60 ms more, so the bandwidth table picks it below ~2.4 KB/s and the other above),
served from its packages or from the table, called by the device side in another process — without PyTorch in
package mode — whose predictions equal the in-process runtime's, whose bytes on the wire are the payload + 32, and
whose adaptive client follows the table; the server exits 0 on SIGTERM. No assertion is on a time."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_export_cli import MEAS, SPEC, write_artifacts

from coinference.data import load_dataset
from coinference.latency import Link, device_profile, server_profile
from coinference.runtime import DeviceRunner, ServerRunner
from coinference.variant import Measurement, VariantSpec
from search.cli.measure import export_inputs
from storage import open_table
from storage.deploy import ensure_export, export_dir
from storage.query import candidates

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180
"""Hang guard for a server to start (it may export packages first), not a speed bound."""
STOP_TIMEOUT_S = 60
NO_TORCH = "import sys; sys.modules['torch'] = None; from search.cli import main; main()"
"""``python -c`` program: the CLI where ``import torch`` fails, as on a device or server without PyTorch."""
WITH_TORCH = "from search.cli import main; main()"

# Same network as SPEC (the artifacts are shared), 8× fewer bits on record and 60 ms more on an rpi3's CPU: the
# bandwidth table picks LOW while 112 bytes take longer than 60 ms to send (below ~1.9 KB/s), SPEC above.
LOW = VariantSpec("tiny-cnn", "synthetic", "block1", seed=1)
LOW_MEAS = Measurement(0.9, device_macs=720_000_000, server_macs=20_000, bits_mean=128.0, bits_max=128,
                       device_param_bytes=4_000)  # fmt: skip
N = 20


@dataclass(frozen=True)
class Deploy:
    url: str
    home: Path
    packages: dict[str, Path]
    """Variant key → its package (exported by the fixture)."""
    images: np.ndarray
    labels: np.ndarray


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Deploy:
    d = tmp_path_factory.mktemp("deploy")
    arts = write_artifacts(d / "ckpt")
    home = d / "run"
    home.mkdir()
    url = f"sqlite:///{home / 'lookup.db'}"
    packages = {}
    with open_table(url) as t:
        for spec, meas in ((SPEC, MEAS), (LOW, LOW_MEAS)):
            rec = t.record_ok(spec, meas, "r1", arts)
            packages[spec.key], _ = ensure_export(rec, home, *export_inputs(rec, None, 8), fresh_process=False)
    data = load_dataset("synthetic")
    return Deploy(url, home, packages, data.test_x[:N].numpy(), data.test_y[:N].numpy())


def expected_predictions(package: Path, images: np.ndarray) -> list[int]:
    dev, srv = DeviceRunner(package), ServerRunner(package)
    return [int(np.argmax(srv.decode(dev.encode(img)))) for img in images]


def env() -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    e.pop("COINFER_DB", None)
    return e


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    lines: list[str]
    """stdout lines up to and including the ``serving`` line."""

    def stop(self) -> tuple[int, str]:
        """SIGTERM; (exit code, the rest of stdout)."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=STOP_TIMEOUT_S)
        return self.proc.returncode, out


@contextmanager
def serving(args: list[str], cwd: Path, program: str = WITH_TORCH) -> Iterator[Served]:
    """``coinfer serve ARGS`` in a process of its own; yields once it prints its ``serving`` line."""
    err = (cwd / "serve.err").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-c", program, "serve", *args],
        cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, ""):
            lines.put(line.rstrip("\n"))
            if line.startswith("serving "):
                return  # the rest is read by communicate()
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                pytest.fail(f"coinfer serve printed no `serving` line in {START_TIMEOUT_S} s: {seen}")
            if line is None:
                err.seek(0)
                pytest.fail(f"coinfer serve ended (exit {proc.wait()}): {seen}\n{err.read()[-3000:]}")
            seen.append(line)
            if line.startswith("serving "):
                break
        port = int(seen[-1].rsplit(":", 1)[1])
        yield Served(proc, port, seen)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        err.close()


def run(program: str, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", program, *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def one_line_error(code: int, err: str, *texts: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("coinfer: error:"), err
    for t in texts:
        assert t in err, (t, err)


def test_package_mode_runs_without_torch_and_matches_the_runtime(deploy: Deploy, tmp_path: Path, run_cli) -> None:
    pkg, other = deploy.packages[SPEC.key], deploy.packages[LOW.key]
    with serving(["--package", str(pkg), "--port", "0"], tmp_path, NO_TORCH) as srv:
        assert srv.lines[0].startswith(f"{SPEC.key[:16]}  split block1") and "rate not recorded" in srv.lines[0]
        assert srv.lines[-1] == f"serving 1 variants on 127.0.0.1:{srv.port}"
        np.savez(tmp_path / "images.npz", images=deploy.images, labels=deploy.labels)
        address = f"127.0.0.1:{srv.port}"
        res = run(NO_TORCH, ["infer", "--server", address, "--package", str(pkg), "--images", "images.npz", "--json"],
                  tmp_path)  # fmt: skip
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        want = expected_predictions(pkg, deploy.images)
        assert doc["predictions"] == want and doc["count"] == N
        assert doc["accuracy"] == pytest.approx(np.mean(np.asarray(want) == deploy.labels))
        assert doc["payload_bytes_mean"] == 2 * 8 * 8 and doc["bytes_mean"] == doc["payload_bytes_mean"] + 32
        assert doc["variants"] == {SPEC.key[:16]: N} and doc["switches"] == 0 and not doc["adaptive"]
        assert doc["predicted_ms"] is None and doc["predicted_from"] is None and doc["shaped"] is None
        for key in ("latency_ms_median", "latency_ms_p90", "device_ms_median", "encode_ms_median",
                    "transfer_ms_median", "server_ms_median"):  # fmt: skip
            assert doc[key] >= 0
        # the same images as the data set's test split, in process (the data set loads with PyTorch)
        code, out, err = run_cli("infer", "--server", address, "--package", str(pkg), "--dataset", "synthetic",
                                 "--limit", str(N), "--json")  # fmt: skip
        assert code == 0, err
        assert json.loads(out)["predictions"] == want and json.loads(out)["images"] == "synthetic test split"
        # a variant the server does not hold: its answer, in one line
        code, _, err = run_cli("infer", "--server", address, "--package", str(other), "--limit", "2")
        one_line_error(code, err, "unknown variant", LOW.key[:16])
        code, rest = srv.stop()
    assert code == 0 and "edge server stopped" in rest


def test_table_mode_serves_the_bandwidth_tables_picks_and_the_client_follows_it(
    deploy: Deploy, tmp_path: Path, run_cli
) -> None:
    shutil.rmtree(deploy.packages[LOW.key])  # serve exports what is missing (and records it)
    with serving(["--db", deploy.url, "--port", "0"], tmp_path) as srv:
        assert (
            len(srv.lines) == 4 and "on rpi3 / rtx2080ti" in srv.lines[0] and "picks 2 split variants" in srv.lines[0]
        )
        assert srv.lines[1].startswith(LOW.key[:16]) and "below 2.37 KB/s" in srv.lines[1]
        assert srv.lines[2].startswith(SPEC.key[:16]) and "2.37 KB/s and up" in srv.lines[2]
        assert srv.lines[3] == f"serving 2 variants on 127.0.0.1:{srv.port}"
        with open_table(deploy.url, create=False) as t:
            rec = t.get(LOW.key)
        assert (
            rec is not None
            and rec.artifacts["export/manifest"].path.parent == export_dir(deploy.home, LOW.key).resolve()
        )
        address = f"127.0.0.1:{srv.port}"
        want = expected_predictions(deploy.packages[SPEC.key], deploy.images)  # both variants: one network

        code, out, err = run_cli("infer", "--server", address, "--db", deploy.url, "--limit", str(N), "--json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["predictions"] == want and doc["adaptive"] and doc["packages"] == "table"
        # starts on the slow link's pick; loopback carries the 160-byte requests > 40× faster than the 2.4 KB/s
        # boundary, so the estimate crosses it and the client moves to SPEC
        assert doc["request_variants"][0] == LOW.key[:16] and doc["request_variants"][-1] == SPEC.key[:16]
        assert doc["switches"] >= 1 and set(doc["variants"]) == {LOW.key[:16], SPEC.key[:16]}
        assert doc["bytes_mean"] == doc["payload_bytes_mean"] + 32 and doc["predicted_from"] is None

        # shaped to 1 KB/s: the table's pick there, and a throughput that can only be lower, so no switch
        code, out, err = run_cli("infer", "--server", address, "--db", deploy.url, "--limit", "4", "-b", "1KB/s",
                                 "--json")  # fmt: skip
        assert code == 0, err
        doc = json.loads(out)
        assert doc["variants"] == {LOW.key[:16]: 4} and doc["switches"] == 0 and doc["predictions"] == want[:4]
        assert doc["shaped"] == {"bandwidth_bytes_per_s": 1000.0, "rtt_s": 0.0}
        with open_table(deploy.url, create=False) as t:
            records = t.variants(status="ok")
        link = Link(1000.0)
        best = candidates(records, link, device_profile("rpi3"), server_profile("rtx2080ti"), 0.88)
        predicted = {c.record.key: c.total_s * 1e3 for c in best}
        assert doc["predicted_from"] == "query" and doc["predicted_ms"] == pytest.approx(predicted[LOW.key])
        assert doc["predicted_for"]["device"] == "rpi3" and doc["predicted_for"]["bandwidth_bytes_per_s"] == 1000

        # not adaptive: the slow link's pick throughout; the plain summary
        code, out, err = run_cli("infer", "--server", address, "--db", deploy.url, "--limit", "5", "--no-adaptive")
        assert code == 0, err
        assert "5 images (synthetic test split)" in out and "variant switches 0" in out
        assert "bytes per request on the wire: 160.0 (payload 128.0 + 32 header)" in out
        # an mcu's table picks SPEC at every rate (LOW's 720 M MACs take it 6 s): a variant this server holds
        code, out, err = run_cli("infer", "--server", address, "--db", deploy.url, "--limit", "3", "--device", "mcu",
                                 "--json")  # fmt: skip
        assert code == 0 and json.loads(out)["variants"] == {SPEC.key[:16]: 3}, err
        code, rest = srv.stop()
    assert code == 0 and "edge server stopped" in rest


def test_serve_refuses_a_taken_port_and_an_altered_package(deploy: Deploy, tmp_path: Path, run_cli) -> None:
    pkg = deploy.packages[SPEC.key]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run(WITH_TORCH, ["serve", "--package", str(pkg), "--port", str(port)], tmp_path, timeout=60)
    one_line_error(res.returncode, res.stderr, f"--port {port}", "already in use")
    altered = tmp_path / "altered"
    shutil.copytree(pkg, altered)
    onnx = altered / "server" / "server.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    res = run(WITH_TORCH, ["serve", "--package", str(altered), "--port", "0"], tmp_path, timeout=60)
    one_line_error(res.returncode, res.stderr, "server/server.onnx", "sha256")
    # the device side checks its own files, before it connects
    dev = altered / "device" / "device.onnx"
    dev.write_bytes(dev.read_bytes() + b"\0")
    code, _, err = run_cli("infer", "--server", "127.0.0.1:1", "--package", str(altered))
    one_line_error(code, err, "device/device.onnx", "sha256")
    # two packages of one variant
    code, _, err = run_cli("infer", "--server", "127.0.0.1:1", "--package", str(pkg), "--package", str(pkg))
    one_line_error(code, err, "as", SPEC.key[:16])


def test_max_payload_default_is_the_wire_default() -> None:
    from coinference.runtime.wire import DEFAULT_MAX_PAYLOAD
    from search.cli.serve import DEFAULT_MAX_PAYLOAD as CLI_DEFAULT

    assert CLI_DEFAULT == DEFAULT_MAX_PAYLOAD
