"""Failures classified: a variant's own failure is data, a problem of the machine or the inputs stops the search."""

from __future__ import annotations

import errno
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from search_toys import tiny_space, toy_measure

from coinference.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    EnvironmentProblem,
    TrainingError,
)
from coinference.variant import Measurement, VariantSpec
from search.evaluator import CachedEvaluator, is_environment_error
from search.searchers import SEARCHERS, SearchContext, SearchOptions
from search.searchers.ray_search import validate_options
from storage import open_table


class Broken:
    """Builds like ``toy_measure``, except that its ``nth`` new build (1-based) and, with ``always``, every later one
    raises ``error``."""

    def __init__(self, error: BaseException | None = None, nth: int = 1, always: bool = False) -> None:
        self.error, self.nth, self.always = error, nth, always
        self.calls: Counter[str] = Counter()

    def __call__(self, spec: VariantSpec) -> Measurement:
        self.calls[spec.key] += 1
        n = sum(self.calls.values())
        if self.error is not None and (n == self.nth or (self.always and n > self.nth)):
            raise self.error
        return toy_measure(spec)


def missing_data() -> Broken:
    """For ``coinfer search --evaluator test_search_failures:missing_data()``."""
    return Broken(DataError("cifar10 not found in /nowhere: run coinfer data --download"))


def ray_builds(spec: VariantSpec) -> Measurement:
    """For a Ray worker: the stem cells fail (NaN loss), and every build after the second finds no data set (its
    message carries the worker's node address). Builds are counted as files in ``$TOY_BUILDS``."""
    import ray

    builds = Path(os.environ["TOY_BUILDS"])
    n = len(list(builds.iterdir()))
    (builds / spec.key).touch()
    if n >= 2:
        raise DataError(f"no data set on node {ray.util.get_node_ip_address()}")
    if spec.split == "stem":
        raise TrainingError("loss became NaN at step 3")
    return toy_measure(spec)


def _bitstream_error() -> BaseException:
    from coinference.codec.entropy import BitstreamError

    return BitstreamError("CRC-32 mismatch")


def _caused(e: BaseException, cause: BaseException) -> BaseException:
    e.__cause__ = cause
    return e


ENVIRONMENT = [
    DataError("cifar10 not found"),
    CheckpointError("cannot read weights.pt"),
    OSError(errno.ENOSPC, "No space left on device"),
    FileNotFoundError(2, "No such file or directory"),
    PermissionError(13, "Permission denied"),
    MemoryError(),
    ModuleNotFoundError("No module named 'constriction'"),
    EnvironmentProblem("disk gone"),
    KeyboardInterrupt(),
    RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
    _caused(RuntimeError("could not save the cache entry"), OSError(errno.EDQUOT, "Disk quota exceeded")),
]
VARIANT = [
    TrainingError("loss became NaN at step 3"),
    ConfigError("ratio 64 needs more channels than the split has"),
    RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x2)"),
    ValueError("expected 4-D input"),
    KeyError("layer9"),
    _caused(TrainingError("loss became NaN"), OSError(errno.EIO, "I/O error")),
]


@pytest.mark.parametrize("e", ENVIRONMENT, ids=lambda e: type(e).__name__)
def test_environment_errors(e: BaseException) -> None:
    assert is_environment_error(e)


@pytest.mark.parametrize("e", VARIANT, ids=lambda e: type(e).__name__)
def test_variant_failures(e: BaseException) -> None:
    assert not is_environment_error(e)


def test_bitstream_error_is_the_variants_codec() -> None:
    e = _bitstream_error()
    assert isinstance(e, DataError) and not is_environment_error(e)


def _evaluator(tmp_path: Path, evaluate, retry_failed: bool = False) -> CachedEvaluator:
    table = open_table(f"sqlite:///{tmp_path / 'lookup.db'}", name="t")
    return CachedEvaluator(table, evaluate, run="t", retry_failed=retry_failed)


@pytest.mark.parametrize(
    "error",
    [DataError("cifar10 not found in /nowhere"), OSError(errno.ENOSPC, "No space left on device")],
    ids=["DataError", "ENOSPC"],
)
def test_environment_error_records_nothing_and_a_later_run_builds(tmp_path: Path, error: BaseException) -> None:
    spec = tiny_space().grid()[0][1]
    ev = _evaluator(tmp_path, Broken(error))
    with pytest.raises(EnvironmentProblem) as info:
        ev(spec)
    msg = str(info.value)
    assert spec.key[:12] in msg and type(error).__name__ in msg and "\n" not in msg
    assert info.value.__cause__ is error
    assert ev.table.variants(status="failed") == [] and ev.lookup(spec) is None  # left running: not finished
    ev.table.close()
    ok = Broken()
    ev = _evaluator(tmp_path, ok)
    out = ev(spec)
    assert out.ok and not out.cached and ok.calls[spec.key] == 1
    ev.table.close()


def test_keyboard_interrupt_propagates_unchanged(tmp_path: Path) -> None:
    spec = tiny_space().grid()[0][1]
    ev = _evaluator(tmp_path, Broken(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ev(spec)
    assert ev.table.variants(status="failed") == []
    ev.table.close()


def test_variant_failure_is_stored_and_answered_from_the_table(tmp_path: Path) -> None:
    spec = tiny_space().grid()[0][1]
    broken = Broken(TrainingError("loss became NaN at step 3"))
    ev = _evaluator(tmp_path, broken)
    out = ev(spec)
    assert out.status == "failed" and "TrainingError: loss became NaN" in (out.error or "")
    again = _evaluator(tmp_path, Broken())  # a fixed builder is not asked: the failure is data
    assert again(spec).cached and again(spec).status == "failed" and again.n_built == 0
    ev.table.close()
    again.table.close()


def test_retry_failed_rebuilds_once_per_evaluator(tmp_path: Path) -> None:
    spec = tiny_space().grid()[0][1]
    ev = _evaluator(tmp_path, Broken(TrainingError("loss became NaN")))
    assert ev(spec).status == "failed"
    ev.table.close()
    # still failing: rebuilt once, then answered from the table
    still = Broken(TrainingError("loss became NaN again"), always=True)
    ev = _evaluator(tmp_path, still, retry_failed=True)
    first, second = ev(spec), ev(spec)
    assert first.status == "failed" and not first.cached and "again" in (first.error or "")
    assert second.cached and still.calls[spec.key] == 1
    ev.table.close()
    # fixed: rebuilt and stored ok
    fixed = Broken()
    ev = _evaluator(tmp_path, fixed, retry_failed=True)
    out = ev(spec)
    assert out.ok and not out.cached and fixed.calls[spec.key] == 1
    assert ev.table.get(spec.key).status == "ok"
    assert ev(spec).cached and fixed.calls[spec.key] == 1  # an ok variant is never rebuilt
    ev.table.close()


def test_record_respects_retry_failed(tmp_path: Path) -> None:
    """Results computed elsewhere (Ray workers) replace a failure being retried, never an ok variant."""
    spec = tiny_space().grid()[0][1]
    ev = _evaluator(tmp_path, None)
    ev.record(spec, error="TrainingError: loss became NaN")
    assert ev.record(spec, measurement=toy_measure(spec)).status == "failed"  # without retry: the stored answer
    ev.table.close()
    ev = _evaluator(tmp_path, None, retry_failed=True)
    assert ev.stored(spec) is None
    assert ev.record(spec, measurement=toy_measure(spec)).ok
    assert ev.stored(spec) is not None and ev.stored(spec).ok
    ev.table.close()


OPTS = {
    "grid": {},
    "random": {},
    "optuna": {"n_startup_trials": 2},
    "ppo": {"ppo_timesteps": 64, "ppo_n_steps": 16},
}


def _search(name: str, tmp_path: Path, evaluate, resume: bool = False) -> tuple[CachedEvaluator, SearchContext]:
    ev = _evaluator(tmp_path, evaluate)
    ctx = SearchContext(tiny_space(), ev, 6, tmp_path / "run", resume, 0, None, SearchOptions(**OPTS[name]))
    if resume:
        ctx.finish_interrupted()
    SEARCHERS.get(name)().run(ctx)
    return ev, ctx


@pytest.mark.parametrize("name", list(OPTS))
def test_environment_error_stops_every_searcher(name: str, tmp_path: Path) -> None:
    broken = Broken(DataError("cifar10 not found in /nowhere"), nth=3)
    with pytest.raises(EnvironmentProblem, match="DataError: cifar10 not found"):
        _search(name, tmp_path, broken)
    ev = _evaluator(tmp_path, None)
    assert ev.table.variants(status="failed") == []
    assert len(ev.table.variants(status="ok")) == 2
    (running,) = ev.table.variants(status="running")
    ev.table.close()
    ok = Broken()
    ev, ctx = _search(name, tmp_path, ok, resume=True)
    assert ev.table.get(running.key).status == "ok" and ok.calls[running.key] == 1
    assert len(ctx.ledger.done) == 6 and {r.status for r in ev.table.variants()} == {"ok"}
    ev.table.close()


def test_cli_environment_error_exits_2_with_one_line(run_cli, tmp_path: Path) -> None:
    args = ("search", "--searcher", "grid", "--trials", "3", "--model", "tiny-cnn")
    code, _, err = run_cli(*args, "--evaluator", "test_search_failures:missing_data()", "--runs-root", str(tmp_path))
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("coinfer: error:")]
    assert len(errors) == 1 and "DataError: cifar10 not found in /nowhere" in errors[0], err
    assert "Traceback" not in err
    table = open_table(f"sqlite:///{tmp_path / 'search' / 'lookup.db'}", name="search")
    assert table.variants(status="failed") == []
    table.close()


@pytest.mark.parametrize(
    ("opts", "msg"),
    [
        ({"num_cpus": 0}, "--num-cpus must be ≥ 1 (the CPUs of the local Ray), got 0"),
        ({"num_cpus": -2}, "got -2"),
        ({"num_cpus": 2, "cpus_per_trial": 3.0}, "cpus_per_trial 3 exceeds --num-cpus 2"),
        ({"cpus_per_trial": 0.0}, "cpus_per_trial must be > 0, got 0.0"),
        ({"max_concurrent": 0}, "max_concurrent must be ≥ 1"),
        ({"max_failures": -3}, "max_failures must be ≥ -1 (-1: retry for ever), got -3"),
        ({"sampler": "cma"}, "unknown Optuna sampler 'cma'"),
        ({"num_cpus": 2, "address": "ray://head:10001"}, "--num-cpus 2 sets the CPUs of a local Ray"),
    ],
)
def test_ray_options_are_checked_before_ray_starts(opts: dict, msg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match=re.escape(msg)):
        validate_options(SearchOptions(**opts))
    validate_options(SearchOptions(num_cpus=2, cpus_per_trial=0.5, max_concurrent=2))


def test_cli_num_cpus_0_exits_2_at_once(run_cli, tmp_path: Path) -> None:
    args = ("search", "--searcher", "ray", "--num-cpus", "0", "--model", "tiny-cnn", "--runs-root", str(tmp_path))
    code, _, err = run_cli(*args, "--evaluator", "search_toys:CountingEvaluator()")
    assert code == 2 and "--num-cpus must be ≥ 1" in err and "got 0" in err, err


@pytest.mark.slow
def test_ray_failures_classified_quietly_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """One local Ray, one trial at a time: a variant failure in a worker is recorded, an environment error stops
    the search unrecorded; the Ray node is 127.0.0.1; nothing of Ray or Tune reaches the driver's stdout/stderr
    (their records are in ray.log)."""
    builds = tmp_path / "builds"
    builds.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    monkeypatch.setenv("TOY_BUILDS", str(builds))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ev = _evaluator(tmp_path, ray_builds)
    space = tiny_space(ratios=(64.0,))
    opts = SearchOptions(num_cpus=1, max_concurrent=1, n_startup_trials=2)
    ctx = SearchContext(space, ev, 4, tmp_path / "run", False, 0, None, opts)
    with pytest.raises(EnvironmentProblem, match=r"DataError: no data set on node 127\.0\.0\.1"):
        SEARCHERS.get("ray")().run(ctx)
    built = {p.name for p in builds.iterdir()}
    records = ev.table.variants()
    assert len(built) == 3 and len(records) == 2 and {r.key for r in records} < built  # the third: not recorded
    for r in records:
        assert (r.status, r.error and r.error.split(":")[0]) == (
            ("failed", "TrainingError") if r.spec.split == "stem" else ("ok", None)
        )
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert "Started a local Ray instance" in (tmp_path / "run" / "ray.log").read_text()
    ev.table.close()
