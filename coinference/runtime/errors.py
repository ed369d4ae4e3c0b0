"""The runtime's errors. Both are :class:`~coinference.errors.CoinferenceError`\\ s (that module imports nothing),
so the CLI turns them into one line on stderr like every other error of this package."""

from __future__ import annotations

from coinference.errors import CoinferenceError, DataError


class PackageError(CoinferenceError):
    """A package cannot be used: no or unreadable manifest, a format newer than this runtime, a missing or altered
    file (named), a codec kind without a runtime coder, or outputs that do not reproduce the package's reference."""


class PayloadError(DataError):
    """What a runner is given cannot be used: an image of the wrong type or shape, or a payload that is truncated,
    corrupted or was made by another codec (:class:`coinference.codec.BitstreamError` is this class)."""
