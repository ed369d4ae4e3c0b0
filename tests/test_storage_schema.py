"""Opening a lookup table: URLs, the default location, SQLite settings and the schema version check."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from coinference.variant import VariantSpec
from storage import SCHEMA_VERSION, SchemaVersionError, StorageError, open_table


def test_default_location_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COINFER_DB", raising=False)
    with open_table(name="exp1") as t:
        t.mark_running(VariantSpec("tiny-cnn", "synthetic", "stem"), "exp1")
        assert "runs/exp1/lookup.db" in t.url
    assert (tmp_path / "runs" / "exp1" / "lookup.db").is_file()
    monkeypatch.setenv("COINFER_DB", f"sqlite:///{tmp_path / 'env.db'}")
    with open_table(name="ignored") as t:
        assert t.url.endswith("env.db")
    assert (tmp_path / "env.db").is_file()


def test_sqlite_settings(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with open_table(f"sqlite:///{db}") as t, t._engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    with (
        open_table(f"sqlite:///{tmp_path / 't.db'}") as t,
        t._engine.connect() as c,
        pytest.raises(Exception, match="FOREIGN KEY"),
    ):
        c.exec_driver_sql(
            "INSERT INTO variants (key, spec_json, status, run_id, created_at, updated_at) "
            "VALUES ('k', '{}', 'ok', 999, '2025-01-01', '2025-01-01')"
        )


@pytest.mark.parametrize(
    ("url", "msg"),
    [
        ("not a url", "malformed database URL 'not a url'"),
        ("nosuchdb://x/y", "unknown database dialect"),
        ("postgresql+nosuchdriver://u@h/db", "unknown database dialect"),
        ("sqlite:////nonexistent-dir-xyz/sub/t.db?mode=ro&uri=true", "no lookup table at"),
    ],
)
def test_bad_urls(url: str, msg: str) -> None:
    with pytest.raises(StorageError, match=msg):
        open_table(url, create="mode=ro" not in url)


def test_unreachable_server_is_one_line() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(StorageError, match="cannot open lookup table") as e:
        open_table("postgresql+psycopg://u@/db?host=/nonexistent-socket-dir")
    assert "\n" not in str(e.value)


def test_missing_table_is_not_created_when_reading(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no lookup table at"):
        open_table(f"sqlite:///{tmp_path / 'typo.db'}", create=False)
    assert not (tmp_path / "typo.db").exists()
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE x (a int)").connection.commit()
    with pytest.raises(StorageError, match="holds no lookup table"):
        open_table(f"sqlite:///{tmp_path / 'other.db'}", create=False)


def _set_version(db: Path, version: int) -> None:
    con = sqlite3.connect(db)
    con.execute("UPDATE schema_info SET schema_version = ?", (version,))
    con.commit()
    con.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    open_table(f"sqlite:///{db}").close()
    _set_version(db, SCHEMA_VERSION + 1)
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        open_table(f"sqlite:///{db}")
    _set_version(db, 1)  # version 1 held test accuracy only: no migration
    with pytest.raises(SchemaVersionError, match="older than"):
        open_table(f"sqlite:///{db}")
    _set_version(db, SCHEMA_VERSION)
    open_table(f"sqlite:///{db}").close()


def test_version_2_table_is_migrated_keeping_its_variants(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    s = VariantSpec("tiny-cnn", "synthetic", "stem")
    with open_table(f"sqlite:///{db}") as t:
        t.mark_running(s, "r")
    con = sqlite3.connect(db)  # a version-2 table: the same tables without `timings`
    con.execute("DROP TABLE timings")
    con.execute("UPDATE schema_info SET schema_version = 2")
    con.commit()
    con.close()
    with open_table(f"sqlite:///{db}", create=False) as t:
        rec = t.get(s.key)
        assert rec is not None and rec.timings == ()
    con = sqlite3.connect(db)
    assert con.execute("SELECT schema_version FROM schema_info").fetchone() == (SCHEMA_VERSION,)
    assert con.execute("SELECT count(*) FROM timings").fetchone() == (0,)
    con.close()


def test_reopen_keeps_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    s = VariantSpec("tiny-cnn", "synthetic", "stem")
    with open_table(url) as t:
        t.mark_running(s, "r")
    with open_table(url, create=False) as t:
        assert t.get(s.key) is not None
