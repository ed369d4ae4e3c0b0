"""Options and helpers shared by the lookup-table commands (pareto, query, export, show).

Every check here runs before the table is opened; heavy imports (SQLAlchemy, PyTorch) happen only in
:func:`read_table` and the commands.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from coinference.errors import ConfigError
from coinference.latency import (
    DeviceProfile,
    Link,
    ServerProfile,
    device_names,
    device_profile,
    server_names,
    server_profile,
)
from coinference.latency import parse_bandwidth as _parse_bandwidth
from coinference.variant import FIDELITIES
from search.cli import names, validate
from search.runs import DEFAULT_RUNS_ROOT, TableRef, find_table

if TYPE_CHECKING:
    from storage import LookupTable

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Lookup table: a SQLAlchemy URL, an SQLite file path or a run folder (default: $COINFER_DB, else the "
        "table of --name, else of the run the last `coinfer search` wrote).",
    ),
]
NameOpt = Annotated[
    str | None,
    typer.Option("--name", help="Run whose table to read: <runs-root>/<name>/lookup.db (default: the last search's)."),
]
RunsRootOpt = Annotated[Path, typer.Option("--runs-root", help="Parent folder of the run folders.")]
DeviceOpt = Annotated[str, typer.Option("--device", help=f"Device profile: {', '.join(device_names())}.")]
ServerOpt = Annotated[
    str,
    typer.Option(
        "--server", help=f"Server profile: {', '.join(server_names())} (local: times measured by coinfer measure)."
    ),
]
RttOpt = Annotated[float, typer.Option("--rtt", help="Round-trip time added once per image, seconds (≥ 0).")]
MinAccOpt = Annotated[
    float | None,
    typer.Option(
        "--min-accuracy", help="Accuracy floor in [0, 1] (default: best accuracy that fits the device − 0.02; 0: none)."
    ),
]
BANDWIDTH_HELP = "Link rate: 40KB/s (B = bytes), 320kbit/s or 320kbps (b = bits), 125000 (bytes/s)."
BandwidthOpt = Annotated[str, typer.Option("--bandwidth", "-b", help=BANDWIDTH_HELP)]
SymbolRateOpt = Annotated[
    float | None,
    typer.Option(
        "--symbol-rate",
        help="Real channel uses per second of the link, for analog JSCC variants (jscc-awgn): they send channel_uses "
        "real symbols, taking channel_uses / rate seconds (default: none, and analog variants are left out).",
    ),
]
LinkSnrOpt = Annotated[
    float | None,
    typer.Option(
        "--snr",
        help="The link's SNR in dB per real symbol (with --symbol-rate): only analog variants measured at this SNR "
        "or lower qualify (a variant's SNR: its codec's snr_db, else 10 dB; default: no check).",
    ),
]
FidelityOpt = Annotated[
    str | None,
    typer.Option(
        "--fidelity", help=f"Only variants built at this fidelity: {', '.join(FIDELITIES)} (default: all of them)."
    ),
]


def locate(db: str | None, name: str | None, runs_root: Path = DEFAULT_RUNS_ROOT) -> TableRef:
    """The table a command reads (``search.runs.find_table``), with --name checked first."""
    if name is not None:
        validate.run_name(name)
    return find_table(db, name, runs_root)


def read_table(ref: TableRef) -> LookupTable:
    """Open an existing table (never creates one: a typo in --db is an error, not an empty table)."""
    from storage import open_table

    return open_table(ref.url, create=False)


def check_profiles(device: str, server: str) -> None:
    """--device/--server names, checked without calibrating ``local``."""
    names.check("device profile", device, device_names())
    names.check("server profile", server, server_names())


def profiles(device: str, server: str) -> tuple[DeviceProfile, ServerProfile]:
    """Resolve --device/--server (unknown names raise an error listing the valid ones)."""
    check_profiles(device, server)
    return device_profile(device), server_profile(server)


def check_rtt(rtt: float) -> float:
    return validate.in_range("--rtt", rtt, 0.0, 3600.0)


def check_min_accuracy(min_accuracy: float | None) -> float | None:
    return None if min_accuracy is None else validate.in_range("--min-accuracy", min_accuracy, 0.0, 1.0)


def check_fidelity(fidelity: str | None) -> str | None:
    return None if fidelity is None else names.check("fidelity", fidelity, FIDELITIES)


def check_analog(symbol_rate: float | None, snr: float | None) -> None:
    """--symbol-rate in (0, 1e12] real symbols per second; --snr in the accepted SNR range, and only with
    --symbol-rate (it concerns analog variants, which need a symbol rate)."""
    if symbol_rate is not None:
        validate.in_range("--symbol-rate", symbol_rate, 0.0, 1e12, low_open=True)
    if snr is not None:
        validate.in_range("--snr", snr, *names.SNR_RANGE_DB)
        if symbol_rate is None:
            raise ConfigError(
                f"--snr {snr:g} is the SNR of an analog link: give its --symbol-rate too (real channel uses per second)"
            )


def link(bandwidth: str, rtt: float, symbol_rate: float | None = None) -> Link:
    """--bandwidth/--rtt/--symbol-rate → :class:`Link` (bad values raise ConfigError)."""
    return Link(_parse_bandwidth(bandwidth), rtt_s=check_rtt(rtt), symbols_per_s=symbol_rate)


def analog_note(symbol_rate: float | None, snr: float | None) -> str:
    """The analog part of a link as titles print it (empty without a symbol rate)."""
    if symbol_rate is None:
        return ""
    return f", {fmt_count(symbol_rate)} symbols/s" + (f" at {snr:g} dB" if snr is not None else "")


def fmt_count(x: float) -> str:
    """MACs or bits in a short form: 1.23 M, 45.6 k."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:,.2f} {unit}"
    return f"{x:,.0f}"


def of_fidelity(records: Sequence[Any], fidelity: str | None) -> list[Any]:
    """The records a table command compares: those built at ``fidelity``; without one, each variant at the highest
    fidelity it was measured at (``storage.highest_fidelity``: the rungs of a multi-fidelity search collapse to the
    top one each variant reached, so no variant is compared at two budgets at once)."""
    if fidelity is not None:
        return [r for r in records if r.spec.fidelity == fidelity]
    from storage.records import highest_fidelity

    return highest_fidelity(records)


def fidelity_note(records: Sequence[Any], what: str = "the table") -> str:
    """A line saying which fidelities ``records`` mix (empty when they share one): a front or choice over mixed
    budgets compares variants trained for different lengths. ``what`` names them (``the table``, ``the front``)."""
    fids = sorted({r.spec.fidelity for r in records}, key=FIDELITIES.index)
    if len(fids) <= 1:
        return ""
    counts = ", ".join(f"{sum(1 for r in records if r.spec.fidelity == f)} {f}" for f in fids)
    return (
        f"note: {what} mixes fidelities ({counts}), each variant at the highest it reached; --fidelity NAME keeps one"
    )
