"""The lookup table: every built variant's spec, status, measurement and files, in any SQLAlchemy database.

Each ``record_*`` / ``mark_running`` call is one transaction: after an exception nothing of it is left behind.
Reads run as one SELECT (variants joined with their run, measurement and artifacts), so a reader sees each variant
either before or after a concurrent writer's commit, never half of it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from coinference.errors import ConfigError
from coinference.variant import Measurement, VariantSpec
from storage import _engine
from storage._models import PARTS, STATUSES, ArtifactModel, MeasurementModel, RunModel, TimingModel, VariantModel
from storage.errors import StorageError
from storage.records import FAILED, OK, RUNNING, ArtifactRecord, TimingRecord, VariantRecord, sha256_file

T = TypeVar("T")
_WRITE_ATTEMPTS = 5


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored naive UTC (SQLite keeps no zone)


def _aware(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


class LookupTable:
    """Variants in a database. Open with :func:`open_table`; returns frozen :class:`VariantRecord` s only."""

    def __init__(self, engine: Engine, url: str, serialise: bool) -> None:
        self._engine = engine
        self.url = url
        """The database URL, password hidden."""
        # In-memory SQLite is one shared connection: transactions from several threads must take turns.
        self._lock: contextlib.AbstractContextManager[object] = (
            threading.RLock() if serialise else contextlib.nullcontext()
        )

    # ------------------------------------------------------------------------------------------- plumbing
    @contextlib.contextmanager
    def _transaction(self, write: bool) -> Iterator[Session]:
        """One database transaction: committed when the block ends, rolled back on any exception."""
        with self._lock, self._engine.connect() as conn:
            conn = conn.execution_options(coinfer_write=write)
            with conn.begin(), Session(bind=conn, expire_on_commit=False, autoflush=True) as session:
                yield session
                session.flush()

    def _write(self, fn: Callable[[Session], T]) -> T:
        # Two writers inserting the same new key or run name race on a unique index (PostgreSQL): the loser's
        # whole transaction is retried and then finds the winner's row.
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._transaction(write=True) as s:
                    return fn(s)
            except (IntegrityError, OperationalError) as e:
                if attempt == _WRITE_ATTEMPTS - 1 or not _retryable(e):
                    raise StorageError(f"lookup table {self.url}: write failed: {_first_line(e)}") from e
            except SQLAlchemyError as e:
                raise StorageError(f"lookup table {self.url}: write failed: {_first_line(e)}") from e
        raise AssertionError("unreachable")

    def _read(self, fn: Callable[[Session], T]) -> T:
        try:
            with self._transaction(write=False) as s:
                return fn(s)
        except SQLAlchemyError as e:
            raise StorageError(f"lookup table {self.url}: read failed: {_first_line(e)}") from e

    # ------------------------------------------------------------------------------------------- reads
    def get(self, key: str) -> VariantRecord | None:
        """The variant with spec hash ``key``, or None."""
        return self._read(lambda s: _maybe(_one(s, key)))

    def find(self, prefix: str) -> VariantRecord:
        """The variant whose key starts with ``prefix`` (at least 4 hex digits, like a git hash).

        Raises:
            ConfigError: no variant, or several, match ``prefix``.
        """
        prefix = prefix.strip().lower()
        if len(prefix) < 4 or any(c not in "0123456789abcdef" for c in prefix):
            raise ConfigError(f"variant key {prefix!r} must be at least 4 hex digits")

        def fn(s: Session) -> list[VariantRecord]:
            stmt = sa.select(VariantModel).where(VariantModel.key.startswith(prefix)).limit(2)
            return [_to_record(r) for r in s.scalars(stmt).unique()]

        found = self._read(fn)
        if not found:
            raise ConfigError(f"no variant with key {prefix!r} in {self.url}")
        if len(found) > 1:
            raise ConfigError(f"variant key {prefix!r} is ambiguous in {self.url}; give more digits")
        return found[0]

    def variants(self, status: str | None = None, run: str | None = None) -> list[VariantRecord]:
        """Variants in insertion order, optionally only those with ``status`` and/or written by ``run``."""
        if status is not None and status not in STATUSES:
            raise ConfigError(f"unknown variant status {status!r}; valid: {', '.join(STATUSES)}")

        def fn(s: Session) -> list[VariantRecord]:
            stmt = sa.select(VariantModel).order_by(VariantModel.id)
            if status is not None:
                stmt = stmt.where(VariantModel.status == status)
            if run is not None:
                stmt = stmt.join(VariantModel.run).where(RunModel.name == run)
            return [_to_record(r) for r in s.scalars(stmt).unique()]

        return self._read(fn)

    def runs(self) -> list[str]:
        """Names of the runs that wrote to the table, oldest first."""
        return self._read(lambda s: list(s.scalars(sa.select(RunModel.name).order_by(RunModel.id))))

    # ------------------------------------------------------------------------------------------- writes
    def mark_running(self, spec: VariantSpec, run: str) -> VariantRecord:
        """Record that ``run`` started building ``spec``. Idempotent per key: a running variant is returned as is,
        a failed one goes back to running (a retry), an ``ok`` one is never downgraded (returned unchanged)."""

        def fn(s: Session) -> VariantRecord:
            row = _one(s, spec.key, lock=True)
            if row is None:
                row = _new_row(s, spec, run, RUNNING)
            elif row.status == FAILED:
                row.status, row.error, row.run, row.updated_at = RUNNING, None, _run(s, run), _now()
            return _to_record(row)

        return self._write(fn)

    def record_ok(
        self,
        spec: VariantSpec,
        measurement: Measurement,
        run: str,
        artifacts: Mapping[str, str | Path] | None = None,
    ) -> VariantRecord:
        """Record a built variant: status ``ok``, its measurement (replacing any earlier one) and its files.

        ``artifacts`` maps a role (``device``, ``server``, ``codec``, ...) to an existing file; its sha256 and size
        are recorded. Artifacts with other names recorded earlier are kept.

        Raises:
            ConfigError: an artifact file does not exist.
        """
        files = _hash_files(artifacts or {})

        def fn(s: Session) -> VariantRecord:
            row = _one(s, spec.key, lock=True) or _new_row(s, spec, run, OK)
            row.status, row.error, row.run, row.updated_at = OK, None, _run(s, run), _now()
            _set_measurement(s, row, measurement)
            _set_artifacts(s, row, files)
            return _to_record(row)

        return self._write(fn)

    def record_failure(self, spec: VariantSpec, error: str, run: str) -> VariantRecord:
        """Record a failed build: status ``failed`` with ``error``; any earlier measurement and its timings are
        removed (files are kept for inspection)."""

        def fn(s: Session) -> VariantRecord:
            row = _one(s, spec.key, lock=True) or _new_row(s, spec, run, FAILED)
            row.status, row.error, row.run, row.updated_at = FAILED, str(error), _run(s, run), _now()
            row.measurement = None
            row.timings.clear()  # they timed the parts of the measurement that is gone
            return _to_record(row)

        return self._write(fn)

    def add_artifacts(self, key: str, artifacts: Mapping[str, str | Path]) -> VariantRecord:
        """Attach more files (e.g. an export's manifest) to an existing variant; same names are replaced.

        Raises:
            ConfigError: unknown key or a missing file.
        """
        files = _hash_files(artifacts)

        def fn(s: Session) -> VariantRecord:
            row = _one(s, key, lock=True)
            if row is None:
                raise ConfigError(f"no variant with key {key!r} in {self.url}")
            _set_artifacts(s, row, files)
            row.updated_at = _now()
            return _to_record(row)

        return self._write(fn)

    def record_timing(
        self, key: str, profile: str, part: str, seconds: float, samples: int, runtime: str, host: str
    ) -> VariantRecord:
        """Store the measured latency of one part of an ``ok`` variant on ``profile`` (replacing an earlier one).

        Raises:
            ConfigError: unknown key, a variant that is not ``ok``, an unknown part, or a time that is not a
                finite number > 0.
        """
        if part not in PARTS:
            raise ConfigError(f"unknown part {part!r}; valid: {', '.join(PARTS)}")
        if not (isinstance(seconds, int | float) and 0 < seconds < float("inf")):
            raise ConfigError(f"measured time must be finite and > 0 s, got {seconds!r}")
        if samples < 1 or not profile:
            raise ConfigError(f"a timing needs a profile name and ≥ 1 sample, got {profile!r}, {samples}")

        def fn(s: Session) -> VariantRecord:
            row = _one(s, key, lock=True)
            if row is None:
                raise ConfigError(f"no variant with key {key!r} in {self.url}")
            if row.status != OK:
                raise ConfigError(f"variant {key[:12]} has status {row.status!r}: only measured variants are timed")
            t = next((t for t in row.timings if t.profile == profile and t.part == part), None)
            if t is None:
                t = TimingModel(profile=profile, part=part)
                row.timings.append(t)
            t.seconds, t.samples, t.runtime, t.host, t.created_at = float(seconds), int(samples), runtime, host, _now()
            return _to_record(row)

        return self._write(fn)

    def close(self) -> None:
        """Release the database connections (an in-memory table is gone afterwards)."""
        self._engine.dispose()

    def __enter__(self) -> LookupTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LookupTable({self.url!r})"


def open_table(url: str | None = None, name: str = "default", create: bool = True) -> LookupTable:
    """Open (and, with ``create``, initialise) a lookup table.

    Args:
        url: any SQLAlchemy URL (``sqlite:///runs/x/lookup.db``, ``sqlite://`` in memory,
            ``postgresql+psycopg://user@host/db``); None: ``$COINFER_DB``, else ``sqlite:///runs/<name>/lookup.db``.
        name: run name used for the default SQLite path.
        create: create a missing SQLite file and the schema; False (read-only commands) makes a missing table an
            error instead.

    Raises:
        StorageError: malformed URL, unknown dialect, unreachable server, missing table (``create=False``).
        SchemaVersionError: the database was written by another schema version.
    """
    parsed = _engine.parse_url(url if url is not None else _engine.default_url(name))
    engine = _engine.prepare(parsed, create)
    return LookupTable(engine, _engine.display(parsed), serialise=_engine.is_sqlite_memory(parsed))


# ------------------------------------------------------------------------------------------- row helpers
def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _retryable(e: SQLAlchemyError) -> bool:
    if isinstance(e, IntegrityError):
        return True
    # PostgreSQL serialization failure / deadlock; SQLite "database is locked" after the busy timeout is not retried.
    code = getattr(getattr(e, "orig", None), "sqlstate", None)
    return code in ("40001", "40P01")


def _one(s: Session, key: str, lock: bool = False) -> VariantModel | None:
    stmt = sa.select(VariantModel).where(VariantModel.key == key)
    if lock:
        stmt = stmt.with_for_update(of=VariantModel)  # PostgreSQL row lock; SQLite holds the database lock already
    return s.scalars(stmt).unique().one_or_none()


def _maybe(row: VariantModel | None) -> VariantRecord | None:
    return None if row is None else _to_record(row)


def _run(s: Session, name: str) -> RunModel:
    if not name:
        raise ConfigError("run name must not be empty")
    row = s.scalars(sa.select(RunModel).where(RunModel.name == name)).one_or_none()
    if row is None:
        row = RunModel(name=name, created_at=_now())
        s.add(row)
    return row


def _new_row(s: Session, spec: VariantSpec, run: str, status: str) -> VariantModel:
    now = _now()
    row = VariantModel(
        key=spec.key,
        spec_json=spec.to_json(),
        status=status,
        error=None,
        run=_run(s, run),
        created_at=now,
        updated_at=now,
    )
    s.add(row)
    return row


def _set_measurement(s: Session, row: VariantModel, m: Measurement) -> None:
    cols = {
        "val_accuracy": float(m.val_accuracy),
        "test_accuracy": None if m.test_accuracy is None else float(m.test_accuracy),
        "device_macs": int(m.device_macs),
        "server_macs": int(m.server_macs),
        "bits_mean": float(m.bits_mean),
        "device_memory_bytes": int(m.device_memory_bytes),
        "json": json.dumps(m.to_dict(), sort_keys=True),
    }
    if row.measurement is None:
        row.measurement = MeasurementModel(**cols)
    else:
        for k, v in cols.items():
            setattr(row.measurement, k, v)


def _hash_files(artifacts: Mapping[str, str | Path]) -> dict[str, tuple[str, str, int]]:
    # Hashed before the transaction opens, so a large file never holds the database's write lock.
    out = {}
    for name, p in artifacts.items():
        path = Path(p).resolve()
        if not name:
            raise ConfigError("artifact name must not be empty")
        if not path.is_file():
            raise ConfigError(f"artifact {name!r}: no file at {path}")
        out[name] = (str(path), sha256_file(path), path.stat().st_size)
    return out


def _set_artifacts(s: Session, row: VariantModel, files: dict[str, tuple[str, str, int]]) -> None:
    by_name = {a.name: a for a in row.artifacts}
    now = _now()
    for name, (path, digest, size) in files.items():
        a = by_name.get(name)
        if a is None:
            row.artifacts.append(ArtifactModel(name=name, path=path, sha256=digest, size_bytes=size, created_at=now))
        else:
            a.path, a.sha256, a.size_bytes, a.created_at = path, digest, size, now


def _to_record(row: VariantModel) -> VariantRecord:
    m = row.measurement
    return VariantRecord(
        key=row.key,
        spec=VariantSpec.from_json(row.spec_json),
        status=row.status,
        error=row.error,
        measurement=None if m is None else Measurement.from_dict(json.loads(m.json)),
        run=row.run.name,
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
        artifacts={
            a.name: ArtifactRecord(a.name, Path(a.path), a.sha256, a.size_bytes, _aware(a.created_at))
            for a in row.artifacts
        },
        timings=tuple(
            TimingRecord(t.profile, t.part, t.seconds, t.samples, t.runtime, t.host, _aware(t.created_at))
            for t in row.timings
        ),
    )
