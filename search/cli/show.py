"""``coinfer show VARIANT``: one variant of the lookup table (spec, status, measurement, artifacts)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from coinference.errors import ConfigError
from search.cli import app
from search.cli.common import console
from search.cli.table_options import DbOpt, NameOpt, RunsRootOpt, locate, read_table
from search.runs import DEFAULT_RUNS_ROOT


@app.command()
def show(
    variant: Annotated[str, typer.Argument(help="Variant key (sha256 of its spec) or a unique prefix of ≥ 4 digits.")],
    db: DbOpt = None,
    name: NameOpt = None,
    runs_root: RunsRootOpt = DEFAULT_RUNS_ROOT,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """Show one variant: spec, status or error, measurement and recorded files with their sha256."""
    if not (4 <= len(variant) <= 64 and all(c in "0123456789abcdefABCDEF" for c in variant)):
        raise ConfigError(f"VARIANT must be a key or a prefix of 4-64 hex digits, got {variant!r}")
    with read_table(locate(db, name, runs_root)) as table:
        r = table.find(variant.lower())
    doc = {
        "key": r.key,
        "status": r.status,
        "error": r.error,
        "run": r.run,
        "created_at": r.created_at.isoformat(),
        "updated_at": r.updated_at.isoformat(),
        "spec": r.spec.to_dict(),
        "measurement": r.measurement.to_dict() if r.measurement else None,
        "artifacts": {
            a.name: {"path": str(a.path), "sha256": a.sha256, "size_bytes": a.size_bytes} for a in r.artifacts.values()
        },
    }
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"variant {r.key}", show_header=False)
    t.add_column("field")
    t.add_column("value", overflow="fold")
    for k in ("status", "error", "run", "created_at", "updated_at"):
        if doc[k] is not None:
            t.add_row(k, str(doc[k]))
    for k, v in r.spec.to_dict().items():
        t.add_row(f"spec.{k}", json.dumps(v) if isinstance(v, dict) else str(v))
    if r.measurement is not None:
        for k, v in r.measurement.to_dict().items():
            text = json.dumps(v) if isinstance(v, dict) else f"{v:,}" if isinstance(v, int) else str(v)
            t.add_row(f"measurement.{k}", text)
        t.add_row("measurement.device_memory_bytes", f"{r.measurement.device_memory_bytes:,}")
    for a in r.artifacts.values():
        t.add_row(f"artifact.{a.name}", f"{a.path} ({a.size_bytes:,} B, sha256 {a.sha256[:16]}…)")
    console().print(t)
