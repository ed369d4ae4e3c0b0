"""Checks every command runs on its arguments before any work starts (and before any heavy import).

Each raises :class:`~coinference.errors.ConfigError` with the option and the bad value in one line; the CLI turns
it into ``coinfer: error: …`` and exit code 2. Nothing here creates a file or a folder: a command that fails
validation leaves the disk as it found it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from coinference.errors import ConfigError, DataError, UnknownNameError
from search.runs import run_name as run_name


def finite(option: str, value: float) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{option} must be a finite number, got {value!r}")
    return value


def in_range(
    option: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` when finite and within [low, high] (an open end excludes its bound)."""
    finite(option, value)
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
        if low is not None and high is not None:
            want = f"in {lo}, {hi}"
        elif low is not None:
            want = f"{'>' if low_open else '≥'} {low:g}"
        else:
            want = f"{'<' if high_open else '≤'} {high:g}"
        raise ConfigError(f"{option} must be {want}, got {value!r}")
    return value


def _items(option: str, text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or "" in items:
        raise ConfigError(f"{option} must be a comma-separated list without empty items, got {text!r}")
    seen = set()
    for t in items:
        if t in seen:
            raise ConfigError(f"{option} lists {t!r} twice, got {text!r}")
        seen.add(t)
    return items


def number_list(option: str, text: str, low: float, high: float, *, high_open: bool = False) -> tuple[float, ...]:
    """Comma-separated numbers (``0,0.25,0.5``), each finite and within [low, high] (``high_open``: [low, high)),
    none twice."""
    out = []
    for t in _items(option, text):
        try:
            v = float(t)
        except ValueError:
            raise ConfigError(f"{option} must be comma-separated numbers, got {t!r} in {text!r}") from None
        if v in out:
            raise ConfigError(f"{option} lists {v:g} twice, got {text!r}")
        out.append(in_range(option, v, low, high, high_open=high_open))
    return tuple(out)


def name_list(option: str, text: str, kind: str, valid: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated names (``sq,jscc-awgn``), each one of ``valid``, none twice; an unknown one lists the valid
    names."""
    items = _items(option, text)
    for t in items:
        if t not in valid:
            raise UnknownNameError(f"{option}: unknown {kind} {t!r}; valid: {', '.join(valid)}")
    return tuple(items)


def at_least(option: str, value: int, minimum: int = 1) -> int:
    if value < minimum:
        raise ConfigError(f"{option} must be ≥ {minimum}, got {value}")
    return value


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def writable_dir(option: str, path: Path) -> Path:
    """A folder that exists and is writable, or that can be created (its nearest existing parent is a writable
    folder). Nothing is created here."""
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{option} {str(path)!r} exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {str(path)!r} is not writable")
        return path
    parent = _nearest_existing(path)
    if not parent.is_dir():
        raise ConfigError(f"{option} {str(path)!r} cannot be created: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {str(path)!r} cannot be created: {str(parent)!r} is not writable")
    return path


def writable_file(option: str, path: Path) -> Path:
    """A file that can be written (created, or replaced when it is a file). Nothing is created here."""
    if path.exists():
        if path.is_dir():
            raise ConfigError(f"{option} {str(path)!r} is a folder, not a file")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{option} {str(path)!r} is not writable")
        return path
    writable_dir(option, path.parent)
    return path


def readable_file(option: str, path: Path) -> Path:
    """An existing, readable regular file."""
    if not path.exists():
        raise DataError(f"{option} {str(path)!r} does not exist")
    if not path.is_file():
        raise DataError(f"{option} {str(path)!r} is not a file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{option} {str(path)!r} is not readable")
    return path


def existing_dir(option: str, path: Path) -> Path:
    """An existing folder (a data set's files)."""
    if not path.exists():
        raise DataError(f"{option} {str(path)!r} does not exist")
    if not path.is_dir():
        raise DataError(f"{option} {str(path)!r} is not a folder")
    return path
