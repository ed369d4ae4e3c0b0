"""The lookup table: built variants in a database (SQLAlchemy; SQLite by default), their Pareto front, the query
"which variant for this bandwidth?", and export of the chosen one.

Imports ``coinference`` only, never ``search`` or ``envs``. The public API returns frozen records; the ORM models in
``storage._models`` stay private.
"""

from __future__ import annotations

from storage._engine import ENV_VAR, default_url
from storage._models import SCHEMA_VERSION, STATUSES
from storage.errors import EmptyTableError, NoFeasibleVariantError, SchemaVersionError, StorageError
from storage.records import FAILED, OK, RUNNING, ArtifactRecord, TimingRecord, VariantRecord, highest_fidelity
from storage.table import LookupTable, open_table

__all__ = [
    "ENV_VAR",
    "FAILED",
    "OK",
    "RUNNING",
    "SCHEMA_VERSION",
    "STATUSES",
    "ArtifactRecord",
    "EmptyTableError",
    "LookupTable",
    "NoFeasibleVariantError",
    "SchemaVersionError",
    "StorageError",
    "TimingRecord",
    "VariantRecord",
    "default_url",
    "highest_fidelity",
    "open_table",
]
