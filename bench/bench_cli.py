"""CLI responsiveness: `coinfer --help`, argument errors and the cost of progress reporting, now against a baseline
commit, side by side in one run.

Usage:
    .venv/bin/python bench/bench_cli.py [--baseline 4c148a1] [--runs 10]

Each command runs in a fresh process (what a user waits for), alternating between this checkout and a git worktree
of ``--baseline`` (the same venv; the worktree first on ``sys.path``), and the medians are printed with their
ratio. Then ``fit()`` of a small model on synthetic data is timed with no progress sink and inside the CLI's
``cli_progress()`` (plain lines, sent to /dev/null), interleaved, to show what reporting costs per step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = {
    "coinfer --help": ["--help"],
    "coinfer search --trials 0 (argument error)": ["search", "--trials", "0"],
    "coinfer query -b 40KB/s (no table yet)": ["query", "-b", "40KB/s"],
    "coinfer build --split 1 --bits 0 (bad value)": ["build", "--split", "1", "--ratio", "8", "--bits", "0"],
}


def run_once(tree: Path, args: list[str], cwd: Path) -> tuple[float, int]:
    """Seconds and exit code of ``coinfer ARGS`` with the packages of ``tree`` first on the path."""
    code = "import sys; sys.argv = ['coinfer', *sys.argv[1:]]; from search.cli import main; main()"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, res.returncode


def command_table(baseline: Path | None, runs: int) -> None:
    trees = {"now": ROOT} | ({"baseline": baseline} if baseline is not None else {})
    print(f"{'command':<48} " + " ".join(f"{k + ' s':>12}" for k in trees) + ("   ratio" if baseline else ""))
    with tempfile.TemporaryDirectory() as cwd:
        for label, args in COMMANDS.items():
            times: dict[str, list[float]] = {k: [] for k in trees}
            codes: dict[str, set[int]] = {k: set() for k in trees}
            run_once(ROOT, args, Path(cwd))  # warm the file cache once
            for _ in range(runs):
                for k, tree in trees.items():
                    s, rc = run_once(tree, args, Path(cwd))
                    times[k].append(s)
                    codes[k].add(rc)
            med = {k: statistics.median(v) for k, v in times.items()}
            row = f"{label:<48} " + " ".join(f"{med[k]:>12.3f}" for k in trees)
            if baseline is not None:
                row += f"   {med['baseline'] / med['now']:5.1f}x"
            print(row + "   exit " + " / ".join(",".join(map(str, sorted(codes[k]))) for k in trees))


def progress_cost(runs: int) -> None:
    import torch

    from coinference.data import load_dataset
    from coinference.latency import interleaved_medians
    from coinference.train import TrainConfig, fit
    from coinference.zoo import build_model
    from search.cli.progress import cli_progress

    torch.set_num_threads(1)
    data = load_dataset("synthetic")
    net = build_model("tiny-cnn")
    cfg = TrainConfig(steps=200, batch_size=32, seed=0)

    def plain() -> None:
        fit(net, data, cfg)

    def reported() -> None:
        with open(os.devnull, "w") as null:
            saved, sys.stderr = sys.stderr, null
            try:
                with cli_progress():
                    fit(net, data, cfg)
            finally:
                sys.stderr = saved

    a, b = interleaved_medians(plain, reported, runs=runs, warmup=1)
    print(
        f"\nfit(), tiny-cnn on synthetic, 200 steps: {1e6 * a / 200:.1f} µs/step with no sink, "
        f"{1e6 * b / 200:.1f} µs/step inside cli_progress() (ratio {b / a:.3f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="4c148a1", help="commit to compare with ('' for none)")
    ap.add_argument("--runs", type=int, default=10, help="fresh processes per command and checkout")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.runs} runs per command, medians")
    if args.baseline:
        with tempfile.TemporaryDirectory() as tmp:
            wt = Path(tmp) / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(wt), args.baseline],
                           check=True)  # fmt: skip
            try:
                print(f"baseline: {args.baseline} (git worktree)")
                command_table(wt, args.runs)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=True)
    else:
        command_table(None, args.runs)
    progress_cost(args.runs)


if __name__ == "__main__":
    main()
