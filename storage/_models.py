"""SQLAlchemy ORM models of the lookup table. Private: the public API returns frozen records
(:mod:`storage.records`), never these rows.

Schema (version :data:`SCHEMA_VERSION`)::

    schema_info   id, schema_version, library_version
    runs          id, name (unique), created_at
    variants      id, key (unique, sha256 of the spec's canonical JSON), spec_json, status (running|ok|failed),
                  error, run_id → runs, created_at, updated_at
    measurements  id, variant_id → variants (unique, cascade), the query/Pareto columns, json (the whole record)
    artifacts     id, variant_id → variants (cascade), name, path, sha256, size_bytes, created_at; (variant_id, name)
                  unique
    timings       id, variant_id → variants (cascade), profile, part (device|server), seconds, samples, runtime,
                  host, created_at; (variant_id, profile, part) unique — a part's latency measured in the deployed
                  runtime on a real machine (profile ``local``: this one)

Timestamps are stored as naive UTC (SQLite has no time zones) and returned as aware UTC.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SCHEMA_VERSION = 3
"""Bumped on every change of the tables; a database with another version is migrated when a migration exists
(``storage._engine.MIGRATIONS``), else refused. 3: measured part latencies (``timings``; 2 → 3 adds the table);
2: validation and test accuracy apart (``val_accuracy`` ranks, ``test_accuracy`` is reported); 1 had one accuracy,
measured on test images."""

PARTS = ("device", "server")

STATUSES = ("running", "ok", "failed")


class Base(DeclarativeBase):
    pass


class SchemaInfoModel(Base):
    __tablename__ = "schema_info"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schema_version: Mapped[int] = mapped_column(Integer, nullable=False)
    library_version: Mapped[str] = mapped_column(String(64), nullable=False)


class RunModel(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class VariantModel(Base):
    __tablename__ = "variants"
    __table_args__ = (CheckConstraint(f"status IN {STATUSES!r}", name="ck_variants_status"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True, index=True, nullable=False)
    spec_json: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), index=True, nullable=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)

    run: Mapped[RunModel] = relationship(lazy="joined", innerjoin=True)
    measurement: Mapped[MeasurementModel | None] = relationship(
        back_populates="variant", uselist=False, cascade="all, delete-orphan", lazy="joined"
    )
    artifacts: Mapped[list[ArtifactModel]] = relationship(
        back_populates="variant", cascade="all, delete-orphan", lazy="joined", order_by="ArtifactModel.name"
    )
    timings: Mapped[list[TimingModel]] = relationship(
        back_populates="variant", cascade="all, delete-orphan", lazy="joined", order_by="TimingModel.id"
    )


class MeasurementModel(Base):
    __tablename__ = "measurements"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"), unique=True, nullable=False)
    # Columns for filtering and sorting in SQL; `json` holds the whole Measurement (the source of truth).
    val_accuracy: Mapped[float] = mapped_column(Double, nullable=False)
    test_accuracy: Mapped[float | None] = mapped_column(Double, nullable=True)
    device_macs: Mapped[int] = mapped_column(BigInteger, nullable=False)
    server_macs: Mapped[int] = mapped_column(BigInteger, nullable=False)
    bits_mean: Mapped[float] = mapped_column(Double, nullable=False)
    device_memory_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    json: Mapped[str] = mapped_column(Text, nullable=False)

    variant: Mapped[VariantModel] = relationship(back_populates="measurement")


class ArtifactModel(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("variant_id", "name", name="uq_artifacts_variant_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"), index=True, nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)

    variant: Mapped[VariantModel] = relationship(back_populates="artifacts")


class TimingModel(Base):
    __tablename__ = "timings"
    __table_args__ = (
        UniqueConstraint("variant_id", "profile", "part", name="uq_timings_variant_profile_part"),
        CheckConstraint(f"part IN {PARTS!r}", name="ck_timings_part"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"), index=True, nullable=False)
    profile: Mapped[str] = mapped_column(String(64), nullable=False)
    part: Mapped[str] = mapped_column(String(16), nullable=False)
    seconds: Mapped[float] = mapped_column(Double, nullable=False)
    samples: Mapped[int] = mapped_column(Integer, nullable=False)
    runtime: Mapped[str] = mapped_column(String(255), nullable=False)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)

    variant: Mapped[VariantModel] = relationship(back_populates="timings")
