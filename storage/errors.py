"""Errors of the lookup table. All derive from :class:`~coinference.errors.CoinferenceError`, so the CLI turns them
into one line on stderr and exit code 2."""

from __future__ import annotations

from coinference.errors import CoinferenceError, ConfigError


class StorageError(CoinferenceError):
    """The lookup table cannot be opened, read or written (bad URL, unreachable server, missing file, ...)."""


class SchemaVersionError(StorageError):
    """The database was written with another schema version than this coinference understands."""


class EmptyTableError(StorageError):
    """The lookup table holds no measured (status ``ok``) variant to choose from."""


class NoFeasibleVariantError(ConfigError):
    """No measured variant satisfies the query's constraints (memory, accuracy floor, link type)."""
