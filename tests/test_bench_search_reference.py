"""bench/bench_search.py's reference mode on a small fixture in build_reference.py's format: build costs are
charged as a real build pays them (a pruning once per split × sparsity × rung), a searcher is scored on its
top-rung builds, and the bench runs end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_search.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_search_ref", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


LEVELS = {"splits": ["block1", "block2"], "sparsities": [0.0, 0.5], "ratios": [8.0, 32.0], "bits": [4]}


def _fixture(path: Path, bench: ModuleType) -> Path:
    """Every cell at screen (cost 1, pruning 10) and fast (cost 5, pruning 20), measurements from the bench's
    synthetic model (screen: 0.05 less accurate)."""
    space = bench.SearchSpace.for_model("tiny-cnn", splits=LEVELS["splits"], sparsities=LEVELS["sparsities"],
                                        ratios=LEVELS["ratios"], bits=LEVELS["bits"], fidelity="fast")  # fmt: skip
    synth = bench.synthetic_table(space)
    cells, seen = [], set()
    for index, spec in space.grid():
        group = (spec.split, spec.sparsity)
        rungs = {}
        for f, cost, prune, drop in (("screen", 1.0, 10.0, 0.05), ("fast", 5.0, 20.0, 0.0)):
            s = replace(spec, fidelity=f)
            m = synth[spec.key]
            rungs[f] = {"key": s.key, "spec": json.loads(s.to_json()),
                        "measurement": replace(m, val_accuracy=m.val_accuracy - drop).to_dict(),
                        "prune_cpu_s": prune if group not in seen else 0.0, "cell_cpu_s": cost}  # fmt: skip
        seen.add(group)
        cells.append({"cell": space.params(index), "rungs": rungs})
    doc = {"format": "coinference.reference/1", "model": "tiny-cnn", "levels": LEVELS, "cells": cells,
           "command": "test", "commit": "0" * 40, "complete": True}  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def test_costs_charge_each_pruning_once_and_searchers_are_scored_on_the_top_rung(tmp_path: Path) -> None:
    bench = _bench()
    ref = bench.load_reference(_fixture(tmp_path / "ref.json", bench))
    assert len(ref.fast_keys) == 8 and len(ref.table) == 16
    assert ref.exhaustive_cost == pytest.approx(8 * 5.0 + 4 * 20.0)
    by_group: dict[tuple, list[str]] = {}
    for k in ref.fast_keys:
        by_group.setdefault(ref.group(k)[:2], []).append(k)
    (a, b), (c, _) = list(by_group.values())[:2]
    screen_a = replace(ref.specs[a], fidelity="screen").key
    # a's group pruned once at fast; c's group once; the screen rung has its own pruning
    assert ref.costs([a, b, c, screen_a]) == pytest.approx([25.0, 30.0, 55.0, 66.0])
    # a searcher is scored on its fast builds: a cheap-rung measurement never stands in for one
    assert bench.top_rung([screen_a, b], ref) == [b]
    assert bench.top_rung([screen_a, a, b, a], ref) == [a, b]
    assert bench.top_rung([screen_a], ref) == []


def test_reference_mode_runs_and_writes_curves_against_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    fixture = _fixture(tmp_path / "ref.json", bench)
    out = tmp_path / "out"
    sys_argv = sys.argv
    sys.argv = ["bench_search.py", "--reference", str(fixture), "--seeds", "2", "--searchers",
                "random,grid order,multi-fidelity TPE", "--envs", "20", "--budget-fraction", "0.5", "--points", "8",
                "--out", str(out)]  # fmt: skip
    try:
        bench.main()
    finally:
        sys.argv = sys_argv
    doc = json.loads((out / "search_reference.json").read_text())
    assert doc["exhaustive_cost_cpu_s"] == pytest.approx(120.0) and doc["budget_cpu_s"] == pytest.approx(60.0)
    for label in ("random", "grid order", "multi-fidelity TPE"):
        r = doc["results"][label]
        assert len(r["hv"]) == 2 and all(len(row) == 8 for row in r["hv"])
        assert all(0 <= v <= 1 + 1e-9 for row in r["hv"] for v in row)
        assert all(row == sorted(row) for row in r["hv"])  # a table only grows as the budget does
    assert (out / "search_reference.png").is_file() and "first cost" in capsys.readouterr().out


def test_reference_mode_refuses_a_missing_fixture(tmp_path: Path) -> None:
    bench = _bench()
    sys_argv = sys.argv
    sys.argv = ["bench_search.py", "--reference", str(tmp_path / "nope.json")]
    try:
        with pytest.raises(SystemExit) as e:
            bench.main()
    finally:
        sys.argv = sys_argv
    assert e.value.code == 2


def test_a_candidate_table_is_scored_against_the_reference(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from storage import open_table

    bench = _bench()
    fixture = _fixture(tmp_path / "ref.json", bench)
    ref = bench.load_reference(fixture)
    url = f"sqlite:///{tmp_path / 'cand.db'}"
    with open_table(url) as t:  # the whole fast rung, and one cell at screen only
        for k in ref.fast_keys:
            t.record_ok(ref.specs[k], ref.table[k], "c")
        screen_only = next(k for k, s in ref.specs.items() if s.fidelity == "screen")
        t.record_ok(ref.specs[screen_only], ref.table[screen_only], "c")
    out = bench.compare_candidate(SimpleNamespace(reference=fixture, candidate=url, envs=20))
    top = out["top rung (fast)"]
    assert top["variants"] == 8 and top["log_hv_fraction"] == pytest.approx(1.0) and top["regret_median"] == 0.0
    assert out["highest rung each"]["variants"] == 8  # the screen cell also has its fast rung: read once, at fast
