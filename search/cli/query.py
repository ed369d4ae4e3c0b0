"""``coinfer query``: the feasible variant with the least end-to-end latency for a link, or the precomputed
bandwidth → variant table for devices that cannot run a query."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from coinference.errors import ConfigError
from coinference.latency import parse_bandwidth
from search.cli import app, validate
from search.cli.common import console
from search.cli.table_options import (
    BANDWIDTH_HELP,
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
    analog_note,
    check_analog,
    check_fidelity,
    check_min_accuracy,
    check_profiles,
    check_rtt,
    fidelity_note,
    fmt_count,
    link,
    locate,
    of_fidelity,
    profiles,
    read_table,
)
from search.runs import DEFAULT_RUNS_ROOT


@app.command()
def query(
    bandwidth: Annotated[
        str | None,
        typer.Option(
            "--bandwidth",
            "-b",
            help=f"{BANDWIDTH_HELP} With --table: only this rate.",
        ),
    ] = None,
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
    top: Annotated[int, typer.Option(help="Runners-up to list (≥ 0).")] = 3,
    table_: Annotated[
        bool, typer.Option("--table", help="Print the bandwidth → variant table (1 KB/s … 100 MB/s) instead.")
    ] = False,
    per_decade: Annotated[int, typer.Option(help="Rates per factor of 10 in --table, 1-100.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    key_only: Annotated[bool, typer.Option("--key", help="Print only the best variant's key (for scripts).")] = False,
) -> None:
    """Best variant for a bandwidth, device, server, RTT and accuracy floor (latency computed now); analog JSCC
    variants take part given the link's --symbol-rate (and, with --snr, only those measured at that SNR or lower)."""
    check_profiles(device, server)
    check_rtt(rtt)
    check_analog(symbol_rate, snr)
    check_min_accuracy(min_accuracy)
    check_fidelity(fidelity)
    validate.at_least("--top", top, 0)
    validate.at_least("--per-decade", per_decade, 1)
    if per_decade > 100:
        raise ConfigError(f"--per-decade must be ≤ 100, got {per_decade}")
    if not table_ and bandwidth is None:
        raise ConfigError("give --bandwidth (e.g. 40KB/s), or --table for every rate")
    if key_only and (table_ or as_json):
        raise ConfigError(f"--key prints one variant's key: use it without {'--table' if table_ else '--json'}")
    lk = link(bandwidth, rtt, symbol_rate) if bandwidth is not None else None
    ref = locate(db, name, runs_root)
    dev, srv = profiles(device, server)
    from rich.table import Table

    from storage.plots import fmt_rate
    from storage.query import bandwidth_table, floor_label, log_bandwidths, resolve_floor
    from storage.query import query as run_query

    with read_table(ref) as tbl:
        records = of_fidelity(tbl.variants(status="ok"), fidelity)
    floor = resolve_floor(records, min_accuracy, dev)
    con = console()
    if table_:
        rates = log_bandwidths(per_decade=per_decade) if bandwidth is None else [parse_bandwidth(bandwidth)]
        rows = bandwidth_table(records, dev, srv, rtt, floor, rates, symbol_rate, snr)
        fid = {r.key: r.spec.fidelity for r in records}
        if as_json:
            doc = {"device": dev.name, "server": srv.name, "rtt_s": rtt, "accuracy_floor": floor}
            doc |= {"symbols_per_s": symbol_rate, "snr_db": snr}
            typer.echo(json.dumps({**doc, "rows": [r.to_dict() for r in rows]}, indent=2))
            return
        t = Table(
            title=f"bandwidth → variant on {dev.name} / {srv.name}, RTT {rtt:g} s{analog_note(symbol_rate, snr)}, "
            f"{floor_label(floor)}"
        )
        for col in ("bandwidth", "variant", "fidelity", "latency ms", "accuracy", "bits"):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(
                fmt_rate(r.bandwidth_bytes_per_s), r.key[:12], fid[r.key], f"{r.total_s * 1e3:,.2f}",
                f"{r.accuracy:.4f}", f"{r.bits:,.0f}",
            )  # fmt: skip
        con.print(t)
        note = fidelity_note(records)
        if note:
            con.print(note)
        return
    assert lk is not None
    res = run_query(records, lk, dev, srv, floor, top, snr)
    if key_only:
        typer.echo(res.best.record.key)
        return
    ranked = [res.best, *res.runners_up]
    if as_json:
        doc = {
            "bandwidth_bytes_per_s": lk.bandwidth_bytes_per_s,
            "symbols_per_s": symbol_rate,
            "snr_db": snr,
            "device": dev.name,
            "server": srv.name,
            "feasible": res.feasible,
            "measured": res.measured,
            "ranked": [
                {
                    "key": c.record.key,
                    "total_s": c.total_s,
                    "device_s": c.latency.device_s,
                    "transmit_s": c.latency.transmit_s,
                    "rtt_s": c.latency.rtt_s,
                    "server_s": c.latency.server_s,
                    "measured_parts": list(c.measured),
                    "measurement": c.record.measurement.to_dict() if c.record.measurement else None,
                }
                for c in ranked
            ],
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    t = Table(
        title=f"{fmt_rate(lk.bandwidth_bytes_per_s)}{analog_note(symbol_rate, snr)} on {dev.name} / {srv.name}, "
        f"RTT {rtt:g} s: "
        f"{res.feasible} feasible of {res.measured} measured, {floor_label(floor)}"
    )
    for col in ("#", "key", "split", "sparsity", "codec", "fidelity", "accuracy", "device MACs", "bits", "device ms",
                "transmit ms", "server ms", "total ms"):  # fmt: skip
        t.add_column(col, justify="right")
    for i, c in enumerate(ranked, start=1):
        m = c.record.measurement
        assert m is not None
        lat = c.latency
        t.add_row(
            str(i), c.record.key[:12], c.record.spec.split, f"{c.record.spec.sparsity:.2f}", c.record.spec.codec.label,
            c.record.spec.fidelity, f"{m.accuracy:.4f}", fmt_count(m.device_macs),
            f"{m.bits_mean + m.header_bits:,.0f}", f"{lat.device_s * 1e3:,.3f}", f"{lat.transmit_s * 1e3:,.3f}",
            f"{lat.server_s * 1e3:,.3f}", f"{c.total_s * 1e3:,.3f}",
        )  # fmt: skip
    con.print(t)
    timed = sorted({p for c in ranked for p in c.measured})
    if timed:
        con.print(f"{' and '.join(timed)} ms: each variant's own time measured on this machine (coinfer measure)")
    con.print(f"best: {res.best.record.key}")
    note = fidelity_note(records)
    if note:
        con.print(note)
