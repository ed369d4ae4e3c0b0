"""Multi-fidelity search: a ladder of fidelities climbed by ASHA on three objectives, the one-record-per-variant rule
of table readers, and ``coinfer search --fidelities`` (runs and bad input). Toy evaluators only: nothing trains."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from search_toys import OPTIMUM, tiny_space, toy_measure

from coinference.errors import ConfigError, UnknownNameError
from coinference.variant import Measurement, VariantSpec
from search.evaluator import CachedEvaluator
from search.ladder import check_ladder, ladder_label
from search.run import SearchConfig, run_identity, run_search
from search.searchers import SearchOptions
from search.searchers.asha import LadderContext
from search.searchers.optuna_search import SAMPLERS as OPTUNA_SAMPLERS
from storage import highest_fidelity, open_table
from storage.metrics import contribution_order
from storage.pareto import pareto_front

LADDER = ("screen", "fast")
PENALTY = {"smoke": 0.2, "screen": 0.1, "fast": 0.0, "full": 0.0}
"""Accuracy a cheaper rung loses against ``fast``, the same for every cell (the cheap rung ranks perfectly)."""
COST_S = {"smoke": 0.1, "screen": 1.0, "fast": 4.0, "full": 40.0}
"""What the toy says a build took, seconds (the report sums them per rung)."""


def space(**kw: object):
    """tiny-cnn at the ladder's first rung: 2 splits × 4 sparsities × 3 ratios = 24 distinct cells."""
    base: dict[str, object] = dict(fidelity=LADDER[0], sparsities=(0.0, 0.25, 0.5, 0.75), ratios=(32.0, 64.0, 128.0))
    return tiny_space(**{**base, **kw})


class LadderToy:
    """The search toy (one cell dominates all) with the accuracy a cheaper rung loses; counts builds per fidelity."""

    def __init__(self) -> None:
        self.builds: Counter[str] = Counter()
        self.keys: list[str] = []

    def __call__(self, spec: VariantSpec) -> Measurement:
        self.builds[spec.fidelity] += 1
        self.keys.append(spec.key)
        m = toy_measure(spec)
        return replace(m, val_accuracy=m.val_accuracy - PENALTY[spec.fidelity], train_seconds=COST_S[spec.fidelity])


class Fixed:
    """Measurements given per (split, sparsity) (the same at every ratio), less the rung's penalty."""

    def __init__(self, points: dict[tuple[str, float], tuple[float, int, float]]) -> None:
        self.points = points

    def __call__(self, spec: VariantSpec) -> Measurement:
        acc, macs, bits = self.points[(spec.split, spec.sparsity)]
        return Measurement(acc - PENALTY[spec.fidelity], macs, 1_000, bits, int(bits))


def ctx_of(evaluate, trials: int = 24, floor: float | None = None, eta: int = 3, sp=None) -> LadderContext:
    table = open_table("sqlite://", name="t")
    ev = CachedEvaluator(table, evaluate, run="t")
    return LadderContext(sp or space(), ev, trials, None, False, 0, floor, SearchOptions(), ladder=LADDER, eta=eta)


def cell(sp, split: str, sparsity: float, ratio: float = 64.0) -> tuple[int, ...]:
    p = {"split": sp.splits.index(split), "sparsity": sp.sparsities.index(sparsity), "ratio": sp.ratios.index(ratio)}
    return sp.index_of(p)


# ------------------------------------------------------------------------------------------- the records rule
def test_cell_key_is_the_spec_without_its_fidelity() -> None:
    s = VariantSpec("tiny-cnn", "synthetic", "block1", sparsity=0.5)
    assert s.with_(fidelity="screen").cell_key == s.cell_key and s.with_(fidelity="screen").key != s.key
    assert s.with_(seed=1).cell_key != s.cell_key and s.with_(sparsity=0.25).cell_key != s.cell_key


def test_highest_fidelity_keeps_each_variants_dearest_measurement() -> None:
    a, b, c = (VariantSpec("tiny-cnn", "synthetic", "block1", sparsity=x, fidelity="screen") for x in (0.0, 0.25, 0.5))
    m = Measurement(0.8, 1_000, 1_000, 64.0, 64)
    with open_table("sqlite://") as t:
        t.record_ok(a, m, "r")
        t.record_ok(b, m, "r")
        t.record_ok(c, m, "r")
        t.record_ok(a.with_(fidelity="fast"), replace(m, val_accuracy=0.9), "r")
        t.record_failure(b.with_(fidelity="fast"), "TrainingError: loss became NaN", "r")
        single = t.variants()[:3]
        got = highest_fidelity(t.variants())
    assert [(r.spec.cell_key, r.spec.fidelity) for r in got] == [
        (a.cell_key, "fast"),  # the dearer measurement
        (b.cell_key, "screen"),  # its fast build failed: the variant was measured at screen only
        (c.cell_key, "screen"),  # never promoted
    ]
    assert highest_fidelity(single) == single  # one fidelity: unchanged, in order


def test_contribution_order_ranks_then_hypervolume_contribution() -> None:
    def m(acc: float, macs: float, bits: float) -> Measurement:
        return Measurement(acc, int(macs), 0, bits, int(bits))

    a, b = m(0.90, 1e6, 1e3), m(0.901, 1.01e6, 1e3)  # on the front, but each adds a sliver beside the other
    far = m(0.60, 1e4, 10.0)  # on the front, alone in its corner
    dominated = m(0.70, 1e7, 1e4)
    order = contribution_order([dominated, a, b, far, a])  # the last repeats the first front point
    assert order[0] == 3 and set(order[1:3]) == {1, 2}
    assert order[3:] == [4, 0]  # the repeat adds nothing; rank 2 comes last


# ------------------------------------------------------------------------------------------- promotion
def test_promotion_picks_the_non_dominated_cell_not_the_first() -> None:
    ctx = ctx_of(LadderToy())
    sp = ctx.space
    first, second = cell(sp, "stem", 0.0), cell(sp, "stem", 0.25)
    opt = ("block1", 0.5, 64.0)
    assert opt == tuple(OPTIMUM.values())  # the toy's optimum: dominates every other cell
    best = cell(sp, *opt)
    for c in (first, second):
        ctx.evaluate(sp.spec(c), c)
    assert ctx.rung_counts() == {"screen": 2, "fast": 0}  # ⌊2/3⌋ = 0: nothing climbs yet
    ctx.evaluate(sp.spec(best), best)
    assert ctx.rung_counts() == {"screen": 3, "fast": 1}
    up = [r for r in ctx.evaluator.table.variants() if r.spec.fidelity == "fast"]
    assert [r.spec.cell_key for r in up] == [sp.spec(best).cell_key]
    assert up[0].measurement.val_accuracy == pytest.approx(0.95)  # measured again at fast, not copied
    for c in (cell(sp, "stem", 0.5), cell(sp, "stem", 0.75)):  # 5 at screen: still ⌊5/3⌋ = 1
        ctx.evaluate(sp.spec(c), c)
    assert ctx.rung_counts()["fast"] == 1
    c = cell(sp, "block1", 0.0)
    ctx.evaluate(sp.spec(c), c)  # 6: a second one climbs, the best not yet promoted
    assert ctx.rung_counts() == {"screen": 6, "fast": 2}
    up = [r for r in ctx.evaluator.table.variants() if r.spec.fidelity == "fast"]
    assert [r.spec.cell_key for r in up] == [o.spec.cell_key for o in ctx.ranked(0)[:2]]  # the optimum, the runner-up


def test_the_floor_promotes_feasible_cells_first_then_the_smallest_shortfall() -> None:
    pts = {
        ("stem", 0.0): (0.95, 9_000_000, 4_000.0),  # meets the floor at screen (0.85), dear
        ("stem", 0.25): (0.90, 1_000, 10.0),  # below it at screen (0.80), dominates nothing it must not
        ("stem", 0.5): (0.80, 1_000, 10.0),  # dominated, further below
    }
    ctx = ctx_of(Fixed(pts), floor=0.85, eta=3, sp=space(splits=("stem",), feature_shapes=((8, 8, 8),)))
    sp = ctx.space
    for split, sparsity in pts:
        c = cell(sp, split, sparsity)
        ctx.evaluate(sp.spec(c), c)
    assert [(o.spec.split, o.spec.sparsity) for o in ctx.ranked(0)] == [("stem", 0.0), ("stem", 0.25), ("stem", 0.5)]
    [up] = [r for r in ctx.evaluator.table.variants() if r.spec.fidelity == "fast"]
    assert up.spec.sparsity == 0.0  # the feasible one, though the other is better on MACs and bits


# ------------------------------------------------------------------------------------------- whole runs
SAMPLERS = [
    pytest.param("grid", {}, id="grid"),
    pytest.param("random", {}, id="random"),
    pytest.param("optuna", {"sampler": "tpe", "n_startup_trials": 4}, id="optuna-tpe"),
    pytest.param("optuna", {"sampler": "nsga2", "population_size": 4}, id="optuna-nsga2"),
    pytest.param(
        "optuna",
        {"sampler": "gp", "n_startup_trials": 4},
        id="optuna-gp",
        marks=pytest.mark.skipif("gp" not in OPTUNA_SAMPLERS, reason="no GP sampler in this tree"),
    ),
]


def search(tmp_path: Path, searcher: str, opts: dict, trials: int = 12, name: str = "mf", **kw: object):
    ev = LadderToy()
    cfg = SearchConfig(
        searcher=searcher, trials=trials, model="tiny-cnn", fidelities=LADDER, name=name, runs_root=tmp_path,
        options=SearchOptions(**opts), **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return run_search(cfg, evaluate=ev, space=space()), ev


@pytest.mark.parametrize(("searcher", "opts"), SAMPLERS)
def test_a_ladder_search_promotes_a_third_and_fronts_the_top_rung(searcher: str, opts: dict, tmp_path: Path) -> None:
    res, ev = search(tmp_path, searcher, opts)
    assert res.rungs == {"screen": 12, "fast": 4}  # ⌊12/3⌋ climbed
    assert ev.builds == {"screen": 12, "fast": 4 + 2}  # + the two whole-model candidates, at the top rung
    with open_table(f"sqlite:///{tmp_path / 'mf' / 'lookup.db'}") as t:
        rows = t.variants()
    split = [r for r in rows if not r.spec.whole_model]
    by_fid = {f: {r.spec.cell_key for r in split if r.spec.fidelity == f} for f in LADDER}
    assert len(by_fid["screen"]) == 12 and len(by_fid["fast"]) == 4
    assert by_fid["fast"] <= by_fid["screen"]  # only promoted variants reach the top rung
    assert {r.spec.fidelity for r in rows} == set(LADDER)  # every rung kept, with its fidelity
    # the screen rung's best variant at the end climbed (12 is a multiple of η: a slot opened after it arrived)
    screen = sorted((r for r in split if r.spec.fidelity == "screen"), key=lambda r: r.key)
    best = screen[contribution_order([r.measurement for r in screen if r.measurement is not None])[0]]
    assert best.spec.cell_key in by_fid["fast"]
    # the report's front and choices read each variant at its highest rung
    rep = res.report
    assert len(rep.records) == 12 + 2 and len({r.spec.cell_key for r in rep.records}) == 14
    for r in rep.front:
        assert r.spec.fidelity == "fast" or r.spec.cell_key not in by_fid["fast"]
    assert [r.key for r in rep.front] == [r.key for r in pareto_front(highest_fidelity(rows))]
    md = rep.markdown.read_text()
    assert "fidelity ladder `screen → fast` (η 3" in md
    assert "12 variants at `screen` (12.0 s of building); 4 variants at `fast` (16.0 s of building)" in md


def test_the_front_uses_top_rung_records(tmp_path: Path) -> None:
    res, _ = search(tmp_path, "random", {}, trials=18)
    front = res.report.front  # the toy's optimum (block1, sparsity 0.5, ratio ≥ 64) dominates every other cell:
    assert front  # found, promoted and fronted at fast
    for best in front:
        assert (best.spec.split, best.spec.sparsity, best.spec.fidelity) == ("block1", 0.5, "fast")
        assert best.measurement.val_accuracy == pytest.approx(0.95)  # not the screen rung's 0.85
    assert res.report.fidelity_note == ""


def test_same_seed_same_builds_in_the_same_order(tmp_path: Path) -> None:
    runs = [search(tmp_path / str(i), "optuna", {"sampler": "tpe", "n_startup_trials": 4}, seed=7) for i in range(2)]
    (a, ev_a), (b, ev_b) = runs
    assert ev_a.keys == ev_b.keys and a.keys == b.keys
    assert [r.key for r in a.report.front] == [r.key for r in b.report.front]


def test_a_ladder_costs_fewer_top_rung_builds_than_its_trials(tmp_path: Path) -> None:
    _, ladder = search(tmp_path, "random", {}, trials=12, whole_model=False)
    single = LadderToy()
    cfg = SearchConfig(searcher="random", trials=12, model="tiny-cnn", fidelity="fast", name="one", runs_root=tmp_path,
                       whole_model=False)  # fmt: skip
    run_search(cfg, evaluate=single, space=space(fidelity="fast"))
    assert single.builds == {"fast": 12}
    assert ladder.builds == {"screen": 12, "fast": 4}
    cost = sum(COST_S[f] * n for f, n in ladder.builds.items())
    assert cost < sum(COST_S[f] * n for f, n in single.builds.items())  # 28 s of building against 48 s


def test_resume_climbs_as_an_uninterrupted_run_would(tmp_path: Path) -> None:
    whole, _ = search(tmp_path / "a", "grid", {}, trials=12)
    search(tmp_path / "b", "grid", {}, trials=5)
    resumed, ev = search(tmp_path / "b", "grid", {}, trials=12, resume=True)
    assert resumed.rungs == whole.rungs == {"screen": 12, "fast": 4}
    assert sorted(resumed.keys) == sorted(whole.keys)
    assert ev.builds["screen"] == 7  # the five it had were not built again


def test_resume_builds_the_promotion_a_kill_interrupted_even_with_the_budget_spent(tmp_path: Path) -> None:
    first, _ = search(tmp_path, "grid", {}, trials=5, whole_model=False)
    assert first.rungs == {"screen": 5, "fast": 1}
    db = f"sqlite:///{tmp_path / 'mf' / 'lookup.db'}"
    with open_table(db) as t:
        climbed = {r.spec.cell_key for r in t.variants() if r.spec.fidelity == "fast"}
        waiting = next(r.spec for r in t.variants() if r.spec.cell_key not in climbed)
        t.mark_running(waiting.with_(fidelity="fast"), "mf")  # in flight when the search was killed
    res, ev = search(tmp_path, "grid", {}, trials=5, resume=True, whole_model=False)
    assert ev.keys == [waiting.with_(fidelity="fast").key]  # built first, at no budget
    assert res.rungs == {"screen": 5, "fast": 2}
    with open_table(db) as t:
        rec = t.get(waiting.with_(fidelity="fast").key)
        assert rec is not None and rec.status == "ok"


def test_run_identity_includes_the_ladder(tmp_path: Path) -> None:
    sp = space()
    cfg = SearchConfig(model="tiny-cnn", fidelities=LADDER, eta=2)
    assert run_identity(cfg, sp)["fidelity"] == "screen,fast (η 2)" == ladder_label(LADDER, 2)
    assert run_identity(SearchConfig(model="tiny-cnn", fidelity="screen"), sp)["fidelity"] == "screen"
    with pytest.raises(ConfigError, match="not the ladder's first rung 'screen'"):
        run_search(replace(cfg, runs_root=tmp_path), evaluate=LadderToy(), space=space(fidelity="fast"))
    assert not (tmp_path / "search").exists()


class FailsFirstScreens(LadderToy):
    """The ladder toy whose first ``n`` screen builds fail (a variant failure, not the machine's)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def __call__(self, spec: VariantSpec) -> Measurement:
        if spec.fidelity == "screen" and self.n > 0:
            self.n -= 1
            self.builds["failed"] += 1
            raise RuntimeError("diverged")
        return super().__call__(spec)


def test_a_failure_rebuilt_on_resume_counts_and_can_climb(tmp_path: Path) -> None:
    kw = dict(searcher="grid", model="tiny-cnn", fidelities=LADDER, name="mf", runs_root=tmp_path, whole_model=False)
    first = run_search(SearchConfig(trials=12, **kw), evaluate=FailsFirstScreens(3), space=space())  # type: ignore[arg-type]
    assert first.failed == 3 and first.rungs["fast"] == 3  # ⌊9 measured / 3⌋
    again = run_search(
        SearchConfig(trials=24, resume=True, retry_failed=True, **kw),  # type: ignore[arg-type]
        evaluate=LadderToy(),
        space=space(),
    )
    assert again.rungs == {"screen": 24, "fast": 8}  # the 3 rebuilt cells are measured cells of the rung


def test_the_sampler_is_part_of_an_optuna_runs_identity(tmp_path: Path) -> None:
    cfg = SearchConfig(searcher="optuna", trials=4, model="tiny-cnn", fidelity="fast", name="s", runs_root=tmp_path,
                       whole_model=False, options=SearchOptions(sampler="tpe", n_startup_trials=2))  # fmt: skip
    assert run_identity(cfg, space(fidelity="fast"))["sampler"] == "tpe"
    assert "sampler" not in run_identity(replace(cfg, searcher="random"), space(fidelity="fast"))
    run_search(cfg, evaluate=LadderToy(), space=space(fidelity="fast"))
    gp = replace(cfg, resume=True, options=SearchOptions(sampler="gp", n_startup_trials=2))
    with pytest.raises(ConfigError, match="was made with sampler 'tpe', not 'gp'"):  # its study holds raw costs
        run_search(gp, evaluate=LadderToy(), space=space(fidelity="fast"))


def test_check_ladder() -> None:
    assert check_ladder(["smoke", "screen", "fast"], "optuna") == ("smoke", "screen", "fast")
    cases = [
        ((["screen", "ultra"],), UnknownNameError, "unknown fidelity 'ultra'"),
        ((["fast", "screen"],), ConfigError, "not ordered by cost: give the rungs cheapest first, screen,fast"),
        ((["screen", "screen"],), ConfigError, "lists 'screen' twice"),
        ((["fast"],), ConfigError, "has one rung"),
        ((["screen", "fast"], "ppo"), ConfigError, "not 'ppo'"),
        ((["screen", "fast"], "ray"), ConfigError, "not 'ray'"),
        ((["screen", "fast"], "grid", 1), ConfigError, "--eta must be an integer ≥ 2"),
    ]
    for args, err, msg in cases:
        with pytest.raises(err, match=msg):
            check_ladder(*args)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- command line
TOY = "test_multifidelity:LadderToy()"


def test_cli_ladder_search_then_table_commands(run_cli, tmp_path: Path) -> None:
    base = ("search", "--searcher", "random", "--trials", "9", "--model", "tiny-cnn", "--evaluator", TOY)
    code, out, err = run_cli(*base, "--fidelities", "screen,fast", "--runs-root", str(tmp_path), "--name", "mf")
    assert code == 0, err
    assert "9 variants climbing screen → fast (9 at screen, 3 at fast;" in out
    run = tmp_path / "mf"
    assert json.loads((run / "config.json").read_text())["identity"]["fidelity"] == "screen,fast (η 3)"
    db = f"sqlite:///{run / 'lookup.db'}"
    with open_table(db, create=False) as t:
        rows = t.variants()
    climbed = {r.spec.cell_key for r in rows if r.spec.fidelity == "fast"}
    code, out, err = run_cli("pareto", "--db", db, "--json")
    assert code == 0, err
    front = json.loads(out)["front"]
    assert front and all(
        f["spec"]["fidelity"] == "fast" or VariantSpec.from_dict(f["spec"]).cell_key not in climbed for f in front
    )
    code, out, err = run_cli("query", "--db", db, "-b", "40KB/s", "--top", "30", "--json")
    assert code == 0, err
    ranked = [next(r for r in rows if r.key == x["key"]) for x in json.loads(out)["ranked"]]
    cells = [r.spec.cell_key for r in ranked]
    assert len(cells) == len(set(cells))  # one record per variant
    assert all(r.spec.fidelity == "fast" for r in ranked if r.spec.cell_key in climbed)
    code, out, err = run_cli("query", "--db", db, "-b", "40KB/s")
    assert code == 0 and "note: the table mixes fidelities (" in out and "each variant at the highest" in out
    code, out, err = run_cli("query", "--db", db, "-b", "40KB/s", "--fidelity", "screen", "--json", "--top", "30")
    fidelity = {r.key: r.spec.fidelity for r in rows}
    assert code == 0 and {fidelity[x["key"]] for x in json.loads(out)["ranked"]} == {"screen"}  # one rung, as asked
    # the run name keeps its ladder
    for extra, names in (
        (("--fidelity", "screen"), ("fidelity 'screen,fast (η 3)'", "'screen'")),
        (("--fidelities", "screen,fast", "--eta", "2"), ("'screen,fast (η 3)'", "'screen,fast (η 2)'")),
    ):
        code, _, err = run_cli(*base, *extra, "--runs-root", str(tmp_path), "--name", "mf")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and all(n in lines[0] for n in names), (extra, err)


BAD = [
    (("--fidelities", "screen,ultra"), ("--fidelities", "unknown fidelity 'ultra'", "smoke, screen, fast, full")),
    (("--fidelities", "fast,screen"), ("'fast,screen' is not ordered by cost", "screen,fast")),
    (("--fidelities", "smoke,full,fast"), ("'smoke,full,fast' is not ordered by cost", "smoke,fast,full")),
    (("--fidelities", "screen,screen"), ("--fidelities lists 'screen' twice", "screen,screen")),
    (("--fidelities", "fast"), ("--fidelities 'fast' has one rung", "--fidelity fast")),
    (("--fidelities", "screen,,fast"), ("--fidelities", "screen,,fast")),
    (("--fidelities", "screen,fast", "--fidelity", "fast"), ("--fidelity fast", "--fidelities screen,fast")),
    (("--eta", "2"), ("--eta 2", "--fidelities")),
    (("--fidelities", "screen,fast", "--eta", "1"), ("--eta", "1")),
    (("--fidelities", "screen,fast", "--searcher", "ppo"), ("--fidelities 'screen,fast'", "not 'ppo'")),
    (("--fidelities", "screen,fast", "--searcher", "ray"), ("--fidelities 'screen,fast'", "not 'ray'")),
]


@pytest.mark.parametrize(("extra", "expected"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_cli_bad_ladders_exit_2_with_one_line_before_any_work(
    run_cli, tmp_path: Path, extra: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    root = tmp_path / "runs"
    args = ("search", "--model", "tiny-cnn", "--trials", "3", "--evaluator", TOY, "--runs-root", str(root), *extra)
    code, out, err = run_cli(*args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("coinfer: error:"), (extra, err)
    assert all(e in lines[0] for e in expected), (extra, lines[0])
    assert not root.exists() and out == ""  # nothing built, nothing written


def test_ladder_searchers_are_registered_searchers() -> None:
    from search.cli import names
    from search.ladder import LADDER_SEARCHERS
    from search.searchers import SEARCHERS

    assert set(LADDER_SEARCHERS) <= set(names.SEARCHERS) and all(SEARCHERS.get(s) for s in LADDER_SEARCHERS)
