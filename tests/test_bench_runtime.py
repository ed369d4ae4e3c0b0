"""bench/bench_runtime.py in its smallest mode on a two-variant synthetic table: it exports and times the variants,
runs shaped requests through a loopback edge server, follows a bandwidth table and writes its JSON. Only the
mechanics are checked (frame sizes, the payload the table counted, the report's shape), never a wall-clock time."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from test_export_cli import MEAS, SPEC, write_artifacts

from coinference.runtime.wire import HEADER_BYTES
from coinference.variant import Measurement
from storage import open_table

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_runtime.py"
# the same tiny graph (raw int8 payload: 2 × 8 × 8 = 128 bytes) under a second key whose MACs and bits differ, so
# a MAC-based table switches between the two
OTHER = SPEC.with_(seed=1)
OTHER_MEAS = Measurement(0.9, device_macs=5_000_000, server_macs=20_000, bits_mean=512.0, bits_max=512,
                         device_param_bytes=4_000)  # fmt: skip


def _bench():
    spec = importlib.util.spec_from_file_location("bench_runtime", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bench_runtime_smallest_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arts = write_artifacts(tmp_path / "ckpt")
    (tmp_path / "run").mkdir()
    url = f"sqlite:///{tmp_path / 'run' / 'lookup.db'}"
    with open_table(url) as t:
        t.record_ok(SPEC, MEAS, "r1", arts)
        t.record_ok(OTHER, OTHER_MEAS, "r1", arts)
    n = "3"
    doc = _bench().main([
        "--db", str(tmp_path / "run"), "--rates", "100KB/s,10MB/s", "--requests", n, "--overhead-requests", n,
        "--step-requests", n, "--switch-requests", n, "--timing-runs", "10", "--out", str(tmp_path / "out"),
        "--cpu", "-1",  # in the test process: never pinned
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "runtime.json").read_text())["checks"] == doc["checks"]
    assert set(doc["checks"]) == {
        "latency within 10 %", "bytes", "framing exact", "switch in ≤ 5", "no switch under noise"
    }  # fmt: skip
    for row in doc["rates"]:
        assert row["requests"] == 3 and row["framing_exact"]
        assert row["request_bytes_mean"] == 128 + HEADER_BYTES and row["payload_bytes_mean_table_images"] == 128
        assert row["predicted_ms"] > 0 and row["measured_ms"] > 0 and len(row["per_request"]) == 3
    with open_table(url, create=False) as t:  # both variants were timed into the table
        assert all(r.timing("local", "device") and r.timing("local", "server") for r in t.variants())
    sw = doc["switching"]
    assert not sw.get("skipped") and len(sw["steps"]) == 2 and len(sw["noise"]) == 2
    assert len(doc["mac"]) == 2 and "checks:" in out and "MAC-based device time" in out


def test_bench_runtime_fidelity_filter_and_cpu_are_checked(tmp_path: Path) -> None:
    arts = write_artifacts(tmp_path / "ckpt")
    (tmp_path / "run").mkdir()
    with open_table(f"sqlite:///{tmp_path / 'run' / 'lookup.db'}") as t:
        t.record_ok(SPEC, MEAS, "r1", arts)
    db = ["--db", str(tmp_path / "run"), "--out", str(tmp_path / "out")]
    others = sorted({"smoke", "screen", "fast", "full"} - {SPEC.fidelity})
    with pytest.raises(SystemExit) as e:
        _bench().main([*db, "--cpu", "-1", "--fidelity", others[0]])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        _bench().main([*db, "--cpu", "4096"])
    assert e.value.code == 2
    assert not (tmp_path / "out").exists()
