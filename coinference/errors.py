"""Exception hierarchy: one root, a subclass per kind of bad input. The CLI turns any of them into one line."""

from __future__ import annotations


class CoinferenceError(Exception):
    """Root of every error this package raises on purpose (bad input, bad data, failed variant)."""


class ConfigError(CoinferenceError, ValueError):
    """A parameter value is out of range or inconsistent (sparsity, split point, bandwidth, ...)."""


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup (model, data set, codec, ...) got a name it does not know."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it one plain line.
        return str(self.args[0]) if self.args else ""


class DataError(CoinferenceError):
    """A data set is missing, truncated, corrupt or has the wrong shape."""


class CheckpointError(CoinferenceError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


class TrainingError(CoinferenceError):
    """Training failed (e.g. the loss became NaN or infinite); a search records it as a failed variant."""


class EnvironmentProblem(CoinferenceError):
    """The machine or the inputs, not the variant: missing data, unreadable weights, out of disk, interrupted.

    A search stops on it and records nothing for the variant, so a later run (with the inputs fixed) builds it.
    """
