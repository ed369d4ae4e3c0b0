"""``coinfer pareto``: the lookup table's Pareto front as a table and a PNG, with the variant chosen per bandwidth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coinference.latency import feasible
from search.cli import app
from search.cli.common import console
from search.cli.table_options import (
    DbOpt,
    DeviceOpt,
    MinAccOpt,
    NameOpt,
    RttOpt,
    ServerOpt,
    fmt_count,
    profiles,
    read_table,
)
from storage import EmptyTableError, NoFeasibleVariantError
from storage.pareto import OBJECTIVES, hypervolume, measured, pareto_front, pareto_ranks, reference_point
from storage.plots import fmt_rate, plot_front
from storage.query import BandwidthChoice, bandwidth_table


@app.command()
def pareto(
    db: DbOpt = None,
    name: NameOpt = "default",
    device: DeviceOpt = "rpi3",
    server: ServerOpt = "rtx2080ti",
    rtt: RttOpt = 0.0,
    min_accuracy: MinAccOpt = None,
    out: Annotated[Path | None, typer.Option(help="PNG of the front (default: runs/<name>/pareto.png).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the front as JSON instead.")] = False,
) -> None:
    """Pareto front over (accuracy ↑, device MACs ↓, bits ↓) of the variants that fit --device, as a table and a
    plot with the variant chosen at each bandwidth marked."""
    dev, srv = profiles(device, server)
    with read_table(db, name) as table:
        records = table.variants()
    ok = measured(records)
    if not ok:
        raise EmptyTableError(f"the lookup table {table.url} has no measured (status ok) variant")
    # The front of what this device can hold: a variant that does not fit would dominate points it cannot replace.
    fits = [r for r in ok if r.measurement is not None and feasible(r.measurement, dev)]
    front = pareto_front(fits, min_accuracy)
    ranks = pareto_ranks(fits)
    ref = reference_point(ok)
    hv = hypervolume(front, ref)
    choices: list[BandwidthChoice] = []
    note = ""
    try:
        choices = bandwidth_table(ok, dev, srv, rtt, min_accuracy)
    except NoFeasibleVariantError as e:
        note = f"no variant is chosen on {dev.name}: {e}"
    if as_json:
        doc = {
            "objectives": list(OBJECTIVES),
            "device": dev.name,
            "reference_point": list(ref),
            "hypervolume": hv,
            "front": [
                {"key": r.key, "spec": r.spec.to_dict(), "measurement": r.measurement.to_dict()}
                for r in front
                if r.measurement
            ],
            "choices": [c.to_dict() for c in choices],
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    con = console()
    t = Table(
        title=f"Pareto front on {dev.name}: {len(front)} of {len(fits)} variants that fit its memory "
        f"({len(ok)} measured; {table.url})"
    )
    for col in (
        "key",
        "model",
        "split",
        "sparsity",
        "codec",
        "accuracy",
        "device MACs",
        "bits",
        "memory B",
        "chosen at",
    ):
        t.add_column(col, justify="right")
    spans: dict[str, list[float]] = {}
    for c in choices:
        spans.setdefault(c.key, []).append(c.bandwidth_bytes_per_s)
    for r in front:
        m = r.measurement
        assert m is not None
        rates = spans.get(r.key)
        t.add_row(
            r.key[:12],
            r.spec.model,
            r.spec.split,
            f"{r.spec.sparsity:.2f}",
            r.spec.codec.label,
            f"{m.accuracy:.4f}",
            fmt_count(m.device_macs),
            f"{m.bits_mean + m.header_bits:,.0f}",
            f"{m.device_memory_bytes:,}",
            f"{fmt_rate(min(rates))}–{fmt_rate(max(rates))}" if rates else "",
        )
    con.print(t)
    con.print(
        f"hypervolume {hv:.4g} (error × MACs × bits) w.r.t. reference ({ref[0]:g}, {ref[1]:.4g}, {ref[2]:.4g}); "
        f"front rank 1 = {sum(1 for k in ranks.values() if k == 1)} variants"
    )
    off_front = sorted({c.key for c in choices} - {r.key for r in front})
    if off_front:
        con.print(
            f"chosen but not on the 3-objective front (server MACs matter): {', '.join(k[:12] for k in off_front)}"
        )
    if note:
        con.print(note)
    big = [r for r in ok if r not in fits]
    png = out or Path("runs") / name / "pareto.png"
    path = plot_front(ok, front, choices, png, title=f"{dev.name} / {srv.name}", infeasible=big)
    con.print(f"plot: {path}")
