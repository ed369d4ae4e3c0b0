"""The ``coinfer`` command line. Each command lives in its own module and registers on :data:`app`."""

from __future__ import annotations

import sys

import typer

from coinference.errors import CoinferenceError

app = typer.Typer(
    name="coinfer",
    help="Device-edge co-inference: profile split points, compress the device part, code the features.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Device-edge co-inference: profile split points, compress the device part, code the features."""


# Command modules register themselves on `app` when imported.
from search.cli import base, build, profile  # noqa: E402,F401
from search.cli import pareto  # noqa: E402,F401
from search.cli import query  # noqa: E402,F401
from search.cli import export  # noqa: E402,F401
from search.cli import encode  # noqa: E402,F401
from search.cli import show  # noqa: E402,F401
from search.cli import search  # noqa: E402,F401
from search.cli import prune  # noqa: E402,F401


def main() -> None:
    """Entry point: any :class:`CoinferenceError` becomes one line on stderr and exit code 2."""
    try:
        app()
    except CoinferenceError as e:
        print(f"coinfer: error: {e}", file=sys.stderr)
        sys.exit(2)
