"""``coinfer pareto``: the lookup table's Pareto front as a table and a PNG, with the variant chosen per bandwidth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from coinference.errors import ConfigError
from search.cli import app, validate
from search.cli.common import console
from search.cli.table_options import (
    DbOpt,
    DeviceOpt,
    FidelityOpt,
    LinkSnrOpt,
    MinAccOpt,
    NameOpt,
    RttOpt,
    RunsRootOpt,
    ServerOpt,
    SymbolRateOpt,
    check_analog,
    check_fidelity,
    check_min_accuracy,
    check_profiles,
    check_rtt,
    fidelity_note,
    fmt_count,
    locate,
    of_fidelity,
    profiles,
    read_table,
)
from search.runs import DEFAULT_RUNS_ROOT


@app.command()
def pareto(
    db: DbOpt = None,
    name: NameOpt = None,
    runs_root: RunsRootOpt = DEFAULT_RUNS_ROOT,
    device: DeviceOpt = "rpi3",
    server: ServerOpt = "rtx2080ti",
    rtt: RttOpt = 0.0,
    symbol_rate: SymbolRateOpt = None,
    snr: LinkSnrOpt = None,
    min_accuracy: MinAccOpt = None,
    fidelity: FidelityOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="PNG of the front (default: pareto-<device>.png beside the table).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the front as JSON instead.")] = False,
) -> None:
    """Pareto front over (accuracy ↑, device MACs ↓, bits ↓) of the variants that fit --device, as a table and a
    plot with the variant chosen at each bandwidth marked (the same floor and chooser as `query` and `export`;
    analog JSCC variants are chosen given --symbol-rate, and with --snr those measured at a higher SNR are left off
    the front)."""
    check_profiles(device, server)
    check_rtt(rtt)
    check_analog(symbol_rate, snr)
    check_min_accuracy(min_accuracy)
    check_fidelity(fidelity)
    ref = locate(db, name, runs_root)
    png = out or ref.home / f"pareto-{device}.png"
    if not as_json:
        if png.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise ConfigError(f"--out must end in .png, .pdf or .svg (the plot's format), got {str(png)!r}")
        validate.writable_file("--out", png)
    dev, srv = profiles(device, server)
    from coinference.latency import feasible
    from storage import EmptyTableError, NoFeasibleVariantError
    from storage.pareto import OBJECTIVES, hypervolume, measured, pareto_front, pareto_ranks, reference_point
    from storage.query import BandwidthChoice, analog_snr_db, bandwidth_table, floor_label, resolve_floor

    with read_table(ref) as table:
        records = of_fidelity(table.variants(), fidelity)
    ok = measured(records)
    if not ok:
        what = f" at fidelity {fidelity}" if fidelity else ""
        raise EmptyTableError(f"the lookup table {table.url} has no measured (status ok) variant{what}")

    # The front of what this device can hold (and this link can carry): a variant that does not fit would dominate
    # points it cannot replace.
    def usable(r: Any) -> bool:
        needs = analog_snr_db(r)
        return snr is None or needs is None or needs <= snr

    fits = [r for r in ok if r.measurement is not None and feasible(r.measurement, dev) and usable(r)]
    floor = resolve_floor(ok, min_accuracy, dev)
    front = pareto_front(fits, min_accuracy or None)  # an explicit floor trims the front; the default only chooses
    ranks = pareto_ranks(fits)
    ref_point = reference_point(ok)
    hv = hypervolume(front, ref_point)
    choices: list[BandwidthChoice] = []
    note = ""
    try:
        choices = bandwidth_table(ok, dev, srv, rtt, floor, symbols_per_s=symbol_rate, snr_db=snr)
    except NoFeasibleVariantError as e:
        note = f"no variant is chosen on {dev.name}: {e}"
    if as_json:
        doc = {
            "objectives": list(OBJECTIVES),
            "device": dev.name,
            "symbols_per_s": symbol_rate,
            "snr_db": snr,
            "reference_point": list(ref_point),
            "hypervolume": hv,
            "accuracy_floor": floor,
            "fidelities": sorted({r.spec.fidelity for r in ok}),
            "front": [
                {"key": r.key, "spec": r.spec.to_dict(), "measurement": r.measurement.to_dict()}
                for r in front
                if r.measurement
            ],
            "choices": [c.to_dict() for c in choices],
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    from rich.table import Table

    from storage.plots import fmt_rate, plot_front

    con = console()
    t = Table(
        title=f"Pareto front on {dev.name}: {len(front)} of {len(fits)} variants that fit its memory "
        f"({len(ok)} measured; choices at {floor_label(floor)}; {table.url})"
    )
    for col in (
        "key",
        "model",
        "split",
        "sparsity",
        "codec",
        "fidelity",
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
            r.spec.fidelity,
            f"{m.accuracy:.4f}",
            fmt_count(m.device_macs),
            f"{m.bits_mean + m.header_bits:,.0f}",
            f"{m.device_memory_bytes:,}",
            f"{fmt_rate(min(rates))}–{fmt_rate(max(rates))}" if rates else "",
        )
    con.print(t)
    con.print(
        f"hypervolume {hv:.4g} (error × MACs × bits) w.r.t. reference "
        f"({ref_point[0]:g}, {ref_point[1]:.4g}, {ref_point[2]:.4g}); "
        f"front rank 1 = {sum(1 for k in ranks.values() if k == 1)} variants"
    )
    off_front = sorted({c.key for c in choices} - {r.key for r in front})
    if off_front:
        con.print(
            f"chosen but not on the 3-objective front (server MACs matter): {', '.join(k[:12] for k in off_front)}"
        )
    for line in (note, fidelity_note(front, "the front") or fidelity_note(ok)):
        if line:
            con.print(line)
    big = [r for r in ok if r.measurement is not None and not feasible(r.measurement, dev)]
    path = plot_front(ok, front, choices, png, title=f"{dev.name} / {srv.name}", infeasible=big)
    con.print(f"plot: {path}")
