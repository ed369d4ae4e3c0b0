"""``coinfer measure``: a variant's package is exported once, its device and server sides are timed in the runtime
on this machine, stored as `local` timings, and ``query --device local --server local`` ranks by them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_export_cli import MEAS, SPEC, write_artifacts

from coinference.variant import Measurement, VariantSpec
from storage import open_table

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# MACs say OTHER is 10× cheaper on the device than SPEC; measured, both run the same tiny graph.
OTHER = VariantSpec("tiny-cnn", "synthetic", "block1", seed=1)
OTHER_MEAS = Measurement(0.9, device_macs=500, server_macs=20_000, bits_mean=1024.0, bits_max=1024,
                         device_param_bytes=4_000)  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> str:
    arts = write_artifacts(tmp_path / "ckpt")
    url = f"sqlite:///{tmp_path / 'run' / 'lookup.db'}"
    (tmp_path / "run").mkdir()
    with open_table(url) as t:
        t.record_ok(SPEC, MEAS, "r1", arts)
    return url


def test_measure_stores_local_timings_and_query_ranks_by_them(run_cli, db: str, tmp_path: Path) -> None:
    code, out, err = run_cli("measure", "--db", db, "--runs", "10", "--images", "4", "--json")
    assert code == 0, err
    doc = json.loads(out)
    (row,) = doc["variants"]
    assert row["key"] == SPEC.key and row["device_s"] > 0 and row["server_s"] > 0
    package = Path(row["package"])
    assert package == tmp_path / "run" / "exports" / SPEC.key[:16] and (package / "manifest.json").is_file()
    with open_table(db, create=False) as t:
        rec = t.get(SPEC.key)
        assert rec is not None and rec.timing("local", "device").seconds == row["device_s"]
        assert rec.timing("local", "server").samples == 10 and "onnxruntime" in rec.timing("local", "server").runtime
        assert rec.artifacts["export/manifest"].path == (package / "manifest.json").resolve()
        # a second variant, never timed: the local profile leaves it out rather than rank MACs against measurements
        t.record_ok(OTHER, OTHER_MEAS, "r1")
    code, out, err = run_cli("query", "--db", db, "-b", "40KB/s", "--device", "local", "--server", "local", "--json")
    assert code == 0, err
    q = json.loads(out)
    assert [r["key"] for r in q["ranked"]] == [SPEC.key] and q["feasible"] == 1
    assert q["ranked"][0]["device_s"] == row["device_s"] and q["ranked"][0]["measured_parts"] == ["device", "server"]
    # on a MAC-based profile the same table ranks both, the cheaper one first
    code, out, _ = run_cli("query", "--db", db, "-b", "40KB/s", "--device", "rpi3", "--json")
    assert [r["key"] for r in json.loads(out)["ranked"]] == [OTHER.key, SPEC.key]


def test_measure_reuses_a_package_and_reexports_a_tampered_one(run_cli, db: str, tmp_path: Path) -> None:
    args = ("measure", "--db", db, "--runs", "10", "--images", "4")
    code, out, err = run_cli(*args)
    assert code == 0 and "exported" in out, err
    code, out, err = run_cli(*args)
    assert code == 0 and "package reused" in out, err
    onnx = tmp_path / "run" / "exports" / SPEC.key[:16] / "server" / "server.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    code, out, err = run_cli(*args)
    assert code == 0 and "exported" in out, err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--runs", "5"), "--runs"),
        (("--images", "0"), "--images"),
        (("--key", "ffffffff"), "no variant with key 'ffffffff'"),
    ],
)
def test_measure_bad_input_is_one_line(run_cli, db: str, extra: tuple[str, ...], message: str) -> None:
    code, _, err = run_cli("measure", "--db", db, *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_measure_on_an_empty_table(run_cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_table(url).close()
    code, _, err = run_cli("measure", "--db", url)
    assert code == 2 and "no measured split variant" in err
    assert not (tmp_path / "exports").exists()
