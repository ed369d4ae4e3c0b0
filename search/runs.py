"""Where runs live: ``<runs root>/<name>/`` per run, and which lookup table a table command reads.

Light on purpose (no torch, no SQLAlchemy): the CLI resolves paths before it imports anything heavy.

The table a command reads, first match wins:

1. ``--db``: a SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``), or a plain path to an SQLite file
   (or to a run folder holding ``lookup.db``);
2. ``$COINFER_DB`` (the same forms as ``--db``);
3. ``--name NAME``: ``<runs root>/NAME/lookup.db``;
4. the table ``coinfer search`` wrote last (its run name and table URL are kept in ``<runs root>/LAST_RUN``), so
   that the table commands find ``make demo``'s table without flags, wherever ``--db`` put it;
5. the only run under the runs root that has a table; with none or several, an error says what to pass.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from coinference.errors import ConfigError

DEFAULT_RUNS_ROOT = Path("runs")
LAST_RUN = "LAST_RUN"
"""File under the runs root naming the run the last search wrote."""
ENV_VAR = "COINFER_DB"
TABLE_FILE = "lookup.db"
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A run name: one folder under the runs root — letters, digits, ``.``, ``_``, ``-``; no path separators."""


def run_name(name: str, option: str = "--name") -> str:
    """A run name that stays inside the runs root (no ``/``, ``..``, absolute paths, blanks or control bytes)."""
    if not RUN_NAME.match(name) or name in (".", ".."):
        raise ConfigError(
            f"{option} must be 1-64 letters, digits, '.', '_' or '-' starting with a letter or digit "
            f"(a folder under the runs root), got {name!r}"
        )
    return name


@dataclass(frozen=True)
class TableRef:
    """A lookup table to open, and the folder that owns it (default home of the command's output files)."""

    url: str
    home: Path
    how: str
    """How it was found (``--db``, ``$COINFER_DB``, ``--name``, ``last run``, ``only run``), for messages."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.absolute()}"


def db_url(text: str) -> tuple[str, Path | None]:
    """``--db`` → (URL, SQLite file or None): URLs pass through (an ``sqlite:///`` URL also names its file); a path
    becomes ``sqlite:///<absolute path>``, and a folder means its ``lookup.db``."""
    if text.startswith("sqlite:///"):  # a file URL names its file too (not in-memory, not a URI filename)
        rest = text.removeprefix("sqlite:///").split("?", 1)[0]
        file = Path(rest) if rest and rest != ":memory:" and not rest.startswith("file:") else None
        return text, file
    if "://" in text or text.startswith("sqlite:"):
        return text, None
    if not text.strip():
        raise ConfigError(f"--db must be a database URL or a file path, got {text!r}")
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / TABLE_FILE
    return sqlite_url(path), path


def write_last_run(runs_root: Path, name: str, url: str | None = None) -> None:
    """Remember run ``name`` and its table (``url``; default: the run folder's) as what table commands read."""
    runs_root.mkdir(parents=True, exist_ok=True)
    tmp = runs_root / f".{LAST_RUN}.tmp"
    tmp.write_text(f"{name}\n{url or sqlite_url(runs_root / name / TABLE_FILE)}\n")
    os.replace(tmp, runs_root / LAST_RUN)


def last_run(runs_root: Path) -> tuple[str, str] | None:
    """(name, table URL) the last search recorded, while that table still exists (an SQLite file that is gone
    does not count)."""
    try:
        lines = (runs_root / LAST_RUN).read_text().split("\n")
    except OSError:
        return None
    name = lines[0].strip()
    url = lines[1].strip() if len(lines) > 1 and lines[1].strip() else sqlite_url(runs_root / name / TABLE_FILE)
    if not name:
        return None
    _, file = db_url(url)
    return (name, url) if file is None or file.is_file() else None


def runs_with_tables(runs_root: Path) -> list[str]:
    """Names of the runs under ``runs_root`` that have a ``lookup.db``, sorted."""
    if not runs_root.is_dir():
        return []
    return sorted(p.parent.name for p in runs_root.glob(f"*/{TABLE_FILE}") if p.is_file())


def find_table(db: str | None, name: str | None, runs_root: Path = DEFAULT_RUNS_ROOT) -> TableRef:
    """The table a table command reads (see the module docstring for the order)."""
    if db is not None:
        url, path = db_url(db)
        return TableRef(url, path.parent if path is not None else runs_root / (name or "default"), "--db")
    env = os.environ.get(ENV_VAR)
    if env:
        url, path = db_url(env)
        return TableRef(url, path.parent if path is not None else runs_root / (name or "default"), f"${ENV_VAR}")
    if name is not None:
        return TableRef(sqlite_url(runs_root / name / TABLE_FILE), runs_root / name, "--name")
    last = last_run(runs_root)
    if last is not None:
        _, path = db_url(last[1])
        own = runs_root / last[0]  # the run folder's own table: its home as the user names it (runs/<name>)
        home = own if path is None or path.absolute() == (own / TABLE_FILE).absolute() else path.parent
        return TableRef(last[1], home, "last run")
    found = runs_with_tables(runs_root)
    if len(found) == 1:
        return TableRef(sqlite_url(runs_root / found[0] / TABLE_FILE), runs_root / found[0], "only run")
    if not found:
        raise ConfigError(
            f"no lookup table under {str(runs_root)!r}: run `coinfer search` first, or pass --db or --name"
        )
    raise ConfigError(f"several runs under {str(runs_root)!r} ({', '.join(found)}): pass --name or --db")
