"""One contract, every searcher: finds the toy's optimum in a tiny space, writes each evaluation exactly once.
(tests/test_search_finds.py: finding it in a space larger than the budget.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from search_toys import OPTIMUM, CountingEvaluator, tiny_space

from search.evaluator import CachedEvaluator
from search.searchers import SEARCHERS, SearchContext, SearchOptions
from storage import open_table
from storage.pareto import pareto_front

CASES = [
    pytest.param("grid", {}, id="grid"),
    pytest.param("random", {}, id="random"),
    pytest.param("optuna", {"sampler": "tpe", "n_startup_trials": 3}, id="optuna-tpe"),
    pytest.param("optuna", {"sampler": "nsga2", "population_size": 4}, id="optuna-nsga2"),
    pytest.param("optuna", {"sampler": "gp", "n_startup_trials": 3}, id="optuna-gp"),
    pytest.param("ppo", {"ppo_timesteps": 64, "ppo_n_steps": 16}, id="ppo"),
    pytest.param("ray", {"num_cpus": 2, "max_concurrent": 2}, id="ray", marks=pytest.mark.slow),
    pytest.param(  # two trials in flight: the GP's q-batch acquisition
        "ray",
        {"num_cpus": 2, "max_concurrent": 2, "sampler": "gp", "n_startup_trials": 2},
        id="ray-gp",
        marks=pytest.mark.slow,
    ),
]


def run(name: str, opts: dict, tmp_path: Path, trials: int, ev: CountingEvaluator, resume: bool = False, space=None):
    table = open_table(f"sqlite:///{tmp_path / 'lookup.db'}", name="t")
    cached = CachedEvaluator(table, ev, run="t")
    space = space or tiny_space()
    ctx = SearchContext(space, cached, trials, tmp_path / "run", resume, 0, None, SearchOptions(**opts))
    SEARCHERS.get(name)().run(ctx)
    return table, ctx


@pytest.mark.parametrize(("name", "opts"), CASES)
def test_searcher_finds_optimum_and_writes_each_evaluation_once(
    name: str, opts: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space, n = tiny_space(), 8
    if name == "ray":  # Ray workers build in other processes: they log builds to a file; a 4-cell space
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
        space, n = tiny_space(ratios=(64.0,)), 4
    log = tmp_path / "builds.log"
    ev = CountingEvaluator(log=str(log))
    table, ctx = run(name, opts, tmp_path, n, ev, space=space)
    records = table.variants()
    assert len(records) == n and {r.status for r in records} == {"ok"}  # the whole tiny space, once each
    assert set(ctx.ledger.done) == {r.key for r in records}
    builds = log.read_text().split()
    assert len(builds) == n and len(set(builds)) == n  # never built twice
    front = pareto_front(records)
    opt = space.spec(space.index_of({"split": 1, "sparsity": 1, "ratio": len(space.ratios) - 1}))
    assert (opt.split, opt.sparsity) == (OPTIMUM["split"], OPTIMUM["sparsity"])
    assert [r.key for r in front] == [opt.key]
    table.close()


@pytest.mark.parametrize(("name", "opts"), [c for c in CASES if c.values[0] != "ray"])
def test_failed_evaluation_is_stored_and_search_goes_on(name: str, opts: dict, tmp_path: Path) -> None:
    ev = CountingEvaluator(fail_sparsity=0.0)  # the two stem cells at sparsity 0 fail
    table, ctx = run(name, opts, tmp_path, 8, ev)
    failed = table.variants(status="failed")
    assert len(failed) == 2 and all("TrainingError: loss became NaN" in (r.error or "") for r in failed)
    assert len(table.variants(status="ok")) == 6 and len(ctx.ledger.done) == 8
    table.close()


@pytest.mark.parametrize("name", ["grid", "optuna"])
def test_partial_budget_then_resume_in_process(name: str, tmp_path: Path) -> None:
    ev = CountingEvaluator()
    table, _ = run(name, {"n_startup_trials": 2}, tmp_path, 3, ev)
    assert len(table.variants()) == 3
    table.close()
    table, ctx = run(name, {"n_startup_trials": 2}, tmp_path, 6, ev, resume=True)
    assert len(ctx.ledger.done) == 6 and len(table.variants()) == 6 and max(ev.calls.values()) == 1
    table.close()


def test_budget_counts_distinct_specs_and_cache_hits_cost_nothing(tmp_path: Path) -> None:
    ev = CountingEvaluator()
    table, _ = run("grid", {}, tmp_path, 8, ev)
    table.close()
    table, ctx = run("random", {}, tmp_path, 8, ev)  # a fresh run over the same table: all cached
    assert sum(ev.calls.values()) == 8 and len(ctx.ledger.done) == 8
    assert all(row["cached"] for row in ctx.ledger.done.values())
    table.close()


def test_resume_counts_a_result_the_kill_kept_out_of_the_ledger(tmp_path: Path) -> None:
    # The table commits a result before its ledger line: a kill in between must not cost an extra build.
    ev = CountingEvaluator()
    table, first = run("random", {}, tmp_path, 3, ev)
    lost = first.ledger.order[-1]
    ledger = tmp_path / "run" / "evaluations.jsonl"
    ledger.write_text("".join(line + "\n" for line in ledger.read_text().splitlines()[:-1]))
    ctx = SearchContext(tiny_space(), CachedEvaluator(table, ev, run="t"), 6, tmp_path / "run", resume=True)
    assert lost in ctx.ledger.done and ctx.remaining() == 3
    assert lost in ledger.read_text()  # written back, so a second resume agrees
    table.close()


def test_resume_builds_first_the_spec_left_running(tmp_path: Path) -> None:
    ev = CountingEvaluator()
    table, first = run("random", {}, tmp_path, 2, ev)
    space = tiny_space()
    left = next(spec for _, spec in space.grid() if spec.key not in first.ledger.done)
    table.mark_running(left, "t")  # the build a kill interrupted
    ctx = SearchContext(space, CachedEvaluator(table, ev, run="t"), 4, tmp_path / "run", resume=True)
    [out] = ctx.finish_interrupted()
    assert out.spec.key == left.key and out.ok and not out.cached and ev.calls[left.key] == 1
    assert table.get(left.key).status == "ok" and ctx.remaining() == 1
    table.close()
