"""Contract suite of the lookup table, run against every back end: SQLite file, SQLite in memory and a real
PostgreSQL server started by the ``postgres_server`` fixture (like Optuna's ``testing/pytest_storages.py``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pg_server import PostgresServer, start_postgres

import storage.table as table_mod
from coinference.errors import ConfigError
from coinference.variant import Measurement, VariantSpec
from storage import FAILED, OK, RUNNING, LookupTable, VariantRecord, open_table

BACKENDS = ["sqlite-file", "sqlite-memory", pytest.param("postgresql", marks=pytest.mark.postgres)]
ROOT = Path(__file__).resolve().parents[1]


def spec(i: int = 0, **kw: object) -> VariantSpec:
    return VariantSpec("tiny-cnn", "synthetic", "block1", sparsity=round(0.05 * (i % 19), 2), seed=i, **kw)  # type: ignore[arg-type]


def meas(acc: float = 0.9, macs: int = 1_000, bits: float = 64.0) -> Measurement:
    return Measurement(acc, device_macs=macs, server_macs=5_000, bits_mean=bits, bits_max=int(bits) + 8)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster on a unix socket in a temp dir (no TCP), for this test session."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, LookupTable, Callable[[], LookupTable]]]:
    """(name, table, reopen): ``reopen()`` gives another handle on the same data (own connections, except in
    memory, where the one table is shared)."""
    name = request.param
    if name == "sqlite-file":
        url = f"sqlite:///{tmp_path / 'lookup.db'}"
    elif name == "sqlite-memory":
        url = "sqlite://"
    else:
        url = request.getfixturevalue("postgres_server").new_database()
    table = open_table(url)
    others: list[LookupTable] = []

    def reopen() -> LookupTable:
        if name == "sqlite-memory":
            return table
        others.append(open_table(url))
        return others[-1]

    yield name, table, reopen
    for t in others:
        t.close()
    table.close()


def assert_consistent(r: VariantRecord) -> None:
    """A record is never half-written: ok ⇔ measurement, failed ⇔ error."""
    assert (r.status == OK) == (r.measurement is not None), r
    assert (r.status == FAILED) == (r.error is not None), r


# ------------------------------------------------------------------------------------------- contract suite
def test_insert_and_read(backend, tmp_path: Path) -> None:
    _, table, reopen = backend
    assert table.get(spec().key) is None and table.variants() == []
    rec = table.mark_running(spec(), "run-a")
    assert rec.key == spec().key and rec.spec == spec() and rec.status == RUNNING and rec.run == "run-a"
    assert rec.measurement is None and rec.error is None and rec.created_at.tzinfo is not None
    ckpt = tmp_path / "device.pt"
    ckpt.write_bytes(b"weights")
    ok = table.record_ok(spec(1), meas(0.8, 123, 45.5), "run-b", {"device": ckpt})
    assert ok.measurement == meas(0.8, 123, 45.5)
    art = ok.artifacts["device"]
    assert art.path == ckpt.resolve() and art.size_bytes == 7 and art.check() is None
    other = reopen()
    assert other.get(spec(1).key) == ok
    assert [r.key for r in other.variants()] == [spec().key, spec(1).key]
    assert [r.key for r in other.variants(status=OK)] == [spec(1).key]
    assert [r.key for r in other.variants(run="run-a")] == [spec().key]
    assert other.runs() == ["run-a", "run-b"]
    assert other.find(spec(1).key[:8]) == ok
    ckpt.write_bytes(b"changed")
    assert "sha256 mismatch" in (other.get(spec(1).key).artifacts["device"].check() or "")  # type: ignore[union-attr]


def test_update_status(backend) -> None:
    _, table, _ = backend
    s = spec(2)
    created = table.mark_running(s, "r").created_at
    failed = table.record_failure(s, "TrainingError: loss is nan", "r")
    assert failed.status == FAILED and failed.error == "TrainingError: loss is nan" and failed.measurement is None
    again = table.mark_running(s, "r2")  # a retry of a failed variant
    assert again.status == RUNNING and again.error is None and again.run == "r2"
    ok = table.record_ok(s, meas(), "r2")
    assert ok.status == OK and ok.measurement == meas() and ok.created_at == created and ok.updated_at >= created
    assert table.mark_running(s, "r3") == ok  # never downgraded
    assert table.mark_running(s, "r3") == ok  # idempotent
    refailed = table.record_failure(s, "boom", "r3")
    assert refailed.measurement is None and refailed.status == FAILED
    assert len(table.variants()) == 1
    for r in table.variants():
        assert_consistent(r)


def test_timings_are_stored_per_profile_and_part(backend) -> None:
    _, table, reopen = backend
    s = spec(4)
    table.mark_running(s, "r")
    with pytest.raises(ConfigError, match="status 'running'"):
        table.record_timing(s.key, "local", "device", 0.001, 10, "onnxruntime", "host")
    table.record_ok(s, meas(), "r")
    for bad, match in (({"part": "both"}, "unknown part 'both'"), ({"seconds": 0.0}, "finite and > 0"),
                       ({"seconds": float("nan")}, "finite and > 0"), ({"samples": 0}, "≥ 1 sample")):  # fmt: skip
        kw = {"profile": "local", "part": "device", "seconds": 0.001, "samples": 5, "runtime": "ort", "host": "h"}
        with pytest.raises(ConfigError, match=match):
            table.record_timing(s.key, **{**kw, **bad})  # type: ignore[arg-type]
    table.record_timing(s.key, "local", "device", 0.002, 200, "onnxruntime 1.x, 1 thread", "host")
    table.record_timing(s.key, "local", "server", 0.003, 200, "onnxruntime 1.x, 1 thread", "host")
    rec = table.record_timing(s.key, "local", "device", 0.0015, 300, "onnxruntime 1.x, 1 thread", "host")  # replaces
    got = reopen().get(s.key)
    assert got == rec and len(got.timings) == 2
    assert got.timing("local", "device").seconds == 0.0015 and got.timing("local", "device").samples == 300
    assert got.timing("local", "server").seconds == 0.003 and got.timing("rpi3", "device") is None
    assert table.record_failure(s, "rebuilt badly", "r").timings == ()  # they timed a measurement that is gone


def test_mark_running_idempotent(backend) -> None:
    _, table, _ = backend
    a = table.mark_running(spec(3), "r")
    b = table.mark_running(spec(3), "r")
    assert a == b and len(table.variants()) == 1


def test_no_partial_rows_after_exception(backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, table, reopen = backend
    table.mark_running(spec(4), "r")
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")

    def boom(s, row, files):  # type: ignore[no-untyped-def]
        s.flush()  # the variant and measurement rows are in the database, uncommitted
        raise RuntimeError("disk full")

    monkeypatch.setattr(table_mod, "_set_artifacts", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        table.record_ok(spec(4), meas(), "other-run", {"device": f})  # update of an existing row
    with pytest.raises(RuntimeError, match="disk full"):
        table.record_ok(spec(5), meas(), "new-run", {"device": f})  # insert of a new row and a new run
    monkeypatch.undo()
    other = reopen()
    rec = other.get(spec(4).key)
    assert rec is not None and rec.status == RUNNING and rec.measurement is None and rec.artifacts == {}
    assert rec.run == "r"
    assert other.get(spec(5).key) is None
    assert other.runs() == ["r"]
    # and the table still works after the rollback
    assert table.record_ok(spec(5), meas(), "new-run", {"device": f}).status == OK


def test_missing_artifact_is_refused_before_writing(backend, tmp_path: Path) -> None:
    _, table, _ = backend
    with pytest.raises(ConfigError, match="no file at"):
        table.record_ok(spec(6), meas(), "r", {"device": tmp_path / "nope.pt"})
    assert table.get(spec(6).key) is None


def test_reader_sees_old_or_new_while_writer_commits(backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A second thread reads while the writer is inside its transaction (rows flushed, not committed)."""
    name, table, reopen = backend
    table.mark_running(spec(7), "r")
    reader = reopen()
    f = tmp_path / "d.bin"
    f.write_bytes(b"d")
    inside, release = threading.Event(), threading.Event()
    real = table_mod._set_artifacts

    def slow(s, row, files):  # type: ignore[no-untyped-def]
        real(s, row, files)
        s.flush()
        inside.set()
        assert release.wait(10)

    monkeypatch.setattr(table_mod, "_set_artifacts", slow)
    errors: list[BaseException] = []
    writer = threading.Thread(
        target=lambda: _capture(errors, lambda: table.record_ok(spec(7), meas(), "r", {"device": f}))
    )
    writer.start()
    assert inside.wait(10)
    seen: list[VariantRecord | None] = []
    read = threading.Thread(target=lambda: _capture(errors, lambda: seen.append(reader.get(spec(7).key))))
    read.start()
    read.join(timeout=1.0)
    if name == "sqlite-memory":
        assert read.is_alive()  # one shared connection: the reader waits for the commit
    else:
        assert not read.is_alive(), "a reader must not wait for the writer (WAL / MVCC)"
        assert seen[0] is not None and seen[0].status == RUNNING and seen[0].artifacts == {}
    release.set()
    writer.join(10)
    read.join(10)
    assert not errors, errors
    assert seen[0] is not None
    assert_consistent(seen[0])
    after = reader.get(spec(7).key)
    assert after is not None and after.status == OK and set(after.artifacts) == {"device"}


def _capture(errors: list[BaseException], fn: Callable[[], object]) -> None:
    try:
        fn()
    except BaseException as e:
        errors.append(e)


def test_concurrent_writers(backend) -> None:
    """Two threads, each with its own handle, write 8 variants each under the same new run name."""
    _, _table, reopen = backend
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        t = reopen()
        for i in range(offset, offset + 8):
            t.mark_running(spec(i), "shared")
            t.record_ok(spec(i), meas(acc=0.5 + i / 100), "shared")

    threads = [threading.Thread(target=_capture, args=(errors, lambda o=o: work(o))) for o in (100, 200)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    ok = reopen().variants(status=OK, run="shared")
    assert len(ok) == 16 and len({r.key for r in ok}) == 16


READER = textwrap.dedent(
    """
    import json, sys, time
    from storage import open_table
    table = open_table(sys.argv[1], create=False)
    table.variants()
    print("ready", flush=True)
    reads, last, problems = 0, 0, []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = table.variants()
        ok = [r for r in rows if r.status == "ok"]
        for r in rows:
            if (r.status == "ok") != (r.measurement is not None) or (r.status == "ok" and "device" not in r.artifacts):
                problems.append(r.key)
        if len(ok) < last:
            problems.append(f"ok count went back from {last} to {len(ok)}")
        last, reads = len(ok), reads + 1
        if last >= int(sys.argv[2]):
            break
    print(json.dumps({"reads": reads, "last": last, "problems": problems}))
    """
)


def test_reader_process_while_writer_commits(backend, tmp_path: Path) -> None:
    """A real second process polls the table while this one commits variant after variant."""
    name, table, _ = backend
    if name == "sqlite-memory":
        pytest.skip("an in-memory database cannot be shared with another process")
    n = 25
    f = tmp_path / "d.bin"
    f.write_bytes(b"d")
    table.mark_running(spec(0), "r")  # the schema exists before the reader opens it
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    url = _url_of(backend)
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, url, str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr.read()  # type: ignore[union-attr]
    for i in range(n):
        table.mark_running(spec(i), "r")
        table.record_ok(spec(i), meas(), "r", {"device": f})
        time.sleep(0.005)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    res = json.loads(out)
    assert res["problems"] == [] and res["last"] == n and res["reads"] >= 2, res


def _url_of(backend: tuple[str, LookupTable, Callable[[], LookupTable]]) -> str:
    table = backend[1]
    return table._engine.url.render_as_string(hide_password=False)


# ------------------------------------------------------------------------------------------- PostgreSQL setup
def test_postgres_fixture_reports_why_it_skips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("pg_server.PG_BIN_GLOBS", ())
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL binaries .* not found"):
        start_postgres()


@pytest.mark.postgres
def test_postgres_is_a_real_server(postgres_server: PostgresServer) -> None:
    import sqlalchemy as sa

    url = postgres_server.new_database()
    engine = sa.create_engine(url)
    with engine.connect() as c:
        assert c.execute(sa.text("select version()")).scalar().startswith("PostgreSQL")  # type: ignore[union-attr]
    engine.dispose()
    assert shutil.which("pg_ctl") or postgres_server.bin_dir
