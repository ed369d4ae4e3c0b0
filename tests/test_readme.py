"""The README runs as written: `make demo`'s command, then every command of the README's "After `make demo`" block,
in order, each in a fresh process in a clean folder, each exiting 0 and printing what the README says it prints;
then its deploy block (a server in the background, two clients, SIGTERM) as one bash script."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix) if sys.prefix != sys.base_prefix and (Path(sys.prefix) / "bin" / "coinfer").exists() else None

# What each README command must print (the README's comment says it in words); a command the README gains or
# loses without this table changing fails the test, so the two stay in step.
EXPECTED = {
    "coinfer pareto --device rpi3": ["Pareto front on rpi3", "chosen at", "plot: runs/search/pareto-rpi3.png"],
    "coinfer query --bandwidth 40KB/s --device rpi3": ["40 KB/s on rpi3", "feasible of", "on-device", "best: "],
    "coinfer query --bandwidth 40KB/s --device mcu": ["40 KB/s on mcu", "feasible of", "best: "],
    "coinfer query --table --device mcu": ["bandwidth → variant on mcu", "1 KB/s", "100 MB/s"],
    'coinfer show "$(.venv/bin/coinfer query --bandwidth 40KB/s --device mcu --key)"': ["variant ", "spec.split"],
    "coinfer export --bandwidth 40KB/s --device mcu --out runs/export": ["exported ", "verified on", "manifest:"],
}


# The deploy block, line by line, and what its script as a whole must print (the server's lines and both clients').
DEPLOY = [
    "coinfer serve --device mcu --port 8765 &",
    "coinfer infer --server 127.0.0.1:8765 --device mcu --limit 50 --wait 600",
    "coinfer infer --server 127.0.0.1:8765 --device mcu --limit 50 --bandwidth 40KB/s",
    "kill %1 && wait %1",
]
DEPLOY_PRINTS = {
    "variants on 127.0.0.1:8765": 1,  # serving N variants on …
    "edge server stopped": 1,
    "50 images (digits test split) via 127.0.0.1:8765": 2,
    "shaped to 40 KB/s": 1,
    "the table's query at 40 KB/s on mcu": 1,  # the prediction for the variant used
    "bytes per request on the wire": 2,
}


def readme_block(text: str, marker: str = "after-demo") -> list[str]:
    """The commands of the README's block after the ``<!-- MARKER -->`` marker (comments stripped)."""
    block = text.split(f"<!-- {marker} -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.strip().splitlines() if line.strip()]


def demo_command(makefile: str) -> str:
    """The recipe of `make demo`, with the Makefile's $(BIN) as the README writes it (.venv/bin)."""
    recipe = makefile.split("\ndemo:", 1)[1].splitlines()[1].strip()
    return recipe.replace("$(BIN)", ".venv/bin")


def test_readme_block_is_known() -> None:
    cmds = readme_block((ROOT / "README.md").read_text())
    assert [c.removeprefix(".venv/bin/") for c in cmds] == list(EXPECTED)
    assert [c.removeprefix(".venv/bin/") for c in readme_block((ROOT / "README.md").read_text(), "deploy")] == DEPLOY
    assert demo_command((ROOT / "Makefile").read_text()) == ".venv/bin/coinfer search"


@pytest.mark.slow
@pytest.mark.skipif(VENV is None, reason="needs the project's virtual environment")
def test_readme_runs_as_written_after_the_demo(tmp_path: Path) -> None:
    assert VENV is not None
    (tmp_path / ".venv").symlink_to(VENV, target_is_directory=True)

    def sh(cmd: str) -> str:
        # the timeout is a hang guard, not a speed bound (the demo builds 12 variants; minutes on a loaded machine)
        res = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, text=True, timeout=3600)
        assert res.returncode == 0, (cmd, res.stdout[-2000:], res.stderr[-2000:])
        assert "Traceback" not in res.stderr, (cmd, res.stderr[-2000:])
        return res.stdout

    out = sh(demo_command((ROOT / "Makefile").read_text()))
    assert "Chosen variant per bandwidth" in out and "table: runs/search/lookup.db" in out
    assert (tmp_path / "runs" / "search" / "lookup.db").is_file()

    for cmd in readme_block((ROOT / "README.md").read_text()):
        out = sh(cmd)
        for text in EXPECTED[cmd.removeprefix(".venv/bin/")]:
            assert text in out, (cmd, text, out[-3000:])

    # the demo's plot is the search's own; pareto wrote its own file beside it
    assert (tmp_path / "runs" / "search" / "pareto.png").is_file()
    assert (tmp_path / "runs" / "search" / "pareto-rpi3.png").is_file()
    manifest = json.loads((tmp_path / "runs" / "export" / "manifest.json").read_text())
    best = sh(".venv/bin/coinfer query --bandwidth 40KB/s --device mcu --key").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", best) and manifest["spec"]["key"] == best

    # the deploy block as one script: the server in the background, two clients, then SIGTERM and its exit code
    script = "\n".join(readme_block((ROOT / "README.md").read_text(), "deploy"))
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=3600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a server left behind by a failed script
    assert proc.returncode == 0, (out[-3000:], err[-3000:])  # `wait %1`: the server's exit code after SIGTERM
    assert "Traceback" not in err and "coinfer: error" not in err, err[-3000:]
    for text, count in DEPLOY_PRINTS.items():
        assert out.count(text) == count, (text, out[-4000:])
    assert (tmp_path / "runs" / "search" / "exports").is_dir()
