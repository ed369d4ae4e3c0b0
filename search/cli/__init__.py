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
from search.cli import measure  # noqa: E402,F401
from search.cli import serve  # noqa: E402,F401
from search.cli import infer  # noqa: E402,F401


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _bad_input(e: BaseException) -> str:
    """``(got 'abc')`` for a value Typer could not convert (its message leaves the value out)."""
    errors = getattr(e.__cause__, "errors", None)
    try:
        value = errors()[0]["input"] if callable(errors) else None
    except (IndexError, KeyError, TypeError):
        value = None
    return f" (got {value!r})" if value is not None else ""


def main() -> None:
    """Entry point. Every error is one line on stderr: a :class:`CoinferenceError` or a usage error (unknown
    option, bad type) exits 2; Ctrl-C exits 130. Heavy libraries are imported by the commands themselves, so
    ``--help`` and argument errors answer at once."""
    try:
        code = app(standalone_mode=False, prog_name="coinfer")
    except typer.TyperException as e:  # usage errors: Typer would draw a multi-line box
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `coinfer`: the help, as `coinfer --help` prints it
            print(e.format_message())
            sys.exit(0)
        print(f"coinfer: error: {_one_line(e.format_message())}{_bad_input(e)}", file=sys.stderr)
        sys.exit(2)
    except CoinferenceError as e:
        print(f"coinfer: error: {_one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("coinfer: interrupted", file=sys.stderr)
        sys.exit(130)
    if code == 130:  # Typer turned Ctrl-C into exit code 130
        print("coinfer: interrupted", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
