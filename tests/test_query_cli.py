"""``coinfer query``, ``coinfer show`` and ``coinfer pareto`` on a small SQLite table, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coinference.variant import Measurement, VariantSpec
from storage import open_table

MB = 1 << 20


def populate(url: str) -> dict[str, str]:
    """Four measured variants, one failed, one running; returns name → key."""
    base = VariantSpec("tiny-cnn", "synthetic", "block1")
    rows = {
        # on-device-like: heavy compute, few bits
        "local": (
            base.with_(split="block2", seed=1),
            Measurement(0.90, 6_000_000_000, 1_000, 64.0, 64, device_param_bytes=MB),
        ),
        # split: light compute, many bits
        "split": (
            base.with_(seed=2),
            Measurement(0.88, 100_000_000, 5_000_000, 40_000.0, 41_000, device_param_bytes=MB),
        ),
        "dominated": (base.with_(seed=3), Measurement(0.80, 200_000_000, 5_000_000, 50_000.0, 50_000)),
        "huge": (base.with_(seed=4), Measurement(0.95, 1_000, 10, 8.0, 8, device_param_bytes=4 << 30)),
    }
    keys = {}
    with open_table(url) as t:
        for name, (s, m) in rows.items():
            keys[name] = t.record_ok(s, m, "r1").key
        keys["failed"] = t.record_failure(base.with_(seed=5), "TrainingError: loss is nan", "r1").key
        keys["running"] = t.mark_running(base.with_(seed=6), "r1").key
    return keys


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, dict[str, str]]:
    url = f"sqlite:///{tmp_path / 'lookup.db'}"
    return url, populate(url)


def test_query_picks_by_bandwidth(run_cli, db) -> None:
    url, keys = db
    code, out, err = run_cli("query", "--db", url, "--bandwidth", "1KB/s", "--device", "rpi3", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ranked"][0]["key"] == keys["local"]  # 40 kbit would take 5 s at 1 KB/s
    assert keys["huge"] not in [r["key"] for r in doc["ranked"]]  # 4 GiB does not fit rpi3's 1 GiB
    code, out, _ = run_cli("query", "--db", url, "-b", "5 Mbit/s", "--device", "rpi3", "--json")
    assert code == 0 and json.loads(out)["ranked"][0]["key"] == keys["split"]
    code, out, _ = run_cli("query", "--db", url, "-b", "40KB/s", "--rtt", "0.02")
    assert code == 0 and "feasible of 4 measured" in out and keys["split"][:12] in out


def test_query_table_and_env_var(run_cli, db, monkeypatch: pytest.MonkeyPatch) -> None:
    url, keys = db
    monkeypatch.setenv("COINFER_DB", url)
    code, out, err = run_cli("query", "--table", "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert len(rows) == 21 and rows[0]["bandwidth_bytes_per_s"] == pytest.approx(1e3)
    assert rows[0]["key"] == keys["local"] and rows[-1]["key"] == keys["split"]
    code, out, _ = run_cli("query", "--table")
    assert code == 0 and "100 MB/s" in out


def test_show(run_cli, db) -> None:
    url, keys = db
    code, out, err = run_cli("show", keys["failed"][:10], "--db", url, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["status"] == "failed" and doc["error"] == "TrainingError: loss is nan" and doc["measurement"] is None
    code, out, _ = run_cli("show", keys["split"], "--db", url)
    assert code == 0 and "0.88" in out and "block1" in out


def test_pareto_table_and_plot(run_cli, db, tmp_path: Path) -> None:
    url, keys = db
    png = tmp_path / "front.png"
    code, out, err = run_cli("pareto", "--db", url, "--out", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert keys["split"][:12] in out and keys["local"][:12] in out and keys["dominated"][:12] not in out
    assert "hypervolume" in out
    code, out, _ = run_cli("pareto", "--db", url, "--out", str(png), "--json")
    doc = json.loads(out)
    assert {r["key"] for r in doc["front"]} == {keys["local"], keys["split"]}  # "huge" dominates, but does not fit
    assert {c["key"] for c in doc["choices"]} == {keys["local"], keys["split"]}


def test_bad_inputs_exit_2_with_one_line(run_cli, db, tmp_path: Path) -> None:
    url, _ = db
    newer = tmp_path / "newer.db"
    open_table(f"sqlite:///{newer}").close()
    import sqlite3

    con = sqlite3.connect(newer)
    con.execute("UPDATE schema_info SET schema_version = schema_version + 1")
    con.commit()
    con.close()
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    open_table(empty).close()
    cases = [
        (("query", "--db", "::nope::", "-b", "40KB/s"), "no lookup table at"),
        (
            ("query", "--db", "postgresql+psycopg://u@/x?host=/nonexistent&port=1", "-b", "40KB/s"),
            "cannot open lookup table",
        ),
        (("query", "--db", f"sqlite:///{newer}", "-b", "40KB/s"), "newer than this coinference"),
        (("query", "--db", url, "-b", "fast"), "cannot parse bandwidth 'fast'"),
        (("query", "--db", url, "-b", "0KB/s"), "bandwidth must be between 1 B/s and 1 TB/s"),
        (("query", "--db", url, "-b", "-5KB/s"), "cannot parse bandwidth"),
        (("query", "--db", url, "-b", "40KB/s", "--device", "toaster"), "unknown device profile 'toaster'; valid:"),
        (("query", "--db", url, "-b", "40KB/s", "--server", "cray"), "unknown server profile 'cray'"),
        (("query", "--db", url), "give --bandwidth"),
        (("query", "--db", url, "-b", "40KB/s", "--min-accuracy", "0.99"), "no feasible variant among 4 measured"),
        (("query", "--db", empty, "-b", "40KB/s"), "no measured (status ok) variant"),
        (("pareto", "--db", empty), "no measured (status ok) variant"),
        (("query", "--db", f"sqlite:///{tmp_path / 'typo.db'}", "-b", "1KB/s"), "no lookup table at"),
        (("show", "zzzz", "--db", url), "must be a key or a prefix of 4-64 hex digits"),
        (("show", "0000000", "--db", url), "no variant with key '0000000'"),
        (("export", "--db", empty, "-b", "40KB/s", "--out", str(tmp_path / "x")), "no measured"),
    ]
    for args, msg in cases:
        code, _, err = run_cli(*args)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], (args, err)


def test_default_floor_keeps_a_fast_broken_variant_out(run_cli, db) -> None:
    # best accuracy that fits rpi3 is 0.90 ("huge" at 0.95 does not fit), so the default floor is 0.88
    url, _ = db
    with open_table(url) as t:
        broken = VariantSpec("tiny-cnn", "synthetic", "block1", seed=9)
        t.record_ok(broken, Measurement(0.30, 1_000, 10, 8.0, 8), "r1")
    code, out, err = run_cli("query", "--db", url, "-b", "40KB/s", "--json")
    assert code == 0, err
    assert broken.key not in [r["key"] for r in json.loads(out)["ranked"]]
    code, out, _ = run_cli("query", "--db", url, "-b", "40KB/s", "--min-accuracy", "0", "--json")
    assert code == 0 and json.loads(out)["ranked"][0]["key"] == broken.key  # 0: no floor
    code, out, _ = run_cli("query", "--db", url, "-b", "40KB/s")
    assert code == 0 and "accuracy ≥ 0.8800" in out
