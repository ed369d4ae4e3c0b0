"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl in a temp dir, reachable only through a unix socket
there (no TCP port, so it works inside a loopback-only network namespace and never clashes with another worker).

As root, the server runs as the ``postgres`` user (``runuser``), since PostgreSQL refuses to run as root. The
caller skips (with the reason) when the binaries, the ``psycopg`` driver or a non-root user are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN_GLOBS: tuple[str, ...] = ("/usr/lib/postgresql/*/bin",)
USER = "coinfer"


def _find_bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for pattern in PG_BIN_GLOBS:
        for d in sorted(glob.glob(pattern), reverse=True):
            if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
                return Path(d)
    return None


@dataclass
class PostgresServer:
    """A running cluster: ``new_database()`` gives the SQLAlchemy URL of a fresh, empty database."""

    bin_dir: Path
    data_dir: Path
    socket_dir: Path
    run_as: list[str]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@/{database}?host={self.socket_dir}"

    def new_database(self) -> str:
        import sqlalchemy as sa

        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Start a cluster in a fresh temp dir (initdb ~1 s, start ~0.2 s), or ``pytest.skip`` with the reason."""
    bin_dir = _find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install -y postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("the psycopg driver is not installed: pip install 'psycopg[binary]'")
    run_as: list[str] = []
    # Directly under the system temp dir, so that the postgres user can reach it (pytest's own temp dirs are
    # private to the user running the tests) and the socket path stays short.
    root = Path(tempfile.mkdtemp(prefix="coinfer-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        if shutil.which("runuser") is None:
            shutil.rmtree(root)
            pytest.skip("running as root and runuser is missing")
        run_as = ["runuser", "-u", "postgres", "--"]
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data = root / "data"
    init = subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-locale",
         "--no-sync"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
    opts = f"-k {root} -c listen_addresses='' -F -c max_connections=40"
    start = subprocess.run(
        [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "30",
         "start"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if start.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {start.stderr.strip()} {log[-500:]}")
    return PostgresServer(bin_dir, data, root, run_as)
