"""Options and helpers shared by the lookup-table commands (pareto, query, export, show)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer

from coinference.latency import SERVERS, DeviceProfile, Link, ServerProfile, device_names, device_profile
from coinference.latency import parse_bandwidth as _parse_bandwidth
from storage import LookupTable, open_table
from storage.query import default_floor

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="SQLAlchemy URL of the lookup table (default: $COINFER_DB, else sqlite:///runs/<name>/lookup.db).",
    ),
]
NameOpt = Annotated[str, typer.Option("--name", help="Run name: the default table is runs/<name>/lookup.db.")]
DeviceOpt = Annotated[str, typer.Option("--device", help=f"Device profile: {', '.join(device_names())}.")]
ServerOpt = Annotated[str, typer.Option("--server", help=f"Server profile: {', '.join(SERVERS.names())}.")]
RttOpt = Annotated[float, typer.Option("--rtt", help="Round-trip time added once per image, seconds.")]
MinAccOpt = Annotated[
    float | None,
    typer.Option(
        "--min-accuracy", help="Accuracy floor in [0, 1] (default: best accuracy that fits the device − 0.02; 0: none)."
    ),
]
BandwidthOpt = Annotated[str, typer.Option("--bandwidth", "-b", help="Link rate, e.g. 40KB/s, 5 Mbit/s, 125000.")]


def read_table(db: str | None, name: str) -> LookupTable:
    """Open an existing table (never creates one: a typo in --db is an error, not an empty table)."""
    return open_table(db, name, create=False)


def profiles(device: str, server: str) -> tuple[DeviceProfile, ServerProfile]:
    """Resolve --device/--server (unknown names raise an error listing the valid ones)."""
    return device_profile(device), SERVERS.get(server)


def link(bandwidth: str, rtt: float) -> Link:
    """--bandwidth/--rtt → :class:`Link` (bad values raise ConfigError)."""
    return Link(_parse_bandwidth(bandwidth), rtt_s=rtt)


def fmt_count(x: float) -> str:
    """MACs or bits in a short form: 1.23 M, 45.6 k."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:,.2f} {unit}"
    return f"{x:,.0f}"


def accuracy_floor(records: Sequence[Any], min_accuracy: float | None, device: DeviceProfile) -> float | None:
    """--min-accuracy, or by default the best accuracy among the variants that fit ``device`` − 0.02 (so a bare
    query never picks a broken variant for its speed); 0 means no floor."""
    if min_accuracy is None:
        return default_floor(records, device)
    return min_accuracy or None
