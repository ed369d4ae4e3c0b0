"""A search killed with SIGKILL after k of n evaluations, restarted with --resume, ends with exactly n specs."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import open_table

N, K = 6, 3


def _ok_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db) as c:
            return int(c.execute("select count(*) from variants where status = 'ok'").fetchone()[0])
    except sqlite3.Error:
        return 0


def _cmd(tmp_path: Path, searcher: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "search", "search", "--searcher", searcher, "--trials", str(N),
        "--name", "r", "--runs-root", str(tmp_path), "--model", "tiny-cnn",
        "--evaluator", "search_toys:slow_logged()", *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("searcher", ["random", "optuna"])
def test_sigkill_then_resume_ends_with_exactly_n(searcher: str, tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        "TOY_LOG": str(log),
        "TOY_SLEEP": "0.4",
        "COINFER_DB": "",
    }
    env.pop("COINFER_DB")
    db = tmp_path / "r" / "lookup.db"
    p = subprocess.Popen(_cmd(tmp_path, searcher), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _ok_rows(db) < K and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, p.stderr.read().decode() if p.stderr else ""
    k = len(set(log.read_text().split()))
    assert K <= k < N
    r = subprocess.run(_cmd(tmp_path, searcher, "--resume"), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Pareto front" in r.stdout
    table = open_table(f"sqlite:///{db}", name="r")
    records = table.variants()
    table.close()
    whole = {x.key for x in records if x.spec.whole_model}  # the two candidates every search adds, outside its budget
    assert len(records) == N + len(whole) and len(whole) == 2 and {x.status for x in records} == {"ok"}  # none lost
    builds = [b for b in log.read_text().split() if b not in whole]
    # none duplicated: only the spec in flight at the kill (left "running") may have been built again
    assert len(set(builds)) == N and len(builds) - N <= 1
