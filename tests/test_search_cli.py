from __future__ import annotations

from pathlib import Path

TOY = "search_toys:CountingEvaluator()"


def test_search_writes_run_folder_and_prints_front(run_cli, tmp_path: Path) -> None:
    args = ("search", "--searcher", "optuna", "--trials", "5", "--model", "tiny-cnn", "--evaluator", TOY)
    code, out, err = run_cli(*args, "--runs-root", str(tmp_path), "--name", "demo")
    assert code == 0, err
    assert "Pareto front" in out and "Chosen variant per bandwidth" in out
    assert "1 KB/s" in out and "100 KB/s" in out and "10 MB/s" in out
    run = tmp_path / "demo"
    for f in ("lookup.db", "study.journal", "evaluations.jsonl", "config.json", "report.md"):
        assert (run / f).is_file(), f
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((run / "evaluations.jsonl").read_text().splitlines()) == 5
    assert "## Front" in (run / "report.md").read_text()
    # a second run of the same name starts afresh and is answered from the table
    code, out, err = run_cli(*args, "--runs-root", str(tmp_path), "--name", "demo")
    assert code == 0, err
    assert "(0 built now" in out


def test_search_bad_inputs_exit_2_with_one_line(run_cli, tmp_path: Path) -> None:
    root = ("--runs-root", str(tmp_path))
    cases = [
        (("search", "--searcher", "bayes", *root), "unknown searcher 'bayes'; valid:"),
        (("search", "--resume", "--evaluator", TOY, "--name", "x", *root), "nothing to resume"),
        (("search", "--evaluator", "nomodule", *root), "--evaluator must be module:callable"),
        (("search", "--model", "vgg16", "--evaluator", TOY, *root), "unknown model 'vgg16'"),
        (("search", "--sampler", "cma", "--evaluator", TOY, "--model", "tiny-cnn", *root), "unknown Optuna sampler"),
    ]
    for args, msg in cases:
        code, _, err = run_cli(*args)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], (args, err)


def test_ppo_search_writes_nothing_outside_its_run(run_cli, tmp_path: Path, monkeypatch) -> None:
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # where SB3's default logger would make SB3-<date>/
    args = ("search", "--searcher", "ppo", "--trials", "4", "--ppo-timesteps", "8", "--model", "tiny-cnn")
    code, _, err = run_cli(*args, "--evaluator", TOY, "--runs-root", str(tmp_path / "runs"), "--name", "rl")
    assert code == 0, err
    assert [p.name for p in tmp.iterdir() if p.name.startswith("SB3-")] == []
    assert (tmp_path / "runs" / "rl" / "ppo_policy.zip").is_file()


def test_a_run_name_keeps_its_searcher_fidelity_and_space(run_cli, tmp_path: Path) -> None:
    base = ("search", "--trials", "3", "--model", "tiny-cnn", "--evaluator", TOY, "--runs-root", str(tmp_path))
    code, _, err = run_cli(*base, "--name", "x", "--fidelity", "smoke")
    assert code == 0, err
    ledger = (tmp_path / "x" / "evaluations.jsonl").read_bytes()
    cases = [
        (("--name", "x", "--fidelity", "fast"), ("fidelity 'smoke'", "'fast'")),
        (("--name", "x", "--fidelity", "smoke", "--searcher", "random", "--resume"), ("searcher 'optuna'", "'random'")),
        (("--name", "x", "--fidelity", "smoke", "--model", "resnet-digits"), ("space 'tiny-cnn/", "'resnet-digits/")),
    ]
    for extra, names in cases:
        code, _, err = run_cli(*base, *extra)  # a repeated --model: the later one counts
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and all(n in lines[0] for n in names), (extra, err)
        assert (tmp_path / "x" / "evaluations.jsonl").read_bytes() == ledger  # nothing of the run was touched
    code, _, err = run_cli(*base, "--name", "x", "--fidelity", "smoke", "--resume")  # the same run goes on
    assert code == 0, err
