"""The CLI's light copies of registry names (search/cli/names.py) equal the registries they stand for, and the
table-finding rule of search/runs.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from coinference.errors import ConfigError
from search.cli import names
from search.runs import LAST_RUN, db_url, find_table, run_name, write_last_run


def test_names_equal_their_registries() -> None:
    from coinference.base import DEFAULT_MARGIN
    from coinference.codec import KINDS
    from coinference.data import DATASETS
    from coinference.zoo import DEFAULT_MODEL, MODELS
    from search.cli.base import DEFAULT_MARGIN as CLI_MARGIN
    from search.searchers import SEARCHERS
    from search.searchers.optuna_search import SAMPLERS, make_sampler

    assert tuple(MODELS.names()) == names.MODELS and names.DEFAULT_MODEL == DEFAULT_MODEL
    assert {m: MODELS.get(m).dataset for m in MODELS.names()} == names.MODEL_DATASETS
    assert tuple(DATASETS.names()) == names.DATASETS
    assert tuple(SEARCHERS.names()) == names.SEARCHERS
    assert tuple(KINDS) == names.CODEC_KINDS
    from coinference.codec.config import SNR_RANGE_DB
    from search.space import SEARCH_CODEC_KINDS

    assert names.SEARCH_CODEC_KINDS == SEARCH_CODEC_KINDS and set(SEARCH_CODEC_KINDS) <= set(KINDS)
    assert names.SNR_RANGE_DB == SNR_RANGE_DB
    assert CLI_MARGIN == DEFAULT_MARGIN
    assert names.SAMPLERS == SAMPLERS
    for s in names.SAMPLERS:
        make_sampler(s, 0)
    with pytest.raises(ConfigError):
        make_sampler("cma", 0)


def test_cli_package_imports_no_heavy_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, search.cli; heavy = [m for m in ('torch', 'sqlalchemy', 'matplotlib', 'optuna', 'ray') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"`import search.cli` (what --help needs) loads {out}"


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "/abs", "a/b", "a b", "-x", "x\x00", "é", "a" * 65])
def test_run_names_stay_inside_the_runs_root(bad: str) -> None:
    with pytest.raises(ConfigError, match="--name must be"):
        run_name(bad)


def test_find_table_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COINFER_DB", raising=False)
    root = tmp_path / "runs"
    with pytest.raises(ConfigError, match="no lookup table under"):
        find_table(None, None, root)
    for n in ("a", "b"):
        (root / n).mkdir(parents=True)
        (root / n / "lookup.db").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"several runs under .* \(a, b\)"):
        find_table(None, None, root)
    write_last_run(root, "b")
    assert (root / LAST_RUN).read_text().splitlines()[0] == "b"
    assert find_table(None, None, root).url == f"sqlite:///{(root / 'b' / 'lookup.db').absolute()}"
    assert find_table(None, "a", root).home == root / "a"
    assert find_table(str(root / "a"), None, root).url.endswith("/runs/a/lookup.db")  # a run folder
    assert find_table("x.db", None, root).url == f"sqlite:///{Path('x.db').absolute()}"  # a plain path
    assert find_table("sqlite:///y.db", None, root).url == "sqlite:///y.db"  # a URL as it is
    monkeypatch.setenv("COINFER_DB", "sqlite:///env.db")
    assert find_table(None, "a", root).url == "sqlite:///env.db"
    assert find_table("z.db", None, root).how == "--db"
    (root / "b" / "lookup.db").unlink()  # the last run lost its table: fall back to the only one left
    monkeypatch.delenv("COINFER_DB")
    assert find_table(None, None, root).how == "only run"
    assert db_url("postgresql+psycopg://u@h/db") == ("postgresql+psycopg://u@h/db", None)
    # a search that wrote its table elsewhere (--db): the table commands still find that table
    elsewhere = tmp_path / "elsewhere.db"
    elsewhere.write_bytes(b"")
    write_last_run(root, "c", f"sqlite:///{elsewhere}")
    ref = find_table(None, None, root)
    assert (ref.url, ref.home, ref.how) == (f"sqlite:///{elsewhere}", tmp_path, "last run")
    monkeypatch.setenv("COINFER_DB", str(root / "a"))  # $COINFER_DB takes a path, as --db does
    assert find_table(None, None, root).url == f"sqlite:///{(root / 'a' / 'lookup.db').absolute()}"
