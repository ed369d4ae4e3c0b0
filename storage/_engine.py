"""Engines for the lookup table: URL resolution, SQLite settings, schema creation and version check."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from storage._models import SCHEMA_VERSION, Base, SchemaInfoModel, TimingModel
from storage.errors import SchemaVersionError, StorageError

ENV_VAR = "COINFER_DB"
SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long an SQLite writer waits for another writer's lock before giving up."""


def default_url(name: str = "default") -> str:
    """``$COINFER_DB`` when set, else ``sqlite:///runs/<name>/lookup.db`` (relative to the working directory)."""
    return os.environ.get(ENV_VAR) or f"sqlite:///runs/{name}/lookup.db"


def parse_url(url: str) -> URL:
    """Parse a SQLAlchemy URL; raises :class:`StorageError` naming the bad value."""
    try:
        return sa.make_url(url)
    except (ArgumentError, ValueError) as e:
        raise StorageError(f"malformed database URL {url!r} (expected e.g. sqlite:///runs/x/lookup.db): {e}") from None


def display(url: URL) -> str:
    """The URL with its password hidden, for messages."""
    return url.render_as_string(hide_password=True)


def is_sqlite_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    )


def _sqlite_file(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or is_sqlite_memory(url) or url.database is None:
        return None
    db = url.database
    return Path(db[5:].split("?")[0]) if db.startswith("file:") else Path(db)


def _on_sqlite_connect(wal: bool) -> Callable[[Any, Any], None]:
    def connect(dbapi_conn: Any, _record: Any) -> None:
        # SQLAlchemy issues BEGIN itself (see `_on_sqlite_begin`): pysqlite's own implicit transactions begin
        # lazily, so a read-then-write transaction could not wait for the write lock (instant "database locked").
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        if wal:
            cur.execute("PRAGMA journal_mode = WAL")  # readers never block the writer, nor it them
            cur.execute("PRAGMA synchronous = NORMAL")  # safe in WAL mode; may lose the last commit on power loss
        cur.close()

    return connect


def _on_sqlite_begin(conn: Connection) -> None:
    # Writers take the write lock up front (and wait for it up to the busy timeout); readers get a snapshot.
    write = conn.get_execution_options().get("coinfer_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_engine(url: URL, wal: bool = True) -> Engine:
    """An engine for ``url``: SQLite files get WAL, a busy timeout and foreign keys; in-memory SQLite one shared
    connection (callers serialise access); other back ends their dialect's defaults."""
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False}
        if is_sqlite_memory(url):
            kwargs["poolclass"] = StaticPool
    elif url.get_backend_name() == "postgresql":
        kwargs["pool_pre_ping"] = True
    try:
        engine = sa.create_engine(url, **kwargs)
    except NoSuchModuleError:
        raise StorageError(
            f"unknown database dialect in {display(url)!r} (try sqlite:///path.db or postgresql+psycopg://...)"
        ) from None
    except ImportError as e:
        raise StorageError(f"database driver for {display(url)!r} is not installed: {e}") from None
    except (ArgumentError, ValueError, TypeError) as e:
        raise StorageError(f"bad database URL {display(url)!r}: {e}") from None
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _on_sqlite_connect(wal=wal and not is_sqlite_memory(url)))
        event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _library_version() -> str:
    try:
        return metadata.version("coinference")
    except metadata.PackageNotFoundError:
        return "unknown"


def prepare(url: URL, create: bool) -> Engine:
    """Open ``url``, create the schema when ``create`` and the database is empty, and check its version.

    Raises:
        StorageError: bad URL, unreachable database, missing SQLite file (``create=False``), or tables that
            are not a coinference lookup table.
        SchemaVersionError: the database's schema version differs from :data:`SCHEMA_VERSION`.
    """
    path = _sqlite_file(url)
    if path is not None:
        if not path.exists() and not create:
            raise StorageError(f"no lookup table at {path} (run a search first, or pass --db)")
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
    # Only a table being created is switched to WAL (a persistent setting of the file): opening an existing file
    # never rewrites it, so a mistyped --db that names some other SQLite file is left as it was.
    engine = create_engine(url, wal=create)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(coinfer_write=True)
            with conn.begin():
                _check_or_create(conn, url, create)
    except StorageError:
        engine.dispose()
        raise
    except SQLAlchemyError as e:
        engine.dispose()
        orig = getattr(e, "orig", None)
        first = str(orig if orig is not None else e).strip().splitlines()
        raise StorageError(f"cannot open lookup table {display(url)!r}: {first[0] if first else e}") from None
    return engine


def _add_timings(conn: Connection) -> None:
    """2 → 3: the ``timings`` table (new and empty: nothing stored before changes)."""
    TimingModel.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _add_timings}
"""version → the step that brings a table of that version to the next; only additive steps, so a table migrated by
one process reads the same to every other of the new version."""


def _check_or_create(conn: Connection, url: URL, create: bool) -> None:
    tables = set(sa.inspect(conn).get_table_names())
    if SchemaInfoModel.__tablename__ not in tables:
        if tables & set(Base.metadata.tables):
            raise StorageError(f"{display(url)!r} has lookup-table tables but no schema_info: not ours, or damaged")
        if not create:
            raise StorageError(f"{display(url)!r} holds no lookup table")
        Base.metadata.create_all(conn)
        conn.execute(
            sa.insert(SchemaInfoModel).values(id=1, schema_version=SCHEMA_VERSION, library_version=_library_version())
        )
        return
    row = conn.execute(sa.select(SchemaInfoModel.schema_version, SchemaInfoModel.library_version)).first()
    if row is None:
        raise StorageError(f"{display(url)!r}: schema_info is empty (damaged lookup table)")
    version, library = row
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"lookup table {display(url)!r} has schema version {version}, newer than this coinference's "
            f"{SCHEMA_VERSION} (written by coinference {library}); upgrade coinference"
        )
    while version < SCHEMA_VERSION and version in MIGRATIONS:
        MIGRATIONS[version](conn)
        version += 1
        conn.execute(sa.update(SchemaInfoModel).values(schema_version=version))
    if version < SCHEMA_VERSION:
        raise SchemaVersionError(
            f"lookup table {display(url)!r} has schema version {version}, older than this coinference's "
            f"{SCHEMA_VERSION}, and no migration exists (version 2 selects on validation accuracy; older tables hold "
            f"test accuracy only); re-run the search into a new table"
        )
