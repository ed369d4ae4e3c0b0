"""Options and helpers shared by ``serve`` and ``infer``: which packages to deploy — given as ``--package`` folders,
or the split variants a lookup table's bandwidth table picks for a device (``storage.deploy``) — and the addresses.

Package mode needs no PyTorch and no SQLAlchemy (``coinference.runtime`` reads the packages); table mode opens the
table and exports a package that is missing (PyTorch).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from coinference.errors import ConfigError
from coinference.latency import device_names, fmt_rate, server_names
from search.cli import validate

if TYPE_CHECKING:
    from coinference.latency import DeviceProfile, ServerProfile
    from coinference.runtime import Package
    from search.runs import TableRef
    from storage.records import VariantRecord

PackageOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--package",
        help="An export package folder (coinfer export, coinfer measure) to deploy, instead of a table's choices "
        "(repeatable).",
    ),
]
DEFAULT_DEVICE = "rpi3"
DEFAULT_SERVER = "rtx2080ti"
DeviceProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help=f"Device profile whose bandwidth table picks the variants (with a table): {', '.join(device_names())} "
        f"(default {DEFAULT_DEVICE}).",
    ),
]
SERVER_PROFILE_HELP = f"Server profile of the bandwidth table (with a table): {', '.join(server_names())}"
VERIFY_IMAGES = 64
"""Test images a missing package is exported and verified with (``coinfer export``'s default)."""


@dataclass(frozen=True)
class Deployed:
    """One variant to deploy: its package and where the bandwidth table picks it."""

    package: Path
    variant_id: str
    """16 hex digits: the variant's name on the wire."""
    split: str
    codec: str
    """The codec's label (``sq/c8/s2/2b``), or the runtime coder's kind for a package without a spec."""
    interval: tuple[float, float] | None = None
    """[lo, hi) bytes/s where the table picks it (table mode)."""
    exported_for: float | None = None
    """The rate (bytes/s) ``coinfer export`` chose it for (package mode, when the manifest records it)."""
    opened: Package | None = None
    """The package as read (its manifest and the files of the side asked for checked); None before it exists."""

    @property
    def rates(self) -> str:
        """Where it is used, as the command lines print it."""
        if self.interval is not None:
            lo, hi = self.interval
            if lo <= 0 and math.isinf(hi):
                return "every rate"
            if lo <= 0:
                return f"below {fmt_rate(hi)}"
            return f"{fmt_rate(lo)} and up" if math.isinf(hi) else f"{fmt_rate(lo)} – {fmt_rate(hi)}"
        if self.exported_for is not None:
            return f"exported for {fmt_rate(self.exported_for)}"
        return "rate not recorded"

    def line(self) -> str:
        return f"{self.variant_id}  split {self.split:<10} {self.codec:<16} {self.rates}  ({self.package})"


def check_package_mode(packages: Sequence[Path] | None, **table_options: object) -> bool:
    """True for package mode (``--package`` given); then none of the table's options may be (they would be
    silently ignored). Each ``--package`` must be a folder."""
    if not packages:
        return False
    given = [f"--{k.replace('_', '-')}" for k, v in table_options.items() if v is not None]
    if given:
        raise ConfigError(
            f"--package deploys the given packages; {', '.join(given)} {'chooses' if len(given) == 1 else 'choose'} "
            "from a lookup table: give one or the other"
        )
    for p in packages:
        validate.existing_dir("--package", p)
    return True


def open_packages(paths: Sequence[Path], side: str) -> list[Deployed]:
    """The ``--package`` folders, each read and its ``side`` files checked against their sha256 (no PyTorch).

    Raises:
        PackageError: not a package, a newer format, a missing or altered file. ConfigError: two packages of one
            variant.
    """
    out: list[Deployed] = []
    seen: dict[str, Path] = {}
    for p in paths:
        d = describe(p, side)
        if d.variant_id in seen:
            other = str(seen[d.variant_id])
            raise ConfigError(f"--package {str(p)!r} holds variant {d.variant_id}, as {other!r} does")
        seen[d.variant_id] = p
        out.append(d)
    return out


def describe(folder: Path, side: str, interval: tuple[float, float] | None = None) -> Deployed:
    """The package in ``folder``, read and its ``side`` files checked."""
    from coinference.runtime import Package

    pkg = Package.open(folder, side)
    split, codec = _labels(pkg.manifest.get("spec"), pkg.codec_kind)
    rate = (pkg.extra.get("query") or {}).get("bandwidth_bytes_per_s")
    exported_for = None if rate is None else float(rate)
    return Deployed(folder, pkg.variant_id, split, codec, interval, exported_for, pkg)


def _labels(spec: Any, codec_kind: str) -> tuple[str, str]:
    from coinference.variant import VariantSpec

    if not isinstance(spec, dict):
        return "?", codec_kind
    try:
        s = VariantSpec.from_dict({k: v for k, v in spec.items() if k != "key"})
    except Exception:  # a spec from another version: still servable, only not described
        return str(spec.get("split", "?")), codec_kind
    return s.split, s.codec.label


def package_dataset(deployed: Sequence[Deployed]) -> str | None:
    """The data set the packages' specs name (None when they name none or several)."""
    names = {((d.opened.manifest.get("spec") or {}) if d.opened else {}).get("dataset") for d in deployed}
    return names.pop() if len(names) == 1 else None


def switch_rows(deployed: Sequence[Deployed]) -> list[tuple[float, str]] | None:
    """``VariantSwitcher`` rows (lowest rate, variant id), slowest link first: the table's intervals, or, for
    packages that all record the rate they were exported for, intervals around those rates; None otherwise."""
    if all(d.interval is not None for d in deployed):
        return sorted((d.interval[0], d.variant_id) for d in deployed if d.interval is not None)
    if all(d.exported_for is not None for d in deployed):
        from coinference.runtime.adaptive import intervals_from_rows

        return intervals_from_rows((d.exported_for, d.variant_id) for d in deployed if d.exported_for is not None)
    return None


@dataclass(frozen=True)
class TableChoice:
    """What a table says to deploy for a device: the split variants its bandwidth table picks."""

    records: list[VariantRecord]
    """The table's ``ok`` variants (of the fidelity asked for)."""
    chosen: list[VariantRecord]
    """The picked split variants, slowest link first."""
    intervals: list[tuple[float, float]]
    """[lo, hi) bytes/s of each chosen one."""
    floor: float | None
    device: DeviceProfile
    server: ServerProfile


def table_choice(
    ref: TableRef, device: DeviceProfile, server: ServerProfile, min_accuracy: float | None, fidelity: str | None
) -> TableChoice:
    """The split variants the table's bandwidth table (1 KB/s … 100 MB/s) picks for ``device`` at some rate, with
    the accuracy floor of ``query`` (``resolve_floor``); reads the table, writes nothing.

    Raises:
        ConfigError: the table has no measured split variant. NoFeasibleVariantError: none fits the device and
            the floor.
    """
    from search.cli.table_options import of_fidelity, read_table
    from storage.deploy import deploy_choices
    from storage.query import log_bandwidths, resolve_floor

    with read_table(ref) as table:
        records = of_fidelity(table.variants(status="ok"), fidelity)
    if all(r.spec.whole_model for r in records):
        raise ConfigError(f"{ref.url} has no measured split variant to deploy (whole-model candidates have no package)")
    floor = resolve_floor(records, min_accuracy, device)
    grid = log_bandwidths()
    choices = deploy_choices(records, device, server, 0.0, floor, grid)
    # a change of pick lies between two rates of the grid: put the boundary at their geometric midpoint
    los = [0.0] + [math.sqrt(grid[grid.index(c.min_rate) - 1] * c.min_rate) for c in choices[1:]]
    intervals = list(zip(los, [*los[1:], math.inf], strict=True))
    by_key = {r.key: r for r in records}
    return TableChoice(records, [by_key[c.key] for c in choices], intervals, floor, device, server)


def table_packages(ref: TableRef, choice: TableChoice, data_dir: Path | None, side: str) -> list[Deployed]:
    """The packages of the chosen variants under ``<run home>/exports/<key[:16]>``, reused while their files match
    their manifest, else exported and verified now on the first test images of the variant's data set (each export
    is recorded as the variant's ``export/manifest`` artifact); read for ``side``."""
    from search.cli.measure import export_inputs
    from search.cli.progress import cli_progress
    from search.cli.table_options import read_table
    from storage.deploy import ensure_export, export_dir

    out: list[Deployed] = []
    inputs: dict[tuple[str, str | None], Any] = {}
    packages: dict[str, Path] = {}  # a variant the table picks in two rate ranges is exported once
    with read_table(ref) as table, cli_progress():
        for rec, interval in zip(choice.chosen, choice.intervals, strict=True):
            if rec.key not in packages and not _exported(export_dir(ref.home, rec.key), rec.key):
                data_key = (rec.spec.dataset, rec.spec.weights_sha256)
                if data_key not in inputs:  # test images, only when something is exported (they load PyTorch)
                    inputs[data_key] = export_inputs(rec, data_dir, VERIFY_IMAGES)
                package, written = ensure_export(rec, ref.home, *inputs[data_key])
                if written:
                    table.add_artifacts(rec.key, {"export/manifest": package / "manifest.json"})
                packages[rec.key] = package
            packages.setdefault(rec.key, export_dir(ref.home, rec.key))
            out.append(describe(packages[rec.key], side, interval))
    return out


def _exported(folder: Path, key: str) -> bool:
    """``folder`` holds an intact package of ``key`` (what ``ensure_export`` would reuse)."""
    from coinference.runtime import Package, PackageError

    try:
        return Package.open(folder).key == key
    except PackageError:
        return False


# ------------------------------------------------------------------------------------------------ addresses
def check_host(host: str) -> str:
    """--host: an IP address (or ``localhost``) to listen on."""
    if host == "localhost":
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"--host must be an IP address to listen on (e.g. 127.0.0.1, 0.0.0.0), got {host!r}"
        ) from None
    return host


def address(host: str, port: int) -> str:
    """``HOST:PORT`` as ``parse_address`` reads it (``[::1]:PORT`` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(option: str, text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port 1–65535)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{option} must be HOST:PORT with a port in 1–65535 (e.g. 127.0.0.1:8765), got {text!r}")
    return host, int(port)
